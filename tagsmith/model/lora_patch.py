"""The LoRAs chosen with ``--lora FILE[:WEIGHT]`` applied to one model: ``LoraPatch`` checks
each file against the model (family, layers, shapes; one sentence naming both sides when they
do not fit) and changes the weight arrays of one encoder. Both forward passes call it on the
weights they load (the torch one merges every module; the numpy one keeps plain LoRA modules
as their two thin factors), so vectors equal those of the merged model A1111/Forge/ComfyUI
run. ``LoraState`` is one embedder's patches by encoder part and their cache fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagsmith.errors import UnsupportedModelError
from tagsmith.model.config import LINEAR_WEIGHT
from tagsmith.model.lora import (
    FAMILY_NAMES,
    NO_FAMILY_EVIDENCE,
    LoraFile,
    LoraModule,
    LoraSpec,
    read_lora,
)
from tagsmith.model.lora_math import lora_factors, module_weights
from tagsmith.model.safetensors_file import read_tensor_array


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

    def apply(self, weights: dict[str, np.ndarray],
              factored: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None) -> None:
        """Replace the changed entries of ``weights`` (arrays by canonical name) with merged
        float32 copies; the arrays passed in are never written to (they may be a mapped file).

        With ``factored`` (a dict), plain LoRA modules whose weight no other kind of module
        changes are not merged: their scaled ``(up, down)`` factors are appended to
        ``factored[weight name]``, for a forward pass that adds ``x @ down.T @ up.T``. That
        is the same sum (merging is linear), without writing a full-size copy of each weight."""
        keep = self._factorable() if factored is not None else set()
        for f, mult in self.loras:
            if mult == 0:
                continue
            for m in self.active_modules(f):
                wname, bname = f"{m.target}.weight", f"{m.target}.bias"
                tensors = {role: read_tensor_array(ref) for role, ref in m.tensors.items()}
                alpha, rs = f.peft_alpha(m)
                with self._fitting(f, m):
                    if wname in keep and factored is not None:
                        up, down = lora_factors(tensors, rs_lora=rs, alpha_override=alpha,
                                                factor=mult)
                        have = tuple(weights[wname].shape[:2])
                        if (up.shape[0], down.shape[1]) != have:
                            raise ValueError(f"delta {(up.shape[0], down.shape[1])} vs {have}")
                        factored.setdefault(wname, []).append((up, down))
                        continue
                    base = np.asarray(weights[wname], dtype=np.float32)
                    bias = weights.get(bname)
                    new_w, new_b = module_weights(
                        m.algo, tensors, base, None if bias is None else
                        np.asarray(bias, dtype=np.float32), mult, rs_lora=rs,
                        alpha_override=alpha,
                    )
                weights[wname] = new_w
                if new_b is not None:
                    weights[bname] = new_b

    def _factorable(self) -> set[str]:
        """Weight names that only plain LoRA modules change (no DoRA, no other algorithm)."""
        plain: dict[str, bool] = {}
        for f, mult in self.loras:
            if mult == 0:
                continue
            for m in self.active_modules(f):
                ok = (m.algo == "LoRA" and not m.dora and "mid" not in m.tensors
                      and LINEAR_WEIGHT.match(f"{m.target}.weight") is not None)
                name = f"{m.target}.weight"
                plain[name] = plain.get(name, True) and ok
        return {n for n, ok in plain.items() if ok}

    @contextlib.contextmanager
    def _fitting(self, f: LoraFile, m: LoraModule) -> Iterator[None]:
        """A module's maths that does not fit the model becomes one sentence naming both."""
        try:
            yield
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
        # SD1.5 is only the guess for a file that names no family; a UNet-only one of those
        # (diffusers' SDXL LoRAs often are) cannot change this encoder, so it is not refused.
        guessed = f.family_why == NO_FAMILY_EVIDENCE and not f.modules
        if f.family != model_family and not guessed:
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
