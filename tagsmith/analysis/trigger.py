"""Rank new trigger words for a concept (``tagsmith trigger``).

A trigger word should reuse tokens the model knows (so training starts from related meaning),
stay away from strong existing tags and from the ``--avoid`` tags it co-occurs with (so the
LoRA neither fires on them nor absorbs them), and cost few tokens. With ``--part``, a trigger is
a family (``cross-arm``, ``cross-chest``, ``cross-legs``): its members must stay distinct from
one another, and a part never trained (``cross-back``) should still land near the family.

Candidates (tagsmith.text.variants.trigger_forms): hyphen compounds of the concept's known words
(``cross-arm``), short known-token compounds, and rare single tokens (``ohwx``; the BPE merge
rank proxies how rare a token was in CLIP's training text, the vocabulary's post counts remove
real tags).

Member score: the suggest formula (tagsmith.analysis.ranking; fidelity weight 0.5 by default,
since a trigger should start near its concept without being it) with ``keep`` = the concept,
``leak`` = the vocabulary tags sharing a known word with the member plus its nearest vocabulary
tags and ``--neighbor`` tags, ``avoid`` = ``--avoid``. Family score = mean member score +
``separation`` weight x the smallest distance (1 - cosine) between two members. Every cosine is
the centred one, read against the model's baseline (tagsmith.model.calibration).
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
    nearest_vocab_tags,
    shared_token_neighbors,
)
from tagsmith.analysis.ranking import (
    Progress,
    RankedCandidate,
    ScoreWeights,
    cosine_matrix,
    encoder_similarities,
    family_separation,
    known_word_share,
    no_progress,
    score_by_role,
    token_reason,
)
from tagsmith.errors import UsageError
from tagsmith.model.calibration import Baseline, closeness, percentile_note
from tagsmith.text.prompt import analysed_tag_text
from tagsmith.text.tokenizer import load_tokenizer
from tagsmith.text.variants import (
    TRIGGER_RARE,
    Candidate,
    nearest_known_words,
    rare_tokens,
    tag_words,
    trigger_forms,
)


@dataclass
class TriggerOptions:
    parts: Sequence[str] = ()
    held_out: str | None = None  # a part never trained; default: the known word nearest the parts
    avoid: Sequence[str] = ()
    neighbors: Sequence[str] = ()
    candidates: Sequence[str] = ()
    vocab_path: Path | None = None
    top: int | None = None
    # A new trigger should start near the concept, but not be it: half the fidelity weight of
    # suggest, so that collisions with existing tags weigh more than closeness to the concept.
    weights: ScoreWeights = field(default_factory=lambda: ScoreWeights(fidelity=0.5))
    separation_weight: float = 0.5
    rare: int = 4
    vocab_per_token: int = 2
    nearest: int = 2
    cache_dir: Path | None = None
    use_cache: bool = True


@dataclass
class TriggerFamily:
    """One trigger choice: a single word, or a stem with one member per part."""

    stem: str
    kind: str
    members: list[RankedCandidate]
    score: float | None = None
    separation: float | None = None  # smallest 1 - cosine between two members
    closest_pair: tuple[str, str] | None = None
    held_out: RankedCandidate | None = None
    held_out_similarity: float | None = None  # cosine of the held-out form to the family mean
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.stem if len(self.members) != 1 else self.members[0].form,
            "stem": self.stem,
            "kind": self.kind,
            "score": None if self.score is None else round(self.score, 6),
            "separation": None if self.separation is None else round(self.separation, 6),
            "closest_pair": list(self.closest_pair) if self.closest_pair else None,
            "held_out": None if self.held_out is None else {
                **self.held_out.to_dict(),
                "family_similarity": None if self.held_out_similarity is None
                else round(self.held_out_similarity, 6),
            },
            "members": [m.to_dict() for m in self.members],
            "reason": self.reason,
        }


@dataclass
class TriggerResult:
    concept: str
    text: str
    parts: list[str]
    model: dict[str, Any] | None
    neighbors: list[Neighbor]
    families: list[TriggerFamily]
    weights: ScoreWeights
    notices: list[str] = field(default_factory=list)
    vocabulary: str | None = None
    baseline: Baseline | None = None
    # with --lora: each trigger's numbers in the base model alone, {form: {score, separation}}
    base: dict[str, dict[str, Any]] | None = None

    @property
    def has_similarity(self) -> bool:
        return self.model is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": None if self.baseline is None else self.baseline.summary(),
            "concept": self.concept,
            "text": self.text,
            "parts": self.parts,
            "model": self.model,
            "weights": vars(self.weights).copy(),
            "vocabulary": self.vocabulary,
            "neighbors": [n.to_dict() for n in self.neighbors],
            "candidates": [
                {**d, **({"base": self.base.get(d["form"])} if self.base else {})}
                for d in (f.to_dict() for f in self.families)
            ],
            "notices": list(self.notices),
        }


def rank_triggers(
    concept: str,
    options: TriggerOptions | None = None,
    *,
    embedder: Any | None = None,
    notices: Sequence[str] = (),
    progress: Progress = no_progress,
    baseline: Baseline | None = None,
    base: Any | None = None,
) -> TriggerResult:
    """Rank trigger-word candidates for ``concept`` (families of forms, one per stem).
    ``base`` (with --lora: the same model without the LoRAs) adds each family's score and
    separation there, against the same neighbours, on its own baseline (``result.base``)."""
    options = options or TriggerOptions()
    text = analysed_tag_text(concept)
    if not text:
        raise UsageError("The concept is empty; give one such as \"cross tattoo\".")
    parts = [analysed_tag_text(p) for p in options.parts]
    if any(not p for p in parts):
        raise UsageError("A --part is empty; give body parts or variants such as --part arm.")
    tok = load_tokenizer()

    index = None
    if options.vocab_path is not None:
        from tagsmith.text.vocab_index import load_vocab_index

        index = load_vocab_index(options.vocab_path, cache_dir=options.cache_dir,
                                 use_cache=options.use_cache, progress=progress)
    exclude = set()
    if index is not None:
        exclude = {t for t in index.texts if " " not in t}
    rare = rare_tokens(tok, n=options.rare, exclude_words=exclude) if options.rare else []
    table = embedder.token_embedding_table() if embedder is not None else None

    held_out = analysed_tag_text(options.held_out) if options.held_out else None
    if parts and held_out is None and table is not None:
        held_out = _default_held_out(parts, table, tok)

    forms = trigger_forms(concept, tok, parts=parts, rare=rare, user_forms=options.candidates)
    families = _group(forms, parts)

    neighbors: dict[str, Neighbor] = {}

    def add(nb: Neighbor) -> None:
        neighbors.setdefault(nb.tag, nb)

    add(Neighbor(tag=text, source="part", role="keep", count=_count(index, text)))
    for a in options.avoid:
        t = analysed_tag_text(a)
        if t:
            add(Neighbor(tag=t, source="user", role="avoid", count=_count(index, t)))
    for n in options.neighbors:
        t = analysed_tag_text(n)
        if t:
            add(Neighbor(tag=t, source="user", role="leak", count=_count(index, t)))
    if index is not None:
        # Strong existing tags that share a word with a trigger: what it would be read as.
        skip = {text, *parts, *(f.text for f in forms)}
        part_words = {w for p in parts for w in tag_words(p)}
        for nb in shared_token_neighbors(forms, index, per_token=options.vocab_per_token,
                                         skip=skip | set(neighbors), skip_words=part_words):
            add(nb)

    result = TriggerResult(
        concept=concept, text=text, parts=parts, model=None, neighbors=list(neighbors.values()),
        families=families, weights=options.weights,
        notices=list(notices) + (index.problems if index is not None else []),
        vocabulary=index.summary if index is not None else None,
    )
    if embedder is None:
        for fam in families:
            fam.reason = token_reason(fam.members[0].candidate) if len(fam.members) == 1 else (
                f"{len(fam.members)} members, "
                f"{fam.members[0].candidate.n_tokens} tokens each; stem '{fam.stem}'"
                + (" (a rare token)" if fam.kind == TRIGGER_RARE else "")
            )
        families.sort(key=lambda f: (f.kind == TRIGGER_RARE, -_known_share(f)))
        if options.top:
            result.families = families[: options.top]
        return result

    if baseline is None:
        baseline = baseline_for(embedder, index, progress)
    result.baseline = baseline
    held_out_forms: dict[str, Candidate] = {}
    if held_out:
        from tagsmith.text.variants import _analyse_unique, _Form

        for fam in families:
            if fam.members[0].candidate.part is not None:
                form = f"{fam.stem}-{'-'.join(tag_words(held_out))}"
                got = _analyse_unique([_Form(form, "held-out", stem=fam.stem, part=held_out)],
                                      tok)
                if got:
                    held_out_forms[fam.stem] = got[0]
    member_texts = [m.candidate.text for f in families for m in f.members]
    own_texts = member_texts + [c.text for c in held_out_forms.values()]
    vectors_of: Any = embedder

    if index is not None and options.nearest > 0:
        from tagsmith.analysis.concepts import (
            NEAREST_SHORTLIST,
            PrefetchedVectors,
            nearest_shortlist,
        )

        progress("finding nearest vocabulary tags")
        present = {text, *neighbors, *(f.text for f in forms)}
        heads = [fam.members[0].candidate.text for fam in families[:6]]
        # One encoder pass for the members, every family's shortlist (with room for the tags
        # the loop below excludes as it goes) and the neighbours so far, instead of one pass
        # per family: a small job pays the forward pass's set-up once.
        room = NEAREST_SHORTLIST + options.nearest * len(heads)
        pool = [index.texts[r] for h in heads for r in nearest_shortlist(
            h, index, table, exclude=present, fingerprint=getattr(embedder, "fingerprint", None),
            size=room)]
        vectors_of = PrefetchedVectors(
            embedder, own_texts + heads + pool + [n.tag for n in result.neighbors])
        for head in heads:
            for nb in nearest_vocab_tags(head, index, vectors_of, table,
                                         k=options.nearest, exclude=present,
                                         baseline=baseline):
                present.add(nb.tag)
                result.neighbors.append(nb)

    progress("encoding triggers and neighbours")
    texts = list(dict.fromkeys(own_texts + [n.tag for n in result.neighbors]))
    vectors = vectors_of.embed(texts)
    row = {t: i for i, t in enumerate(texts)}
    neigh_vecs = vectors[[row[n.tag] for n in result.neighbors]]
    if base is not None:
        result.base = _base_numbers(base, index, families, result.neighbors, options, progress)
    for fam in families:
        cands = [m.candidate for m in fam.members]
        vecs = vectors[[row[c.text] for c in cands]]
        sim = baseline.similarity(vecs, neigh_vecs)
        raw = cosine_matrix(vecs, neigh_vecs)
        pct = baseline.percentile(sim)
        scores, fam.score, sep, pair = _family_scores(sim, vecs, cands, result.neighbors,
                                                      baseline, options)
        by_encoder = encoder_similarities(embedder, vecs, neigh_vecs,
                                          [n.tag for n in result.neighbors], baseline=baseline)
        for i, (m, s) in enumerate(zip(fam.members, scores)):
            m.score, m.detail = s.score, s
            m.similarity = {n.tag: float(v) for n, v in zip(result.neighbors, sim[i])}
            m.raw_similarity = {n.tag: float(v) for n, v in zip(result.neighbors, raw[i])}
            m.percentile = {n.tag: float(v) for n, v in zip(result.neighbors, pct[i])}
            m.similarity_by_encoder = by_encoder[i]
        if sep is not None:
            fam.separation = sep
            fam.closest_pair = (cands[pair[0]].form, cands[pair[1]].form) if pair else None
        held = held_out_forms.get(fam.stem)
        if held is not None:
            hv = vectors[row[held.text]]
            fam.held_out = RankedCandidate(held)
            hsim = baseline.similarity(hv[None, :], neigh_vecs)[0]
            fam.held_out.similarity = {n.tag: float(v) for n, v in zip(result.neighbors, hsim)}
            fam.held_out.raw_similarity = {
                n.tag: float(v) for n, v in
                zip(result.neighbors, cosine_matrix(hv[None, :], neigh_vecs)[0])
            }
            fam.held_out.percentile = {
                n.tag: float(v) for n, v in zip(result.neighbors, baseline.percentile(hsim))
            }
            fam.held_out_similarity = float(baseline.similarity(hv[None, :],
                                                                vecs.mean(axis=0)[None, :])[0, 0])
        fam.reason = _family_reason(fam, result.neighbors, baseline)
    families.sort(key=lambda f: -(f.score or 0.0))
    result.families = families[: options.top] if options.top else families
    result.model = embedder.model_info()
    # What the encoder noticed (tags cut at 75 tokens, repaired position_ids) belongs to
    # the result, so every front end (CLI, TUI, --json) shows it.
    result.notices += [n for n in getattr(embedder, "notes", []) if n not in result.notices]
    return result


def _family_scores(sim: np.ndarray, vecs: np.ndarray, cands: Sequence[Candidate],
                   neighbors: Sequence[Neighbor], baseline: Baseline,
                   options: TriggerOptions) -> tuple[list[Any], float, float | None, Any]:
    """(each member's score, the family's score, its separation or None, the closest pair)."""
    scores = score_by_role(sim, cands, [n.role for n in neighbors], options.weights)
    score = float(np.mean([s.score for s in scores]))
    sep = pair = None
    if len(cands) > 1:
        sep, pair = family_separation(baseline.centre(vecs))
        score += options.separation_weight * sep
    return scores, score, sep, pair


def _base_numbers(base: Any, index: Any, families: Sequence[TriggerFamily],
                  neighbors: Sequence[Neighbor], options: TriggerOptions,
                  progress: Progress) -> dict[str, dict[str, Any]]:
    """{family form: {score, separation}} in the ``base`` model, against the same neighbours."""
    progress("the base model's numbers")
    baseline = baseline_for(base, index, progress)
    texts = list(dict.fromkeys([m.candidate.text for f in families for m in f.members]
                               + [n.tag for n in neighbors]))
    vectors = base.embed(texts)
    row = {t: i for i, t in enumerate(texts)}
    neigh_vecs = vectors[[row[n.tag] for n in neighbors]]
    out = {}
    for fam in families:
        cands = [m.candidate for m in fam.members]
        vecs = vectors[[row[c.text] for c in cands]]
        _, score, sep, _ = _family_scores(baseline.similarity(vecs, neigh_vecs), vecs, cands,
                                          neighbors, baseline, options)
        out[fam.to_dict()["form"]] = {"score": score, "separation": sep}
    return out


def _count(index: Any | None, text: str) -> int | None:
    if index is None:
        return None
    r = index.row(text)
    return index.count(r) if r is not None else None


def _known_share(fam: TriggerFamily) -> float:
    return float(np.mean([known_word_share(m.candidate) for m in fam.members]))


def _group(forms: list[Candidate], parts: list[str]) -> list[TriggerFamily]:
    """Families by stem when there are parts (members in part order), else one per form."""
    if not parts:
        return [TriggerFamily(stem=c.form, kind=c.kind, members=[RankedCandidate(c)])
                for c in forms]
    by_stem: dict[str, TriggerFamily] = {}
    out: list[TriggerFamily] = []
    for c in forms:
        if c.stem is None:  # a user form: its own family
            out.append(TriggerFamily(stem=c.form, kind=c.kind, members=[RankedCandidate(c)]))
            continue
        fam = by_stem.get(c.stem)
        if fam is None:
            fam = TriggerFamily(stem=c.stem, kind=c.kind, members=[])
            by_stem[c.stem] = fam
            out.append(fam)
        fam.members.append(RankedCandidate(c))
    return [f for f in out if f.members]


def _default_held_out(parts: list[str], table: np.ndarray, tok: Any) -> str | None:
    """A part never named: the known word nearest to the mean of the parts' embeddings."""
    words = [w for p in parts for w in tag_words(p)]
    if not words:
        return None
    ids = [i for w in words for i in tok.encode(w)]
    if not ids:
        return None
    # nearest_known_words queries by one word; use the first part, excluding all parts.
    near = nearest_known_words(words[0], table, tok, k=1, exclude=words)
    return near[0][0] if near else None


def _family_reason(fam: TriggerFamily, neighbors: list[Neighbor], baseline: Baseline) -> str:
    def note(sim: float) -> str:
        return percentile_note(baseline.percentile(sim))

    bits = []
    scores = [m.detail for m in fam.members if m.detail is not None]
    if scores and scores[0].fidelity is not None:
        fid = float(np.mean([s.fidelity for s in scores if s.fidelity is not None]))
        bits.append(f"{fid:.2f} like '{neighbors[0].tag}'{note(fid)}")
    worst = max(
        (s for s in scores if s.leakage is not None), key=lambda s: s.leakage or 0.0, default=None
    )
    if worst is not None and worst.leak_neighbor is not None:
        bits.append(f"closest existing tag '{neighbors[worst.leak_neighbor].tag}' "
                    f"({worst.leakage:.2f}){note(worst.leakage)}")
    av = max((s for s in scores if s.avoid is not None), key=lambda s: s.avoid or 0.0,
             default=None)
    if av is not None and av.avoid_neighbor is not None:
        bits.append(f"{av.avoid:.2f} like avoided '{neighbors[av.avoid_neighbor].tag}'"
                    f"{note(av.avoid)}")
    if fam.separation is not None and fam.closest_pair:
        a, b = fam.closest_pair
        pct = baseline.percentile(1.0 - fam.separation)
        close = f": {closeness(pct)}" if pct >= 75.0 else ""
        bits.append(f"members {fam.separation:.2f} apart at least ({a} vs {b}{close})")
    if fam.held_out is not None and fam.held_out_similarity is not None:
        bits.append(f"held-out '{fam.held_out.form}' {fam.held_out_similarity:.2f} like the "
                    f"family{note(fam.held_out_similarity)}")
    reuse = _known_share(fam)
    if fam.kind == TRIGGER_RARE:
        lead = f"rare token '{fam.stem}'"
    elif reuse == 1.0:
        lead = "reuses known tokens"
    else:
        lead = f"{reuse:.0%} of words are known tokens"
    return f"{lead}: " + ", ".join(bits)
