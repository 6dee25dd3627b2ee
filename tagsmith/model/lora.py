"""LoRA/LyCORIS files as text-encoder weight changes, read from the header and merged into weights.

``read_lora`` parses a ``.safetensors`` adapter's header (no tensor is read): which text-encoder
modules it changes, by canonical CLIPTextModel name (``encoder.layers.3.self_attn.q_proj``) and
encoder (``l``: SD1.5's only encoder and SDXL's CLIP-L, from ``lora_te_``/``lora_te1_``/
``text_encoder.``; ``g``: SDXL's CLIP-G, from ``lora_te2_``/``text_encoder_2.``, whose q/k/v
names match the canonical split layout), with which algorithm, and which model family it was
trained for. ``LoraPatch`` holds the LoRAs chosen with ``--lora FILE[:WEIGHT]`` and changes the
weight arrays of one encoder; both forward passes (torch and numpy) call it on the weights they
load, so vectors equal those of the merged model A1111/Forge/ComfyUI run. The maths per
algorithm is in ``tagsmith.model.lora_math``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.errors import InputError, UnsupportedModelError, UsageError
from tagsmith.model.lora_math import module_weights
from tagsmith.model.safetensors_file import (
    TensorRef,
    read_safetensors_header,
    read_tensor_array,
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
    return "sd1", "nothing in it names another family"


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


@dataclass
class LoraPatch:
    """The LoRAs applied to one model: checked against it, merged into its weight arrays."""

    loras: list[tuple[LoraFile, float]]
    model_name: str
    encoder: str = "l"
    layers_used: int | None = None  # layers the clip skip runs; deltas above it change nothing
    notes: list[str] = field(default_factory=list)

    def active_modules(self, lora: LoraFile) -> list[LoraModule]:
        return [
            m for m in lora.modules
            if m.encoder == self.encoder
            and (self.layers_used is None or m.layer is None or m.layer < self.layers_used)
        ]

    @property
    def changes_weights(self) -> bool:
        return any(w != 0 and self.active_modules(f) for f, w in self.loras)

    def names(self) -> set[str]:
        """Canonical tensor names the patch changes (weights and, for full diffs, biases)."""
        out: set[str] = set()
        for f, w in self.loras:
            if w == 0:
                continue
            for m in self.active_modules(f):
                out.add(f"{m.target}.weight")
                if m.algo == "full" and "diff_b" in m.tensors:
                    out.add(f"{m.target}.bias")
        return out

    def fingerprint(self, base: str) -> str:
        """The cache key of base + these LoRAs; the base's own key when nothing changes."""
        if not self.changes_weights:
            return base
        h = hashlib.sha256(base.encode())
        for f, w in self.loras:
            if w != 0 and self.active_modules(f):
                h.update(f"|{f.fingerprint()}:{w!r}".encode())
        if self.layers_used is not None:
            h.update(f"|layers<{self.layers_used}".encode())
        return h.hexdigest()[:16]

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """One sentence naming both sides when a delta's layer is missing from the model."""
        for f, _w in self.loras:
            for m in (m for m in f.modules if m.encoder == self.encoder):
                have = shapes.get(f"{m.target}.weight")
                if have is None:
                    raise UnsupportedModelError(
                        f"The LoRA '{f.name}' changes {m.target}, which the model "
                        f"'{self.model_name}' does not have (it has "
                        f"{_layer_count(shapes)} layers); it was trained for another model."
                    )
                want = _delta_shape(m)
                if want is not None and tuple(want) != tuple(have[:2]):
                    raise UnsupportedModelError(
                        f"The LoRA '{f.name}' has a {want[0]}x{want[1]} delta for {m.target}, "
                        f"but that weight is {have[0]}x{have[1]} in the model "
                        f"'{self.model_name}'; it was trained for another model."
                    )

    def apply(self, weights: dict[str, np.ndarray]) -> None:
        """Replace the changed entries of ``weights`` (arrays by canonical name) with merged
        float32 copies; the arrays passed in are never written to (they may be a mapped file)."""
        for f, mult in self.loras:
            if mult == 0:
                continue
            for m in self.active_modules(f):
                wname, bname = f"{m.target}.weight", f"{m.target}.bias"
                tensors = {role: read_tensor_array(ref) for role, ref in m.tensors.items()}
                alpha, rs = f.peft_alpha(m)
                base = np.asarray(weights[wname], dtype=np.float32)
                bias = weights.get(bname)
                try:
                    new_w, new_b = module_weights(
                        m.algo, tensors, base, None if bias is None else
                        np.asarray(bias, dtype=np.float32), mult, rs_lora=rs,
                        alpha_override=alpha,
                    )
                except UnsupportedModelError as exc:
                    raise UnsupportedModelError(
                        f"The LoRA '{f.name}' does not fit the model '{self.model_name}' at "
                        f"{m.target}: {exc.message[0].lower()}{exc.message[1:]}"
                    ) from None
                except (KeyError, ValueError) as exc:
                    raise UnsupportedModelError(
                        f"The LoRA '{f.name}' has a {m.algo} module at {m.target} whose tensors "
                        f"do not fit the model '{self.model_name}' "
                        f"({exc.__class__.__name__}: {str(exc)[:80]})."
                    ) from None
                weights[wname] = new_w
                if new_b is not None:
                    weights[bname] = new_b


def _delta_shape(m: LoraModule) -> tuple[int, int] | None:
    """(out, in) of a module's delta from its header shapes alone, where that is simple."""
    t = m.tensors
    if m.algo == "LoRA":
        return t["up"].shape[0], int(np.prod(t["down"].shape[1:]))
    if m.algo == "LoHa" and "hada_t1" not in t:
        return t["hada_w1_a"].shape[0], int(np.prod(t["hada_w1_b"].shape[1:]))
    if m.algo == "full" and len(t["diff"].shape) == 2:
        return t["diff"].shape[0], t["diff"].shape[1]
    return None


def _layer_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    return len(layers)


def build_patch(
    specs: Sequence[LoraSpec],
    *,
    model_name: str,
    model_family: str = "sd1",
    encoders: Sequence[str] = ("l",),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    layers_used: int | None = None,
    encoder: str | None = None,
) -> LoraPatch | None:
    """Read and check the LoRAs for a model; None when none is given.

    The notes say what will be applied ("applied 72 text-encoder deltas (LoHa, rank 16); 0
    unknown keys"), or that a LoRA without text-encoder keys leaves every number as the base
    model's. A LoRA for another family, a corrupt file or a layer the model lacks raises one
    sentence naming both sides.
    """
    if not specs:
        return None
    loras: list[tuple[LoraFile, float]] = []
    notes: list[str] = []
    for spec in specs:
        f = read_lora(spec.path)
        if f.family != model_family:
            fam = FAMILY_NAMES.get(f.family, f.family)
            raise UnsupportedModelError(
                f"The LoRA '{f.name}' is for {fam} ({f.family_why}), but the model "
                f"'{model_name}' is {FAMILY_NAMES.get(model_family, model_family)}'s text encoder; "
                f"give the {fam} model it was trained for, or a LoRA for this model."
            )
        extra = [m for m in f.modules if m.encoder not in encoders]
        if extra:
            raise UnsupportedModelError(
                f"The LoRA '{f.name}' changes a text encoder ({extra[0].encoder}) that the model "
                f"'{model_name}' does not have."
            )
        loras.append((f, spec.weight))
        if not f.modules and f.unknown:
            notes.append(
                f"LoRA {f.name}: none of its {len(f.unknown)} non-UNet keys (e.g. "
                f"'{f.unknown[0]}') is a text-encoder delta tagsmith understands, so nothing was "
                "applied and its numbers equal the base model's."
            )
            continue
        if not f.modules:
            notes.append(
                f"LoRA {f.name} has no text-encoder keys ({f.unet_keys} UNet keys): its trigger "
                "acts only through the UNet, which tagsmith does not measure, so its numbers "
                "equal the base model's."
            )
            continue
        notes.append(
            f"LoRA {spec.label}: applied {f.summary()}; {len(f.unknown)} unknown key"
            f"{'s' if len(f.unknown) != 1 else ''}"
            + (f" (e.g. {f.unknown[0]})" if f.unknown else "") + "."
        )
    patch = LoraPatch(loras, model_name, encoder or encoders[0], layers_used, notes)
    if shapes is not None:
        patch.check_shapes(shapes)
    if layers_used is not None:
        for f, _ in loras:
            skipped = [m for m in f.modules if m.layer is not None and m.layer >= layers_used]
            if skipped and len(skipped) < len(f.modules):
                notes.append(
                    f"LoRA {f.name}: {len(skipped)} deltas sit in layers the clip skip does not "
                    "run, so they change nothing here."
                )
    return patch


_LORA_FAMILIES = {"SD1.5": "sd1", "SDXL": "sdxl"}


def patches_for_model(specs: Sequence[LoraSpec], source: Any, spec: str,
                      preloaded: dict | None, clip_skip: int) -> dict[str, LoraPatch]:
    """--lora read and checked against each text encoder of a resolved model source
    (``source.encoders()``: {"l": ...} for SD1.5, {"l", "g"} for SDXL): {part: LoraPatch}."""
    if not specs:
        return {}
    parts = source.encoders()
    patches: dict[str, LoraPatch] = {}
    for name, part in parts.items():
        held = (preloaded or {}).get(name) if source.parts is not None else preloaded
        shapes = (
            {k: t.shape for k, t in part.tensors.items()} if part.tensors is not None
            else {k: tuple(v.shape) for k, v in (held or {}).items()} or None
        )
        # SD1.5's clip skip runs fewer layers; SDXL's pooled vector reads every layer
        used = part.config.layers_for(clip_skip) if source.parts is None else None
        patch = build_patch(
            specs, model_name=spec, shapes=shapes, layers_used=used, encoder=name,
            model_family=_LORA_FAMILIES.get(source.family, source.family),
            encoders=tuple(parts),
        )
        if patch is not None:
            if patches:
                patch.notes = []  # said once, by the first part
            patches[name] = patch
    return patches


class LoraState:
    """The --lora patches of one embedder, by encoder part, and what they mean for it."""

    def __init__(self, patches: Mapping[str, LoraPatch]) -> None:
        self.first = next(iter(patches.values()), None)  # holds the notes and the files
        self.changing = {k: p for k, p in patches.items() if p.changes_weights}
        self.l = self.changing.get("l")

    @property
    def changes_table(self) -> bool:
        """Whether a LoRA changes the input token embeddings (only full diffs can)."""
        return self.l is not None and "embeddings.token_embedding.weight" in self.l.names()

    def fingerprint(self, base: str) -> str:
        for patch in self.changing.values():
            base = patch.fingerprint(base)
        return base

    def notes(self) -> list[str]:
        return list(self.first.notes) if self.first else []

    def describe(self) -> list[dict[str, Any]]:
        """Each LoRA as model_info reports it."""
        return [
            {"file": str(f.path), "weight": w, "family": f.family, "applied": len(f.modules),
             "algorithms": f.algos(), "ranks": f.ranks(), "unknown_keys": len(f.unknown)}
            for f, w in (self.first.loras if self.first else [])
        ]


def without_loras(settings: Any) -> Any:
    """The same EncoderSettings for the base model alone (its vectors share the base's cache)."""
    from dataclasses import replace

    return replace(settings, loras=())


def merged_torch_tensors(patch: LoraPatch | None, source: Any, tensors: Any = None) -> Any:
    """The torch loader's tensors (canonical names) with ``patch`` merged, or ``tensors`` as
    given when there is no patch; merged in float32 by the numpy maths every backend shares."""
    if patch is None:
        return tensors
    import numpy as np
    import torch  # noqa: TID253 - only when a LoRA is merged on the torch path

    from tagsmith.model.encoder import inspect_pickle, read_safetensors_tensors

    if tensors is None:
        is_pickle = source.format == "pickle"
        tensors = inspect_pickle(source).tensors if is_pickle else read_safetensors_tensors(source)
    tensors = dict(tensors)
    names = patch.names()
    arrays = {n: tensors[n].detach().float().cpu().numpy() for n in names}
    patch.apply(arrays)
    for n in names:
        tensors[n] = torch.from_numpy(np.ascontiguousarray(arrays[n])).to(tensors[n].dtype)
    return tensors
