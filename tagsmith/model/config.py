"""What a CLIP text encoder is: its architecture (``EncoderConfig``), the canonical tensor names
and shapes, and the check that a set of tensors forms one. Pure: no torch."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tagsmith.errors import UnsupportedModelError, UsageError

CLIP_VOCAB_SIZE = 49408


CLIP_POSITIONS = 77


TOKEN_EMBEDDING = "embeddings.token_embedding.weight"


POSITION_EMBEDDING = "embeddings.position_embedding.weight"


POSITION_IDS = "embeddings.position_ids"


_LAYER_PARAMS = tuple(
    f"{module}.{p}"
    for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
    )
    for p in ("weight", "bias")
)


_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
# A transformer layer's linear weight by canonical name: (layer, "self_attn.q_proj" | ... |
# "mlp.fc2"); what a LoRA's plain low-rank factors can stand beside (tagsmith.model.lora_patch)
LINEAR_WEIGHT = re.compile(
    r"^encoder\.layers\.(\d+)\.(self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])\.weight$")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a CLIP text transformer (defaults: SD1.5's ViT-L/14 text model)."""

    vocab_size: int = CLIP_VOCAB_SIZE
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = CLIP_POSITIONS
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 0  # SDXL's CLIP-G: text_projection (pooled output); 0 = none

    def to_dict(self) -> dict:
        # projection_dim only when set, so SD1.5 fingerprints (which hash this) stay as they were
        d = dict(self.__dict__)
        if not d["projection_dim"]:
            del d["projection_dim"]
        return d

    def layers_for(self, clip_skip: int) -> int:
        """How many layers clip skip N runs: hidden_states[-N] is the output of layer L-N+1."""
        n = self.num_layers
        if not 1 <= clip_skip <= n:
            raise UsageError(
                f"Clip skip must be between 1 and {n} for this model, not {clip_skip}."
            )
        return n - clip_skip + 1

    @classmethod
    def from_dict(cls, data: Mapping) -> EncoderConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


TEXT_PROJECTION = "text_projection.weight"


def encoder_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    folder_config: Mapping | None,
    name: str,
    *,
    family: str = "SD1.5",
    default_act: str = "quick_gelu",
) -> EncoderConfig:
    """Architecture from canonical tensor shapes (config.json supplies heads and activation).

    Checks that every tensor a CLIP text transformer needs is there with a consistent shape.
    ``family`` "SD1.5" also refuses the widths of other families' encoders; a family that
    reads several encoders (SDXL) checks each one's width itself. ``default_act`` is the
    activation when no config.json says (single files carry none).
    """
    cfg = dict(folder_config or {})
    required = [TOKEN_EMBEDDING, POSITION_EMBEDDING, "final_layer_norm.weight",
                "final_layer_norm.bias"]
    # The layer count comes from the layers that exist, never from the largest number a key
    # names: a header naming layer 99999999 must not make tagsmith list 1.6e9 tensor names.
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))}
    n_layers = next(i for i in range(len(layers) + 1) if i not in layers)
    if n_layers < len(layers):
        stray = max(layers)
        raise UnsupportedModelError(
            f"'{name}' has an incomplete text encoder: it has tensors for layer {stray:,} but "
            f"none for layer {n_layers}; the file may be damaged or pruned."
        )
    required += [f"encoder.layers.{i}.{p}" for i in range(n_layers) for p in _LAYER_PARAMS]
    missing = [k for k in required if k not in shapes]
    if missing or n_layers == 0:
        first = missing[0] if missing else "encoder.layers.0.*"
        raise UnsupportedModelError(
            f"'{name}' has an incomplete text encoder: {first}"
            + (f" and {len(missing) - 1} more tensors are" if len(missing) > 1 else " is")
            + " missing; the file may be damaged or pruned."
        )
    vocab, hidden = shapes[TOKEN_EMBEDDING]
    positions = shapes[POSITION_EMBEDDING][0]
    intermediate = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    if family == "SD1.5" and hidden == 1024:
        raise UnsupportedModelError(
            f"'{name}' is an SD 2.x text encoder (OpenCLIP ViT-H, width 1024); tagsmith needs "
            "SD1.5's CLIP ViT-L encoder (width 768)."
        )
    if family == "SD1.5" and hidden == 1280:
        raise UnsupportedModelError(
            f"'{name}' is an SDXL second text encoder (OpenCLIP ViT-bigG, width 1280); tagsmith "
            "needs SD1.5's CLIP ViT-L encoder (width 768)."
        )
    if vocab != CLIP_VOCAB_SIZE:
        raise UnsupportedModelError(
            f"'{name}' has a vocabulary of {vocab:,} tokens, not CLIP's {CLIP_VOCAB_SIZE:,}; it "
            f"is not an {family} text encoder."
        )
    if positions != CLIP_POSITIONS:
        raise UnsupportedModelError(
            f"'{name}' has {positions} positions, not {family}'s {CLIP_POSITIONS}; it is not an "
            f"{family} text encoder."
        )
    # CLIP text transformers use 64-wide heads; a config.json says so explicitly when present.
    heads = _config_value(cfg, "num_attention_heads", int, max(1, hidden // 64), name)
    eps = _config_value(cfg, "layer_norm_eps", float, 1e-5, name)
    act = _config_value(cfg, "hidden_act", str, default_act, name)
    if not 0 < heads <= hidden:
        raise UnsupportedModelError(
            f"The config.json of '{name}' declares {heads} attention heads; a CLIP text encoder "
            f"of width {hidden} has between 1 and {hidden}."
        )
    if not (math.isfinite(eps) and 0 < eps < 1):
        raise UnsupportedModelError(
            f"The config.json of '{name}' declares layer_norm_eps {eps!r}; it must be a small "
            "positive number (SD1.5 uses 1e-05), or every vector would be NaN or wrong."
        )
    config = EncoderConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_layers=n_layers,
        num_heads=heads,
        intermediate_size=int(intermediate),
        max_positions=int(positions),
        hidden_act=act,
        layer_norm_eps=eps,
        projection_dim=int(shapes[TEXT_PROJECTION][0]) if TEXT_PROJECTION in shapes else 0,
    )
    if hidden % heads:
        raise UnsupportedModelError(
            f"'{name}' declares {heads} attention heads, which do not divide its width {hidden}."
        )
    if config.hidden_act not in ("quick_gelu", "gelu"):
        raise UnsupportedModelError(
            f"'{name}' uses the activation '{config.hidden_act}'; CLIP text encoders use "
            "quick_gelu or gelu."
        )
    expected = expected_shapes(config)
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise UnsupportedModelError(
                f"'{name}' has an inconsistent text encoder: {key} has shape "
                f"{tuple(shapes[key])}, expected {shape}."
            )
    return config


def _config_value(cfg: Mapping, key: str, kind: type, default: object, name: str):  # noqa: ANN202
    """``cfg[key]`` checked to be a ``kind`` (an int for float is fine, a bool never is)."""
    value = cfg.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        want = {int: "a whole number", float: "a number", str: "a string"}[kind]
        raise UnsupportedModelError(
            f"The config.json of '{name}' gives {key} as {value!r}, which is not {want}."
        )
    return value


def expected_shapes(c: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a CLIP text encoder with config ``c``, canonical name -> shape."""
    h, i = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        TOKEN_EMBEDDING: (c.vocab_size, h),
        POSITION_EMBEDDING: (c.max_positions, h),
        "final_layer_norm.weight": (h,),
        "final_layer_norm.bias": (h,),
    }
    for n in range(c.num_layers):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (h, h)
            shapes[f"{p}self_attn.{proj}.bias"] = (h,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{ln}.weight"] = (h,)
            shapes[f"{p}{ln}.bias"] = (h,)
        shapes[f"{p}mlp.fc1.weight"] = (i, h)
        shapes[f"{p}mlp.fc1.bias"] = (i,)
        shapes[f"{p}mlp.fc2.weight"] = (h, i)
        shapes[f"{p}mlp.fc2.bias"] = (h,)
    if c.projection_dim:
        shapes[TEXT_PROJECTION] = (c.projection_dim, h)
    return shapes


@dataclass(frozen=True)
class ConditioningRule:
    """Which hidden state a family's UNet reads, and whether the final layer norm is applied.

    SD1.5 (A1111/kohya/ComfyUI): clip skip N = hidden_states[-N] then the final layer norm.
    SDXL (Stability's sd_xl_base.yaml, Forge ``-max(clip_skip, 2)``, ComfyUI
    ``layer_norm_hidden_state=False``): at least the penultimate layer, no final layer norm.
    """

    min_clip_skip: int = 1
    final_norm: bool = True

    def layers(self, config: EncoderConfig, clip_skip: int) -> int:
        return config.layers_for(max(clip_skip, self.min_clip_skip))


SD15_RULE = ConditioningRule()


SDXL_RULE = ConditioningRule(min_clip_skip=2, final_norm=False)
