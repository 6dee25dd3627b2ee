"""SDXL's two text encoders: where CLIP-L and OpenCLIP-G sit in each layout, and how the UNet's
2048-wide conditioning (and the pooled vector) is built from them. Pure: no torch.

What SDXL computes (Stability's ``sd_xl_base.yaml``, ComfyUI ``sdxl_clip.py``, Forge
``backend/diffusion_engine/sdxl.py``, kohya ``strategy_sdxl.py``, diffusers
``encode_prompt``):

- per token: concat(CLIP-L hidden_states[-2], CLIP-G hidden_states[-2]) = 768 + 1280 = 2048
  wide, without the final layer norm on either (``config.SDXL_RULE``); clip skip n >= 2 takes
  hidden_states[-n] of both (Forge's ``-max(clip_skip, 2)``), so 1 and 2 are the same;
- pooled (the UNet's extra ``y`` input): ``final_layer_norm(G's last layer)[first EOS] @ P``,
  with P OpenCLIP's ``text_projection`` (a Linear weight in diffusers is P transposed).

Every encoder is kept under canonical CLIPTextModel names (diffusers' ``text_encoder`` /
``text_encoder_2`` naming): OpenCLIP's fused ``attn.in_proj_weight`` is split into
``self_attn.{q,k,v}_proj`` and ``text_projection`` is stored transposed as
``text_projection.weight``. So per-encoder weights are a mapping canonical name -> array for
"l" and "g" before any forward pass, and a LoRA's ``lora_te1_``/``lora_te2_`` deltas apply to
them 1:1 (``encoder.layers.N.self_attn.q_proj.weight`` etc.).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from tagsmith.model.config import TEXT_PROJECTION
from tagsmith.model.prefix_tree import encode_trees
from tagsmith.model.safetensors_file import TensorRef

FAMILY = "SDXL"


L_PREFIX = "conditioner.embedders.0.transformer.text_model."


G_PREFIX = "conditioner.embedders.1.model."


PARTS = ("l", "g")


PART_LABELS = {"l": "CLIP-L", "g": "CLIP-G"}


# What each part is when a single file carries no config.json.
PART_ACTIVATIONS = {"l": "quick_gelu", "g": "gelu"}


SDXL_FINGERPRINT_VERSION = "tagsmith-sdxl-1"


def is_sdxl_single_file(keys: Sequence[str] | Mapping[str, Any]) -> bool:
    """A1111's test (``sd_models_config``): OpenCLIP-G's ln_final under embedder 1."""
    return (f"{G_PREFIX}ln_final.weight" in keys
            and f"{L_PREFIX}embeddings.token_embedding.weight" in keys)


# -- OpenCLIP layout -> canonical CLIPTextModel names ---------------------------------------

_OPENCLIP_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


_OPENCLIP_RENAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


Plan = dict[str, tuple[str, "tuple[int, int] | None", bool]]


def openclip_plan(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> Plan:
    """Canonical name -> (stored key, row range or None, transposed) for an OpenCLIP text tower
    under ``prefix`` (ComfyUI ``clip_text_transformers_convert`` does the same renames)."""
    plan: Plan = {}
    for key, shape in shapes.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest == "token_embedding.weight":
            plan["embeddings.token_embedding.weight"] = (key, None, False)
        elif rest == "positional_embedding":
            plan["embeddings.position_embedding.weight"] = (key, None, False)
        elif rest in ("ln_final.weight", "ln_final.bias"):
            plan["final_layer_norm." + rest.split(".")[-1]] = (key, None, False)
        elif rest == "text_projection":
            plan[TEXT_PROJECTION] = (key, None, True)  # used as x @ P; a Linear weight is P^T
        elif rest == TEXT_PROJECTION:
            plan[TEXT_PROJECTION] = (key, None, False)
        elif m := _OPENCLIP_LAYER.match(rest):
            n, inner = m.group(1), m.group(2)
            base = f"encoder.layers.{n}."
            if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
                # nn.MultiheadAttention stacks [q; k; v] along the rows
                kind = "weight" if inner.endswith("weight") else "bias"
                h = shape[0] // 3
                for j, proj in enumerate("qkv"):
                    plan[f"{base}self_attn.{proj}_proj.{kind}"] = (key, (j * h, (j + 1) * h), False)
                continue
            module, _, param = inner.rpartition(".")
            if module in _OPENCLIP_RENAMES:
                plan[f"{base}{_OPENCLIP_RENAMES[module]}.{param}"] = (key, None, False)
    return plan


def plan_shapes(plan: Plan, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, (key, rows, transposed) in plan.items():
        shape = tuple(shapes[key])
        if rows is not None:
            shape = (rows[1] - rows[0], *shape[1:])
        out[name] = tuple(reversed(shape)) if transposed else shape
    return out


def plan_refs(plan: Plan, refs: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    """The plan on a safetensors file: byte ranges only, nothing is read."""
    out = {}
    for name, (key, rows, transposed) in plan.items():
        ref = refs[key]
        if rows is not None:
            ref = ref.part(rows)
        out[name] = ref.transpose() if transposed else ref
    return out


def plan_tensors(plan: Plan, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The plan on tensors already in memory (torch or numpy): row slices and transposes."""
    out = {}
    for name, (key, rows, transposed) in plan.items():
        t = tensors[key]
        if rows is not None:
            t = t[rows[0]:rows[1]]
        out[name] = t.T if transposed else t
    return out


def hf_part(keys: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """Canonical name -> stored key for an encoder kept in CLIPTextModel layout under ``prefix``."""
    return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}


def sdxl_fingerprint(part_fingerprints: Mapping[str, str]) -> str:
    """One fingerprint covering both encoders, never equal to an SD1.5 one."""
    h = hashlib.sha256(SDXL_FINGERPRINT_VERSION.encode())
    for part in PARTS:
        h.update(f"|{part}:{part_fingerprints[part]}".encode())
    return h.hexdigest()[:16]


def selection_key(fingerprint: str, selected: Sequence[str], representation: str) -> str:
    """The cache key of one view of an SDXL model (a cache file holds one vector width)."""
    if tuple(selected) == PARTS and representation != "pooled":
        return fingerprint
    tag = "".join(selected) + ("-pooled" if representation == "pooled" else "")
    return hashlib.sha256(f"{fingerprint}|{tag}".encode()).hexdigest()[:16]


# -- the two encoders as one ------------------------------------------------------------------


class SdxlTextEncoder:
    """CLIP-L and CLIP-G (either backend) read as SDXL's UNet reads them.

    ``encode`` has the contract of ``ClipTextEncoder.encode``; its states are the selected
    parts' states side by side (L then G: 2048 wide for both). Both parts run on the same prefix
    trees, so the batching, the shared prefix and the pooling are done once.
    """

    def __init__(self, parts: Mapping[str, Any], selected: Sequence[str]) -> None:
        self.parts = dict(parts)
        self.selected = tuple(selected)
        first = self.parts[self.selected[0]]
        self.device = first.device
        self.config = first.config
        if hasattr(first, "dtype_label"):
            self.dtype_label = first.dtype_label
        else:
            self.dtype = first.dtype

    @property
    def dim(self) -> int:
        return sum(self.parts[s].dim for s in self.selected)

    @property
    def positions_run(self) -> int:
        return sum(p.positions_run for p in self.parts.values())

    @property
    def token_embedding(self) -> Any:
        return self.parts[self.selected[0]].token_embedding

    def widths(self) -> dict[str, int]:
        return {s: self.parts[s].dim for s in self.selected}

    def encode(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        prefix: Sequence[int],
        clip_skip: int = 1,
        pool: str = "mean",
        token_budget: int | None = None,
    ) -> Iterator[tuple[list[int], np.ndarray | list[np.ndarray]]]:
        if pool == "pooled":
            yield from self.pooled(sequences, prefix=prefix, token_budget=token_budget)
            return
        encoders = [self.parts[s] for s in self.selected]
        states = [e.prefix_state(prefix, clip_skip) for e in encoders]

        def run(tree: Any) -> np.ndarray:
            out = [e.tree_states(tree, st) for e, st in zip(encoders, states)]
            return out[0] if len(out) == 1 else np.concatenate(out, axis=1)

        yield from encode_trees(
            sequences, run, budget=token_budget or encoders[0].default_token_budget(),
            pool=pool, prefix_length=len(prefix), max_positions=self.config.max_positions,
        )

    def pooled(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        prefix: Sequence[int],
        token_budget: int | None = None,
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """The pooled vector of each sequence (which must end with its first EOS): G's last
        layer, final layer norm, at that EOS, times the projection. Clip skip never applies."""
        g = self.parts["g"]
        state = g.prefix_state(prefix, 1, n_layers=g.config.num_layers)
        proj = g.projection_t()  # (H, P): x @ W^T

        def run(tree: Any) -> np.ndarray:
            return g.tree_states(tree, state, final_norm=True)

        for idx, last in encode_trees(
            sequences, run, budget=token_budget or g.default_token_budget(), pool="last",
            prefix_length=len(prefix), max_positions=g.config.max_positions,
        ):
            yield idx, np.asarray(last, dtype=np.float32) @ proj


def similarity_parts(widths: Mapping[str, int]) -> dict[str, slice]:
    """Where each encoder's dimensions sit in a concatenated vector."""
    out, start = {}, 0
    for name, w in widths.items():
        out[name] = slice(start, start + w)
        start += w
    return out


def balance(vectors: np.ndarray, parts: Mapping[str, slice]) -> np.ndarray:
    """Each encoder's part scaled to unit length, over sqrt(parts): the cosine of two balanced
    vectors is then the mean of the per-encoder cosines (each encoder gets an equal say)."""
    out = np.array(vectors, dtype=np.float32, copy=True)
    k = np.float32(len(parts) ** -0.5)
    for sl in parts.values():
        block = out[:, sl]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block *= k / np.maximum(norms, np.float32(1e-12))
    return out


# -- sources -------------------------------------------------------------------------------


def _combined(spec: str, parts: dict[str, Any], description: str, files: tuple) -> Any:
    from dataclasses import replace

    first = parts["l"]
    notes = tuple(n for p in parts.values() for n in p.notes)
    return replace(
        first, spec=spec, files=files, description=description, config=None, tensors=None,
        notes=notes, family=FAMILY, parts=parts, folder_config=None,
        stored_dtype=parts["g"].stored_dtype,
    )


def _check_widths(parts: Mapping[str, Any], name: str) -> None:
    from tagsmith.errors import UnsupportedModelError

    if not parts["g"].config.projection_dim:
        raise UnsupportedModelError(
            f"'{name}' has no text_projection for CLIP-G, which SDXL's pooled vector needs; "
            "the file may be pruned or damaged."
        )


def single_file_source(
    spec: str, files: tuple, tensors: Mapping[str, TensorRef], name: str
) -> Any:
    """An A1111/Forge/ComfyUI SDXL checkpoint: CLIP-L in CLIPTextModel layout under
    ``conditioner.embedders.0.transformer.text_model.``, OpenCLIP-G under
    ``conditioner.embedders.1.model.`` (split and transposed here, by byte ranges)."""
    from tagsmith.model.sources import part_source

    shapes = {k: t.shape for k, t in tensors.items()}
    l_tensors = {c: tensors[k] for c, k in hf_part(tensors, L_PREFIX).items()}
    g_tensors = plan_refs(openclip_plan(shapes, G_PREFIX), tensors)
    parts = {
        "l": part_source(spec, files, l_tensors, None, name, L_PREFIX, family=FAMILY,
                         default_act=PART_ACTIVATIONS["l"]),
        "g": part_source(spec, files, g_tensors, None, name, G_PREFIX, family=FAMILY,
                         default_act=PART_ACTIVATIONS["g"]),
    }
    _check_widths(parts, name)
    desc = f"single-file SDXL checkpoint (A1111/ComfyUI layout, {parts['g'].stored_dtype})"
    return _combined(spec, parts, desc, files)


def folder_source(
    spec: str, te: Any, te2: Any, *, weights: tuple | None = None, kind: str = "diffusers"
) -> Any:
    """An SDXL diffusers pipeline: ``text_encoder/`` (CLIP-L) and ``text_encoder_2/``
    (CLIPTextModelWithProjection)."""
    from dataclasses import replace

    from tagsmith.model.sources import _source_from_folder

    w1, w2 = weights if weights is not None else (None, None)
    parts = {
        "l": _source_from_folder(spec, te, weights=w1, kind=kind, family=FAMILY),
        "g": _source_from_folder(spec, te2, weights=w2, kind=kind, family=FAMILY),
    }
    _check_widths(parts, str(te.parent))
    desc = f"SDXL text encoders, {parts['l'].description} + {parts['g'].description}"
    files = parts["l"].files + parts["g"].files
    return replace(_combined(spec, parts, desc, files), kind=kind)


def pickle_parts(source: Any, state: Mapping[str, Any], fingerprint_fn: Any) -> tuple:
    """An SDXL ``.ckpt`` opened with torch.load(weights_only=True): (source with parts,
    fingerprint, {"l": tensors, "g": tensors}) under canonical names."""
    from dataclasses import replace

    from tagsmith.model.config import POSITION_IDS, encoder_config_from_shapes

    name = str(source.files[0])
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    tensors = {
        "l": {c: state[k] for c, k in hf_part(state, L_PREFIX).items()},
        "g": plan_tensors(openclip_plan(shapes, G_PREFIX), state),
    }
    parts, prints = {}, {}
    for part, ts in tensors.items():
        ts.pop(POSITION_IDS, None)
        config = encoder_config_from_shapes(
            {k: tuple(v.shape) for k, v in ts.items()}, None, name, family=FAMILY,
            default_act=PART_ACTIVATIONS[part],
        )
        parts[part] = replace(source, config=config, family=FAMILY,
                              description=f"{PART_LABELS[part]} of {source.files[0].name}")
        prints[part] = fingerprint_fn(config, ts)
    _check_widths(parts, name)
    desc = "single-file SDXL checkpoint (pickle, loaded with weights_only=True)"
    return _combined(source.spec, parts, desc, source.files), sdxl_fingerprint(prints), tensors


def load_sdxl_encoder(
    source: Any,
    selected: Sequence[str],
    *,
    backend: str,
    device: str = "auto",
    dtype: str = "auto",
    tensors: Mapping[str, Mapping[str, Any]] | None = None,
    patches: Mapping[str, Any] | None = None,
) -> SdxlTextEncoder:
    """Both (or the selected) encoders with SDXL's conditioning rule, on one backend.

    ``tensors`` ({"l": {canonical name: tensor or array}, "g": ...}) replaces the weights read
    from ``source``: the hook where a LoRA's text-encoder deltas are merged before the forward
    pass (``encoder_np.read_numpy_tensors`` / ``encoder.read_safetensors_tensors`` give the
    originals, per part source in ``source.parts``). ``patches`` ({"l": LoraPatch, ...}) are
    the --lora deltas each part's loader merges."""
    from tagsmith.model.config import SDXL_RULE

    parts: dict[str, Any] = {}
    for name in selected:
        part = source.parts[name]
        given = dict(tensors[name]) if tensors is not None and name in tensors else None
        if backend == "numpy":
            from tagsmith.model.encoder_np import load_numpy_encoder

            parts[name] = load_numpy_encoder(part, rule=SDXL_RULE, tensors=given,
                                             patch=(patches or {}).get(name))
        else:
            from tagsmith.model.encoder import load_text_encoder
            from tagsmith.model.lora_patch import merged_torch_tensors

            given = merged_torch_tensors((patches or {}).get(name), part, given)
            parts[name] = load_text_encoder(part, device=device, dtype=dtype, tensors=given,
                                            rule=SDXL_RULE)
    return SdxlTextEncoder(parts, selected)
