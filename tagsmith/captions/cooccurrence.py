"""Tag co-occurrence in a dataset: pair statistics, entangled clusters, and the tags that go
with one tag (for ``suggest``/``trigger --dataset``).

An image's caption weighs ``repeats`` (see ``tagsmith.captions.files``) in every statistic
that is about what training sees: tag share per epoch and pair strength. Counts of captions
stay unweighted, and minimum supports are counted in captions, because a pair seen in two
images is two observations however often they repeat.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tagsmith.captions.files import load_dataset
from tagsmith.captions.parse import strip_weight_syntax, tag_key

DEFAULT_MIN_SCORE = 0.3
DEFAULT_MAX_Q = 0.05
EMBED_BASELINE_TAGS = 200  # most frequent tags whose pairwise similarity calibrates "close"
COLLISION_PERCENTILE = 95.0
MAX_CLUSTER_NODES = 400


# -- co-occurrence -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStat:
    """Two tags and how much more often they appear together than chance would have it.

    ``together``, ``count_a`` and ``count_b`` count captions; the probabilities behind
    ``npmi``, ``lift``, ``phi`` and the conditionals are weighted by repeats. ``score`` is NPMI
    times Pantel and Lin's discount ``c/(c+1) * m/(m+1)`` (c = captions together, m = captions
    of the rarer tag), so that a pair seen in a handful of captions cannot outrank a pair that
    is as exclusive but seen in most of them. ``p_value`` is the one-sided hypergeometric
    (Fisher) probability of seeing the pair this often by chance, from caption counts;
    ``q_value`` is that p-value adjusted (Benjamini-Hochberg) over every pair tested.
    """

    a: str
    b: str
    together: int
    count_a: int
    count_b: int
    npmi: float
    lift: float
    phi: float
    p_b_given_a: float
    p_a_given_b: float
    score: float
    p_value: float = 1.0
    q_value: float = 1.0

    def to_dict(self) -> dict:
        out: dict = {}
        for k, v in asdict(self).items():
            if k in ("p_value", "q_value"):
                out[k] = float(f"{v:.3g}")
            else:
                out[k] = round(v, 4) if isinstance(v, float) else v
        return out


@dataclass
class Cooccurrence:
    """Caption x tag incidence with weights, ready for pair statistics."""

    tags: list[str]  # column order
    index: dict[str, int]
    matrix: object  # scipy.sparse.csr_matrix (captions x tags), 1 where a caption has a tag
    weights: object  # numpy array, repeats x images per caption
    counts: object  # captions per tag (numpy int array)
    weighted_counts: object  # repeats-weighted presence per tag

    @property
    def n_captions(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def total_weight(self) -> float:
        return float(self.weights.sum())

    def pair(self, a: str, b: str) -> PairStat | None:
        if a not in self.index or b not in self.index:
            return None
        ia, ib = self.index[a], self.index[b]
        col_a = self.matrix[:, ia].toarray().ravel()
        col_b = self.matrix[:, ib].toarray().ravel()
        both = col_a * col_b
        return pair_stat(
            a, b, int(both.sum()), int(self.counts[ia]), int(self.counts[ib]),
            float((both * self.weights).sum()), float(self.weighted_counts[ia]),
            float(self.weighted_counts[ib]), self.total_weight,
        )


def build_cooccurrence(tag_sets: Sequence[Iterable[str]], weights: Sequence[float]) -> Cooccurrence:
    import numpy as np
    from scipy import sparse

    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for r, tags in enumerate(tag_sets):
        for t in dict.fromkeys(tags):  # first-seen order keeps results reproducible
            rows.append(r)
            cols.append(index.setdefault(t, len(index)))
    x = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(tag_sets), len(index))
    )
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:  # every repeat folder is 0_name: fall back to counting captions once
        w = np.ones(len(tag_sets))
    return Cooccurrence(
        tags=list(index), index=index, matrix=x, weights=w,
        counts=np.asarray(x.sum(axis=0)).ravel(),
        weighted_counts=np.asarray(x.T @ w).ravel(),
    )


def pair_stat(
    a: str, b: str, together: int, count_a: int, count_b: int,
    w_ab: float, w_a: float, w_b: float, w_total: float,
    *, p_value: float = 1.0, q_value: float = 1.0,
) -> PairStat:
    """Association of two tags from caption counts (support) and weighted presence (strength)."""
    p_ab, p_a, p_b = w_ab / w_total, w_a / w_total, w_b / w_total
    npmi_a, lift_a, phi_a = _association(p_ab, p_a, p_b)
    npmi, lift, phi = float(npmi_a), float(lift_a), float(phi_a)
    rarer = min(count_a, count_b)
    discount = together / (together + 1) * rarer / (rarer + 1)
    return PairStat(
        a=a, b=b, together=together, count_a=count_a, count_b=count_b, npmi=npmi, lift=lift,
        phi=phi, p_b_given_a=p_ab / p_a if p_a else 0.0, p_a_given_b=p_ab / p_b if p_b else 0.0,
        score=npmi * discount, p_value=p_value, q_value=q_value,
    )


def default_min_support(n_captions: int) -> int:
    """Captions a pair needs before it is ranked: 3, or 1% of the captions when that is more."""
    return max(3, math.ceil(0.01 * n_captions))


def strong_pairs(
    co: Cooccurrence,
    *,
    min_support: int,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
) -> list[PairStat]:
    """Pairs that co-occur far above chance, best first (ties: more captions together first).

    A pair qualifies when it is seen together in at least ``min_support`` captions, its
    ``score`` is at least ``min_score``, and its ``q_value`` is at most ``max_q`` (the
    Benjamini-Hochberg false discovery rate over all pairs that met the support): in a small
    dataset with many tags, some pairs look exclusive by luck alone, and the test removes
    them. Tags in every caption are left out: they co-occur with everything, which says
    nothing about any pair (see ``always_present``).
    """
    import numpy as np

    n = co.n_captions
    keep = np.flatnonzero((co.counts >= min_support) & (co.counts < n))
    if len(keep) < 2:
        return []
    x = co.matrix[:, keep].tocsc().astype(np.float64)
    together = sparse_upper(x.T @ x, min_support)
    if not len(together[0]):
        return []
    weighted = (x.T @ x.multiply(co.weights[:, None]).tocsc()).tocsr()
    rows, cols, counts = together
    ia, ib = keep[rows], keep[cols]
    ca, cb = co.counts[ia], co.counts[ib]
    # P(X >= together) for X ~ Hypergeometric(captions, count_a, count_b).
    p_values = hypergeom_tail(counts, n, ca, cb)
    q_values = benjamini_hochberg(p_values)
    w_ab = np.asarray(weighted[rows, cols]).ravel()
    total = co.total_weight
    npmi, _, _ = _association(
        w_ab / total, co.weighted_counts[ia] / total, co.weighted_counts[ib] / total
    )
    rarer = np.minimum(ca, cb)
    score = npmi * counts / (counts + 1) * rarer / (rarer + 1)
    out: list[PairStat] = []
    for k in np.flatnonzero((score >= min_score) & (q_values <= max_q)):
        a, b, xa, xb = co.tags[ia[k]], co.tags[ib[k]], ia[k], ib[k]
        if b < a:
            a, b, xa, xb = b, a, xb, xa
        out.append(pair_stat(
            a, b, int(counts[k]), int(co.counts[xa]), int(co.counts[xb]), float(w_ab[k]),
            float(co.weighted_counts[xa]), float(co.weighted_counts[xb]), total,
            p_value=float(p_values[k]), q_value=float(q_values[k]),
        ))
    out.sort(key=lambda s: (-s.score, -s.together, s.a, s.b))
    return out


def _association(p_ab, p_a, p_b):  # noqa: ANN001, ANN202 - numpy arrays in, arrays out
    """NPMI, lift and phi of 2x2 tables given by their joint and marginal probabilities.

    NPMI is -1 for pairs never together and 0 for pairs together in every caption (no
    evidence either way), as is phi when a tag is in every caption or none.
    """
    import numpy as np

    p_ab, p_a, p_b = (np.asarray(x, dtype=np.float64) for x in (p_ab, p_a, p_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(p_ab > 0, p_ab / (p_a * p_b), 0.0)
        inner = (p_ab > 0) & (p_ab < 1)
        npmi = np.where(inner, np.log(np.where(inner, lift, 1.0)) / -np.log(
            np.where(inner, p_ab, 0.5)), np.where(p_ab <= 0, -1.0, 0.0))
        lift = np.where(p_ab >= 1, 1.0, lift)
        var = p_a * (1 - p_a) * p_b * (1 - p_b)
        phi = np.where(var > 0, (p_ab - p_a * p_b) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return npmi, lift, phi


def hypergeom_tail(k, n: int, ka, kb):  # noqa: ANN001, ANN201 - numpy arrays
    """P(X >= k) for X ~ Hypergeometric(n items, ka marked, kb drawn), elementwise.

    Summed term by term from k away from the mode (the upper tail when k is above the mode,
    else one minus the lower tail), so that every sum is of terms that shrink geometrically and
    stops once they no longer change it; each term comes from a log-factorial table. Exact to
    rounding, and without importing scipy.stats (over a second at start-up).
    """
    import numpy as np

    k, ka, kb = (np.asarray(a, dtype=np.int64) for a in (k, ka, kb))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])

    def log_pmf(x, a, b):  # noqa: ANN001, ANN202
        return (
            log_fact[a] - log_fact[x] - log_fact[a - x]
            + log_fact[n - a] - log_fact[b - x] - log_fact[n - a - b + x]
            - log_fact[n] + log_fact[b] + log_fact[n - b]
        )

    lo = np.maximum(0, ka + kb - n)
    hi = np.minimum(ka, kb)
    mode = np.floor((ka + 1) * (kb + 1) / (n + 2)).astype(np.int64)
    upper = k > mode  # sum k..hi; else 1 - sum lo..k-1, summed from k-1 downwards
    x = np.where(upper, k, k - 1)
    stop = np.where(upper, hi, lo)
    step = np.where(upper, 1, -1)
    total = np.zeros(len(k))
    active = (x >= lo) & (x <= hi)
    while active.any():
        idx = np.flatnonzero(active)
        term = np.exp(log_pmf(x[idx], ka[idx], kb[idx]))
        total[idx] += term
        done = (x[idx] == stop[idx]) | (term <= total[idx] * 1e-17)
        x[idx] += step[idx]
        active[idx[done]] = False
    return np.clip(np.where(upper, total, 1.0 - total), 0.0, 1.0)


def sparse_upper(m, min_value: float) -> tuple:  # noqa: ANN001 - scipy sparse matrix
    """(rows, cols, values) of the strict upper triangle of ``m`` with values >= min_value."""
    import numpy as np

    coo = m.tocoo()
    mask = (coo.row < coo.col) & (coo.data >= min_value)
    return coo.row[mask], coo.col[mask], np.rint(coo.data[mask]).astype(np.int64)


def benjamini_hochberg(p_values) -> object:  # noqa: ANN001 - numpy array in and out
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order."""
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(ranked, 1.0)
    return q


def always_present(co: Cooccurrence) -> list[str]:
    """Tags in every caption (a trigger word, usually): entangled with the whole dataset."""
    return sorted(t for t, c in zip(co.tags, co.counts) if c == co.n_captions)


# -- clusters ------------------------------------------------------------------------------


@dataclass
class ClusterEmbedding:
    """How close a cluster's tags sit in the text encoder (centred cosine), against the model's
    random tag pairs."""

    mean_cosine: float
    pairs: list[tuple[str, str, float, float | None]]  # a, b, cosine, percentile (or None)
    close_pairs: list[tuple[str, str]]  # at or above the COLLISION_PERCENTILE of random pairs
    raw: dict[tuple[str, str], float] = field(default_factory=dict)  # plain cosine per pair
    # SDXL: each encoder's own centred cosine per pair ({"l": ..., "g": ...}), to show when
    # CLIP-L and CLIP-G disagree; empty for a one-encoder model.
    by_encoder: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    @property
    def collision(self) -> bool:
        return bool(self.close_pairs)

    def to_dict(self) -> dict:
        return {
            "mean_cosine": round(self.mean_cosine, 4),
            "pairs": [
                {"a": a, "b": b, "cosine": round(c, 4),
                 "percentile": None if p is None else round(p, 1),
                 "raw": None if (a, b) not in self.raw else round(self.raw[(a, b)], 4),
                 **({"by_encoder": {k: round(v, 4) for k, v in self.by_encoder[(a, b)].items()}}
                    if (a, b) in self.by_encoder else {})}
                for a, b, c, p in self.pairs
            ],
            "close_pairs": [list(p) for p in self.close_pairs],
            "collision": self.collision,
        }


@dataclass
class TagCluster:
    tags: list[str]  # most frequent first
    mean_score: float  # average pair score inside the cluster
    together: int  # captions holding every tag of the cluster
    any_of: int  # captions holding at least one
    pairs: list[PairStat]  # its strong pairs
    embedding: ClusterEmbedding | None = None

    def to_dict(self) -> dict:
        return {
            "tags": self.tags,
            "mean_score": round(self.mean_score, 4),
            "together": self.together,
            "any_of": self.any_of,
            "pairs": [p.to_dict() for p in self.pairs],
            "embedding": None if self.embedding is None else self.embedding.to_dict(),
        }


def cluster_tags(
    co: Cooccurrence, pairs: Sequence[PairStat], *, min_score: float = DEFAULT_MIN_SCORE
) -> list[TagCluster]:
    """Average-linkage clusters over the strong pairs: merge while the mean score between two
    clusters (0 for pairs that are not strong) stays at or above ``min_score``.

    Average linkage rather than connected components, so that one tag shared by two groups
    (``1girl`` with a character and with an outfit) does not chain them into one.
    """
    import numpy as np

    nodes: list[str] = []
    seen: set[str] = set()
    for p in pairs:  # strongest first, so a cap keeps the pairs that matter most
        for t in (p.a, p.b):
            if t not in seen and len(nodes) < MAX_CLUSTER_NODES:
                seen.add(t)
                nodes.append(t)
    if len(nodes) < 2:
        return []
    pos = {t: i for i, t in enumerate(nodes)}
    sim = np.zeros((len(nodes), len(nodes)))
    for p in pairs:
        if p.a in pos and p.b in pos:
            sim[pos[p.a], pos[p.b]] = sim[pos[p.b], pos[p.a]] = p.score
    np.fill_diagonal(sim, -np.inf)
    members: list[list[int] | None] = [[i] for i in range(len(nodes))]
    active = np.ones(len(nodes), dtype=bool)
    while True:
        masked = np.where(np.outer(active, active), sim, -np.inf)
        flat = int(np.argmax(masked))
        i, j = divmod(flat, len(nodes))
        if masked[i, j] < min_score:
            break
        ni, nj = len(members[i]), len(members[j])
        # Lance-Williams update for average linkage.
        merged = (ni * sim[i] + nj * sim[j]) / (ni + nj)
        sim[i, :] = merged
        sim[:, i] = merged
        sim[i, i] = -np.inf
        sim[j, :] = -np.inf
        sim[:, j] = -np.inf
        members[i] = members[i] + members[j]
        members[j] = None
        active[j] = False
    by_pair = {(p.a, p.b): p for p in pairs}
    out: list[TagCluster] = []
    for group in members:
        if group is None or len(group) < 2:
            continue
        tags = [nodes[k] for k in group]
        tags.sort(key=lambda t: (-int(co.counts[co.index[t]]), t))
        inner = [
            by_pair[(min(a, b), max(a, b))]
            for k, a in enumerate(tags) for b in tags[k + 1:]
            if (min(a, b), max(a, b)) in by_pair
        ]
        n_pairs = len(tags) * (len(tags) - 1) / 2
        cols = co.matrix[:, [co.index[t] for t in tags]]
        per_caption = np.asarray(cols.sum(axis=1)).ravel()
        out.append(
            TagCluster(
                tags=tags,
                mean_score=sum(p.score for p in inner) / n_pairs,
                together=int((per_caption == len(tags)).sum()),
                any_of=int((per_caption > 0).sum()),
                pairs=sorted(inner, key=lambda s: (-s.score, -s.together)),
            )
        )
    out.sort(key=lambda c: (-c.mean_score * math.sqrt(len(c.tags)), -c.together, c.tags))
    return out


def attach_embeddings(
    clusters: Sequence[TagCluster],
    frequent_tags: Sequence[str],
    embed: Callable[[list[str]], object | None],
    baseline: Callable[[], Any] | None = None,
) -> None:
    """Fill ``cluster.embedding``: the similarity (centred cosine) of every pair inside each
    cluster, and its percentile among random tag pairs of the model's baseline
    (tagsmith.model.calibration; ``baseline()`` gives it). Without one, the dataset's most
    frequent tags are the reference set. Tags are embedded in their analysed form (``red
    hair``, not ``red_hair``), as a prompt writes them."""
    import numpy as np

    from tagsmith.model.calibration import build_baseline

    texts: list[str] = []
    pos: dict[str, int] = {}
    for t in list(frequent_tags[:EMBED_BASELINE_TAGS]) + [t for c in clusters for t in c.tags]:
        if t not in pos:
            pos[t] = len(texts)
            texts.append(t)
    if not texts:
        return
    raw = embed(texts)
    if raw is None:  # the caller could not open a model: no embedding column
        return
    vectors = np.asarray(raw, dtype=np.float32)
    model = baseline() if baseline is not None else None
    base_idx = [pos[t] for t in frequent_tags[:EMBED_BASELINE_TAGS]]
    if model is None and len(base_idx) >= 10:
        model = build_baseline(vectors[base_idx],
                               reference=f"the dataset's {len(base_idx)} most frequent tags")
    unit = model.unit(vectors) if model is not None else _unit_rows(vectors)
    plain = _unit_rows(vectors)
    encoders = getattr(model, "encoders", None) or {}
    enc_units = {name: sub.unit(vectors[:, slice(*model.slices[name])])
                 for name, sub in encoders.items() if name in model.slices}
    for c in clusters:
        rows: list[tuple[str, str, float, float | None]] = []
        close: list[tuple[str, str]] = []
        raw_cos: dict[tuple[str, str], float] = {}
        by_encoder: dict[tuple[str, str], dict[str, float]] = {}
        for k, a in enumerate(c.tags):
            for bt in c.tags[k + 1:]:
                cos = float(unit[pos[a]] @ unit[pos[bt]])
                raw_cos[(a, bt)] = float(plain[pos[a]] @ plain[pos[bt]])
                if enc_units:
                    by_encoder[(a, bt)] = {n: float(u[pos[a]] @ u[pos[bt]])
                                           for n, u in enc_units.items()}
                pct = None
                if model is not None:
                    pct = float(model.percentile(cos))
                    if pct >= COLLISION_PERCENTILE:
                        close.append((a, bt))
                rows.append((a, bt, cos, pct))
        rows.sort(key=lambda r: -r[2])
        c.embedding = ClusterEmbedding(
            mean_cosine=sum(r[2] for r in rows) / len(rows), pairs=rows, close_pairs=close,
            raw=raw_cos, by_encoder=by_encoder,
        )


def _unit_rows(x: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# -- the library call for suggest/trigger --dataset ----------------------------------------


def correlated_tags(dataset_dir: Path, tag: str, *, limit: int = 10) -> list[str]:
    """Tags of the dataset that co-occur strongly with ``tag``, best first.

    * ``tag`` in the dataset (compared in analysed form): its partners among the strong pairs
      (same minimum support and score as ``tagsmith dataset``), by score.
    * ``tag`` in every caption (a trigger word): every pair score is 0 for it, so its partners
      are instead the other tags present in at least half of the captions, most frequent first
      — the concepts it will absorb.
    * ``tag`` not in the dataset (a new trigger or a new name for an existing tag): the
      partners of the dataset tag most similar by text (most shared words, then character
      similarity; at least one shared word of three letters or more, or a character
      similarity of 0.8), without that tag itself. Empty when nothing is similar enough.
    """
    ds = load_dataset(dataset_dir)
    tag_sets = [[t.key for t in c.first_line_tags] for c in ds.captions]
    co = build_cooccurrence(tag_sets, [c.file.weight for c in ds.captions])
    key = tag_key(strip_weight_syntax(tag))
    if key not in co.index:
        similar = most_similar_tag(key, co.tags)
        if similar is None:
            return []
        key = similar
    return partners_of(co, key, limit=limit)


def partners_of(
    co: Cooccurrence,
    key: str,
    *,
    limit: int = 10,
    min_support: int | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
) -> list[str]:
    """Strong co-occurrence partners of one tag, as the report ranks them (see
    ``correlated_tags``)."""

    i = co.index[key]
    n = co.n_captions
    if int(co.counts[i]) == n:
        order = sorted(
            (j for j in range(len(co.tags)) if j != i and co.counts[j] * 2 >= n),
            key=lambda j: (-int(co.counts[j]), co.tags[j]),
        )
        return [co.tags[j] for j in order[:limit]]
    support = default_min_support(n) if min_support is None else min_support
    pairs = strong_pairs(co, min_support=support, min_score=min_score, max_q=max_q)
    return [p.b if p.a == key else p.a for p in pairs if key in (p.a, p.b)][:limit]


_WORD = re.compile(r"[^\W_]+")


def most_similar_tag(key: str, candidates: Sequence[str]) -> str | None:
    """The candidate most similar to ``key`` by text, or None (see ``correlated_tags``)."""
    words = {w for w in _WORD.findall(key.lower()) if len(w) >= 3}
    best: tuple[float, float, str] | None = None
    for cand in candidates:
        cw = {w for w in _WORD.findall(cand.lower()) if len(w) >= 3}
        shared = len(words & cw)
        ratio = difflib.SequenceMatcher(None, key, cand).ratio()
        if not shared and ratio < 0.8:
            continue
        jaccard = shared / len(words | cw) if words | cw else 0.0
        rank = (jaccard, ratio, cand)
        if best is None or rank[:2] > best[:2] or (rank[:2] == best[:2] and cand < best[2]):
            best = rank
    return None if best is None else best[2]
