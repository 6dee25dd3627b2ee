"""LoRA/LyCORIS files as text-encoder weight changes, read from the header and merged into weights.

``read_lora`` parses a ``.safetensors`` adapter's header (no tensor is read): which text-encoder
modules it changes, by canonical CLIPTextModel name (``encoder.layers.3.self_attn.q_proj``) and
encoder (``l``: SD1.5's only encoder and SDXL's CLIP-L, from ``lora_te_``/``lora_te1_``/
``text_encoder.``; ``g``: SDXL's CLIP-G, from ``lora_te2_``/``text_encoder_2.``, whose q/k/v
names match the canonical split layout), with which algorithm, and which model family it was
trained for; ``parse_lora_spec`` reads ``--lora FILE[:WEIGHT]``. Applying them to a model's
weights is ``tagsmith.model.lora_patch``; the maths per algorithm is in
``tagsmith.model.lora_math``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.errors import InputError, UnsupportedModelError, UsageError
from tagsmith.model.safetensors_file import (
    TensorRef,
    read_safetensors_header,
    sniff_format,
)

# role suffixes after the module name; longest first so "lora_A.weight" wins over "weight"
_ROLES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
    "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down",
    "lora.up.weight": "up", "lora_linear_layer.down.weight": "down",
    "lora_linear_layer.up.weight": "up", "lora_magnitude_vector": "dora", "dora_scale": "dora",
    "alpha": "alpha", "scale": "scale",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b", "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b",
    "lokr_t2": "lokr_t2", "a1.weight": "a1", "a2.weight": "a2", "b1.weight": "b1",
    "b2.weight": "b2", "diff_b": "diff_b", "diff": "diff", "on_input": "on_input",
    "weight": "weight",
}
_ROLE_SUFFIXES = sorted(_ROLES, key=len, reverse=True)

# kohya names: prefix + module path with "." -> "_"
_KOHYA_TE = (("lora_te1_", "l"), ("lora_te2_", "g"), ("lora_te_", "l"))
_PEFT_TE = (("text_encoder_2.", "g"), ("text_encoder.", "l"))
_UNET_PREFIXES = (
    "lora_unet_", "lora_unet.", "unet.", "model.diffusion_model.", "diffusion_model.",
    "lora_transformer_", "transformer.",
)
_KOHYA_MODULE = re.compile(
    r"^(?:text_model_)?(?:encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12]|"
    r"layer_norm[12])|(embeddings_token_embedding|embeddings_position_embedding|"
    r"final_layer_norm))$"
)
_PEFT_MODULE = re.compile(
    r"^(?:text_model\.)?(?:(encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12]|"
    r"layer_norm[12]))|(embeddings\.token_embedding|embeddings\.position_embedding|"
    r"final_layer_norm))$"
)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
FAMILY_NAMES = {"sd1": "SD1.5", "sdxl": "SDXL", "sd2": "SD 2.x", "other": "another model"}


@dataclass(frozen=True)
class LoraModule:
    """One adapted text-encoder layer: its canonical name, algorithm and tensors by role."""

    encoder: str  # "l" | "g"
    target: str  # canonical module, e.g. "encoder.layers.0.self_attn.q_proj"
    algo: str  # LoRA | LoHa | LoKr | GLoRA | IA3 | full
    tensors: Mapping[str, TensorRef]
    dora: bool = False
    rank: int | None = None
    peft: bool = False  # diffusers/PEFT naming (its alpha may live in the header metadata)

    @property
    def layer(self) -> int | None:
        m = re.match(r"encoder\.layers\.(\d+)\.", self.target)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LoraFile:
    """What a LoRA file holds, from its header alone."""

    path: Path
    metadata: Mapping[str, str]
    modules: tuple[LoraModule, ...]
    unknown: tuple[str, ...]  # text-encoder keys tagsmith does not understand
    unet_keys: int
    family: str  # sd1 | sdxl | sd2 | other | unknown
    family_why: str
    total_keys: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def te_trained(self) -> bool:
        return bool(self.modules)

    def algos(self) -> list[str]:
        names = []
        for m in self.modules:
            label = f"DoRA ({m.algo})" if m.dora else m.algo
            if label not in names:
                names.append(label)
        return names

    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules if m.rank})

    def summary(self) -> str:
        """'72 text-encoder deltas (LoHa, rank 16)'."""
        ranks = self.ranks()
        rank = ""
        if ranks:
            rank = f", rank {ranks[0]}" if len(ranks) == 1 else f", ranks {ranks[0]}-{ranks[-1]}"
        return (
            f"{len(self.modules)} text-encoder delta{'s' if len(self.modules) != 1 else ''} "
            f"({', '.join(self.algos()) or 'none'}{rank})"
        )

    def peft_alpha(self, module: LoraModule) -> tuple[float | None, bool]:
        """(lora_alpha, use_rslora) from diffusers' adapter metadata, for a PEFT-named module."""
        raw = self.metadata.get(DIFFUSERS_METADATA_KEY)
        if not module.peft or not raw:
            return None, False
        try:
            meta = json.loads(raw)
        except ValueError:
            return None, False
        comp = "text_encoder_2" if module.encoder == "g" else "text_encoder"
        get = (lambda k: meta.get(f"{comp}.{k}", meta.get(k))) if isinstance(meta, dict) else None
        if get is None:
            return None, False
        alpha = get("lora_alpha")
        patterns = get("alpha_pattern") or {}
        if isinstance(patterns, dict):
            for pat, value in patterns.items():
                if module.target.endswith(str(pat)) or re.search(str(pat), module.target):
                    alpha = value
        try:
            return (float(alpha) if alpha is not None else None), bool(get("use_rslora"))
        except (TypeError, ValueError):
            return None, False

    def fingerprint(self) -> str:
        """A content hash of the text-encoder tensors (what changes vectors) and the metadata
        that changes their scale."""
        h = hashlib.sha256(b"tagsmith-lora-1")
        h.update(str(self.metadata.get(DIFFUSERS_METADATA_KEY, "")).encode())
        refs = sorted((r for m in self.modules for r in m.tensors.values()), key=lambda r: r.key)
        if not refs:
            return h.hexdigest()[:16]
        with self.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for ref in refs:
                h.update(f"\n{ref.key}|{ref.dtype}|{ref.shape}\n".encode())
                h.update(mm[ref.start:ref.end])
        return h.hexdigest()[:16]


def _split_role(key: str) -> tuple[str, str] | None:
    for suffix in _ROLE_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], _ROLES[suffix]
    return None


def _canonical(module: str, kohya: bool) -> str | None:
    if kohya:
        m = _KOHYA_MODULE.match(module)
        if not m:
            return None
        if m.group(3):
            return m.group(3).replace("embeddings_", "embeddings.")
        part = m.group(2).replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        return f"encoder.layers.{m.group(1)}.{part}"
    m = _PEFT_MODULE.match(module)
    if not m:
        return None
    return m.group(1) or m.group(2)


def _algo(roles: set[str]) -> str | None:
    if {"down", "up"} <= roles:
        return "LoRA"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= roles:
        return "LoHa"
    if ({"lokr_w1"} & roles or {"lokr_w1_a", "lokr_w1_b"} <= roles) and (
        {"lokr_w2"} & roles or {"lokr_w2_a", "lokr_w2_b"} <= roles
    ):
        return "LoKr"
    if {"a1", "a2", "b1", "b2"} <= roles:
        return "GLoRA"
    if "diff" in roles:
        return "full"
    if "weight" in roles:
        return "IA3"
    return None


def _rank(algo: str, t: Mapping[str, TensorRef]) -> int | None:
    if algo == "LoRA":
        return t["down"].shape[0]
    if algo == "LoHa":
        return t["hada_w1_b"].shape[0]
    if algo == "LoKr":
        for role in ("lokr_w2_b", "lokr_w1_b"):
            if role in t:
                return t[role].shape[0]
        return None
    if algo == "GLoRA":
        return min(t["a2"].shape[0], t["a1"].shape[0])
    return None


NO_FAMILY_EVIDENCE = "nothing in it names another family"


def _family(metadata: Mapping[str, str], encoders: set[str], unet: list[str],
            widths: set[int]) -> tuple[str, str]:
    version = str(metadata.get("ss_base_model_version", ""))
    arch = str(metadata.get("modelspec.architecture", ""))
    if "g" in encoders:
        return "sdxl", "it has keys for SDXL's second text encoder (lora_te2_/text_encoder_2.)"
    if version.startswith("sdxl"):
        return "sdxl", f"its metadata says ss_base_model_version {version}"
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl", f"its metadata says modelspec.architecture {arch}"
    if version.startswith("sd_v2") or str(metadata.get("ss_v2", "")) == "True":
        return "sd2", "its metadata says it was trained on SD 2.x"
    if arch.startswith("stable-diffusion-v2"):
        return "sd2", f"its metadata says modelspec.architecture {arch}"
    if arch and not arch.startswith("stable-diffusion-v1"):
        return "other", f"its metadata says modelspec.architecture {arch}"
    if 1024 in widths:
        return "sd2", "its text-encoder deltas are 1024 wide (OpenCLIP ViT-H, SD 2.x)"
    if any(k.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks")) for k in unet):
        return "sdxl", "its UNet keys use SDXL's block names (input_blocks/output_blocks)"
    if any(k.startswith(("lora_unet_double_blocks", "lora_unet_single_blocks",
                         "lora_transformer_")) for k in unet):
        return "other", "its UNet keys are a transformer's (Flux/SD3-style)"
    if version.startswith("sd_v1"):
        return "sd1", f"its metadata says ss_base_model_version {version}"
    if arch:
        return "sd1", f"its metadata says modelspec.architecture {arch}"
    return "sd1", NO_FAMILY_EVIDENCE


def read_lora(path: Path | str) -> LoraFile:
    """Parse a LoRA/LyCORIS ``.safetensors`` header: modules, unknown keys, family, metadata.

    Raises InputError / UnsupportedModelError with one sentence for a missing, corrupt or
    non-LoRA file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"There is no LoRA file at '{path}'.")
    fmt = sniff_format(path)
    if fmt in ("zip-pickle", "legacy-pickle"):
        raise UnsupportedModelError(
            f"'{path}' is a pickle (.pt/.ckpt) LoRA; tagsmith reads LoRAs only as .safetensors "
            "(convert it with kohya's or ComfyUI's tools)."
        )
    header = read_safetensors_header(path)
    groups: dict[tuple[str, str, bool], dict[str, TensorRef]] = {}
    unknown: list[str] = []
    unet: list[str] = []
    for key, ref in header.tensors.items():
        kohya = next(((p, e) for p, e in _KOHYA_TE if key.startswith(p)), None)
        peft = None if kohya else next(((p, e) for p, e in _PEFT_TE if key.startswith(p)), None)
        if kohya is None and peft is None:
            if key.startswith(_UNET_PREFIXES):
                unet.append(key)
            else:
                unknown.append(key)
            continue
        prefix, enc = kohya or peft  # type: ignore[misc]
        rest = key[len(prefix):]
        if kohya:
            module, _, suffix = rest.partition(".")
            role = _ROLES.get(suffix)
            split = (module, role) if role else None
        else:
            split = _split_role(rest)
        target = _canonical(split[0], bool(kohya)) if split else None
        if split is None or target is None:
            unknown.append(key)
            continue
        groups.setdefault((enc, target, peft is not None), {})[split[1]] = ref
    modules = []
    for (enc, target, is_peft), t in groups.items():
        algo = _algo(set(t))
        if algo is None:
            unknown.extend(r.key for r in t.values())
            continue
        modules.append(LoraModule(enc, target, algo, t, "dora" in t, _rank(algo, t), is_peft))
    checkpoint = [k for k in unknown if k.startswith(("cond_stage_model.", "conditioner.",
                                                      "first_stage_model."))]
    if not modules and checkpoint:
        raise UnsupportedModelError(
            f"'{path}' is not a LoRA/LyCORIS file but a full checkpoint (keys such as "
            f"'{checkpoint[0]}'); give it with --model, and the LoRA with --lora."
        )
    if not modules and not unet and unknown:
        raise UnsupportedModelError(
            f"'{path}' is not a LoRA/LyCORIS file: none of its {len(unknown)} tensors (e.g. "
            f"'{unknown[0]}') is a lora_te_/lora_unet_/text_encoder. adapter key."
        )
    modules.sort(key=lambda m: (m.encoder, m.layer if m.layer is not None else -1, m.target))
    widths = set()
    for m in modules:
        for role in ("down", "hada_w1_b", "diff", "weight"):
            if role in m.tensors and len(m.tensors[role].shape) >= 2:
                widths.add(m.tensors[role].shape[1])
    family, why = _family(header.metadata, {m.encoder for m in modules}, unet, widths)
    meta = {str(k): str(v) for k, v in header.metadata.items()}
    return LoraFile(path, meta, tuple(modules), tuple(sorted(unknown)), len(unet), family, why,
                    len(header.tensors))


@dataclass(frozen=True)
class LoraSpec:
    """``--lora FILE[:WEIGHT]``: a file and its text-encoder multiplier (A1111's te weight)."""

    path: Path
    weight: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.weight:g}"


def parse_lora_spec(text: str) -> LoraSpec:
    """'style.safetensors:0.8' -> LoraSpec; a path that exists as written wins over a weight."""
    raw = text.strip()
    if not raw:
        raise UsageError("--lora needs a file, as FILE or FILE:WEIGHT.")
    head, sep, tail = raw.rpartition(":")
    if sep and head and len(head) > 1 and not Path(raw).expanduser().exists():
        try:
            weight = float(tail)
        except ValueError:
            raise UsageError(
                f"The LoRA weight in '{raw}' is not a number; write FILE:WEIGHT, e.g. "
                "style.safetensors:0.8."
            ) from None
        if not np.isfinite(weight):
            raise UsageError(f"The LoRA weight in '{raw}' must be a finite number.")
        return LoraSpec(Path(head).expanduser(), weight)
    return LoraSpec(Path(raw).expanduser(), 1.0)


def without_loras(settings: Any) -> Any:
    """The same EncoderSettings for the base model alone (its vectors share the base's cache)."""
    from dataclasses import replace

    return replace(settings, loras=())
