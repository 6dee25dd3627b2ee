"""Neighbour concepts: the vocabulary tags a form could be confused with, found by shared
whole-word tokens and by nearness in the encoder (a static token-embedding shortlist the
encoder then re-ranks). Shared by suggest and trigger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagsmith.analysis.ranking import Progress, cosine_matrix, no_progress
from tagsmith.model.calibration import Baseline, model_baseline, vocabulary_reference
from tagsmith.text.tokenizer import load_tokenizer
from tagsmith.text.variants import Candidate

# Vocabulary tags looked at for embedding neighbours: the most frequent ones carry the
# meanings a new tag leaks into, and a bounded pool keeps suggest interactive.
NEAREST_POOL_TAGS = 20_000


NEAREST_SHORTLIST = 16

# Pool rows ranked by nearness to a text, per (vocabulary index, model, table shape, text):
# trigger asks again for the heads it shortlisted before its encoder pass, and mapping the
# pool again then would add its pages on top of the encoder's weights (the run's peak RSS).
_RANKED: dict[tuple, np.ndarray] = {}


@dataclass(frozen=True)
class Neighbor:
    """A concept a form is compared with."""

    tag: str  # as analysed
    source: str  # part | vocab | user | nearest
    role: str  # keep | leak | avoid
    count: int | None = None  # vocabulary post count, when known

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "source": self.source, "role": self.role, "count": self.count}


def shared_token_neighbors(
    candidates: Sequence[Candidate],
    index: Any,
    *,
    per_token: int,
    skip: set[str],
    skip_words: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[Neighbor]:
    """Vocabulary tags that contain a known word token of any candidate, most posts first.

    ``bottle`` in ``mayonnaise bottle`` brings ``bottle``, ``holding bottle``, ``water bottle``:
    whatever the token means in those tags is what the new tag inherits.
    """
    out: list[Neighbor] = []
    seen_tokens: set[int] = set()
    taken_texts = set(skip)
    for c in candidates:
        for w in c.analysis.words:
            if not w.known or w.is_punctuation or w.ids[0] in seen_tokens or w.text in skip_words:
                continue
            seen_tokens.add(w.ids[0])
            taken = 0
            for r in index.rows_with_token(w.ids[0], whole_word=True):
                t = index.texts[int(r)]
                if t in taken_texts:
                    continue
                taken_texts.add(t)
                out.append(Neighbor(tag=t, source="vocab", role="leak", count=index.count(int(r))))
                taken += 1
                if taken >= per_token:
                    break
    return out


def nearest_vocab_tags(
    text: str,
    index: Any,
    embedder: Any,
    table: np.ndarray,
    *,
    k: int,
    exclude: set[str],
    baseline: Any | None = None,
) -> list[Neighbor]:
    """The ``k`` vocabulary tags nearest to ``text`` in the encoder: the encoder ranks the
    static shortlist of ``nearest_shortlist``."""
    shortlist = nearest_shortlist(text, index, table, exclude=exclude,
                                  fingerprint=table_fingerprint(embedder))
    if not shortlist or k <= 0:
        return []
    vecs = embedder.embed([text] + [index.texts[r] for r in shortlist])
    return rank_shortlist(vecs[0], vecs[1:], shortlist, index, k=k, baseline=baseline)


def table_fingerprint(embedder: Any) -> str | None:
    """What keys vectors built from the token table alone: the base model's key under a LoRA,
    unless the LoRA changes the table itself (only full diffs can)."""
    lora = getattr(embedder, "lora", None)
    if lora is not None and not lora.changes_table:
        return getattr(embedder, "base_fingerprint", None)
    return getattr(embedder, "fingerprint", None)


def nearest_shortlist(
    text: str, index: Any, table: np.ndarray, *, exclude: set[str], fingerprint: str | None = None,
    size: int | None = None,
) -> list[int]:
    """Rows of the ``NEAREST_SHORTLIST`` (or ``size``) vocabulary tags nearest to ``text`` by
    the mean of their input token embeddings (no encoder pass). With the model's
    ``fingerprint`` and a cached vocabulary index, those mean vectors are cached beside it."""
    if len(index) == 0:
        return []
    cache_file = getattr(index, "cache_file", None)
    key = None if cache_file is None or not fingerprint else (
        str(cache_file), fingerprint, table.shape, text)
    ranked = _RANKED.get(key) if key is not None else None
    if ranked is None:
        tok = load_tokenizer()
        ids = np.asarray(tok.encode(text), dtype=np.int64)
        if ids.size == 0:
            return []
        order = np.argsort(-index.counts, kind="stable")[:NEAREST_POOL_TAGS]
        unit = pool_vectors(index, order, table, fingerprint)
        query = np.asarray(table[ids], dtype=np.float32).mean(axis=0)
        sims = unit @ (query / (np.linalg.norm(query) or 1.0))
        del unit  # the 61 MB mapping goes before the caller's encoder pass, not after it
        ranked = order[np.argsort(-sims)]
        if key is not None:
            if len(_RANKED) >= 64:
                _RANKED.clear()
            _RANKED[key] = ranked
    want = size or NEAREST_SHORTLIST
    out: list[int] = []
    for r in ranked:
        row = int(r)
        if index.texts[row] not in exclude:
            out.append(row)
            if len(out) == want:
                break
    return out


def pool_vectors(
    index: Any, order: np.ndarray, table: np.ndarray, fingerprint: str | None
) -> np.ndarray:
    """``static_vectors`` of the pool scaled to unit length (float32), cached per vocabulary
    index and model (61 MB for 20k tags) and memory-mapped on a repeat: no scipy import, no
    sparse product, no widening or norming per call (trigger asks a dozen times)."""
    from tagsmith.fileio import atomic_write_bytes

    cache_file = getattr(index, "cache_file", None)
    path = None
    if cache_file is not None and fingerprint:
        path = cache_file.with_name(
            f"{cache_file.stem}.pool-{fingerprint[:16]}-{len(order)}-unit.npy")
        try:
            cached = np.load(path, mmap_mode="r", allow_pickle=False)
            if cached.shape == (len(order), table.shape[1]) and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError):
            pass  # absent or damaged: compute it again
    vecs = static_vectors(index, order, table)
    norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs))[:, None]
    vecs /= np.where(norms == 0, 1.0, norms)
    if path is not None:
        import io

        buf = io.BytesIO()
        np.save(buf, vecs)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError:
            pass  # a cache that cannot be written only costs speed
    return vecs


def rank_shortlist(
    query: np.ndarray, vectors: np.ndarray, shortlist: Sequence[int], index: Any, *, k: int,
    baseline: Any | None = None,
) -> list[Neighbor]:
    """The ``k`` shortlisted rows whose encoder vectors are nearest to ``query`` (by centred
    cosine with the model's ``baseline``, tagsmith.model.calibration)."""
    similarity = baseline.similarity if baseline is not None else cosine_matrix
    sims = similarity(np.asarray(query)[None, :], vectors)[0]
    return [
        Neighbor(tag=index.texts[shortlist[int(j)]], source="nearest", role="leak",
                 count=index.count(shortlist[int(j)]))
        for j in np.argsort(-sims, kind="stable")[:k]
    ]


def static_vectors(index: Any, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Mean input token embedding of each row's ids (no encoder pass): one sparse product."""
    from scipy.sparse import csr_matrix

    starts = index.indptr[rows]
    lengths = (index.indptr[rows + 1] - starts).astype(np.int64)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # Positions of every row's ids in the flat array, gathered without a Python loop.
    offsets = np.repeat(starts - indptr[:-1], lengths) + np.arange(int(indptr[-1]))
    cols = index.token_ids[offsets].astype(np.int64)
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
    mean = csr_matrix((weights, cols, indptr), shape=(len(rows), table.shape[0]))
    return np.asarray(mean @ table.astype(np.float32, copy=False), dtype=np.float32)


def baseline_for(embedder: Any, index: Any | None, progress: Progress = no_progress) -> Baseline:
    """The model's baseline over the vocabulary's most frequent tags (the shipped common tags
    without a vocabulary): cached, so only a model's first run pays one embedding pass."""
    progress("reading the model's baseline")
    if index is None:
        return model_baseline(embedder)
    ref = vocabulary_reference(index.texts, index.counts)
    return model_baseline(embedder, ref, label=f"the {len(ref):,} most frequent tags of "
                          f"{index.summary or 'the vocabulary'}")


class PrefetchedVectors:
    """An embedder's vectors for texts known in advance, from one encoder pass; texts asked
    for later are embedded then. A command that asks in several small rounds (trigger: a
    shortlist per family, then the members) pays the forward pass's set-up once."""

    def __init__(self, embedder: Any, texts: Sequence[str]) -> None:
        self._embedder = embedder
        self.fingerprint = getattr(embedder, "fingerprint", None)
        unique = list(dict.fromkeys(texts))
        self._known = dict(zip(unique, embedder.embed(unique))) if unique else {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._known]
        if missing:
            self._known.update(zip(missing, self._embedder.embed(missing)))
        return np.stack([self._known[t] for t in texts]) if texts else np.zeros((0, 0))
