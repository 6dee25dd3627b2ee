"""Typer options shared by every command that runs the text encoder.

Written by the lead as the agreed interface (names used by suggest/trigger/score/dataset);
the encoder engineer owns this file and may extend it, keeping these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="TAGSMITH_MODEL",
        metavar="MODEL",
        show_default=False,
        help="The SD1.5 text encoder: a Hugging Face repo id, a diffusers folder, a "
        "CLIPTextModel folder, or a single-file checkpoint (.safetensors, .ckpt). Default: "
        "$TAGSMITH_MODEL, else stable-diffusion-v1-5/stable-diffusion-v1-5 from the HF cache.",
    ),
]
ClipSkipOption = Annotated[
    int,
    typer.Option(
        "--clip-skip",
        min=1,
        max=12,
        metavar="N",
        help="A1111 clip skip: 1 = last layer, 2 = penultimate (NovelAI-style anime models).",
    ),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or mps.")
]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")
]
RepresentationOption = Annotated[
    str,
    typer.Option(
        "--representation",
        help="tag: mean of the tag's own token states (what "
        "cross-attention sees); eos: the pooled EOS state.",
    ),
]
ContextOption = Annotated[
    str | None,
    typer.Option(
        "--context",
        show_default=False,
        metavar="PROMPT",
        help="Embed each tag inside this prompt, e.g. '1girl, solo, {}'.",
    ),
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="TAGSMITH_CACHE_DIR",
        show_default=False,
        metavar="DIR",
        help="Embedding cache folder (default: the platform cache dir).",
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")]


def settings_from_options(
    *,
    model: str | None,
    clip_skip: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    representation: str = "tag",
    context: str | None = None,
    cache_dir: Path | None = None,
    no_cache: bool = False,
):  # noqa: ANN201 - EncoderSettings, imported lazily
    from tagsmith.embedding import EncoderSettings

    return EncoderSettings(
        model=model,
        clip_skip=clip_skip,
        device=device,
        dtype=dtype,
        representation=representation,
        context=context,
        cache_dir=cache_dir,
        use_cache=not no_cache,
    )
