"""Batch-score a tag vocabulary: token split and leakage risk of every tag.

Score file schema (one row per tag; ``write_scores`` / ``read_score_file``)
---------------------------------------------------------------------------
=====================  ============  ==========================================================
column                 type          meaning
=====================  ============  ==========================================================
tag                    str           the tag as written in the vocabulary (``wine_bottle``)
text                   str           as analysed: underscores to spaces (``wine bottle``)
count                  int | null    post count from the vocabulary
category               int | null    category from the vocabulary, in its own numbering
category_name          str | null    that category's name: Danbooru's numbering (0 general,
                                     1 artist, 3 copyright, 4 character, 5 meta) or e621's
                                     (5 species, 6 invalid, 7 meta, 8 lore), as score read
                                     the list (``--numbering``)
tokens                 list[str]     CLIP BPE pieces, ``</w>`` marks a word end
n_tokens               int           number of tokens (BOS/EOS not counted)
known_words            list[str]     words that are one whole-word token
unknown_words          list[str]     words split into sub-word pieces
head_token             str | null    the token that carries the tag's head noun (see below)
shares_token_with      str | null    the most frequent other tag containing ``head_token``
shares_token_count     int | null    its post count
neighbors              list          the K nearest tags by embedding, most similar first, as
                                     (tag, similarity) pairs
leak_similarity        float | null  similarity to ``shares_token_with``
distinctiveness        float | null  1 - mean similarity to the K nearest tags
leak_risk              float | null  max(leak_similarity, 0) x dominance (see below)
leak_similarity_raw    float | null  plain cosine to ``shares_token_with`` (before centring)
leak_percentile        float | null  share (0-100) of random tag pairs less similar than
                                     ``leak_similarity`` in this model
nearest_percentile     float | null  the same for the nearest neighbour's similarity
=====================  ============  ==========================================================

Every similarity is the centred cosine (tagsmith.model.calibration): the cosine after
subtracting the model's mean tag vector over the vocabulary's most frequent tags, so 0 is an
unrelated pair and the values spread over the range instead of sitting near 1; the percentile
columns say how that compares with random pairs of those tags in the same model.

Columns after ``head_token``'s group that need the text encoder are null (and ``neighbors``
empty) when scoring ran without a model.

In files: CSV has one header row with these names; list columns of words and tokens are
space-separated (CLIP pieces and words never contain spaces) and ``neighbors`` is a JSON array
of ``[tag, similarity]`` pairs; empty cells are null. JSONL has one object per line with these
keys (``neighbors`` as ``[{"tag": ..., "similarity": ...}]``). Parquet has these columns
(``neighbors`` as ``list<struct<tag: string, similarity: float>>``) and the run summary as
JSON in the schema metadata key ``tagsmith``. Similarities are rounded to 4 decimals.

Definitions
-----------
- **head token**: Danbooru tags are English noun phrases whose head is the last word
  (``wine bottle``, ``long hair``); a trailing parenthesised qualifier is a disambiguator, not
  the head (``hijikata toushirou (gintama)`` -> ``toushirou``). The head token is the last
  token of the last word that contains a letter, outside such a qualifier; for a tag without
  letters, the last token of its last non-digit word (``:)``); a bare number (``2021``) has
  none. It is the token whose existing meaning the tag leans on.
- **shares_token_with**: among all other tags of the vocabulary (before ``--min-count``,
  ``--category`` and ``--limit``) that contain the head token anywhere, the one with the
  highest post count; ties, and lists without counts, prefer the tag with fewer tokens (the
  more generic one), then the earlier row.
- **dominance** = clamp(log10(shares_token_count / count) / 3, 0, 1): 0 when the other tag is
  not more frequent, 1 when it is 1000x more frequent. Null when either count is unknown.
- **leak_risk** = max(leak_similarity, 0) x dominance: high when a tag sits close to a much more
  frequent tag that shares its head token (``mayonnaise bottle`` vs ``bottle``), which is where
  training pulls a new concept towards the old one.
- **distinctiveness** = 1 - mean similarity to its K nearest tags: higher means the tag sits
  further from every other tag of the list in the model's space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from tagsmith.errors import InputError, UsageError
from tagsmith.text.vocab import RowProblem, VocabEntry, Vocabulary, category_names

DEFAULT_K = 5


# Tags per encoder call: big enough for efficient batches, small enough that the progress bar
# and the embedding cache advance every few seconds on a CPU (an embedder may prefer more:
# preferred_chunk is 32,768 on a GPU).
EMBED_CHUNK = 1024


RISKIEST = 20


_DECIMALS = 4


# (phase, done, total); phases: "tokenize", "encode", "neighbors".
ScoreProgress = Callable[[str, int, int], None]


class ScoreNeighbor(NamedTuple):
    tag: str
    similarity: float


@dataclass(frozen=True)
class ScoreRow:
    """One scored tag; fields are the score file's columns (see the module docstring)."""

    tag: str
    text: str
    count: int | None
    category: int | None
    category_name: str | None
    tokens: tuple[str, ...]
    n_tokens: int
    known_words: tuple[str, ...]
    unknown_words: tuple[str, ...]
    head_token: str | None = None
    shares_token_with: str | None = None
    shares_token_count: int | None = None
    neighbors: tuple[ScoreNeighbor, ...] = ()
    leak_similarity: float | None = None
    distinctiveness: float | None = None
    leak_risk: float | None = None
    leak_similarity_raw: float | None = None
    leak_percentile: float | None = None
    nearest_percentile: float | None = None

    @property
    def split(self) -> bool:
        """True when some word is split into sub-word pieces."""
        return bool(self.unknown_words)

    @property
    def dominance(self) -> float | None:
        return dominance(self.count, self.shares_token_count)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        d["known_words"] = list(self.known_words)
        d["unknown_words"] = list(self.unknown_words)
        d["neighbors"] = [{"tag": n.tag, "similarity": n.similarity} for n in self.neighbors]
        return d


COLUMNS = tuple(f.name for f in fields(ScoreRow))


@dataclass
class ScoreSummary:
    """What a run did, for the terminal summary and the parquet metadata."""

    n_tags: int
    n_split: int  # tags with a word split into sub-word pieces
    vocabulary: str  # Vocabulary.summary()
    duplicates_removed: int
    bad_rows: int
    filtered_out: int  # by --min-count / --category / --limit
    k: int
    model: dict | None  # embedder.model_info(), None without a model
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    riskiest: list[ScoreRow] = field(default_factory=list)
    baseline: dict | None = None  # Baseline.summary() of the model's baseline

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["riskiest"] = [r.tag for r in self.riskiest]
        return d


@dataclass
class ScoreResult:
    rows: list[ScoreRow]
    summary: ScoreSummary
    problems: list[RowProblem] = field(default_factory=list)


def dominance(count: int | None, other_count: int | None) -> float | None:
    """clamp(log10(other / own) / 3, 0, 1); None when a count is unknown."""
    if count is None or other_count is None:
        return None
    if other_count <= 0:
        return 0.0
    ratio = other_count / max(count, 1)
    return min(1.0, max(0.0, math.log10(ratio) / 3)) if ratio > 1 else 0.0


def parse_categories(values: Sequence[str], numbering: str = "danbooru") -> set[int]:
    """``--category`` values: numbers or names in the list's own numbering
    (``CATEGORY_NUMBERINGS``: Danbooru's, or e621's where species is 5 and meta 7)."""
    from tagsmith.text.vocab import CATEGORY_NUMBERINGS

    names = CATEGORY_NUMBERINGS[numbering]
    out: set[int] = set()
    for raw in values:
        for v in str(raw).split(","):
            v = v.strip().lower()
            if not v:
                continue
            if v.lstrip("-").isdigit():
                out.add(int(v))
            elif v in names:
                out.add(names[v])
            else:
                known = ", ".join(names)
                raise UsageError(
                    f"Unknown category {v!r} for a list numbered like {numbering}: give a "
                    f"number or one of {known}."
                )
    return out


def select_entries(
    vocab: Vocabulary,
    *,
    min_count: int | None = None,
    categories: Collection[int] | None = None,
    limit: int | None = None,
) -> list[int]:
    """Rows of ``vocab`` to score, in file order. Tags without a count pass ``min_count``."""
    rows = []
    for i, e in enumerate(vocab.entries):
        if min_count is not None and e.count is not None and e.count < min_count:
            continue
        if categories and e.category not in categories:
            continue
        rows.append(i)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def head_token_index(words: Sequence[Any], n_tokens: int) -> int | None:
    """Position of the head token in a tag's ids (see the module docstring), or None."""
    if n_tokens == 0:
        return None
    spans: list[tuple[str, int, int]] = []
    pos = 0
    for w in words:
        spans.append((w.text, pos, pos + len(w.ids)))
        pos += len(w.ids)
    # Drop a trailing "( ... )" qualifier.
    if len(spans) >= 3 and spans[-1][0].startswith(")"):
        depth = 0
        for j in range(len(spans) - 1, -1, -1):
            depth += spans[j][0].count(")") - spans[j][0].count("(")
            if depth <= 0 and "(" in spans[j][0]:
                if j > 0:
                    spans = spans[:j]
                break
    for text, _start, stop in reversed(spans):
        if any(ch.isalpha() for ch in text):
            return stop - 1
    # No letters: an emoticon's last piece carries it (":)"); a bare number ("2021") has no
    # head worth comparing (its last digit is shared with "1girl").
    for text, _start, stop in reversed(spans):
        if not text.isdigit():
            return stop - 1
    return None


def _shares_token(
    head_ids: np.ndarray,
    all_ids: list[Sequence[int]],
    counts: np.ndarray,
    n_tokens: np.ndarray,
    rows: Sequence[int],
) -> np.ndarray:
    """For each row in ``rows``: the best other vocabulary row containing its head token, or -1.

    Best = highest count, then fewest tokens, then earliest row (module docstring).
    """
    n = len(all_ids)
    lengths = np.fromiter((len(i) for i in all_ids), dtype=np.int64, count=n)
    flat = np.fromiter((t for ids in all_ids for t in ids), dtype=np.int64,
                       count=int(lengths.sum()))
    owner = np.repeat(np.arange(n), lengths)
    # (token, row) pairs ordered by token, then preference; a row listed once per token.
    order = np.lexsort((owner, n_tokens[owner], -counts[owner], flat))
    tok, own = flat[order], owner[order]
    keep = np.ones(len(tok), dtype=bool)
    keep[1:] = (tok[1:] != tok[:-1]) | (own[1:] != own[:-1])
    tok, own = tok[keep], own[keep]
    heads = np.asarray(head_ids, dtype=np.int64)
    rows_arr = np.asarray(rows, dtype=np.int64)
    lo = np.searchsorted(tok, heads, side="left")
    hi = np.searchsorted(tok, heads, side="right")
    own_ext = np.append(own, -1)
    # The best row for the token, unless it is the row itself: then the next one, if any.
    first = np.where(lo < hi, own_ext[lo], -1)
    second = np.where(lo + 1 < hi, own_ext[np.minimum(lo + 1, len(own))], -1)
    out = np.where(first == rows_arr, second, first)
    out[heads < 0] = -1
    return out


def _nothing(phase: str, done: int, total: int) -> None:
    pass


def score_vocabulary(
    vocab: Vocabulary,
    embedder: Any | None = None,
    *,
    k: int = DEFAULT_K,
    min_count: int | None = None,
    categories: Collection[int] | None = None,
    limit: int | None = None,
    chunk_size: int | None = None,
    progress: ScoreProgress = _nothing,
    neighbor_backend: str = "auto",
    memory_budget: int | None = None,
    baseline: Any | None = None,
    token_ids: Sequence[Sequence[int]] | None = None,
    numbering: str | None = None,
) -> ScoreResult:
    """Score the tags of ``vocab``; ``embedder`` is a TagEmbedder, or None for tokens only.

    ``numbering``: whose category numbers the list uses, "danbooru" or "e621" (default: as
    ``vocab.numbering`` detects it); it names the ``category_name`` column.

    ``token_ids``: every entry's ids, when known (``vocab_index.vocabulary_token_ids`` reads
    them from the cached vocabulary index): nothing is tokenized then, here or in the encoder.

    Similarities are centred cosines against ``baseline`` (default: the model's baseline over
    the vocabulary's most frequent tags, tagsmith.model.calibration). Phases report through
    ``progress(phase, done, total)``. A Ctrl-C raises
    ``KeyboardInterrupt`` out of any phase; vectors already computed stay in the embedder's
    cache, so a rerun skips them.
    """
    from tagsmith.text.tokenizer import load_tokenizer

    if k < 1:
        raise UsageError("--neighbors must be at least 1.")
    timings: dict[str, float] = {}
    selected = select_entries(vocab, min_count=min_count, categories=categories, limit=limit)
    entries = vocab.entries
    if not selected:
        raise InputError(
            f"No tags left to score: all {len(entries):,} tags of the vocabulary were "
            "filtered out by --min-count/--category/--limit."
        )

    # Tokenize the whole vocabulary: shares_token_with looks beyond the selected rows.
    t0 = time.perf_counter()
    tok = load_tokenizer()
    texts_all = [e.text for e in entries]
    selected_set = set(selected)
    analysed: dict[int, Any] = {}
    all_ids: list[Sequence[int]] = []
    step = 8192
    if token_ids is not None and len(token_ids) != len(entries):
        raise ValueError("token_ids must hold one entry per vocabulary entry")
    for start in range(0, len(entries), step):
        chunk = texts_all[start : start + step]
        # Full analysis (words, pieces) only for the rows we output; ids for the rest.
        want = [i for i in range(start, start + len(chunk)) if i in selected_set]
        if want:
            want_texts = [texts_all[i] for i in want]
            tts = (tok.analyze_batch(want_texts, underscores=False) if token_ids is None else
                   tok.analyze_ids(want_texts, [token_ids[i] for i in want], underscores=False))
            for i, tt in zip(want, tts):
                analysed[i] = tt
        rest = [i for i in range(start, start + len(chunk)) if i not in selected_set]
        rest_ids = dict(zip(rest, tok.encode_batch([texts_all[i] for i in rest])
                            if token_ids is None else [token_ids[i] for i in rest]))
        for i in range(start, start + len(chunk)):
            all_ids.append(analysed[i].ids if i in analysed else rest_ids[i])
        progress("tokenize", min(start + step, len(entries)), len(entries))
    counts = np.array([-1 if e.count is None else e.count for e in entries], dtype=np.int64)
    n_tok = np.fromiter((len(i) for i in all_ids), dtype=np.int64, count=len(all_ids))
    head_pos = [head_token_index(analysed[i].words, len(analysed[i].ids)) for i in selected]
    head_ids = np.array(
        [-1 if p is None else analysed[i].ids[p] for i, p in zip(selected, head_pos)],
        dtype=np.int64,
    )
    partner = _shares_token(head_ids, all_ids, counts, n_tok, selected)
    timings["tokenize"] = time.perf_counter() - t0

    neigh = None
    neigh_row: dict[int, int] = {}
    leak = np.full(len(selected), np.nan, dtype=np.float32)
    leak_raw = np.full(len(selected), np.nan, dtype=np.float32)
    if embedder is not None:
        t0 = time.perf_counter()
        # Partners outside the selection are embedded too, after the selected rows. A tag
        # with no tokens at all (only characters the cleaner removes) has no vector.
        embedded = [j for j, i in enumerate(selected) if n_tok[i] > 0]
        extra = sorted({int(p) for p in partner if p >= 0} - selected_set)
        embed_rows = [selected[j] for j in embedded] + extra
        vectors = embed_in_chunks(
            embedder, [texts_all[i] for i in embed_rows],
            chunk_size=chunk_size or preferred_chunk(embedder),
            token_ids=[all_ids[i] for i in embed_rows],
            progress=lambda d, t: progress("encode", d, t),
            cache_progress=lambda d, t: progress("cache", d, t),
        )
        timings["encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from tagsmith.analysis.neighbors import DEFAULT_MEMORY_BUDGET, nearest_neighbors
        from tagsmith.model.calibration import model_baseline, vocabulary_reference

        if baseline is None:  # after the big pass: its reference tags are mostly cached now
            ref = vocabulary_reference(texts_all, counts)
            baseline = model_baseline(embedder, ref, label=f"the {len(ref):,} most frequent "
                                      f"tags of {vocab.summary()}")
        position = {r: j for j, r in enumerate(embed_rows)}
        pairs = [(j, position[selected[j]], position[int(partner[j])])
                 for j in embedded if partner[j] >= 0]
        if pairs:
            js, mine, other = (np.array(c) for c in zip(*pairs))
            leak_raw[js] = _pair_cosines(vectors[mine], vectors[other])
        unit = _centred_units(vectors, baseline.mean)  # in place: 140k x 768 is 430 MB
        del vectors
        neigh = nearest_neighbors(
            unit[: len(embedded)], k, backend=neighbor_backend, normalized=True,
            memory_budget=memory_budget or DEFAULT_MEMORY_BUDGET,
            progress=lambda d, t: progress("neighbors", d, t),
        )
        neigh_row = dict(zip(embedded, range(len(embedded))))
        if pairs:
            leak[js] = np.einsum("ij,ij->i", unit[mine], unit[other])
        timings["neighbors"] = time.perf_counter() - t0

    names = category_names(numbering or vocab.numbering)
    rows: list[ScoreRow] = []
    for j, i in enumerate(selected):
        e: VocabEntry = entries[i]
        tt = analysed[i]
        p = int(partner[j])
        other = entries[p] if p >= 0 else None
        hp = head_pos[j]
        nb: tuple[ScoreNeighbor, ...] = ()
        leak_sim = distinct = risk = leak_raw_sim = leak_pct = near_pct = None
        n_row = neigh_row.get(j)
        if neigh is not None and n_row is not None:
            nb = tuple(
                ScoreNeighbor(entries[selected[embedded[int(x)]]].tag, round_score(s))
                for x, s in zip(neigh.indices[n_row], neigh.similarities[n_row])
            )
            if len(nb):
                distinct = round_score(1.0 - float(np.mean(neigh.similarities[n_row])))
                near_pct = round(baseline.percentile(float(neigh.similarities[n_row][0])), 2)
            if other is not None:
                leak_sim = round_score(float(leak[j]))
                leak_raw_sim = round_score(float(leak_raw[j]))
                leak_pct = round(baseline.percentile(float(leak[j])), 2)
                dom = dominance(e.count, other.count)
                risk = None if dom is None else round_score(max(leak_sim, 0.0) * dom)
        rows.append(
            ScoreRow(
                tag=e.tag,
                text=e.text,
                count=e.count,
                category=e.category,
                category_name=None if e.category is None else names.get(e.category),
                tokens=tuple(tt.tokens),
                n_tokens=tt.n_tokens,
                known_words=tuple(tt.known_words),
                unknown_words=tuple(tt.unknown_words),
                head_token=None if hp is None else tt.tokens[hp],
                shares_token_with=None if other is None else other.tag,
                shares_token_count=None if other is None else other.count,
                neighbors=nb,
                leak_similarity=leak_sim,
                distinctiveness=distinct,
                leak_risk=risk,
                leak_similarity_raw=leak_raw_sim,
                leak_percentile=leak_pct,
                nearest_percentile=near_pct,
            )
        )
    summary = ScoreSummary(
        n_tags=len(rows),
        n_split=sum(1 for r in rows if r.split),
        vocabulary=vocab.summary(),
        duplicates_removed=vocab.duplicates_removed,
        bad_rows=len(vocab.problems),
        filtered_out=len(entries) - len(selected),
        k=neigh.k if neigh is not None else 0,
        model=embedder.model_info() if embedder is not None else None,
        timings=timings,
        riskiest=riskiest(rows),
        baseline=baseline.summary() if baseline is not None else None,
    )
    return ScoreResult(rows=rows, summary=summary, problems=list(vocab.problems))


def riskiest(rows: Sequence[ScoreRow], n: int = RISKIEST) -> list[ScoreRow]:
    """Tags with the highest leak_risk (> 0). Where no row has a risk: by leak_similarity
    (a model but no counts), else by dominance > 0 (counts but no model)."""
    if any(r.leak_risk is not None for r in rows):
        picked = [r for r in rows if r.leak_risk]
        picked.sort(key=lambda r: (r.leak_risk, r.leak_similarity), reverse=True)
    elif any(r.leak_similarity is not None for r in rows):
        picked = [r for r in rows if r.leak_similarity is not None]
        picked.sort(key=lambda r: r.leak_similarity, reverse=True)
    else:
        picked = [r for r in rows if r.dominance]
        # dominance saturates at 1000x: the raw ratio orders the rest.
        picked.sort(key=lambda r: (r.dominance, (r.shares_token_count or 0) / max(r.count or 1, 1)),
                    reverse=True)
    return picked[:n]


def preferred_chunk(embedder: Any) -> int:
    """Tags per ``embed`` call: ``EMBED_CHUNK`` on a CPU, so progress and the cache advance
    every few seconds; 32,768 on a GPU, so each call fills several whole 32k-position batches
    (~3.6 positions per Danbooru tag after prefix sharing) and the encoder's pipeline stays
    busy. Judged without loading the model when it is not loaded yet."""
    settings = getattr(embedder, "settings", None)
    if settings is None:
        return EMBED_CHUNK
    if getattr(embedder, "loaded", False):
        on_gpu = str(embedder.model_info().get("device", "cpu")) != "cpu"
    else:
        from tagsmith.model.device import gpu_possible

        on_gpu = settings.device != "cpu" and (settings.device != "auto" or gpu_possible())
    return 32768 if on_gpu else EMBED_CHUNK


def embed_in_chunks(
    embedder: Any,
    texts: Sequence[str],
    *,
    chunk_size: int = EMBED_CHUNK,
    token_ids: Sequence[Sequence[int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``embedder.embed`` over ``texts`` in chunks, returned in the order of ``texts``.

    Texts go in the order of their token ids, so each chunk holds tags that start alike and
    the encoder runs their common starts once (``encoder.prefix_trees``); each chunk is its
    own ``embed`` call, so the cache keeps what was done when a long run is interrupted.
    With ``cache_progress``, vectors already in the embedder's cache are read first, as their
    own phase, and ``progress`` then counts only the tags left to encode.
    """
    n_all = len(texts)
    found: dict[str, np.ndarray] = {}
    if cache_progress is not None and hasattr(embedder, "cached"):
        found = embedder.cached(texts, progress=cache_progress)
    if found:
        todo = [i for i in range(n_all) if texts[i] not in found]
        rest = embed_in_chunks(
            embedder, [texts[i] for i in todo], chunk_size=chunk_size,
            token_ids=None if token_ids is None else [token_ids[i] for i in todo],
            progress=progress,
        )
        dim = next(iter(found.values())).shape[0]
        out_all = np.empty((n_all, dim), dtype=np.float32)
        for i in range(n_all):
            if texts[i] in found:
                out_all[i] = found[texts[i]]
        if todo:
            out_all[todo] = rest
        return out_all
    n = n_all
    if token_ids is None:
        from tagsmith.text.tokenizer import load_tokenizer

        token_ids = load_tokenizer().encode_batch(list(texts))
    if hasattr(embedder, "expect_positions"):
        embedder.expect_positions(sum(len(ids) for ids in token_ids))
    keys = [tuple(ids) for ids in token_ids]
    order = sorted(range(n), key=keys.__getitem__)
    chunks = [order[s : s + chunk_size] for s in range(0, n, chunk_size)]
    out: np.ndarray | None = None
    done = 0
    if progress is not None:
        progress(0, n)
    for idx in chunks:
        base = done

        def inner(d: int, t: int, base: int = base) -> None:
            if progress is not None:
                progress(base + min(d, t), n)

        vecs = np.asarray(embedder.embed([texts[i] for i in idx], progress=inner,
                                         token_ids=[token_ids[i] for i in idx]),
                          dtype=np.float32)
        if out is None:
            out = np.empty((n, vecs.shape[1]), dtype=np.float32)
        out[idx] = vecs
        done += len(idx)
        if progress is not None:
            progress(done, n)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)


def _centred_units(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus ``mean``, scaled to unit length, in place (chunked: no second big copy)."""
    out = np.asarray(vectors, dtype=np.float32)
    for s in range(0, len(out), 8192):
        block = out[s : s + 8192]
        block -= mean
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block /= np.where(norms == 0, 1.0, norms)
    return out


def round_score(x: float) -> float:
    return round(float(x), _DECIMALS)
