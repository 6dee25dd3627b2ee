"""CLIP text encoders (SD1.5's, SDXL's L and G) in numpy, for small CPU jobs: no torch import.

Importing torch costs ~1.5 s on a 2-core machine, more than encoding the ~60 forms and
neighbours of one ``tagsmith suggest`` takes. For such jobs (a few thousand positions, fp32 on
the CPU, weights in safetensors) ``TagEmbedder`` runs this forward pass instead: the same
arithmetic as ``encoder.ClipTextEncoder`` (prefix trees, shared prefix keys/values, the tag's
own positions only) with numpy's BLAS for the matrix products. It matches transformers'
``CLIPTextModel`` to 1e-5 in tests. Large jobs (``tagsmith score``) and GPUs use the torch
encoder, whose fused element-wise kernels use every core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagsmith.model.config import (
    LINEAR_WEIGHT,
    POSITION_EMBEDDING,
    POSITION_IDS,
    SD15_RULE,
    TEXT_PROJECTION,
    TOKEN_EMBEDDING,
    ConditioningRule,
    EncoderConfig,
)
from tagsmith.model.prefix_tree import encode_trees
from tagsmith.model.safetensors_file import mapped_tensor_array, read_tensor_array
from tagsmith.model.sources import TextEncoderSource

# Jobs up to this many positions run here when torch is not loaded yet (one suggest: ~300).
SMALL_JOB_POSITIONS = 4096

# Below this many rows a GEMM runs on one BLAS thread. Two threads halve an ~80-row product on
# an idle machine (2.5 vs 5.0 ms) but, when the other core is busy, wait for it (4.7 ms on one
# thread, 46.5 ms on two at load 9, 2-core EPYC; the issue measured 4.5 vs 30 ms at load 2-3),
# and a user's machine is never idle.
ONE_THREAD_ROWS = 512

_BLAS: list = []  # a threadpoolctl controller, made once (its library scan costs ~1 ms)


def blas_threads(rows: int) -> contextlib.AbstractContextManager:
    """BLAS threads for GEMMs of ``rows`` rows: one below ``ONE_THREAD_ROWS``, else all."""
    if rows >= ONE_THREAD_ROWS:
        return contextlib.nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


@dataclass
class _Layer:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    qkv_w: tuple[np.ndarray, ...]  # q, k, v weights (out, in) as stored (fp32 or fp16)
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    fc1_w: np.ndarray
    fc1_b: np.ndarray
    fc2_w: np.ndarray
    fc2_b: np.ndarray
    wide: tuple[np.ndarray, ...] | None = None  # fp32 (in, out) views, when stored in fp32
    # LoRA deltas kept as factors, by product ("qkv", "out", "fc1", "fc2"): (down.T, up.T,
    # output columns), added as (x @ down.T) @ up.T beside the product with the weight
    low: dict[str, list[tuple[np.ndarray, np.ndarray, slice]]] = field(default_factory=dict)


@dataclass
class _Prefix:
    ids: tuple[int, ...]
    n_layers: int
    # per layer, keys and values (P, heads, head_dim); None until the first batch computes them
    kv: list[tuple[np.ndarray, np.ndarray]] | None


def supports(config: EncoderConfig) -> bool:
    """Whether this forward pass covers the architecture (quick_gelu CLIP-L, gelu CLIP-G)."""
    act_ok = config.hidden_act in ("quick_gelu", "gelu")
    return act_ok and config.hidden_size % config.num_heads == 0


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, below float32's own rounding at these sizes.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (
    1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592,
))


def gelu(h: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU in place, as torch's ``F.gelu`` and OpenCLIP-G's ``nn.GELU``."""
    z = np.abs(h) * np.float32(0.5**0.5)
    t = 1.0 / (1.0 + _ERF_P * z)
    poly = _ERF_A[0] * t
    for a in _ERF_A[1:]:
        poly += a
        poly *= t
    erf = 1.0 - poly * np.exp(-z * z)
    np.copysign(erf, h, out=erf)
    erf += 1.0
    erf *= np.float32(0.5)
    h *= erf
    return h


class NumpyTextEncoder:
    """A CLIP text transformer as numpy float32 arrays, inference only, on the CPU."""

    device = "cpu"
    dtype_label = "fp32"

    def __init__(
        self,
        config: EncoderConfig,
        tensors: Mapping[str, np.ndarray],
        *,
        rule: ConditioningRule = SD15_RULE,
        factored: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> None:
        """``factored``: LoRA deltas by weight name as scaled ``(up, down)`` pairs
        (``LoraPatch.apply``), applied in the forward pass instead of merged."""
        if not supports(config):
            raise ValueError(f"the numpy encoder does not cover hidden_act {config.hidden_act!r}")
        self.config = config
        self.rule = rule

        def take(name: str) -> np.ndarray:
            return np.ascontiguousarray(tensors[name], dtype=np.float32)

        def w(name: str) -> np.ndarray:
            # matrices stay as stored when fp16 (widened a layer at a time while running:
            # SDXL's encoders are 3.3 GB in fp32, 1.6 GB as stored); otherwise fp32
            arr = np.asarray(tensors[name])
            return arr if arr.dtype == np.float16 else np.ascontiguousarray(arr, np.float32)

        # kept as stored when that is fp16 (only the rows of a job's tokens are widened, exactly):
        # SDXL's two tables are 400 MB in fp32, a tenth of the peak memory
        table = np.asarray(tensors[TOKEN_EMBEDDING])
        self.token_embedding = (
            table if table.dtype == np.float16 else np.ascontiguousarray(table, dtype=np.float32)
        )
        self.position_embedding = take(POSITION_EMBEDDING)
        self.layers: list[_Layer] = []
        for i in range(config.num_layers):
            p = f"encoder.layers.{i}."
            a = f"{p}self_attn."
            layer = _Layer(
                take(f"{p}layer_norm1.weight"), take(f"{p}layer_norm1.bias"),
                tuple(w(f"{a}{n}_proj.weight") for n in "qkv"),
                np.concatenate([take(f"{a}{n}_proj.bias") for n in "qkv"]),
                w(f"{a}out_proj.weight"), take(f"{a}out_proj.bias"),
                take(f"{p}layer_norm2.weight"), take(f"{p}layer_norm2.bias"),
                w(f"{p}mlp.fc1.weight"), take(f"{p}mlp.fc1.bias"),
                w(f"{p}mlp.fc2.weight"), take(f"{p}mlp.fc2.bias"),
            )
            mats = (*layer.qkv_w, layer.out_w, layer.fc1_w, layer.fc2_w)
            if all(m.dtype == np.float32 for m in mats):
                # transposed views: BLAS reads them as they are (no copy of the weights)
                layer.wide = (np.concatenate(layer.qkv_w).T, layer.out_w.T, layer.fc1_w.T,
                              layer.fc2_w.T)
                layer.qkv_w = ()
            self.layers.append(layer)
        for name, pairs in (factored or {}).items():
            self._add_factors(name, pairs)
        self.final_ln_w = take("final_layer_norm.weight")
        self.final_ln_b = take("final_layer_norm.bias")
        self.text_projection = take(TEXT_PROJECTION) if config.projection_dim else None
        self._prefixes: dict[tuple[tuple[int, ...], int], _Prefix] = {}
        self._buffers: tuple[np.ndarray, ...] | None = None
        self.positions_run = 0

    def _add_factors(self, name: str, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        m = LINEAR_WEIGHT.match(name)
        if m is None or int(m.group(1)) >= len(self.layers):
            raise ValueError(f"no linear layer {name} to add a LoRA's factors to")
        h = self.config.hidden_size
        which = m.group(2)
        slot, cols = {"self_attn.q_proj": ("qkv", slice(0, h)),
                      "self_attn.k_proj": ("qkv", slice(h, 2 * h)),
                      "self_attn.v_proj": ("qkv", slice(2 * h, 3 * h)),
                      "self_attn.out_proj": ("out", slice(None)),
                      "mlp.fc1": ("fc1", slice(None)), "mlp.fc2": ("fc2", slice(None))}[which]
        # several LoRAs on one weight: their factors side by side, one pair of products
        down_t = np.ascontiguousarray(np.concatenate([d for _, d in pairs]).T, np.float32)
        up_t = np.ascontiguousarray(np.concatenate([u for u, _ in pairs], axis=1).T, np.float32)
        self.layers[int(m.group(1))].low.setdefault(slot, []).append((down_t, up_t, cols))

    def _wide(self, lw: _Layer) -> tuple[np.ndarray, ...]:
        """The layer's (qkv, out, fc1, fc2) weights as fp32 (in, out) views, widened from
        fp16 into buffers every layer shares (exact: fp16 values are fp32 values)."""
        if lw.wide is not None:
            return lw.wide
        if self._buffers is None:
            h, i = self.config.hidden_size, self.config.intermediate_size
            self._buffers = tuple(np.empty(s, np.float32) for s in ((3 * h, h), (h, h), (i, h),
                                                                      (h, i)))
        qkv, out, fc1, fc2 = self._buffers
        h = self.config.hidden_size
        for j, m in enumerate(lw.qkv_w):
            np.copyto(qkv[j * h:(j + 1) * h], m)
        np.copyto(out, lw.out_w)
        np.copyto(fc1, lw.fc1_w)
        np.copyto(fc2, lw.fc2_w)
        return qkv.T, out.T, fc1.T, fc2.T

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def layers_for(self, clip_skip: int) -> int:
        return self.rule.layers(self.config, clip_skip)

    def projection_t(self) -> np.ndarray:
        assert self.text_projection is not None
        return self.text_projection.T

    def default_token_budget(self) -> int:
        return SMALL_JOB_POSITIONS

    # -- forward ----------------------------------------------------------------------------
    def _layer_norm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        xc = x - mu
        var = np.mean(xc * xc, axis=-1, keepdims=True)
        xc *= 1.0 / np.sqrt(var + np.float32(self.config.layer_norm_eps))
        xc *= w
        xc += b
        return xc

    def _layer(
        self,
        x: np.ndarray,
        lw: _Layer,
        wide: tuple[np.ndarray, ...],
        groups: list[tuple[int, int, np.ndarray]],
        prefix_kv: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer over ``x`` in place; returns its keys and values (prefix first)."""
        c = self.config
        n, width = x.shape
        heads = c.num_heads
        head_dim = width // heads
        scale = np.float32(head_dim**-0.5)
        qkv_wt, out_wt, fc1_wt, fc2_wt = wide
        low = lw.low
        ln = self._layer_norm(x, lw.ln1_w, lw.ln1_b)
        qkv = ln @ qkv_wt
        for down_t, up_t, cols in low.get("qkv", ()):
            qkv[:, cols] += (ln @ down_t) @ up_t
        qkv += lw.qkv_b
        qkv = qkv.reshape(n, 3, heads, head_dim)
        q = qkv[:, 0]
        if prefix_kv is not None and len(prefix_kv[0]):
            keys = np.concatenate([prefix_kv[0], qkv[:, 1]])
            values = np.concatenate([prefix_kv[1], qkv[:, 2]])
        else:
            keys, values = qkv[:, 1], qkv[:, 2]
        a = np.empty((n, heads, head_dim), dtype=np.float32)
        for start, stop, ctx in groups:
            kk = keys[ctx]  # (rows, context, heads, head_dim)
            scores = np.einsum("rhd,rchd->rhc", q[start:stop] * scale, kk)
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            a[start:stop] = np.einsum("rhc,rchd->rhd", scores, values[ctx])
        a2 = a.reshape(n, width)
        x += a2 @ out_wt
        for down_t, up_t, _ in low.get("out", ()):
            x += (a2 @ down_t) @ up_t
        x += lw.out_b
        ln = self._layer_norm(x, lw.ln2_w, lw.ln2_b)
        h = ln @ fc1_wt
        for down_t, up_t, _ in low.get("fc1", ()):
            h += (ln @ down_t) @ up_t
        h += lw.fc1_b
        if c.hidden_act == "gelu":
            gelu(h)
        else:  # quick_gelu: h * sigmoid(1.702 h)
            h /= 1.0 + np.exp(np.float32(-1.702) * h)
        x += h @ fc2_wt
        for down_t, up_t, _ in low.get("fc2", ()):
            x += (h @ down_t) @ up_t
        x += lw.fc2_b
        return keys, values

    def _run(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        groups: list[tuple[int, int, np.ndarray]],
        prefix: _Prefix,
        final_norm: bool = True,
    ) -> np.ndarray:
        """States of nodes ordered by depth after ``prefix``; ``groups`` gives, per depth, the
        node range and its (rows, context) indices into [prefix keys; node keys].

        A prefix not computed yet runs in the same pass, layer by layer, before the nodes: each
        layer's weights are widened from fp16 once per pass, so one pass is cheaper than two.
        Small passes run on one BLAS thread (``blas_threads``).
        """
        with blas_threads(len(tokens)):
            return self._run_layers(tokens, positions, groups, prefix, final_norm)

    def _run_layers(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        groups: list[tuple[int, int, np.ndarray]],
        prefix: _Prefix,
        final_norm: bool,
    ) -> np.ndarray:
        x = self.token_embedding[tokens].astype(np.float32) + self.position_embedding[positions]
        fresh = prefix.kv is None
        if fresh:
            p = len(prefix.ids)
            xp = (self.token_embedding[list(prefix.ids)].astype(np.float32)
                  + self.position_embedding[:p])
            # the prefix is one causal sequence: position i sees positions 0..i
            chain = [(i, i + 1, np.arange(i + 1)[None, :]) for i in range(p)]
            kv: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(prefix.n_layers):
            lw = self.layers[i]
            wide = self._wide(lw)
            if fresh:
                k, v = self._layer(xp, lw, wide, chain, None)
                kv.append((np.array(k), np.array(v)))
            self._layer(x, lw, wide, groups, kv[i] if fresh else prefix.kv[i])  # type: ignore[index]
        if fresh:
            prefix.kv = kv
            self.positions_run += len(prefix.ids)
        self.positions_run += len(tokens)
        return self._layer_norm(x, self.final_ln_w, self.final_ln_b) if final_norm else x

    def prefix_state(
        self, prefix_ids: Sequence[int], clip_skip: int, *, n_layers: int | None = None
    ) -> _Prefix:
        """The shared prefix's keys/values; computed with the first batch that needs them."""
        if n_layers is None:
            n_layers = self.layers_for(clip_skip)
        key = (tuple(prefix_ids), n_layers)
        state = self._prefixes.get(key)
        if state is None:
            state = _Prefix(tuple(prefix_ids), n_layers, None)
            self._prefixes[key] = state
        return state

    def tree_states(self, tree, prefix: _Prefix, *, final_norm: bool | None = None) -> np.ndarray:  # noqa: ANN001
        """Same contract as ``ClipTextEncoder.tree_states``."""
        p = len(prefix.ids)
        normed = self.rule.final_norm if final_norm is None else final_norm
        return self._run(tree.tokens, tree.depths + (p - 1), tree.contexts(p), prefix,
                         final_norm=normed)

    def encode(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        prefix: Sequence[int],
        clip_skip: int = 1,
        pool: str = "mean",
        token_budget: int | None = None,
    ) -> Iterator[tuple[list[int], np.ndarray | list[np.ndarray]]]:
        """Same contract as ``ClipTextEncoder.encode``."""
        state = self.prefix_state(prefix, clip_skip)
        p = len(state.ids)
        yield from encode_trees(
            sequences, lambda tree: self.tree_states(tree, state),
            budget=token_budget or SMALL_JOB_POSITIONS, pool=pool, prefix_length=p,
            max_positions=self.config.max_positions,
        )


def read_numpy_tensors(source: TextEncoderSource) -> dict[str, np.ndarray]:
    """A safetensors source's encoder weights by canonical name, without torch."""
    assert source.tensors is not None
    return {
        name: read_tensor_array(ref) for name, ref in source.tensors.items()
        if name != POSITION_IDS
    }


def load_numpy_encoder(
    source: TextEncoderSource, *, rule: ConditioningRule = SD15_RULE,
    tensors: Mapping[str, np.ndarray] | None = None, patch: Any = None,
) -> NumpyTextEncoder:
    """Read a safetensors source's encoder weights without torch (fp16/bf16 widened);
    ``tensors`` (canonical name -> array) replaces them; ``patch`` (a ``lora_patch.LoraPatch``)
    applies LoRA deltas: plain LoRA modules as thin factors beside each product (no copy of
    the weight), every other kind merged into float32 copies; the rest stay mapped."""
    assert source.config is not None
    if tensors is None:
        tensors = _TensorsOnDisk(source)
    factored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    if patch is not None:
        tensors = dict(tensors)
        patch.apply(tensors, factored)
    return NumpyTextEncoder(source.config, tensors, rule=rule, factored=factored)


class _TensorsOnDisk(Mapping):
    """Each tensor memory-mapped from the file when asked for: fp16 matrices are used where
    they lie (widened a layer at a time), the rest widened once."""

    def __init__(self, source: TextEncoderSource) -> None:
        assert source.tensors is not None
        self._refs = {k: r for k, r in source.tensors.items() if k != POSITION_IDS}

    def __getitem__(self, name: str) -> np.ndarray:
        return mapped_tensor_array(self._refs[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)
