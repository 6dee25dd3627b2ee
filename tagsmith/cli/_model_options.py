"""Typer options shared by every command that runs the text encoder.

A command that runs the encoder takes them all with ``@with_model_options`` and one
``model_options: ModelOptions`` argument, whose ``settings()`` are its ``EncoderSettings``
(``tagsmith lora``, with fewer of them, declares its own with these aliases). Values are
checked here (bad ones exit 2 with one sentence) so a typo never costs a model load.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
REPRESENTATION_CHOICES = ("tag", "eos", "pooled")
ENCODER_CHOICES = ("auto", "l", "g")
COMBINE_CHOICES = ("concat", "balanced")


def _one_of(option: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value is None:
            return value
        v = value.lower()
        if v in choices or (option == "--device" and v.startswith("cuda:")):
            return v
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}.")

    return check


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="TAGSMITH_MODEL",
        metavar="MODEL",
        show_default=False,
        help="The SD1.5 or SDXL model (Pony, Illustrious, NoobAI...): a Hugging Face repo id, "
        "a diffusers folder, a CLIPTextModel folder, or a single-file checkpoint "
        "(.safetensors, .ckpt). Default: $TAGSMITH_MODEL, else SD1.5 itself "
        "(stable-diffusion-v1-5) from the Hugging Face cache.",
    ),
]
ClipSkipOption = Annotated[
    int,
    typer.Option(
        "--clip-skip",
        min=1,
        max=12,
        metavar="N",
        help="A1111/Forge clip skip: 1 = last layer, 2 = penultimate (NovelAI-style anime "
        "models). SDXL always reads at least the penultimate layer, so 1 and 2 are the same.",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda|mps",
        callback=_one_of("--device", DEVICE_CHOICES),
        help="auto (CUDA when available, then MPS, else CPU), cpu, cuda or mps.",
    ),
]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="auto|fp32|fp16|bf16",
        callback=_one_of("--dtype", DTYPE_CHOICES),
        help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.",
    ),
]
RepresentationOption = Annotated[
    str,
    typer.Option(
        "--representation",
        metavar="tag|eos|pooled",
        callback=_one_of("--representation", REPRESENTATION_CHOICES),
        help="tag: mean of the tag's own token states (what "
        "cross-attention sees); eos: the state at EOS; pooled: SDXL's projected CLIP-G vector.",
    ),
]
EncoderPartOption = Annotated[
    str,
    typer.Option(
        "--encoder",
        metavar="auto|l|g",
        callback=_one_of("--encoder", ENCODER_CHOICES),
        help="SDXL: auto (CLIP-L and CLIP-G side by side, 2048 wide, as the UNet reads them), "
        "l or g (one encoder). SD1.5 has CLIP-L only.",
    ),
]
CombineOption = Annotated[
    str,
    typer.Option(
        "--combine",
        metavar="concat|balanced",
        callback=_one_of("--combine", COMBINE_CHOICES),
        help="SDXL with both encoders: concat (cosine of the 2048-wide conditioning, the "
        "UNet's view) or balanced (the mean of each encoder's cosine).",
    ),
]
ContextOption = Annotated[
    str | None,
    typer.Option(
        "--context",
        show_default=False,
        metavar="PROMPT",
        help="Embed each tag inside this prompt at {}, e.g. '1girl, solo, {}' (the vector "
        "still covers only the tag's own tokens).",
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
LoraOption = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        metavar="FILE[:WEIGHT]",
        show_default=False,
        help="Measure the model with this LoRA/LyCORIS file merged into its text encoder "
        "(repeatable); WEIGHT is the text-encoder multiplier, as the te part of A1111's "
        "<lora:name:te:unet> (default 1).",
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")]


@dataclass(frozen=True)
class ModelOptions:
    """What the shared model options were given: the raw values, checked only by
    ``settings()`` so each command decides when (``dataset --no-model`` never does)."""

    model: str | None = None
    lora: list[str] | None = None
    clip_skip: int = 1
    device: str = "auto"
    dtype: str = "auto"
    representation: str = "tag"
    encoder: str = "auto"
    combine: str = "concat"
    context: str | None = None
    cache_dir: Path | None = None
    no_cache: bool = False

    @property
    def explicit(self) -> bool:
        """A model was named (--model or $TAGSMITH_MODEL), so not finding it is an error."""
        return self.model is not None

    def settings(self):  # noqa: ANN201 - EncoderSettings, imported lazily
        """``EncoderSettings`` from these values (UsageError, exit 2, for a bad one)."""
        return settings_from_options(**{f.name: getattr(self, f.name) for f in fields(self)})


# The options every model command ends with, in the order --help lists them.
_SHARED = (
    ("model", ModelOption, None), ("lora", LoraOption, None),
    ("clip_skip", ClipSkipOption, 1), ("device", DeviceOption, "auto"),
    ("dtype", DtypeOption, "auto"), ("representation", RepresentationOption, "tag"),
    ("encoder", EncoderPartOption, "auto"), ("combine", CombineOption, "concat"),
    ("context", ContextOption, None), ("cache_dir", CacheDirOption, None),
    ("no_cache", NoCacheOption, False),
)


def with_model_options(command: Callable) -> Callable:
    """Give a typer command the shared model options (--model ... --no-cache, after its own)
    as one ``model_options: ModelOptions`` argument, declared once here for every command."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "model_options"]
    if len(own) == len(signature.parameters):
        raise TypeError(f"{command.__name__} takes no model_options argument")
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                annotation=alias) for name, alias, default in _SHARED]

    @functools.wraps(command)
    def run(**given):  # noqa: ANN003, ANN202 - typer passes every option by name
        chosen = ModelOptions(**{name: given.pop(name) for name, _, _ in _SHARED})
        return command(model_options=chosen, **given)

    params = own + shared
    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__annotations__["return"] = signature.return_annotation
    return run


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
    encoder: str = "auto",
    combine: str = "concat",
    lora: list[str] | None = None,
):  # noqa: ANN201 - EncoderSettings, imported lazily
    """EncoderSettings from the shared options, checked (UsageError, exit 2, when invalid)."""
    from tagsmith.model.embedding import EncoderSettings
    from tagsmith.model.lora import parse_lora_spec

    return EncoderSettings(
        model=model,
        clip_skip=clip_skip,
        device=device,
        dtype=dtype,
        representation=representation,
        context=context,
        cache_dir=cache_dir,
        use_cache=not no_cache,
        encoder=encoder,
        combine=combine,
        loras=tuple(parse_lora_spec(text) for text in lora or ()),
    ).validated()


def model_notices(embedder: object, notice: str | None = None) -> list[str]:
    """The no-model notice, if any, then what --lora applied (one line per LoRA)."""
    lora = getattr(embedder, "lora", None)
    return ([notice] if notice else []) + (lora.notes() if lora is not None else [])


def open_base_model(embedder: object):  # noqa: ANN201
    """With --lora, the same model without it (for the base numbers shown beside), which the
    embedder owns and closes; the embedder itself when its LoRAs change no text-encoder weight
    (its numbers are the base's); else None."""
    if embedder is None or getattr(getattr(embedder, "lora", None), "first", None) is None:
        return None
    shared = embedder.adapter_base()  # type: ignore[attr-defined]
    return shared if shared is not None else embedder


def lora_label(model_info: dict) -> str:
    """' · LoRA style.safetensors:0.8 (base numbers beside)' for a header, or ''."""
    loras = model_info.get("loras") or []
    if not loras:
        return ""
    names = ", ".join(f"{Path(d['file']).name}:{d['weight']:g}" for d in loras)
    return f" · LoRA {names} (base model's score beside)"


def base_cell(base: dict | None) -> str:
    """A table cell with the base model's score for the same row."""
    if not base or base.get("score") is None:
        return "-"
    return f"{base['score']:+.3f}"


def print_model_notes(embedder: object) -> None:
    """Print the embedder's notes (repaired position_ids, truncated tags...) to stderr."""
    from tagsmith.cli._console import err_console

    for note in getattr(embedder, "notes", None) or []:
        err_console.print(f"Note: {note}", style="yellow", highlight=False, markup=False)
