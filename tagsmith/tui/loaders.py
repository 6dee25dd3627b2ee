"""Turn the library's results into explore tables: score files and suggest rankings.

The TUI shows what ``tagsmith score`` wrote and what ``tagsmith.analysis.suggest.suggest`` returned;
it computes nothing of its own. This module does not import Textual, so the CLI can check a
path and the tests can build tables without starting an app.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.errors import FileFormatError, InputError
from tagsmith.fileio import require_regular_file
from tagsmith.model.calibration import top_share
from tagsmith.text.tokenizer import WORD_END
from tagsmith.text.vocab import CATEGORY_NUMBERINGS, category_names, guess_numbering
from tagsmith.tui.table import (
    BOOL,
    FLOAT,
    INT,
    TEXT,
    Column,
    NeighborBar,
    RowDetail,
    Table,
    Word,
)

Progress = Callable[[str], None]

SCORE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def _nothing(_: str) -> None:
    pass


def looks_like_score_file(target: str) -> bool:
    """True when the explore argument names a score file rather than a tag."""
    return target.lower().endswith(SCORE_SUFFIXES)


def check_score_path(path: Path) -> None:
    """Fail with one sentence when ``path`` cannot be opened at all (before any UI starts).

    Contents are not checked here: a file that opens but holds nothing usable is shown in
    the app with its message.
    """
    if not path.exists():
        raise InputError(f"{path} does not exist; give a score file written by tagsmith score.")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a score file (.csv, .jsonl or .parquet).")
    require_regular_file(path, "score file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if not os.access(path, os.R_OK):
        raise InputError(f"Cannot read {path}: permission denied.")


# -- score files ---------------------------------------------------------------------------


SCORE_COLUMNS = [
    Column("tag", "tag", TEXT, 28, aliases=("text",), help="the tag as SD reads it"),
    Column("count", "count", INT, 9, aliases=("posts",), help="posts with the tag"),
    Column("n_tokens", "n_tok", INT, 5, aliases=("tokens", "tok", "n"),
           help="CLIP tokens the tag takes"),
    Column("known", "known", BOOL, 5, aliases=("all_known",),
           help="every word is one known whole-word token"),
    Column("leak_risk", "risk", FLOAT, 5, aliases=("risk",),
           help="leak similarity x dominance of the tag sharing its head token"),
    Column("leak_similarity", "leak", FLOAT, 5, aliases=("leak", "similarity"),
           help="similarity (centred cosine) to the tag sharing its head token"),
    Column("leak_percentile", "leak%", FLOAT, 5, digits=1, aliases=("leak_pct", "leakpct"),
           help="% of random tag pairs of this model less similar than leak"),
    Column("nearest_percentile", "near%", FLOAT, 5, digits=1, aliases=("near_pct", "nearpct"),
           help="% of random tag pairs less similar than its nearest tag"),
    Column("distinctiveness", "dist", FLOAT, 5, aliases=("dist", "distinct"),
           help="1 - mean similarity to its nearest tags"),
    Column("shares_token_with", "shares", TEXT, 18, aliases=("shares",),
           help="the most frequent other tag with its head token"),
    Column("shares_token_count", "its count", INT, 9, aliases=("shares_count",),
           help="posts of that tag"),
    Column("head_token", "head", TEXT, 10, aliases=("head",), help="the tag's head token"),
    Column("category", "cat", INT, 5, aliases=("cat",),
           help="the category's name or number (as the file numbers them)"),
    Column("split", "split", TEXT, 26, aliases=("pieces",),
           help="its words; split words as pieces joined by +"),
]


def category_labels(numbers: np.ndarray, names: Sequence[str], source: str = ""
                    ) -> tuple[dict[int, str], set[int]]:
    """(category number -> name, the numbers used) for one score file: the names it stores
    (``score`` writes each row's, in the list's own numbering), else Danbooru's or e621's
    numbering, guessed from the numbers it uses (e621's 6-8) and the file's name, as
    ``score`` guesses a list's."""
    known = ~np.isnan(numbers)
    found, first = np.unique(numbers[known], return_index=True)
    used = {int(c) for c in found}
    rows = np.flatnonzero(known)[first]
    stored = {int(c): names[i] for c, i in zip(found, rows) if names[i]}
    numbering = guess_numbering(used, Path(source).name)
    agree = [n for n in CATEGORY_NUMBERINGS
             if all(category_names(n).get(c) == name for c, name in stored.items())]
    if agree and numbering not in agree:
        numbering = agree[0]
    return {**category_names(numbering), **stored}, used


def _category_column(column: Column, labels: dict[int, str], used: set[int]) -> Column:
    """The category column labelled for one file, as wide as the names it uses."""
    shown = sorted(labels.items())
    help_text = (f"{', '.join(name for _, name in shown)} "
                 f"(or {', '.join(str(number) for number, _ in shown)})")
    width = max([5] + [len(name) for c, name in labels.items() if c in used])
    return replace(column, labels=labels, help=help_text, width=min(width, 10))


def score_table(data: Any, source: str) -> Table:
    """A table over a score file's ``ScoreColumns`` (or a list of ``ScoreRow``s); columns the
    file leaves empty are left out."""
    from tagsmith.tui.scorefile import ScoreColumns

    cols = data if isinstance(data, ScoreColumns) else ScoreColumns.from_rows(data)
    nums = cols.numbers
    shown_as_text = _memo(_as_text)
    values: dict[str, Any] = {
        "tag": [t or g for t, g in zip(cols.text["text"], cols.text["tag"])],
        "count": nums["count"],
        "n_tokens": nums["n_tokens"],
        "known": np.array([not u for u in cols.text["unknown_words"]], dtype=np.float64),
        "leak_risk": nums["leak_risk"],
        "leak_similarity": nums["leak_similarity"],
        "leak_percentile": nums["leak_percentile"],
        "nearest_percentile": nums["nearest_percentile"],
        "distinctiveness": nums["distinctiveness"],
        "shares_token_with": [shown_as_text(t) for t in cols.text["shares_token_with"]],
        "shares_token_count": nums["shares_token_count"],
        "head_token": [_plain(t) if t else "" for t in cols.text["head_token"]],
        "category": nums["category"],
        "split": [split_text(t.split(" ")) if t else "" for t in cols.text["tokens"]],
    }
    labels, used = category_labels(nums["category"], cols.text["category_name"], source)
    columns = [
        _category_column(c, labels, used) if c.key == "category" else c
        for c in SCORE_COLUMNS if c.key in ("tag", "split") or _has_values(values[c.key])
    ]

    def detail(row: int) -> RowDetail:
        return score_detail(cols.row(row), labels)

    has_risk = any(c.key == "leak_risk" for c in columns)
    why = ("empty here (scored without a text encoder)"
           if not _has_values(values["distinctiveness"]) else "empty in this file")
    shown = {c.key for c in columns}
    left_out = {name.lower(): why for c in SCORE_COLUMNS if c.key not in shown
                for name in c.names()}
    return Table(
        title=source, columns=columns, values=values, key_column="tag", detail=detail,
        default_sort=("leak_risk", True) if has_risk else None,
        source=source, empty_message=f"{source} holds no rows.", left_out=left_out,
    )


def _memo(fn: Callable[[str], str]) -> Callable[[str], str]:
    """``fn`` with a dict cache: a few thousand frequent tags fill the shares column."""
    seen: dict[str, str] = {}

    def call(x: str) -> str:
        got = seen.get(x)
        if got is None:
            got = seen[x] = fn(x)
        return got

    return call


def _has_values(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return bool(len(v)) and not bool(np.all(np.isnan(v)))
    return any(v)


def load_score_table(path: Path, progress: Progress = _nothing,
                     first_rows: Callable[[Table], None] | None = None) -> Table:
    """Read a score file into a table; a bad file raises with its one-sentence message.

    ``first_rows`` gets a table of the first rows of a big file while the rest is read.
    """
    from tagsmith.tui.scorefile import gc_paused, read_score_columns

    progress("reading the file")

    def early(cols: Any) -> None:
        if first_rows is not None:
            first_rows(score_table(cols, path.name))
            progress(f"first {len(cols):,} rows shown, reading the rest")

    with gc_paused():
        cols = read_score_columns(path, early if first_rows is not None else None)
        table = score_table(cols, path.name)
    if not len(table):
        table.notices.append(f"{path.name} holds no rows; score a vocabulary with tagsmith score.")
    elif not any(c.key == "leak_similarity" for c in table.columns):
        table.notices.append(
            f"{path.name} has token columns only (it was scored without a text encoder)."
        )
    return table


def score_detail(r: Any, labels: dict[int, str] | None = None) -> RowDetail:
    """The detail pane for one ``ScoreRow`` (``labels``: its file's category names)."""
    toks = tuple(r.tokens)
    words = words_from_pieces(toks)
    facts: list[tuple[str, str]] = []
    if r.count is not None:
        facts.append(("posts", f"{r.count:,}"))
    if r.category is not None:
        facts.append(("", r.category_name or (labels or {}).get(r.category)
                      or f"category {r.category}"))
    facts.append(("", f"{r.n_tokens} token{'s' if r.n_tokens != 1 else ''}"))
    if r.leak_risk is not None:
        facts.append(("risk", f"{r.leak_risk:.2f}"))
    if r.distinctiveness is not None:
        facts.append(("dist", f"{r.distinctiveness:.2f}"))
    bars: list[NeighborBar] = []
    if r.shares_token_with:
        note = f"{r.shares_token_count:,} posts" if r.shares_token_count is not None else ""
        if r.leak_percentile is not None:
            note = ", ".join(filter(None, (note, top_share(r.leak_percentile, short=True))))
        bars.append(NeighborBar(_as_text(r.shares_token_with), r.leak_similarity, "shares",
                                note))
    shared = _as_text(r.shares_token_with)
    for k, nb in enumerate(r.neighbors):
        if _as_text(nb.tag) != shared:
            note = ""
            if k == 0 and r.nearest_percentile is not None:
                note = top_share(r.nearest_percentile, short=True)
            bars.append(NeighborBar(_as_text(nb.tag), nb.similarity, "nearest", note))
    return RowDetail(title=r.text, tokens=toks, words=words, facts=tuple(facts),
                     neighbors=tuple(bars), reason=score_reason(r, words))


def score_reason(r: Any, words: tuple[Word, ...]) -> str:
    """The row's numbers in words (nothing here that the file does not hold)."""
    split = [w for w in words if not w.known and not w.punctuation]
    parts = []
    if split:
        parts.append("splits " + ", ".join(
            f"'{w.text}' into {'+'.join(_plain(p) for p in w.pieces)}" for w in split
        ))
    else:
        parts.append("every word is one known token")
    if r.shares_token_with:
        head = f" '{_plain(r.head_token)}'" if r.head_token else ""
        s = f"shares its head token{head} with '{_as_text(r.shares_token_with)}'"
        if r.shares_token_count is not None:
            s += f" ({r.shares_token_count:,} posts"
            if r.count and r.shares_token_count >= 2 * r.count:
                s += f", {r.shares_token_count / r.count:,.0f}x as many"
            s += ")"
        if r.leak_similarity is not None:
            s += f", similarity {r.leak_similarity:.2f}"
            if r.leak_percentile is not None:
                s += f" ({top_share(r.leak_percentile)})"
        parts.append(s)
    return "; ".join(parts)


# -- suggest results -----------------------------------------------------------------------

SUGGEST_COLUMNS = [
    Column("rank", "#", INT, 3, help="rank in suggest's order"),
    Column("form", "form", TEXT, 24, aliases=("tag",), help="the candidate form"),
    Column("score", "score", FLOAT, 6, digits=3, help="suggest's score (higher is better)"),
    Column("fidelity", "keep", FLOAT, 5, aliases=("keep",),
           help="similarity to what the tag must still mean"),
    Column("leakage", "leak", FLOAT, 5, aliases=("leak",),
           help="highest similarity to a neighbour it must not become"),
    Column("avoid", "avoid", FLOAT, 5, help="highest similarity to an --avoid tag"),
    Column("n_tokens", "n_tok", INT, 5, aliases=("tokens", "tok", "n"),
           help="CLIP tokens the form takes"),
    Column("known", "known", BOOL, 5, help="every word is one known whole-word token"),
    Column("kind", "kind", TEXT, 15, help="spaced, hyphen, underscore, joined, substitute ..."),
    Column("split", "split", TEXT, 24, aliases=("pieces",),
           help="words, split words joined by +"),
    Column("reason", "reason", TEXT, 60, help="why it ranks where it does"),
]


def suggest_table(result: Any) -> Table:
    """A table over a ``SuggestResult``: one row per candidate form, in suggest's order."""
    cands = list(result.candidates)
    n = len(cands)

    def numbers(get: Callable[[Any], float | None]) -> np.ndarray:
        return np.asarray([_none_nan(get(rc)) for rc in cands], dtype=np.float64)

    values: dict[str, Any] = {
        "rank": np.arange(1, n + 1, dtype=np.float64),
        "form": [rc.candidate.form for rc in cands],
        "score": numbers(lambda rc: rc.score),
        "fidelity": numbers(lambda rc: rc.detail.fidelity if rc.detail else None),
        "leakage": numbers(lambda rc: rc.detail.leakage if rc.detail else None),
        "avoid": numbers(lambda rc: rc.detail.avoid if rc.detail else None),
        "n_tokens": numbers(lambda rc: rc.candidate.n_tokens),
        "known": numbers(lambda rc: 1.0 if rc.candidate.known else 0.0),
        "kind": [rc.candidate.kind for rc in cands],
        "split": [split_text(rc.candidate.tokens) for rc in cands],
        "reason": [rc.reason for rc in cands],
    }
    columns = []
    for c in SUGGEST_COLUMNS:
        v = values[c.key]
        if isinstance(v, np.ndarray) and n and np.all(np.isnan(v)):
            continue  # no model: no score columns, rather than empty ones
        columns.append(c)
    neighbors = list(result.neighbors)

    def detail(row: int) -> RowDetail:
        rc = cands[row]
        c = rc.candidate
        facts = [("#", str(row + 1)), ("", _kind_label(c)),
                 ("", f"{c.n_tokens} token{'s' if c.n_tokens != 1 else ''}")]
        if rc.score is not None:
            facts.append(("score", f"{rc.score:+.3f}"))
        bars = []
        for nb in neighbors:
            note = nb.source if nb.source != "user" else "yours"
            if nb.count is not None:
                note += f", {nb.count:,} posts"
            if nb.tag in rc.percentile:
                note += f", {top_share(rc.percentile[nb.tag], short=True)}"
            bars.append(NeighborBar(nb.tag, rc.similarity.get(nb.tag), nb.role, note))
        words = tuple(
            Word(w.text, tuple(w.pieces), w.known, w.is_punctuation) for w in c.analysis.words
        )
        return RowDetail(title=c.form, tokens=tuple(c.tokens), words=words, facts=tuple(facts),
                         neighbors=tuple(bars), reason=rc.reason)

    title = f"suggest \u201c{result.text}\u201d"
    table = Table(
        title=title, columns=columns, values=values, key_column="form", detail=detail,
        source="suggest", notices=list(result.notices),
        empty_message=f"suggest found no forms for '{result.text}'.",
    )
    return table


# -- LoRA reports ---------------------------------------------------------------------------


LORA_COLUMNS = [
    Column("tag", "tag", TEXT, 26, help="a training tag, or a tag the LoRA moved"),
    Column("captions", "capt", INT, 5, aliases=("count",), help="training captions with the tag"),
    Column("share", "share", FLOAT, 5, help="share of its folder's captions"),
    Column("moved", "moved", FLOAT, 5, digits=3,
           help="1 - cosine to the tag's base vector (common component removed)"),
    Column("trigger", "trig", BOOL, 4, help="a likely trigger"),
    Column("training", "train", BOOL, 5, help="one of the LoRA's training tags"),
    Column("posts", "posts", INT, 9, help="posts in the vocabulary"),
    Column("n_tokens", "n_tok", INT, 5, aliases=("tokens", "tok", "n"),
           help="CLIP tokens the tag takes"),
    Column("split", "split", TEXT, 24, aliases=("pieces",), help="words, split words joined by +"),
]


def looks_like_lora_file(target: str) -> bool:
    """True when the explore argument names a LoRA (.safetensors) rather than a tag."""
    return target.lower().endswith(".safetensors")


def load_lora_table(path: Path, settings: Any = None, vocab: Path | None = None,
                    vocab_top: int = 20_000, progress: Progress = _nothing) -> Table:
    """The ``tagsmith lora`` report as a table: its training tags, and with ``settings`` (the
    base model's) what the LoRA moved among them and the vocabulary's top tags."""
    from tagsmith.analysis.lora_report import lora_info, measure_moved
    from tagsmith.model.lora import parse_lora_spec

    counts, top = None, []
    if vocab is not None:
        from tagsmith.text.vocab import read_vocabulary

        progress("reading the vocabulary")
        voc = read_vocabulary(vocab)
        counts = {e.text: e.count for e in voc.entries}
        top = [e.text for e in sorted(voc.entries, key=lambda e: -(e.count or 0))[:vocab_top]]
    spec = parse_lora_spec(str(path))
    report = lora_info(spec.path, vocab_counts=counts)
    if settings is not None:
        report.moved = measure_moved(report, settings, spec, top, progress=progress)
    return lora_table(report)


def lora_table(report: Any) -> Table:
    """A table over a ``LoraReport``: training tags, then (measured) the most moved others."""
    from tagsmith.text.tokenizer import load_tokenizer

    tags = {t.tag: t for t in report.tags}
    moved = report.moved.by_tag if report.moved else {}
    rows = list(tags) + [m.tag for m in (report.moved.top if report.moved else [])
                         if m.tag not in tags]
    triggers = {t.tag: t.why for t in report.triggers}
    analysed = load_tokenizer().analyze_batch(rows) if rows else []

    def num(get: Callable[[str], float | None]) -> np.ndarray:
        return np.asarray([_none_nan(get(r)) for r in rows], dtype=np.float64)

    values: dict[str, Any] = {
        "tag": rows,
        "captions": num(lambda r: tags[r].count if r in tags else None),
        "share": num(lambda r: tags[r].share if r in tags else None),
        "moved": num(lambda r: moved.get(r)),
        "trigger": num(lambda r: 1.0 if r in triggers else 0.0),
        "training": num(lambda r: 1.0 if r in tags else 0.0),
        "posts": num(lambda r: tags[r].vocab_count if r in tags else None),
        "n_tokens": np.asarray([a.n_tokens for a in analysed], dtype=np.float64),
        "split": [split_text(a.tokens) for a in analysed],
    }
    columns = [c for c in LORA_COLUMNS if c.key in ("tag", "split") or _has_values(values[c.key])]

    def detail(row: int) -> RowDetail:
        tag, a = rows[row], analysed[row]
        facts = [("", "trigger" if tag in triggers else "training tag" if tag in tags else
                  "moved, not a training tag")]
        if tag in tags:
            facts.append(("captions", str(tags[tag].count)))
        if tag in moved:
            facts.append(("moved", f"{moved[tag]:.3f}"))
        words = tuple(Word(w.text, tuple(w.pieces), w.known, w.is_punctuation) for w in a.words)
        return RowDetail(title=tag, tokens=tuple(a.tokens), words=words, facts=tuple(facts),
                         neighbors=(), reason=triggers.get(tag, ""))

    notices = [f"{report.name}: {report.summary}"] + list(report.notes)
    return Table(
        title=f"lora {report.name}", columns=columns, values=values, key_column="tag",
        detail=detail, default_sort=("moved", True) if moved else None, source=report.name,
        notices=notices, empty_message=f"{report.name} names no training tags.",
    )


def _kind_label(c: Any) -> str:
    if c.replacement and c.replaced:
        return f"{c.kind} ({c.replaced} \u2192 {c.replacement})"
    return str(c.kind)


# -- values as files write them --------------------------------------------------------------


def words_from_pieces(pieces: Sequence[str]) -> tuple[Word, ...]:
    """Group vocabulary pieces into words: a word ends at the piece that ends with </w>."""
    words: list[Word] = []
    current: list[str] = []
    for p in pieces:
        current.append(p)
        if p.endswith(WORD_END):
            text = "".join(_plain(x) for x in current)
            punct = not any(ch.isalnum() for ch in text)
            words.append(Word(text, tuple(current), len(current) == 1, punct))
            current = []
    if current:  # a file cut mid-word: show the pieces, not as a known word
        text = "".join(_plain(x) for x in current)
        words.append(Word(text, tuple(current), False, False))
    return tuple(words)


def split_text(pieces: Sequence[str]) -> str:
    """``may onnaise</w> bottle</w>`` -> ``may+onnaise bottle``: words, pieces joined by +."""
    joined = " ".join(pieces)
    if joined.isascii():
        # CLIP's byte-level pieces are the characters themselves for printable ASCII.
        return joined.replace(WORD_END + " ", "\0").replace(" ", "+").replace("\0", " ") \
            .removesuffix(WORD_END)
    return " ".join(
        "+".join(_plain(p) for p in w.pieces) if not w.known else w.text
        for w in words_from_pieces(pieces)
    )


def _as_text(tag: str | None) -> str:
    """A vocabulary tag as the table shows tags: the way SD reads it (``wine_bottle`` ->
    ``wine bottle``), as the score file's own ``text`` column does."""
    if not tag:
        return ""
    from tagsmith.text.tokenizer import normalize_tag

    return normalize_tag(tag)


def _plain(piece: str) -> str:
    """A piece as text (``onnaise</w>`` -> ``onnaise``)."""
    if piece.isascii():
        # Byte-level pieces of printable ASCII are the characters themselves.
        return piece.removesuffix(WORD_END)
    from tagsmith.text.tokenizer import piece_text

    return piece_text(piece)


def _none_nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def describe_load_error(path: Path, exc: BaseException) -> str:
    """One sentence for a file that could not be shown."""
    if isinstance(exc, (InputError, FileFormatError)):
        return exc.message
    return f"Cannot read {path.name}: {exc}."
