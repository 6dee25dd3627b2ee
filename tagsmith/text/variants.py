"""Candidate forms of a tag, and candidate trigger words for a concept.

A form is a way to write the same concept: spaced (``mayonnaise bottle``), hyphenated
(``mayonnaise-bottle``), underscore (``mayonnaise_bottle``, tokenized literally: kohya and A1111
do not turn ``_`` into spaces), joined (``mayonnaisebottle``), and substitutions of the head
or a modifier by known whole-word tokens that sit close in the model's own token-embedding
table (``mayonnaise container``, ``mayonnaise-jar``). Everything here is pure Python + numpy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagsmith.text.prompt import strip_tag_syntax
from tagsmith.text.tokenizer import WORD_END, ClipTokenizer, TagTokens, clean_text, normalize_tag

_WORD_SPLIT = re.compile(r"[\s_\-]+")
SUBSTITUTE_MAX_ID = 40_000

# Kinds of form, in the order they are listed when scores tie.
SPACED, HYPHEN, UNDERSCORE, JOINED = "spaced", "hyphen", "underscore", "joined"
SUB_HEAD, SUB_MODIFIER, USER = "substitute head", "substitute modifier", "user"
TRIGGER_COMPOUND, TRIGGER_RARE = "known-token compound", "rare token"


@dataclass(frozen=True)
class Candidate:
    """One way to write a tag, as the tokenizer sees it."""

    form: str  # what the user would write in captions and prompts
    kind: str
    analysis: TagTokens  # token split of ``form`` (underscores literal for the underscore form)
    replaced: str | None = None  # the word a substitution replaced
    replacement: str | None = None  # the known word it put in
    stem: str | None = None  # trigger family stem (``cross`` in ``cross-arm``)
    part: str | None = None  # trigger family part (``arm`` in ``cross-arm``)

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.analysis.tokens

    @property
    def n_tokens(self) -> int:
        return self.analysis.n_tokens

    @property
    def known(self) -> bool:
        """Every word is one known whole-word token."""
        return self.analysis.all_known

    @property
    def text(self) -> str:
        """The text the encoder sees."""
        return self.analysis.text


def tag_words(tag: str) -> list[str]:
    """The words of a tag: ``mayonnaise_bottle`` / ``mayonnaise-bottle`` -> [mayonnaise, bottle]."""
    text = clean_text(normalize_tag(strip_tag_syntax(tag)))
    return [w for w in _WORD_SPLIT.split(text) if w]


def spelling_forms(words: Sequence[str]) -> list[tuple[str, str]]:
    """(form, kind) for the spaced, hyphenated, underscore and joined spellings of ``words``."""
    if not words:
        return []
    if len(words) == 1:
        return [(words[0], SPACED)]
    return [
        (" ".join(words), SPACED),
        ("-".join(words), HYPHEN),
        ("_".join(words), UNDERSCORE),
        ("".join(words), JOINED),
    ]


def whole_word_token_ids(tok: ClipTokenizer) -> tuple[np.ndarray, list[str]]:
    """Ids and words of alphabetic whole-word tokens (``container</w>``), at least 3 letters."""
    ids, words = [], []
    cut = -len(WORD_END)
    for piece, i in tok.vocab.items():
        # str methods, not a regex: this runs over all 49,408 pieces on every suggest.
        if piece.endswith(WORD_END) and len(piece) >= 7:
            w = piece[:cut]
            if w.isascii() and w.isalpha() and w.islower():
                ids.append(i)
                words.append(w)
    order = np.argsort(ids)
    return np.asarray(ids, dtype=np.int64)[order], [words[k] for k in order]


def _same_stem(a: str, b: str) -> bool:
    """True for inflections and near-spellings (bottle/bottles/bottled) that add no new meaning."""
    n = min(len(a), len(b), 5)
    return a[:n] == b[:n] or a in b or b in a


def nearest_known_words(
    word: str,
    table: np.ndarray,
    tok: ClipTokenizer,
    *,
    k: int = 4,
    exclude: Iterable[str] = (),
    min_relative_similarity: float = 0.5,
) -> list[tuple[str, float]]:
    """Known whole-word tokens closest to ``word`` in the input token-embedding table.

    The query is the word's own token when it is one known token, else the mean of its
    pieces. Inflections of the word itself (``bottles``) are skipped: they carry its meaning.
    """
    ids, words = _whole_words_cached(tok)
    # Substitutes come from the common words (BPE merge rank = frequency in CLIP's text):
    # a substitute should carry meaning the model knows well, and half the table is faster.
    common = int(np.searchsorted(ids, SUBSTITUTE_MAX_ID))
    ids, words = ids[:common], words[:common]
    piece_ids = tok.encode(word)
    if not piece_ids:
        return []
    query = np.asarray(table[piece_ids], dtype=np.float32).mean(axis=0)
    cand = _normalized_rows(table, ids)
    sims = cand @ (query / (np.linalg.norm(query) or 1.0))
    skip = {word, *exclude}
    out: list[tuple[str, float]] = []
    floor: float | None = None
    for j in np.argsort(-sims):
        w = words[int(j)]
        if w in skip or any(_same_stem(w, s) for s in skip):
            continue
        # Only words that are close relative to the closest one: a substitute with no
        # relation to the word is not a form of the tag, just a different tag.
        if floor is None:
            floor = max(0.0, float(sims[j])) * min_relative_similarity
        if sims[j] <= floor:
            break
        out.append((w, float(sims[j])))
        if len(out) >= k:
            break
    return out


_WHOLE_WORDS: dict[int, tuple[np.ndarray, list[str]]] = {}
_NORMALIZED: list[tuple[np.ndarray, np.ndarray]] = []  # (table, its normalised word rows)


def _normalized_rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Unit-length rows of ``table[ids]``, computed once per table (suggest asks twice)."""
    for t, rows in _NORMALIZED:
        if t is table:
            return rows
    # one copy of the rows (a memory-mapped table is read, never copied whole), normed in place
    rows = np.asarray(table[ids], dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    rows /= np.where(norms == 0, 1.0, norms)
    _NORMALIZED[:] = [(table, rows)]
    return rows


def _whole_words_cached(tok: ClipTokenizer) -> tuple[np.ndarray, list[str]]:
    key = id(tok)
    if key not in _WHOLE_WORDS:
        _WHOLE_WORDS[key] = whole_word_token_ids(tok)
    return _WHOLE_WORDS[key]


def generate_forms(
    tag: str,
    tok: ClipTokenizer,
    *,
    table: np.ndarray | None = None,
    user_forms: Sequence[str] = (),
    substitutes_per_word: int = 4,
    substitute_words: Sequence[int] | None = None,
) -> list[Candidate]:
    """Candidate forms of ``tag``: spellings, substitutions (needs ``table``), user forms.

    ``substitute_words`` lists the word positions to substitute (default: the head, i.e. the
    last word, and, for two-word tags, the modifier too).
    """
    words = tag_words(tag)
    forms: list[_Form] = [_Form(f, kind) for f, kind in spelling_forms(words)]
    # The user's own forms come before substitutions: a substitution that happens to spell
    # the same ids must not take the user's form's place (and its protection from --top).
    forms.extend(_Form(f.strip(), USER) for f in user_forms if f.strip())
    if table is not None and words:
        positions = (
            list(substitute_words)
            if substitute_words is not None
            else ([len(words) - 1] if len(words) != 2 else [1, 0])
        )
        for pos in positions:
            if not 0 <= pos < len(words):
                continue
            kind = SUB_HEAD if pos == len(words) - 1 else SUB_MODIFIER
            for repl, _ in nearest_known_words(
                words[pos], table, tok, k=substitutes_per_word, exclude=words
            ):
                new = list(words)
                new[pos] = repl
                if len(new) == 1:
                    forms.append(_Form(new[0], kind, words[pos], repl))
                else:
                    forms.append(_Form(" ".join(new), kind, words[pos], repl))
                    forms.append(_Form("-".join(new), kind, words[pos], repl))
    return _analyse_unique(forms, tok)


# Forms a user always sees, whatever --top says: the tag's own spellings and their own forms.
ALWAYS_SHOWN = frozenset({SPACED, HYPHEN, UNDERSCORE, JOINED, USER})


def limit_generated(items: Sequence, top: int | None,
                    kind: Callable[[Any], str] = lambda item: item.kind) -> list:
    """``items`` in their order, keeping every ALWAYS_SHOWN form and the first ``top`` others."""
    if not top:
        return list(items)
    out, generated = [], 0
    for item in items:
        if kind(item) in ALWAYS_SHOWN:
            out.append(item)
        elif generated < top:
            out.append(item)
            generated += 1
    return out


@dataclass(frozen=True)
class _Form:
    form: str
    kind: str
    replaced: str | None = None
    replacement: str | None = None
    stem: str | None = None
    part: str | None = None


def _analyse_unique(forms: Sequence[_Form], tok: ClipTokenizer) -> list[Candidate]:
    """Token splits of the forms, dropping forms whose ids repeat an earlier form's."""
    seen: set[tuple[int, ...]] = set()
    out: list[Candidate] = []
    texts = [f.form for f in forms]
    spaced = tok.analyze_batch(texts, underscores=True)
    raw = tok.analyze_batch(texts, underscores=False)
    for f, a_sp, a_raw in zip(forms, spaced, raw):
        # Underscore forms are analysed as written: kohya and A1111 feed the `_` to CLIP.
        a = a_raw if f.kind == UNDERSCORE else a_sp
        if not a.ids or a.ids in seen:
            continue  # the encoder cannot tell a form with the same ids from the earlier one
        seen.add(a.ids)
        out.append(
            Candidate(
                form=f.form, kind=f.kind, analysis=a, replaced=f.replaced,
                replacement=f.replacement, stem=f.stem, part=f.part,
            )
        )
    return out


# -- trigger words -------------------------------------------------------------------------


def rare_tokens(
    tok: ClipTokenizer,
    *,
    n: int = 8,
    min_len: int = 3,
    max_len: int = 5,
    exclude_words: Iterable[str] = (),
) -> list[str]:
    """Whole-word tokens with little prior meaning, rarest first.

    CLIP's BPE adds merges in order of frequency in its training text, so a token's id (its
    merge rank) is a usable proxy for how rare it was: the last ids are the rarest. Only
    letter-only tokens of ``min_len``..``max_len`` letters that are not common words
    (``exclude_words``, e.g. the vocabulary's tags) are kept. Vowel-free or consonant-heavy
    strings (``sks``, ``ohwx``) are what trigger-word practice converged on.
    """
    ids, words = _whole_words_cached(tok)
    excluded = set(exclude_words)
    out: list[str] = []
    for _id, w in sorted(zip(ids.tolist(), words), reverse=True):
        if not (min_len <= len(w) <= max_len) or w in excluded:
            continue
        if sum(ch in "aeiou" for ch in w) > 1:
            continue  # pronounceable words are more likely to be real names or words
        out.append(w)
        if len(out) >= n:
            break
    return out


def trigger_forms(
    concept: str,
    tok: ClipTokenizer,
    *,
    parts: Sequence[str] = (),
    rare: Sequence[str] = (),
    user_forms: Sequence[str] = (),
) -> list[Candidate]:
    """Trigger candidates for ``concept``; with ``parts``, one candidate per part family member.

    - known-token compounds: the concept's known words hyphenated with each part
      (``cross-arm``), or the concept's spellings when there are no parts;
    - rare single tokens (``ohwx``), alone or hyphenated with each part (``ohwx-arm``);
    - user candidates.
    """
    words = tag_words(concept)
    known = [w for w in words if tok.whole_word_id(w) is not None]
    stems: list[tuple[str, str]] = []
    for w in known:
        stems.append((w, TRIGGER_COMPOUND))
    if len(known) >= 2:
        stems.append(("-".join(known), TRIGGER_COMPOUND))
        stems.append(("".join(known), TRIGGER_COMPOUND))
    for r in rare:
        stems.append((r, TRIGGER_RARE))
    forms: list[_Form] = []
    if parts:
        for stem, kind in stems:
            for p in parts:
                part = "-".join(tag_words(p))
                forms.append(_Form(f"{stem}-{part}", kind, stem=stem, part=p))
    else:
        # The concept as spaced words is the existing tag itself, not a new trigger.
        forms.extend(_Form(f, TRIGGER_COMPOUND) for f, _ in spelling_forms(words)[1:])
        forms.extend(_Form(stem, kind, stem=stem) for stem, kind in stems
                     if len(words) > 1 or stem != words[0])
    forms.extend(_Form(f.strip(), USER) for f in user_forms if f.strip())
    return _analyse_unique(forms, tok)
