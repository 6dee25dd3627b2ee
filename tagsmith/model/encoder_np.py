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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tagsmith.model.config import (
    POSITION_EMBEDDING,
    POSITION_IDS,
    SD15_RULE,
    TEXT_PROJECTION,
    TOKEN_EMBEDDING,
    ConditioningRule,
    EncoderConfig,
)
from tagsmith.model.prefix_tree import encode_trees
from tagsmith.model.safetensors_file import read_tensor_array
from tagsmith.model.sources import TextEncoderSource

# Jobs up to this many positions run here when torch is not loaded yet (one suggest: ~300).
SMALL_JOB_POSITIONS = 4096


@dataclass
class _Layer:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    qkv_wt: np.ndarray  # (H, 3H) view: q, k, v fused, transposed for x @ W
    qkv_b: np.ndarray
    out_wt: np.ndarray
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    fc1_wt: np.ndarray
    fc1_b: np.ndarray
    fc2_wt: np.ndarray
    fc2_b: np.ndarray


@dataclass
class _Prefix:
    ids: tuple[int, ...]
    n_layers: int
    kv: list[tuple[np.ndarray, np.ndarray]]  # per layer, keys and values (P, heads, head_dim)


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
    ) -> None:
        if not supports(config):
            raise ValueError(f"the numpy encoder does not cover hidden_act {config.hidden_act!r}")
        self.config = config
        self.rule = rule

        def take(name: str) -> np.ndarray:
            return np.ascontiguousarray(tensors[name], dtype=np.float32)

        def t(name: str) -> np.ndarray:
            # a transposed view: BLAS reads it as is (no copy of the weights)
            return take(name).T

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
            self.layers.append(
                _Layer(
                    take(f"{p}layer_norm1.weight"), take(f"{p}layer_norm1.bias"),
                    np.concatenate([take(f"{a}{n}_proj.weight") for n in "qkv"]).T,
                    np.concatenate([take(f"{a}{n}_proj.bias") for n in "qkv"]),
                    t(f"{a}out_proj.weight"), take(f"{a}out_proj.bias"),
                    take(f"{p}layer_norm2.weight"), take(f"{p}layer_norm2.bias"),
                    t(f"{p}mlp.fc1.weight"), take(f"{p}mlp.fc1.bias"),
                    t(f"{p}mlp.fc2.weight"), take(f"{p}mlp.fc2.bias"),
                )
            )
        self.final_ln_w = take("final_layer_norm.weight")
        self.final_ln_b = take("final_layer_norm.bias")
        self.text_projection = take(TEXT_PROJECTION) if config.projection_dim else None
        self._prefixes: dict[tuple[tuple[int, ...], int], _Prefix] = {}
        self.positions_run = 0

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

    def _run(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        groups: list[tuple[int, int, np.ndarray]],
        prefix: _Prefix | None,
        n_layers: int,
        collect_kv: list | None = None,
        final_norm: bool = True,
    ) -> np.ndarray:
        """Final-normed states of nodes ordered by depth; ``groups`` gives, per depth, the
        node range and its (rows, context) indices into [prefix keys; node keys]."""
        c = self.config
        width, heads = c.hidden_size, c.num_heads
        head_dim = width // heads
        scale = np.float32(head_dim**-0.5)
        n = len(tokens)
        p = len(prefix.ids) if prefix is not None else 0
        x = self.token_embedding[tokens].astype(np.float32) + self.position_embedding[positions]
        a = np.empty((n, heads, head_dim), dtype=np.float32)
        for i in range(n_layers):
            lw = self.layers[i]
            qkv = self._layer_norm(x, lw.ln1_w, lw.ln1_b) @ lw.qkv_wt
            qkv += lw.qkv_b
            qkv = qkv.reshape(n, 3, heads, head_dim)
            q = qkv[:, 0]
            if prefix is not None and p:
                pk, pv = prefix.kv[i]
                keys = np.concatenate([pk, qkv[:, 1]])
                values = np.concatenate([pv, qkv[:, 2]])
            else:
                keys, values = qkv[:, 1], qkv[:, 2]
            if collect_kv is not None:
                collect_kv.append((np.array(keys), np.array(values)))
            for start, stop, ctx in groups:
                kk = keys[ctx]  # (rows, context, heads, head_dim)
                scores = np.einsum("rhd,rchd->rhc", q[start:stop] * scale, kk)
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                a[start:stop] = np.einsum("rhc,rchd->rhd", scores, values[ctx])
            x += a.reshape(n, width) @ lw.out_wt
            x += lw.out_b
            h = self._layer_norm(x, lw.ln2_w, lw.ln2_b) @ lw.fc1_wt
            h += lw.fc1_b
            if c.hidden_act == "gelu":
                gelu(h)
            else:  # quick_gelu: h * sigmoid(1.702 h)
                h /= 1.0 + np.exp(np.float32(-1.702) * h)
            x += h @ lw.fc2_wt
            x += lw.fc2_b
        self.positions_run += n
        return self._layer_norm(x, self.final_ln_w, self.final_ln_b) if final_norm else x

    def prefix_state(
        self, prefix_ids: Sequence[int], clip_skip: int, *, n_layers: int | None = None
    ) -> _Prefix:
        if n_layers is None:
            n_layers = self.layers_for(clip_skip)
        key = (tuple(prefix_ids), n_layers)
        state = self._prefixes.get(key)
        if state is None:
            ids = np.asarray(list(prefix_ids), dtype=np.int64)
            # the prefix is one causal sequence: node i sees nodes 0..i
            groups = [(i, i + 1, np.arange(i + 1)[None, :]) for i in range(len(ids))]
            kv: list = []
            self._run(ids, np.arange(len(ids)), groups, None, n_layers, collect_kv=kv)
            state = _Prefix(tuple(prefix_ids), n_layers, kv)
            self._prefixes[key] = state
        return state

    def tree_states(self, tree, prefix: _Prefix, *, final_norm: bool | None = None) -> np.ndarray:  # noqa: ANN001
        """Same contract as ``ClipTextEncoder.tree_states``."""
        p = len(prefix.ids)
        normed = self.rule.final_norm if final_norm is None else final_norm
        return self._run(tree.tokens, tree.depths + (p - 1), tree.contexts(p), prefix,
                         prefix.n_layers, final_norm=normed)

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
    tensors: Mapping[str, np.ndarray] | None = None,
) -> NumpyTextEncoder:
    """Read a safetensors source's encoder weights without torch (fp16/bf16 widened);
    ``tensors`` (canonical name -> array) replaces them, e.g. after merging a LoRA."""
    assert source.config is not None
    if tensors is None:
        tensors = _TensorsOnDisk(source)
    return NumpyTextEncoder(source.config, tensors, rule=rule)


class _TensorsOnDisk(Mapping):
    """Each tensor read when asked for and then dropped by the encoder's widening copy, so
    loading peaks at the fp32 weights plus one tensor, not plus the whole stored copy."""

    def __init__(self, source: TextEncoderSource) -> None:
        assert source.tensors is not None
        self._refs = {k: r for k, r in source.tensors.items() if k != POSITION_IDS}

    def __getitem__(self, name: str) -> np.ndarray:
        return read_tensor_array(self._refs[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)
