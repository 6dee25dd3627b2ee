"""Similarity, scores and reasons. Pure numpy: no model, no I/O.

The suggest score of a candidate form ``c`` (higher is better)::

    score = w_fidelity * fidelity(c)        mean cosine to what the tag must still mean (--keep)
          - w_leakage  * leakage(c)         highest cosine to a neighbour it must not become
          - w_avoid    * avoid(c)           highest cosine to an --avoid tag (0 without any)
          + w_reuse    * reuse(c)           share of its words that are known whole-word tokens
          - w_tokens   * n_tokens(c)        token cost: every token takes one of 75 slots

Similarities are centred cosines between tag vectors (tagsmith.model.calibration: cosine after
subtracting the model's mean tag vector; tag vectors are the encoder's hidden states averaged
over the tag's own tokens, tagsmith.model.embedding). Fidelity and leakage are on the same
scale, so the default weights are 1 and 1: a form that is 0.05 less like ``wine bottle`` at the
cost of being 0.05 less like ``mayonnaise`` gains nothing. Reuse and token cost only break
near-ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from tagsmith.text.tokenizer import piece_text
from tagsmith.text.variants import (
    HYPHEN,
    JOINED,
    SPACED,
    SUB_HEAD,
    SUB_MODIFIER,
    UNDERSCORE,
    USER,
    Candidate,
)


@dataclass(frozen=True)
class ScoreWeights:
    fidelity: float = 1.0
    leakage: float = 1.0
    avoid: float = 1.0
    reuse: float = 0.05
    tokens: float = 0.01

    @classmethod
    def parse(cls, spec: str) -> ScoreWeights:
        """``"leakage=1.5,tokens=0"`` -> weights with those two changed."""
        from tagsmith.errors import UsageError

        values = {}
        names = {f.name for f in fields(cls)}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise UsageError(
                    f"Unknown weight '{item}'; use NAME=NUMBER with NAME one of "
                    + ", ".join(sorted(names)) + "."
                )
            try:
                values[name] = float(raw)
            except ValueError as exc:
                raise UsageError(f"Weight {name} must be a number, not '{raw.strip()}'.") from exc
        return cls(**values)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosine similarities."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return normalize_rows(a) @ normalize_rows(b).T


@dataclass(frozen=True)
class CandidateScore:
    score: float
    fidelity: float | None
    leakage: float | None
    leak_neighbor: int | None  # column of the neighbour that set ``leakage``
    avoid: float | None
    avoid_neighbor: int | None
    reuse: float
    n_tokens: int


def score_candidates(
    sim: np.ndarray,
    *,
    keep_cols: Sequence[int],
    leak_cols: Sequence[int],
    avoid_cols: Sequence[int],
    reuse: Sequence[float],
    n_tokens: Sequence[int],
    weights: ScoreWeights = ScoreWeights(),
) -> list[CandidateScore]:
    """Score every candidate (rows of ``sim``) against neighbour columns by role."""
    out = []
    for i in range(sim.shape[0]):
        row = sim[i]
        fidelity = float(row[list(keep_cols)].mean()) if len(keep_cols) else None
        leakage, leak_j = _row_max(row, leak_cols)
        avoid, avoid_j = _row_max(row, avoid_cols)
        score = (
            weights.fidelity * (fidelity or 0.0)
            - weights.leakage * (leakage or 0.0)
            - weights.avoid * (avoid or 0.0)
            + weights.reuse * reuse[i]
            - weights.tokens * n_tokens[i]
        )
        out.append(
            CandidateScore(
                score=score, fidelity=fidelity, leakage=leakage, leak_neighbor=leak_j,
                avoid=avoid, avoid_neighbor=avoid_j, reuse=float(reuse[i]),
                n_tokens=int(n_tokens[i]),
            )
        )
    return out


def score_by_role(sim: np.ndarray, candidates: Sequence[Candidate], roles: Sequence[str],
                  weights: ScoreWeights = ScoreWeights()) -> list[CandidateScore]:
    """``score_candidates`` for ``candidates`` (rows of ``sim``) against neighbour columns
    whose ``roles`` ("keep", "leak", "avoid") say how each counts."""
    return score_candidates(
        sim,
        keep_cols=[j for j, r in enumerate(roles) if r == "keep"],
        leak_cols=[j for j, r in enumerate(roles) if r == "leak"],
        avoid_cols=[j for j, r in enumerate(roles) if r == "avoid"],
        reuse=[known_word_share(c) for c in candidates],
        n_tokens=[c.n_tokens for c in candidates],
        weights=weights,
    )


def _row_max(row: np.ndarray, cols: Sequence[int]) -> tuple[float | None, int | None]:
    if not len(cols):
        return None, None
    vals = row[list(cols)]
    k = int(np.argmax(vals))
    return float(vals[k]), int(cols[k])


def family_separation(member_vectors: np.ndarray) -> tuple[float, tuple[int, int] | None]:
    """Smallest pairwise distance (1 - cosine) between family members, and the closest pair.

    A trigger family such as cross-arm / cross-chest / cross-legs must keep its members apart,
    or the LoRA cannot learn where the tattoo goes.
    """
    n = len(member_vectors)
    if n < 2:
        return 1.0, None
    sim = cosine_matrix(member_vectors, member_vectors)
    np.fill_diagonal(sim, -np.inf)
    i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
    return float(1.0 - sim[i, j]), (int(min(i, j)), int(max(i, j)))


def fmt_delta(value: float) -> str:
    return f"{abs(value):.2f}"


# -- ranked forms ---------------------------------------------------------------------------


Progress = Callable[[str], None]


@dataclass
class RankedCandidate:
    candidate: Candidate
    score: float | None = None
    similarity: dict[str, float] = field(default_factory=dict)  # centred cosine per neighbour
    # SDXL: each encoder's own cosine ("l", "g"), so a user sees when L and G disagree
    similarity_by_encoder: dict[str, dict[str, float]] = field(default_factory=dict)
    detail: CandidateScore | None = None
    reason: str = ""
    raw_similarity: dict[str, float] = field(default_factory=dict)  # plain cosine
    percentile: dict[str, float] = field(default_factory=dict)  # among random tag pairs

    @property
    def form(self) -> str:
        return self.candidate.form

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        d = self.detail
        return {
            "form": c.form,
            "kind": c.kind,
            "text": c.text,
            "tokens": list(c.tokens),
            "ids": list(c.analysis.ids),
            "n_tokens": c.n_tokens,
            "known": c.known,
            "unknown_words": c.analysis.unknown_words,
            "score": None if self.score is None else round(self.score, 6),
            "fidelity": None if d is None or d.fidelity is None else round(d.fidelity, 6),
            "leakage": None if d is None or d.leakage is None else round(d.leakage, 6),
            "avoid": None if d is None or d.avoid is None else round(d.avoid, 6),
            "similarity": {k: round(v, 6) for k, v in self.similarity.items()},
            **({"similarity_by_encoder": {
                enc: {k: round(v, 6) for k, v in sims.items()}
                for enc, sims in self.similarity_by_encoder.items()
            }} if self.similarity_by_encoder else {}),
            "percentile": {k: round(v, 2) for k, v in self.percentile.items()},
            "raw": {"similarity": {k: round(v, 6) for k, v in self.raw_similarity.items()}},
            "reason": self.reason,
        }


def encoder_similarities(
    embedder: Any, a: np.ndarray, b: np.ndarray, names: Sequence[str], *,
    baseline: Any | None = None,
) -> list[dict[str, dict[str, float]]]:
    """Per row of ``a``: {encoder: {name: similarity to that row of b}} from each encoder's own
    dimensions (SDXL's CLIP-L and CLIP-G), centred on that encoder's own baseline when
    ``baseline`` has one (tagsmith.model.calibration); empty dicts for a one-encoder model."""
    parts = getattr(embedder, "similarity_parts", dict)()
    if not parts:
        return [{} for _ in range(len(a))]
    per = getattr(baseline, "encoders", None) or {}
    mats = {enc: (per[enc].similarity if enc in per else cosine_matrix)(a[:, sl], b[:, sl])
            for enc, sl in parts.items()}
    return [
        {enc: {n: float(m[i, j]) for j, n in enumerate(names)} for enc, m in mats.items()}
        for i in range(len(a))
    ]


def no_progress(_: str) -> None:
    pass


def known_word_share(c: Candidate) -> float:
    words = [w for w in c.analysis.words if not w.is_punctuation]
    return sum(w.known for w in words) / len(words) if words else 0.0


KIND_WORDS = {
    SPACED: "as tagged",
    HYPHEN: "hyphen",
    UNDERSCORE: "underscore (SD sees the _ token)",
    JOINED: "joined",
    USER: "your form",
}


def known_words(c: Candidate) -> list[str]:
    return [w.text for w in c.analysis.words if w.known and not w.is_punctuation]


def token_reason(c: Candidate) -> str:
    split = [w for w in c.analysis.words if not w.known and not w.is_punctuation]
    parts = [f"{c.n_tokens} tokens"]
    if split:
        parts.append(
            "splits " + ", ".join(
                f"{w.text} into {'+'.join(piece_text(p) for p in w.pieces)}" for w in split
            )
        )
    else:
        parts.append("every word a known token")
    return f"{describe_kind(c)}: " + "; ".join(parts)


def describe_kind(c: Candidate) -> str:
    if c.kind in (SUB_HEAD, SUB_MODIFIER) and c.replacement:
        return "hyphen" if "-" in c.form else ""
    return KIND_WORDS.get(c.kind, c.kind)
