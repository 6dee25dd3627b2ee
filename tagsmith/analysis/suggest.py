"""Compare the forms of a tag against its neighbour concepts and rank them (``tagsmith suggest``).

The flow, for ``mayonnaise bottle``:

1. Candidate forms (tagsmith.text.variants): spaced, hyphenated, underscore, joined, head and
   modifier substitutions by nearby known words (``container``, ``jar``), user forms.
2. Neighbour concepts, each with a role:
   - ``keep``: what the tag must still mean: ``--keep``, else its distinctive words (the
     modifier ``mayonnaise``; with a vocabulary, every word but the most frequent one);
   - ``leak``: what it must not turn into: its generic part (``bottle``), ``--neighbor`` tags,
     vocabulary tags that share a known word token with any candidate, most posts first
     (``bottle``, ``holding bottle``, ``water bottle``, ``wine bottle``), and the vocabulary tags
     nearest to the tag in the encoder (found among the most frequent tags by the mean of their
     input token embeddings, then measured with the encoder);
   - ``avoid``: ``--avoid`` tags (correlated concepts it must not collide with).
3. Every candidate x every neighbour centred cosine of tag vectors, read against the model's
   baseline (tagsmith.model.calibration: percentiles among random tag pairs, ties), then the
   score in tagsmith.analysis.ranking, and a one-line reason built from the numbers.

Without a reachable encoder the candidates and their token splits are still returned, with a
notice saying how to give a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.analysis.concepts import (
    Neighbor,
    baseline_for,
    nearest_shortlist,
    rank_shortlist,
    shared_token_neighbors,
    table_fingerprint,
)
from tagsmith.analysis.ranking import (
    Progress,
    RankedCandidate,
    ScoreWeights,
    cosine_matrix,
    describe_kind,
    encoder_similarities,
    known_words,
    no_progress,
    score_by_role,
    token_reason,
)
from tagsmith.errors import UsageError
from tagsmith.model.calibration import Baseline, percentile_note, top_share
from tagsmith.text.prompt import analysed_tag_text
from tagsmith.text.tokenizer import CHUNK_LENGTH, load_tokenizer
from tagsmith.text.variants import (
    Candidate,
    generate_forms,
    limit_generated,
    tag_words,
)


@dataclass
class SuggestOptions:
    neighbors: Sequence[str] = ()
    avoid: Sequence[str] = ()
    keep: Sequence[str] = ()
    candidates: Sequence[str] = ()
    vocab_path: Path | None = None
    top: int | None = None
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    vocab_per_token: int = 3
    nearest: int = 3
    substitutes: int = 4
    cache_dir: Path | None = None
    use_cache: bool = True


@dataclass
class SuggestResult:
    tag: str
    text: str
    model: dict[str, Any] | None
    neighbors: list[Neighbor]
    candidates: list[RankedCandidate]  # best first (input order without a model)
    weights: ScoreWeights
    notices: list[str] = field(default_factory=list)
    vocabulary: str | None = None
    baseline: Baseline | None = None
    # with --lora: each form's numbers in the base model alone, {form: {score, similarity}}
    base: dict[str, dict[str, Any]] | None = None

    @property
    def has_similarity(self) -> bool:
        return self.model is not None

    @property
    def recommended(self) -> RankedCandidate | None:
        return self.candidates[0] if self.candidates and self.has_similarity else None

    def similarity_matrix(self) -> tuple[list[str], list[str], np.ndarray]:
        """Row labels (forms), column labels (neighbour tags), cosines (NaN when unknown)."""
        rows = [c.form for c in self.candidates]
        cols = [n.tag for n in self.neighbors]
        m = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
        for i, c in enumerate(self.candidates):
            for j, n in enumerate(cols):
                if n in c.similarity:
                    m[i, j] = c.similarity[n]
        return rows, cols, m

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "text": self.text,
            "model": self.model,
            "weights": vars(self.weights).copy(),
            "vocabulary": self.vocabulary,
            "neighbors": [n.to_dict() for n in self.neighbors],
            "candidates": [
                {**c.to_dict(), **({"base": self.base.get(c.form)} if self.base else {})}
                for c in self.candidates
            ],
            "notices": list(self.notices),
            "baseline": None if self.baseline is None else self.baseline.summary(),
        }





def suggest(
    tag: str,
    options: SuggestOptions | None = None,
    *,
    embedder: Any | None = None,
    notices: Sequence[str] = (),
    progress: Progress = no_progress,
    baseline: Baseline | None = None,
    base: Any | None = None,
) -> SuggestResult:
    """Rank the forms of ``tag``. ``embedder`` is a TagEmbedder, or None for tokens only;
    ``baseline`` defaults to the model's (``baseline_for``). ``base`` (with --lora: the same
    model without the LoRAs) adds each form's score and similarities there, against the same
    neighbours, measured on its own baseline (``result.base``)."""
    options = options or SuggestOptions()
    text = analysed_tag_text(tag)
    if not text:
        raise UsageError("The tag is empty; give a tag such as \"mayonnaise bottle\".")
    tok = load_tokenizer()
    words = tag_words(tag)

    index = None
    if options.vocab_path is not None:
        from tagsmith.text.vocab_index import load_vocab_index

        index = load_vocab_index(options.vocab_path, cache_dir=options.cache_dir,
                                 use_cache=options.use_cache, progress=progress)

    table = None
    if embedder is not None:
        progress("reading token embeddings")
        table = embedder.token_embedding_table()
    candidates = generate_forms(tag, tok, table=table, user_forms=options.candidates,
                                substitutes_per_word=options.substitutes)

    neighbors = _neighbors(text, words, candidates, options, index, tok)
    result = SuggestResult(
        tag=tag, text=text, model=None, neighbors=neighbors,
        candidates=[RankedCandidate(c) for c in candidates], weights=options.weights,
        notices=list(notices) + (index.problems if index is not None else []),
        vocabulary=index.summary if index is not None else None,
    )
    if embedder is None:
        long = [c for c in candidates if c.n_tokens > CHUNK_LENGTH]
        if long:
            # With a model the embedder says this; without one the token table must say it.
            from tagsmith.model.embedding import long_tags_note

            result.notices.append(long_tags_note(
                [c.text for c in long], CHUNK_LENGTH, (long[0].text, long[0].n_tokens)))
        for rc in result.candidates:
            rc.reason = token_reason(rc.candidate)
        result.candidates = limit_generated(result.candidates, options.top, _kind)
        return result

    if baseline is None:
        baseline = baseline_for(embedder, index, progress)
    result.baseline = baseline
    # One encoder pass for everything: the forms, the neighbours so far and the shortlist the
    # nearest vocabulary tags are picked from (a second pass would pay the batch set-up twice).
    shortlist: list[int] = []
    if index is not None and options.nearest > 0:
        progress("finding nearest vocabulary tags")
        present = {text, *(nb.tag for nb in result.neighbors), *(c.text for c in candidates)}
        shortlist = nearest_shortlist(text, index, table, exclude=present,
                                      fingerprint=table_fingerprint(embedder))
    progress("encoding candidates and neighbours")
    texts = list(dict.fromkeys(
        [text] + [c.text for c in candidates] + [n.tag for n in result.neighbors]
        + [index.texts[r] for r in shortlist]
    ))
    vectors = embedder.embed(texts)
    row = {t: i for i, t in enumerate(texts)}
    if shortlist:
        result.neighbors.extend(rank_shortlist(
            vectors[row[text]], vectors[[row[index.texts[r]] for r in shortlist]], shortlist,
            index, k=options.nearest, baseline=baseline,
        ))
    cand_vecs = vectors[[row[c.text] for c in candidates]]
    neigh_vecs = vectors[[row[n.tag] for n in result.neighbors]]
    sim = baseline.similarity(cand_vecs, neigh_vecs)
    raw = cosine_matrix(cand_vecs, neigh_vecs)
    pct = baseline.percentile(sim)
    by_encoder = encoder_similarities(embedder, cand_vecs, neigh_vecs,
                                      [n.tag for n in result.neighbors], baseline=baseline)
    scores = score_by_role(sim, candidates, [n.role for n in result.neighbors],
                           options.weights)
    if base is not None:
        result.base = _base_numbers(base, index, candidates, result.neighbors, options, progress)
    for i, rc in enumerate(result.candidates):
        rc.score = scores[i].score
        rc.detail = scores[i]
        rc.similarity = {n.tag: float(sim[i, j]) for j, n in enumerate(result.neighbors)}
        rc.similarity_by_encoder = by_encoder[i]
        rc.raw_similarity = {n.tag: float(raw[i, j]) for j, n in enumerate(result.neighbors)}
        rc.percentile = {n.tag: float(pct[i, j]) for j, n in enumerate(result.neighbors)}
    as_tagged = result.candidates[0]  # the tag as written, spaced
    for rc in result.candidates:
        rc.reason = _reason(rc, as_tagged, result.neighbors, baseline)
    result.candidates.sort(key=lambda rc: -(rc.score or 0.0))
    result.candidates = limit_generated(result.candidates, options.top, _kind)
    result.model = embedder.model_info()
    # What the encoder noticed (tags cut at 75 tokens, repaired position_ids) belongs to
    # the result, so every front end (CLI, TUI, --json) shows it.
    result.notices += [n for n in getattr(embedder, "notes", []) if n not in result.notices]
    return result


def _base_numbers(base: Any, index: Any, candidates: Sequence[Candidate],
                  neighbors: Sequence[Neighbor], options: SuggestOptions,
                  progress: Progress) -> dict[str, dict[str, Any]]:
    """{form: {score, similarity}} in the ``base`` model, for the same forms and neighbours."""
    progress("the base model's numbers")
    baseline = baseline_for(base, index, progress)
    texts = list(dict.fromkeys([c.text for c in candidates] + [n.tag for n in neighbors]))
    vectors = base.embed(texts)
    row = {t: i for i, t in enumerate(texts)}
    sim = baseline.similarity(vectors[[row[c.text] for c in candidates]],
                              vectors[[row[n.tag] for n in neighbors]])
    scores = score_by_role(sim, candidates, [n.role for n in neighbors], options.weights)
    return {
        c.form: {"score": scores[i].score,
                 "similarity": {n.tag: float(sim[i, j]) for j, n in enumerate(neighbors)}}
        for i, c in enumerate(candidates)
    }


def _kind(rc: RankedCandidate) -> str:
    return rc.candidate.kind


def _neighbors(
    text: str,
    words: list[str],
    candidates: list[Candidate],
    options: SuggestOptions,
    index: Any | None,
    tok: Any,
) -> list[Neighbor]:
    out: dict[str, Neighbor] = {}

    def add(tag: str, source: str, role: str, count: int | None = None, *,
            analysed: bool = False) -> None:
        # Vocabulary texts are analysed already: "(o)_(o)" must not lose its parentheses.
        t = tag if analysed else analysed_tag_text(tag)
        if not t or t in out:
            return
        if count is None and index is not None:
            r = index.row(t)
            count = index.count(r) if r is not None else None
        out[t] = Neighbor(tag=t, source=source, role=role, count=count)

    for k in options.keep:
        add(k, "user", "keep")
    for a in options.avoid:
        add(a, "user", "avoid")

    keep_words, leak_words = _split_parts(words, index)
    if not options.keep:
        if keep_words:
            add(" ".join(keep_words), "part", "keep")
        else:
            add(text, "part", "keep")
    for w in leak_words:
        add(w, "part", "leak")
    for n in options.neighbors:
        add(n, "user", "leak")

    if index is not None and options.vocab_per_token > 0:
        skip = {text, *(c.text for c in candidates), *out}
        for nb in shared_token_neighbors(candidates, index, per_token=options.vocab_per_token,
                                         skip=skip, skip_words=set(keep_words)):
            out.setdefault(nb.tag, nb)
    return list(out.values())


def _split_parts(words: list[str], index: Any | None) -> tuple[list[str], list[str]]:
    """(words that carry the tag's distinct meaning, its generic word(s) that may dominate).

    The generic word is the one with the most posts as a tag of its own when a vocabulary
    knows the words, else the head (the last word: ``bottle`` in ``mayonnaise bottle``).
    """
    if len(words) < 2:
        return [], []
    generic = len(words) - 1
    if index is not None:
        counts = []
        for w in words:
            r = index.row(w)
            counts.append(index.count(r) or 0 if r is not None else 0)
        if max(counts) > 0:
            generic = int(np.argmax(counts))
    keep = [w for i, w in enumerate(words) if i != generic]
    return keep, [words[generic]]


def _reason(
    rc: RankedCandidate, tagged: RankedCandidate, neighbors: list[Neighbor], baseline: Baseline
) -> str:
    """One line from the numbers: what the form changes, and what that buys, read against the
    model's random tag pairs. Differences within ``baseline.tie`` are ties.

    ``swaps 'bottle' for 'container': 0.31 less like 'wine bottle' (among random pairs: top 1%
    -> top 40%), 0.62 like 'mayonnaise' (top 2%)``
    """
    c, d = rc.candidate, rc.detail
    if d is None:
        return token_reason(c)
    base_d = tagged.detail
    head = "as tagged" if rc is tagged else _change(c, tagged.candidate)
    bits = []
    if base_d is not None and base_d.leak_neighbor is not None:
        name = neighbors[base_d.leak_neighbor].tag
        if rc is tagged:
            bits.append(f"{base_d.leakage:.2f} like '{name}', its closest leak "
                        f"({top_share(rc.percentile[name])})")
        else:
            now = rc.similarity.get(name, 0.0)
            delta = base_d.leakage - now
            if baseline.is_tie(base_d.leakage, now):
                bits.append(f"ties the tag on '{name}' ({now:.2f})")
            else:
                word = "less" if delta > 0 else "more"
                bits.append(f"{abs(delta):.2f} {word} like '{name}' (among random pairs: "
                            f"{top_share(tagged.percentile[name], short=True)} -> "
                            f"{top_share(rc.percentile[name], short=True)})")
    if d.leak_neighbor is not None and (
        base_d is None or d.leak_neighbor != base_d.leak_neighbor
    ) and rc is not tagged:
        name = neighbors[d.leak_neighbor].tag
        p = rc.percentile[name]
        where = f", {top_share(p, short=True)}" if p >= 50 else ""
        bits.append(f"now closest to '{name}' ({d.leakage:.2f}{where})")
    if d.fidelity is not None:
        keep = [n.tag for n in neighbors if n.role == "keep"]
        label = keep[0] if len(keep) == 1 else "the kept meaning"
        shown = f"{d.fidelity:.2f} like '{label}'"
        if len(keep) == 1:
            shown += percentile_note(rc.percentile[label])
        bits.append(shown)
    if d.avoid is not None and d.avoid_neighbor is not None:
        name = neighbors[d.avoid_neighbor].tag
        bits.append(f"{d.avoid:.2f} like avoided '{name}'{percentile_note(rc.percentile[name])}")
    extra = c.n_tokens - tagged.candidate.n_tokens
    if extra:
        bits.append(f"{'+' if extra > 0 else '-'}{abs(extra)} token{'s' if abs(extra) > 1 else ''}")
    return f"{head}: " + ", ".join(bits)


def _change(c: Candidate, tagged: Candidate) -> str:
    """What a form changes against the tag as written, in words that are true of it: a
    substitution swaps one word for another; otherwise it adds or drops whole-word tokens."""
    kind = describe_kind(c)
    if c.replaced and c.replacement:
        change = [f"swaps '{c.replaced}' for '{c.replacement}'"]
        now, before = set(known_words(c)) - {c.replacement}, set(known_words(tagged)) - {c.replaced}
    else:
        change = []
        now, before = set(known_words(c)), set(known_words(tagged))
    if sorted(now - before):
        change.append("adds " + ", ".join(f"'{w}'" for w in sorted(now - before)))
    if sorted(before - now):
        change.append("drops " + ", ".join(f"'{w}'" for w in sorted(before - now)))
    return " ".join(p for p in (kind, ", ".join(change)) if p) or "your form"

