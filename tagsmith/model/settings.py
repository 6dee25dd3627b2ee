"""What a user asks of the text encoder: ``EncoderSettings`` (model, clip skip, device, dtype,
representation, context, SDXL encoder and combine, LoRAs), validated into one sentence per bad
value. ``tagsmith.model.embedding`` turns settings into a ``TagEmbedder``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tagsmith.errors import UsageError
from tagsmith.model.lora import LoraSpec

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
REPRESENTATIONS = ("tag", "eos", "pooled")
ENCODERS = ("auto", "l", "g")
COMBINES = ("concat", "balanced")
CONTEXT_SLOT = "{}"
MAX_CLIP_SKIP = 12


@dataclass(frozen=True)
class EncoderSettings:
    model: str | None = None  # None -> $TAGSMITH_MODEL or the SD1.5 hub repo
    clip_skip: int = 1
    device: str = "auto"  # auto|cpu|cuda|mps
    dtype: str = "auto"  # auto|fp32|fp16|bf16
    representation: str = "tag"  # tag (mean over the tag's own tokens) | eos (pooled EOS state)
    context: str | None = None  # "1girl, solo, {}": the tag is embedded at {} in this prompt
    cache_dir: Path | None = None  # None -> $TAGSMITH_CACHE_DIR or the platform cache dir
    use_cache: bool = True
    encoder: str = "auto"  # SDXL: auto (both, 2048 wide) | l | g
    combine: str = "concat"  # SDXL, both encoders: concat (the UNet's view) | balanced
    loras: tuple[LoraSpec, ...] = ()  # --lora FILE[:WEIGHT], merged into the encoder's weights

    def validated(self) -> EncoderSettings:
        """The same settings, normalised; UsageError (one sentence) for a bad value."""
        device = (self.device or "auto").lower()
        dtype = (self.dtype or "auto").lower()
        rep = (self.representation or "tag").lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise UsageError(f"Unknown device '{self.device}'; use one of {', '.join(DEVICES)}.")
        if dtype not in DTYPES:
            raise UsageError(f"Unknown dtype '{self.dtype}'; use one of {', '.join(DTYPES)}.")
        if rep not in REPRESENTATIONS:
            raise UsageError(
                f"Unknown representation '{self.representation}'; use tag, eos or pooled."
            )
        encoder = (self.encoder or "auto").lower()
        combine = (self.combine or "concat").lower()
        if encoder not in ENCODERS:
            raise UsageError(f"Unknown encoder '{self.encoder}'; use auto, l or g.")
        if combine not in COMBINES:
            raise UsageError(f"Unknown combine '{self.combine}'; use concat or balanced.")
        if not isinstance(self.clip_skip, int) or not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise UsageError(
                f"Clip skip must be a whole number from 1 to {MAX_CLIP_SKIP} (A1111 numbering: "
                f"2 = penultimate layer), not {self.clip_skip}."
            )
        context = self.context
        if context is not None:
            if not context.strip() or context.strip() == CONTEXT_SLOT:
                context = None
            elif context.count(CONTEXT_SLOT) != 1:
                raise UsageError(
                    f"The context must contain {CONTEXT_SLOT} exactly once, where the tag goes, "
                    f"e.g. \"1girl, solo, {CONTEXT_SLOT}\" (got {context!r})."
                )
        cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir else None
        return replace(
            self, device=device, dtype=dtype, representation=rep, context=context,
            cache_dir=cache_dir, encoder=encoder, combine=combine,
        )

    @property
    def precision(self) -> str:
        """The numeric precision vectors are computed in, as far as it is known without torch.

        'auto' on both device and dtype means "this machine's default" (fp16 on a GPU, fp32 on
        CPU), which is stable for a given machine and its cache folder.
        """
        if self.dtype != "auto":
            return self.dtype
        if self.device == "cpu":
            return "fp32"
        if self.device != "auto":
            return "fp16"
        return "auto"


def split_context(context: str | None) -> tuple[str, str]:
    if not context:
        return "", ""
    before, after = context.split(CONTEXT_SLOT)
    return before, after
