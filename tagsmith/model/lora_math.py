"""The weight change each LoRA/LyCORIS algorithm makes to one linear layer, in numpy float32.

Every function gets the module's tensors by role (``down``, ``up``, ``hada_w1_a``, ...) and
returns ``(new_weight, new_bias_or_None)`` for a user multiplier ``mult``, merged as A1111,
Forge and ComfyUI merge them (``W + mult * scale * dW``):

- LoRA/LoCon (kohya) and diffusers/PEFT: ``dW = up @ down``; scale ``alpha / rank`` (rank =
  ``down.shape[0]``; alpha missing or 0 means alpha = rank), a ``scale`` tensor overrides, and
  PEFT's rsLoRA uses ``alpha / sqrt(rank)``.
- LoHa: ``dW = (w1a @ w1b) * (w2a @ w2b)``, scale ``alpha / w1b.shape[0]``; with Tucker cores
  each factor is ``einsum('ij,jr,ip->pr', t, w_b, w_a)``.
- LoKr: ``dW = kron(w1, w2)`` with each factor full or ``a @ b`` (``w2`` may be Tucker); scale
  ``alpha / rank`` where rank is ``w2_b.shape[0]`` (else ``w1_b.shape[0]``); both factors
  full, or alpha missing, means scale 1.
- GLoRA, LyCORIS's own maths: ``dW = (b1 @ b2 + W @ a1 @ a2) * alpha / r`` with ``r =
  a2.shape[0]`` (current layout: a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in)); files in
  LyCORIS's older layout (a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r)) use its older
  ``b2 @ b1 + W @ a2 @ a1``. (A1111's loader ignores alpha here; ComfyUI agrees with LyCORIS.)
- DoRA (``dora_scale`` beside any of the above): ``W' = W + mult * (m * V / ||V|| - W)`` with
  ``V = W + scale * dW``; the norm is per input column when ``dora_scale`` is (1, in) (old
  LyCORIS, A1111) and per output row when it is (out, 1) or (out,) (LyCORIS 4 ``wd_on_out``,
  PEFT), always of ``V`` as LyCORIS and PEFT normalise.
- IA3: ``W' = W * (1 + mult * w)`` per output row, or per input column when ``on_input``.
- full: ``W' = W + mult * diff``, ``b' = b + mult * diff_b``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from tagsmith.errors import UnsupportedModelError

_EPS = float(np.finfo(np.float32).eps)


def _mat(a: np.ndarray) -> np.ndarray:
    """2-D view: linear layers only, so trailing 1x1 kernel dims (LoCon files) are dropped."""
    a = np.asarray(a, dtype=np.float32)
    return a.reshape(a.shape[0], -1) if a.ndim != 2 else a


def _alpha(t: Mapping[str, np.ndarray], rank: int | None) -> float:
    """alpha / rank, with a missing or zero alpha meaning alpha = rank (scale 1)."""
    if rank is None or "alpha" not in t:
        return 1.0
    alpha = float(np.asarray(t["alpha"]).reshape(-1)[0])
    return 1.0 if alpha == 0 else alpha / rank


def _tucker(core: np.ndarray, w_a: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    # LyCORIS rebuild_tucker for a linear layer: the core is (r, r), w_a (r, out), w_b (r, in)
    core = np.asarray(core, dtype=np.float32).reshape(core.shape[0], core.shape[1])
    return np.einsum("ij,jr,ip->pr", core, _mat(w_b), _mat(w_a))


def lora_factors(t: Mapping[str, np.ndarray], rs_lora: bool = False,
                 alpha_override: float | None = None,
                 factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(scale * factor * up, down)``: the LoRA's delta is their product, which a forward
    pass can apply as two thin products instead of merging it (``encoder_np``)."""
    down, up = _mat(t["down"]), _mat(t["up"])
    if "mid" in t:
        raise UnsupportedModelError(
            "A LoRA module has a lora_mid (Tucker) tensor, which only convolutions use; a text "
            "encoder has none, so the file does not fit this model."
        )
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise UnsupportedModelError(
            f"its lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} have different "
            "ranks, so they do not multiply; the file is damaged."
        )
    if "scale" in t:
        scale = float(np.asarray(t["scale"]).reshape(-1)[0])
    elif alpha_override is not None:
        scale = alpha_override / (math.sqrt(rank) if rs_lora else rank)
    elif rs_lora and "alpha" in t:
        alpha = float(np.asarray(t["alpha"]).reshape(-1)[0]) or rank
        scale = alpha / math.sqrt(rank)
    else:
        scale = _alpha(t, rank)
    return up * np.float32(scale * factor), down


def lora_delta(t: Mapping[str, np.ndarray], rs_lora: bool = False,
               alpha_override: float | None = None, factor: float = 1.0) -> np.ndarray:
    """``scale * factor * up @ down``; the scalars go into the small factor, so the full-size
    product is written once (72 of them on ViT-L: memory traffic, not arithmetic, is the cost)."""
    up, down = lora_factors(t, rs_lora, alpha_override, factor)
    return up @ down


def loha_delta(t: Mapping[str, np.ndarray], factor: float = 1.0) -> np.ndarray:
    rank = int(np.asarray(t["hada_w1_b"]).shape[0])
    s = np.float32(_alpha(t, rank) * factor)
    if "hada_t1" in t and "hada_t2" in t:
        w1 = _tucker(np.asarray(t["hada_t1"], np.float32) * s, t["hada_w1_a"], t["hada_w1_b"])
        w2 = _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    else:
        w1 = (_mat(t["hada_w1_a"]) * s) @ _mat(t["hada_w1_b"])
        w2 = _mat(t["hada_w2_a"]) @ _mat(t["hada_w2_b"])
    w1 *= w2
    return w1


def lokr_delta(t: Mapping[str, np.ndarray], factor: float = 1.0) -> np.ndarray:
    w1 = _mat(t["lokr_w1"]) if "lokr_w1" in t else _mat(t["lokr_w1_a"]) @ _mat(t["lokr_w1_b"])
    if "lokr_w2" in t:
        w2 = _mat(t["lokr_w2"])
    elif "lokr_t2" in t:
        w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = _mat(t["lokr_w2_a"]) @ _mat(t["lokr_w2_b"])
    rank = None
    if "lokr_w2_b" in t:
        rank = int(np.asarray(t["lokr_w2_b"]).shape[0])
    elif "lokr_w1_b" in t:
        rank = int(np.asarray(t["lokr_w1_b"]).shape[0])
    return np.kron(w1 * np.float32(_alpha(t, rank) * factor), w2).astype(np.float32, copy=False)


def glora_delta(t: Mapping[str, np.ndarray], weight: np.ndarray) -> np.ndarray:
    a1, a2, b1, b2 = (_mat(t[k]) for k in ("a1", "a2", "b1", "b2"))
    out, inp = weight.shape
    if a1.shape[0] == inp and a2.shape == (a1.shape[1], inp) and b1.shape[0] == out:
        rank = a2.shape[0]
        delta = b1 @ b2 + (weight @ a1) @ a2
    elif a2.shape[0] == inp and b2.shape[0] == out:  # LyCORIS's older layout
        rank = a1.shape[0]
        delta = b2 @ b1 + (weight @ a2) @ a1
    else:
        raise UnsupportedModelError(
            f"A GLoRA module's factors (a1 {a1.shape}, a2 {a2.shape}, b1 {b1.shape}, b2 "
            f"{b2.shape}) do not fit the model's weight {weight.shape}."
        )
    return delta * np.float32(_alpha(t, rank))


def dora_merge(weight: np.ndarray, delta: np.ndarray, magnitude: np.ndarray,
               mult: float) -> np.ndarray:
    v = weight + delta
    m = np.asarray(magnitude, dtype=np.float32)
    out, inp = weight.shape
    if m.ndim == 1 and m.shape[0] == out:
        m = m.reshape(out, 1)  # PEFT's lora_magnitude_vector (and diffusers' converted dora_scale)
    m = m.reshape(m.shape[0], -1)
    if m.shape == (out, 1) and not (out == 1 and inp != 1):
        norm = np.linalg.norm(v, axis=1, keepdims=True)  # per output row (wd_on_out)
    elif m.shape == (1, inp):
        norm = np.linalg.norm(v, axis=0, keepdims=True)  # per input column
    else:
        raise UnsupportedModelError(
            f"A DoRA dora_scale of shape {tuple(magnitude.shape)} fits neither (1, {inp}) nor "
            f"({out}, 1) for the model's weight {weight.shape}."
        )
    merged = m * v / (norm + np.float32(_EPS))
    return weight + np.float32(mult) * (merged - weight)


def module_weights(
    algo: str,
    t: Mapping[str, np.ndarray],
    weight: np.ndarray,
    bias: np.ndarray | None,
    mult: float,
    *,
    rs_lora: bool = False,
    alpha_override: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(new weight, new bias or None when unchanged) for one module of ``algo``."""
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        weight2 = weight.reshape(weight.shape[0], -1)
    else:
        weight2 = weight
    if algo == "IA3":
        w = np.asarray(t["weight"], dtype=np.float32).reshape(-1)
        on_input = bool(np.asarray(t.get("on_input", 0)).reshape(-1)[:1].any())
        axis_len = weight2.shape[1] if on_input else weight2.shape[0]
        if w.shape[0] != axis_len:
            raise UnsupportedModelError(
                f"An IA3 vector of length {w.shape[0]} does not fit the model's weight "
                f"{weight2.shape} ({'input' if on_input else 'output'} side)."
            )
        factor = 1 + np.float32(mult) * (w[None, :] if on_input else w[:, None])
        return (weight2 * factor).reshape(weight.shape), None
    if algo == "full":
        diff = np.asarray(t["diff"], dtype=np.float32).reshape(weight.shape)
        new_bias = None
        if "diff_b" in t and bias is not None:
            new_bias = bias + np.float32(mult) * np.asarray(t["diff_b"], np.float32).reshape(
                bias.shape)
        return weight + np.float32(mult) * diff, new_bias
    dora = "dora" in t
    factor = 1.0 if dora else mult  # DoRA normalises W + dW, then applies the multiplier
    if algo == "LoRA":
        delta = lora_delta(t, rs_lora=rs_lora, alpha_override=alpha_override, factor=factor)
    elif algo == "LoHa":
        delta = loha_delta(t, factor)
    elif algo == "LoKr":
        delta = lokr_delta(t, factor)
    elif algo == "GLoRA":
        delta = glora_delta(t, weight2) * np.float32(factor)
    else:
        raise UnsupportedModelError(f"tagsmith does not apply {algo} modules.")
    if delta.shape != weight2.shape:
        raise UnsupportedModelError(
            f"A {algo} delta of shape {delta.shape} does not fit the model's weight "
            f"{weight2.shape}."
        )
    if dora:
        return dora_merge(weight2, delta, t["dora"], mult).reshape(weight.shape), None
    np.add(weight2, delta, out=delta)  # delta is our own array: the sum is written in place
    return delta.reshape(weight.shape), None
