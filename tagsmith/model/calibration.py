"""Similarities a user can read: each model's baseline (mean tag vector and random-pair
similarities over a reference set of tags), centred cosine, percentiles and ties.

Raw cosines of text-encoder states sit in a narrow band near 1: every state shares a large
common component (anisotropy, "rogue dimensions"). That component shifts every key of the
UNet's cross-attention by the same vector, which changes no softmax weight, so it says nothing
about which concept a tag is. The **centred cosine** subtracts the baseline's mean tag vector
before the cosine; it is the similarity every command shows and scores with. The
**percentile** of a similarity is the share of random pairs of reference tags that are less
similar in this model ("closer than 99% of random tag pairs"), which reads the same across
models, clip skips and families. Two similarities closer than ``Baseline.tie`` (a tenth of the
spread of random-pair similarities) are a tie.

The reference set is the vocabulary's most frequent tags when one is given, else the common
tags shipped in ``tagsmith/_data/common_tags.txt``. Its vectors go through the embedder (and so
its embedding cache); the baseline itself is cached as a small ``.npz`` under
``<cache>/baselines/``, keyed by everything that changes a vector (``vector_identity``: model
fingerprint, clip skip, representation, context, precision, and adapters or encoders where an
embedder has them) and by the reference texts. An embedder whose vectors concatenate several
encoders (SDXL: ``similarity_parts``) gets one baseline per encoder as well as the whole one.

A model with adapters (``--lora``) has its own baseline, keyed by its LoRAs, but it is not a
second pass over the whole reference set: it is **estimated from a control subset** of
``CONTROL_TAGS`` reference tags (evenly spread over the frequency order), with the base model
as the control variate. The adapter's mean is the base's mean plus the mean shift the subset
shows, and each quantile of its random-pair similarities is the base's plus the shift of that
quantile between the subset's pairs in the two models. A LoRA that changes nothing, or moves
every tag alike, gets the exact baseline. On the full-size SD1.5 encoder with a rank-32 LoRA on
all 72 layers (``benchmarks/calibration.py``, part 5), at weight 1 and at weight 6 (reference
tags moved to centred cosine 0.90 of the base's), the estimate's percentiles sit within 0.31
points of a full pass and its centred cosines 0.05 and 0.33 of a tie away on average; it
costs a fifth of the full pass (0.8 s against 4.0 s, 2-core CPU).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BASELINE_VERSION = "2"  # 2: the control subset's vectors are kept (adapter baselines)
REFERENCE_TAGS = 1000  # vocabulary tags in a reference set (~3k positions: one small job)
CONTROL_TAGS = 96  # reference tags an adapter's baseline is estimated from
PAIR_SAMPLE = 20_000  # random reference pairs the percentiles are read from
TIE_FRACTION = 0.1  # differences below this share of the random-pair spread are ties
_SEED = 12


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True)
class Baseline:
    """One vector space's baseline: what "close" means in this model."""

    mean: np.ndarray  # (dim,) float32, the mean reference tag vector
    pair_similarities: np.ndarray  # sorted centred cosines of random reference pairs
    reference: str  # where the reference tags came from, for people
    n_reference: int
    encoders: Mapping[str, Baseline] = field(default_factory=dict)  # per encoder, when several
    slices: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # the vectors of the reference's control subset (``control_indices``), for adapters
    control: np.ndarray | None = field(default=None, repr=False, compare=False)
    estimated_from: int = 0  # > 0: an adapter's baseline, estimated from this many tags

    # -- similarity ---------------------------------------------------------------------------
    def centre(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32) - self.mean

    def unit(self, vectors: np.ndarray) -> np.ndarray:
        """Centred, unit-length rows: their dot products are centred cosines."""
        return _unit(self.centre(vectors))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) centred cosines."""
        a, b = np.asarray(a), np.asarray(b)
        if len(a) == 0 or len(b) == 0:
            return np.zeros((len(a), len(b)), dtype=np.float32)
        return self.unit(a) @ self.unit(b).T

    def encoder(self, name: str) -> Baseline:
        """The baseline of one encoder's slice of the vector (SDXL: ``clip_l``, ``clip_g``)."""
        return self.encoders[name]

    # -- reading a similarity -------------------------------------------------------------------
    def percentile(self, similarity: Any) -> Any:
        """Share (0-100) of random reference pairs less similar than ``similarity``; an array
        for an array. Monotone non-decreasing in ``similarity``; NaN stays NaN."""
        s = np.asarray(similarity, dtype=np.float64)
        n = len(self.pair_similarities)
        pct = 100.0 * np.searchsorted(self.pair_similarities, s, side="left") / max(n, 1)
        pct = np.where(np.isnan(s), np.nan, pct)
        return float(pct) if pct.ndim == 0 else pct

    @property
    def median(self) -> float:
        """The similarity of a typical random pair of reference tags."""
        n = len(self.pair_similarities)
        return float(np.median(self.pair_similarities)) if n else 0.0

    @property
    def spread(self) -> float:
        """Standard deviation of the random-pair similarities."""
        return float(np.std(self.pair_similarities)) if len(self.pair_similarities) else 0.0

    @property
    def tie(self) -> float:
        """Similarity differences smaller than this are ties."""
        return TIE_FRACTION * self.spread

    def is_tie(self, a: float, b: float) -> bool:
        return abs(float(a) - float(b)) < self.tie

    def describe(self) -> str:
        """One line for people: what the numbers are measured against."""
        q99 = float(np.quantile(self.pair_similarities, 0.99)) if len(
            self.pair_similarities) else float("nan")
        return (f"similarity: centred cosine, baseline of {self.reference} (random pair "
                f"{self.median:.2f}, top 1% > {q99:.2f}, ties < {self.tie:.2f})")

    def summary(self) -> dict[str, Any]:
        """What ``--json`` says about the baseline."""
        q = np.quantile(self.pair_similarities, [0.5, 0.9, 0.99]) if len(
            self.pair_similarities) else [np.nan] * 3
        out: dict[str, Any] = {
            "reference": self.reference,
            "n_reference": self.n_reference,
            "n_pairs": int(len(self.pair_similarities)),
            "random_pairs": {"median": round(float(q[0]), 6), "p90": round(float(q[1]), 6),
                             "p99": round(float(q[2]), 6)},
            "spread": round(self.spread, 6),
            "tie": round(self.tie, 6),
        }
        if self.estimated_from:
            out["estimated_from"] = self.estimated_from
            out["method"] = ("control variate: the base model's baseline, shifted by what the "
                             "LoRA changes among the control tags")
        if self.encoders:
            out["encoders"] = {k: v.summary() for k, v in self.encoders.items()}
        return out


def build_baseline(
    vectors: np.ndarray,
    *,
    reference: str = "",
    slices: Mapping[str, tuple[int, int]] | None = None,
    pairs: int = PAIR_SAMPLE,
    seed: int = _SEED,
) -> Baseline:
    """The baseline of reference tag ``vectors`` (n, dim): their mean, and the sorted centred
    cosines of ``pairs`` random pairs of distinct tags (every pair when there are fewer).
    ``slices`` (name -> [start, stop)) adds one baseline per encoder."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("A baseline needs at least two reference vectors.")
    n = len(x)
    mean = x.mean(axis=0)
    unit = _unit(x - mean)
    if n * (n - 1) // 2 <= pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=pairs)
        j = (i + rng.integers(1, n, size=pairs)) % n  # never the same tag twice
    sims = np.sort(np.einsum("ij,ij->i", unit[i], unit[j]).astype(np.float32))
    encoders = {}
    for name, (a, b) in (slices or {}).items():
        encoders[name] = build_baseline(x[:, a:b], reference=reference, pairs=pairs, seed=seed)
    return Baseline(mean=mean, pair_similarities=sims, reference=reference, n_reference=n,
                    encoders=encoders, slices=dict(slices or {}),
                    control=x[control_indices(n)].copy())


def control_indices(n: int, k: int = CONTROL_TAGS) -> np.ndarray:
    """The control subset of ``n`` reference tags: ``k`` of them evenly spread over the
    reference order (most frequent first), so it covers common and rarer tags alike."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def _sorted_pair_cosines(unit: np.ndarray) -> np.ndarray:
    """The cosines of every pair of distinct rows of ``unit``, sorted."""
    return np.sort((unit @ unit.T)[np.triu_indices(len(unit), k=1)])


def _quantiles(ordered: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``np.quantile(ordered, u)`` (linear interpolation) of an already sorted array."""
    return np.interp(u * (len(ordered) - 1), np.arange(len(ordered)), ordered)


def adapted_baseline(base: Baseline, vectors: np.ndarray, *, reference: str = "") -> Baseline:
    """An adapter's baseline from its ``vectors`` of the control subset, with ``base`` (the
    same model without it, built over the same reference set) as the control variate.

    Mean: ``base.mean`` plus the subset's mean shift. Similarities: each quantile of the base's
    random pairs plus how far that quantile moves among the subset's pairs (all of them, each
    centred on its own model's mean). Exact when the adapter changes nothing."""
    if base.control is None:
        raise ValueError("The base baseline keeps no control vectors.")
    bc = np.asarray(base.control, dtype=np.float32)
    mc = np.asarray(vectors, dtype=np.float32)
    if mc.shape != bc.shape:
        raise ValueError(f"control vectors {mc.shape} do not match the base's {bc.shape}")
    mean = base.mean + (mc.mean(axis=0) - bc.mean(axis=0))
    base_pairs = _sorted_pair_cosines(_unit(bc - base.mean))
    model_pairs = _sorted_pair_cosines(_unit(mc - mean))
    n = len(base.pair_similarities)
    u = (np.arange(n) + 0.5) / max(n, 1)
    shift = _quantiles(model_pairs, u) - _quantiles(base_pairs, u)
    sims = np.sort(np.clip(base.pair_similarities + shift, -1.0, 1.0)).astype(np.float32)
    encoders = {name: adapted_baseline(sub, mc[:, slice(*base.slices[name])],
                                       reference=reference)
                for name, sub in base.encoders.items()}
    return Baseline(mean=mean.astype(np.float32), pair_similarities=sims,
                    reference=reference or base.reference, n_reference=base.n_reference,
                    encoders=encoders, slices=dict(base.slices), control=mc,
                    estimated_from=len(mc))


# -- reference sets -------------------------------------------------------------------------


def common_tags() -> list[str]:
    """The common-tag list shipped with tagsmith (the reference set without a vocabulary)."""
    from importlib import resources

    text = resources.files("tagsmith").joinpath("_data/common_tags.txt").read_text("utf-8")
    return [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]


def vocabulary_reference(
    texts: Sequence[str], counts: Sequence[int] | np.ndarray, n: int = REFERENCE_TAGS
) -> list[str]:
    """The ``n`` most frequent of a vocabulary's analysed ``texts`` (file order breaks ties);
    the common-tag list when the vocabulary has no counts or fewer than ten tags."""
    counts = np.asarray(counts, dtype=np.int64)
    if len(texts) < 10 or not (counts > 0).any():
        return common_tags()
    order = np.argsort(-counts, kind="stable")[:n]
    return list(dict.fromkeys(texts[int(i)] for i in order if texts[int(i)].strip()))


# -- per model, cached ------------------------------------------------------------------------


def _identity(embedder: Any) -> dict[str, Any]:
    ident = getattr(embedder, "vector_identity", None)
    if callable(ident):
        return dict(ident())
    return {"fingerprint": getattr(embedder, "fingerprint", ""), "info": _info(embedder)}


def _info(embedder: Any) -> Any:
    info = getattr(embedder, "model_info", None)
    return info() if callable(info) else None


def baseline_key(embedder: Any, texts: Sequence[str], pairs: int = PAIR_SAMPLE) -> str:
    blob = json.dumps({
        "v": BASELINE_VERSION, "identity": _identity(embedder), "pairs": pairs, "seed": _SEED,
        "control": CONTROL_TAGS,
        "reference": hashlib.sha256("\n".join(texts).encode("utf-8", "surrogatepass")).hexdigest(),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def model_baseline(
    embedder: Any,
    reference: Sequence[str] | None = None,
    *,
    label: str | None = None,
    cache_dir: Path | None = None,
) -> Baseline:
    """The baseline of ``embedder``'s model over ``reference`` (default: the common-tag list),
    from the cache when it was built before, else built from one ``embed`` pass and cached.
    An embedder with adapters (``adapter_base()`` gives the model without them) gets the
    estimate of ``adapted_baseline``: the base's baseline, and one pass over the control tags.

    ``cache_dir`` defaults to the embedder's own (none: nothing is written). An embedder with
    a ``baseline_memo`` dict keeps its baselines there too (``--no-cache`` builds each once)."""
    texts = list(dict.fromkeys(reference if reference is not None else common_tags()))
    if label is None:
        label = (f"{len(texts)} common tags shipped with tagsmith" if reference is None
                 else f"{len(texts)} reference tags")
    adapter_base = getattr(embedder, "adapter_base", None)
    base = adapter_base() if callable(adapter_base) else None
    base_label = label
    if base is not None:
        label = f"{label}, estimated with the LoRA from {min(CONTROL_TAGS, len(texts))} of them"
    cache_dir = cache_dir if cache_dir is not None else getattr(embedder, "cache_dir", None)
    key = baseline_key(embedder, texts)
    memo = getattr(embedder, "baseline_memo", None)
    memo = memo if isinstance(memo, dict) else {}
    if (key, label) in memo:
        return memo[key, label]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "baselines" / f"{key[:32]}.npz"
        cached = _load(path, label)
        if cached is not None:
            memo[key, label] = cached
            return cached
    kept = _embeddable(texts)
    if base is not None:
        base_line = model_baseline(base, texts, label=base_label, cache_dir=cache_dir)
        control = [kept[int(i)] for i in control_indices(len(kept))]
        vectors = np.asarray(embedder.embed(control), dtype=np.float32)
        baseline = adapted_baseline(base_line, vectors, reference=label)
    else:
        vectors = np.asarray(embedder.embed(kept), dtype=np.float32)
        baseline = build_baseline(vectors, reference=label, slices=encoder_slices(embedder))
    if path is not None:
        _save(path, baseline)
    memo[key, label] = baseline
    return baseline


def _embeddable(texts: Sequence[str]) -> list[str]:
    """The reference texts that have a vector: a text of only characters the cleaner drops
    has no tokens."""
    from tagsmith.text.tokenizer import load_tokenizer

    return [t for t, ids in zip(texts, load_tokenizer().encode_batch(list(texts))) if ids]


def encoder_slices(embedder: Any) -> dict[str, tuple[int, int]]:
    """Where each encoder sits in the embedder's vectors (SDXL: ``l``, ``g``), as [start, stop)
    pairs; empty for a one-encoder model. Read from ``similarity_parts()`` (name -> slice)."""
    parts = getattr(embedder, "similarity_parts", None)
    got = parts() if callable(parts) else {}
    return {str(k): (int(v.start or 0), int(v.stop)) for k, v in (got or {}).items()}


def _save(path: Path, b: Baseline) -> None:
    from tagsmith.fileio import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {"mean": b.mean, "pairs": b.pair_similarities,
                                     "n_reference": np.asarray(b.n_reference),
                                     "estimated_from": np.asarray(b.estimated_from)}
    if b.control is not None:
        arrays["control"] = np.asarray(b.control, dtype=np.float32)
    for name, sub in b.encoders.items():
        arrays[f"enc_mean/{name}"] = sub.mean
        arrays[f"enc_pairs/{name}"] = sub.pair_similarities
        arrays[f"enc_slice/{name}"] = np.asarray(b.slices[name], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a cache that cannot be written only costs time


def _load(path: Path, label: str) -> Baseline | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [k.split("/", 1)[1] for k in z.files if k.startswith("enc_mean/")]
            n = int(z["n_reference"])
            est = int(z["estimated_from"])
            control = z["control"].astype(np.float32) if "control" in z.files else None
            slices = {k: tuple(int(v) for v in z[f"enc_slice/{k}"]) for k in names}
            encoders = {
                k: Baseline(z[f"enc_mean/{k}"].astype(np.float32),
                            z[f"enc_pairs/{k}"].astype(np.float32), label, n,
                            control=None if control is None else control[:, slice(*slices[k])],
                            estimated_from=est)
                for k in names
            }
            return Baseline(z["mean"].astype(np.float32), z["pairs"].astype(np.float32), label,
                            n, encoders=encoders, slices=slices,  # type: ignore[arg-type]
                            control=control, estimated_from=est)
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: build it again


# -- words for people -------------------------------------------------------------------------


def closeness(pct: float) -> str:
    """How a percentile reads: "closer than 97% of random tag pairs" / "as close as the top 1%
    of tag pairs" / "no closer than a typical random pair"."""
    if pct != pct:  # NaN
        return "unknown"
    if pct >= 99.0:
        top = max(100.0 - pct, 0.0)
        return ("closer than every random tag pair sampled" if top < 0.05 else
                f"as close as the top {_share(top)} of random tag pairs")
    if pct >= 50.0:
        return f"closer than {pct:.0f}% of random tag pairs"
    return "no closer than a typical random tag pair"


def top_share(pct: float, *, short: bool = False) -> str:
    """A percentile as the share of random tag pairs at least this close: "top 3% of random
    pairs" ("top 3%" when ``short``), "top 0.4%", never "top 0%" (that reads "above every random
    pair") nor "top 70%" (that reads "below the median pair")."""
    top = 100.0 - pct
    if top < 0.05:
        return "above every pair" if short else "above every random pair"
    if top > 50:
        return "below median" if short else "below the median pair"
    return f"top {_share(top)}" + ("" if short else " of random pairs")


def percentile_note(pct: float) -> str:
    """`` (top 3%)`` after a similarity in the top quarter of random pairs, else ""."""
    return "" if pct != pct or pct < 75.0 else f" ({top_share(pct, short=True)})"


def _share(top: float) -> str:
    return f"{top:.1f}%" if top < 1 else f"{top:.0f}%"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 81st, 111th."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percentile_label(pct: float | None) -> str:
    """A short column label: "81st pct" ("" when unknown); never "100th" below every pair."""
    if pct is None or pct != pct:
        return ""
    return f"{ordinal(min(int(pct), 99 if pct < 100 else 100))} pct"
