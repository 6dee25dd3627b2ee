"""The data behind the explore table: columns, rows, filter and sort. No Textual here.

A table holds its columns as whole arrays (numbers as float64 with NaN where a value is
missing, text as lists), so filtering and sorting 140k rows is a few numpy operations and the
widget only ever formats the 30-odd rows on screen. A ``TableView`` is the filtered, sorted
list of row numbers the widget shows.

Filter language (typed after ``/``), terms separated by spaces, all must hold:

* ``bottle`` (any word): the row's tag contains it, case-insensitively; ``"wine bottle"`` in
  double quotes is one phrase;
* ``NAME OP VALUE`` with a column name or alias, no spaces: ``n_tokens>3``, ``count>=1000``,
  ``known=false``, ``kind=hyphen``, ``tag~bottle``; OP is one of ``= == != < <= > >= ~``
  (``~`` means "contains" for text). Numbers accept ``1k`` and ``2.5m``.

A word that looks like a filter but names no column (``nyoro~n`` is a real Danbooru tag) is
matched as text, and the view says so when nothing matches.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TEXT, INT, FLOAT, BOOL = "text", "int", "float", "bool"

_FILTER_TERM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(>=|<=|!=|==|=|>|<|~)(.+)$")
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}
_SUFFIX = {"k": 1e3, "m": 1e6}


@dataclass(frozen=True)
class Column:
    """One column of the table: where its values live and how they are shown."""

    key: str  # name in filters and in ``Table.values``
    label: str  # header text
    kind: str  # text | int | float | bool
    width: int
    aliases: tuple[str, ...] = ()
    digits: int = 2  # decimals shown for floats
    help: str = ""
    labels: dict[int, str] | None = field(default=None, compare=False, hash=False)

    @property
    def numeric(self) -> bool:
        return self.kind != TEXT

    @property
    def right_aligned(self) -> bool:
        return self.kind in (INT, FLOAT)

    def names(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)


@dataclass(frozen=True)
class NeighborBar:
    """A concept shown under the selected row, with a bar for its similarity."""

    tag: str
    similarity: float | None
    role: str = ""  # keep | leak | avoid | nearest | shares ("" when the file does not say)
    note: str = ""  # e.g. "71,684 posts"


@dataclass(frozen=True)
class Word:
    """A word of the selected tag and its pieces (for the colour-coded split)."""

    text: str
    pieces: tuple[str, ...]
    known: bool
    punctuation: bool = False


@dataclass(frozen=True)
class RowDetail:
    """What the detail pane shows for one row."""

    title: str
    tokens: tuple[str, ...]  # vocabulary pieces, "</w>" marking word-final ones
    words: tuple[Word, ...]
    facts: tuple[tuple[str, str], ...]  # (label, value) pairs for the header line
    neighbors: tuple[NeighborBar, ...]
    reason: str


@dataclass
class Table:
    """Rows of one ranking: a score file or a suggest result."""

    title: str
    columns: list[Column]
    values: dict[str, Any]  # column key -> np.ndarray (numeric) or list[str]
    key_column: str  # the tag a row stands for: what is marked, exported and drilled into
    detail: Callable[[int], RowDetail]
    default_sort: tuple[str, bool] | None = None  # (column key, descending)
    notices: list[str] = field(default_factory=list)
    source: str = ""  # file name or "suggest"
    empty_message: str = "No rows."
    # Columns this kind of table has but this one leaves out, by every name a filter may use
    # ("leak": "empty here (scored without a text encoder)").
    left_out: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._column_of: dict[str, Column] = {}
        for c in self.columns:
            for name in c.names():
                self._column_of[name.lower()] = c
        self._orders: dict[tuple[str, bool], np.ndarray] = {}
        self._lower: dict[str, list[str]] = {}
        self._word_masks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.values[self.key_column])

    def keys(self) -> list[str]:
        return self.values[self.key_column]

    def key(self, row: int) -> str:
        return self.values[self.key_column][row]

    def column(self, name: str) -> Column | None:
        return self._column_of.get(name.lower())

    def cell(self, column: Column, row: int) -> str:
        """The text a cell shows."""
        v = self.values[column.key][row]
        if column.kind == TEXT:
            return v
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if column.kind == INT:
            if column.labels is not None:
                return column.labels.get(int(v), str(int(v)))
            return f"{int(v):,}"
        if column.kind == BOOL:
            return "yes" if v else "no"
        return f"{v:.{column.digits}f}"

    def lower(self, key: str) -> list[str]:
        """Lower-cased text of a text column (cached: the filter reads it on every keystroke)."""
        got = self._lower.get(key)
        if got is None:
            got = self._lower[key] = [s.lower() for s in self.values[key]]
        return got

    def word_mask(self, word: str) -> np.ndarray:
        """Rows whose tag contains ``word`` (or, for ``a_b``, ``a b``), case-insensitively.

        Typing narrows a search one letter at a time: a row without ``bot`` has no ``bott``
        either, so a word is looked for only among the rows that hold a word inside it.
        """
        got = self._word_masks.get(word)
        if got is not None:
            return got
        keys = self.lower(self.key_column)
        n = len(keys)
        needles = {word, word.replace("_", " ")}
        inner = [w for w in self._word_masks if w in word]
        if inner:
            base = self._word_masks[max(inner, key=len)]
            candidates = np.flatnonzero(base)
            mask = np.zeros(n, dtype=bool)
            hit = [any(s in keys[i] for s in needles) for i in candidates.tolist()]
            mask[candidates[np.fromiter(hit, dtype=bool, count=len(candidates))]] = True
        elif len(needles) == 1:
            mask = np.fromiter((word in k for k in keys), dtype=bool, count=n)
        else:
            mask = np.fromiter((any(s in k for s in needles) for k in keys), dtype=bool, count=n)
        if len(self._word_masks) >= 64:
            self._word_masks.pop(next(iter(self._word_masks)))
        self._word_masks[word] = mask
        return mask

    def order(self, key: str, descending: bool) -> np.ndarray:
        """All rows sorted by one column, missing values last; ties keep file order."""
        cached = self._orders.get((key, descending))
        if cached is not None:
            return cached
        column = self.column(key)
        assert column is not None
        vals = self.values[column.key]
        if column.kind == TEXT:
            lowered = self.lower(column.key)
            # sorted(reverse=True) stays stable: equal texts keep file order either way.
            order = np.asarray(
                sorted(range(len(lowered)), key=lowered.__getitem__, reverse=descending),
                dtype=np.int64,
            )
        else:
            arr = np.asarray(vals, dtype=np.float64)
            # NaN sorts last in both directions: negate for descending instead of reversing.
            order = np.argsort(-arr if descending else arr, kind="stable")
        self._orders[(key, descending)] = order
        return order


# -- filter --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    column: Column
    op: str
    value: Any


@dataclass(frozen=True)
class Filter:
    """A parsed filter: words the key must contain and column conditions."""

    words: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    errors: tuple[str, ...] = ()  # terms that name a column but cannot be applied
    lookalikes: tuple[str, ...] = ()  # words shaped like NAME>VALUE whose NAME is no column

    @property
    def empty(self) -> bool:
        return not self.words and not self.conditions


MARKED = Column("marked", "", BOOL, 1, aliases=("mark",), help="rows you marked")


def parse_filter(query: str, table: Table) -> Filter:
    """Read the filter box. Errors are sentences for the status line, never exceptions."""
    try:
        terms = shlex.split(query)
    except ValueError:  # an unbalanced quote while the user is still typing
        terms = query.replace('"', " ").split()
    words: list[str] = []
    conditions: list[Condition] = []
    errors: list[str] = []
    lookalikes: list[str] = []
    for term in terms:
        m = _FILTER_TERM.match(term)
        column = None
        if m:
            name = m.group(1).lower()
            column = MARKED if name in MARKED.names() else table.column(name)
        if m is not None and column is None and m.group(1).lower() in table.left_out:
            errors.append(f"'{term}': {table.left_out[m.group(1).lower()]}")
            continue
        if m is None or column is None:
            if m is not None:
                lookalikes.append(m.group(1))
            words.append(term.lower())
            continue
        op, raw = m.group(2), m.group(3)
        op = "=" if op == "==" else op
        try:
            conditions.append(Condition(column, op, _parse_value(column, op, raw)))
        except ValueError as exc:
            errors.append(f"'{term}': {exc}")
    return Filter(tuple(words), tuple(conditions), tuple(errors), tuple(lookalikes))


def _parse_value(column: Column, op: str, raw: str) -> Any:
    if column.kind == TEXT:
        if op not in ("=", "!=", "~"):
            raise ValueError(f"{column.key} is text; use =, != or ~ (contains)")
        return raw.lower()
    if column.kind == BOOL:
        if op not in ("=", "!="):
            raise ValueError(f"{column.key} is yes/no; use = or !=")
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{column.key} takes true or false, not '{raw}'")
    if op == "~":
        raise ValueError(f"{column.key} is a number; use = != < <= > >=")
    if column.labels is not None:
        by_name = {name.lower(): k for k, name in column.labels.items()}
        if raw.lower() in by_name:
            return float(by_name[raw.lower()])
    text = raw.lower().replace(",", "").replace("_", "")
    scale = 1.0
    if text and text[-1] in _SUFFIX:
        scale = _SUFFIX[text[-1]]
        text = text[:-1]
    try:
        return float(text) * scale
    except ValueError:
        if column.labels:
            names = ", ".join(name for _, name in sorted(column.labels.items()))
            raise ValueError(f"not a {column.key} here; use {names} or a number") from None
        raise ValueError(f"{column.key} takes a number, not '{raw}'") from None


def filter_mask(flt: Filter, table: Table, marked: Callable[[], np.ndarray]) -> np.ndarray | None:
    """Boolean mask of the rows that pass, or None when every row does."""
    if flt.empty:
        return None
    n = len(table)
    mask = np.ones(n, dtype=bool)
    for w in flt.words:
        mask &= table.word_mask(w)
    for cond in flt.conditions:
        mask &= _condition_mask(cond, table, marked)
    return mask


def _condition_mask(cond: Condition, table: Table, marked: Callable[[], np.ndarray]) -> np.ndarray:
    col, op, value = cond.column, cond.op, cond.value
    if col is MARKED:
        arr = marked()
        return arr == value if op == "=" else arr != value
    if col.kind == TEXT:
        texts = table.lower(col.key)
        if op == "~":
            hit = [value in t for t in texts]
        elif op == "=":
            hit = [t == value for t in texts]
        else:
            hit = [t != value for t in texts]
        return np.fromiter(hit, dtype=bool, count=len(texts))
    arr = np.asarray(table.values[col.key], dtype=np.float64)
    if col.kind == BOOL:
        value = 1.0 if value else 0.0
    with np.errstate(invalid="ignore"):
        # Comparisons with NaN are False: a row without the value never passes a condition.
        if op == "=":
            return arr == value
        if op == "!=":
            return (arr != value) & ~np.isnan(arr)
        if op == "<":
            return arr < value
        if op == "<=":
            return arr <= value
        if op == ">":
            return arr > value
        return arr >= value


# -- view ----------------------------------------------------------------------------------


class TableView:
    """The rows on show: the table filtered and sorted, as row numbers in display order."""

    def __init__(self, table: Table, marked: Callable[[], np.ndarray] | None = None) -> None:
        self.table = table
        self._marked = marked or (lambda: np.zeros(len(table), dtype=bool))
        self.query = ""
        self.filter = Filter()
        self.sort_key: str | None = None
        self.descending = False
        if table.default_sort is not None:
            self.sort_key, self.descending = table.default_sort
        self.rows = np.arange(len(table), dtype=np.int64)
        self._refresh()

    def __len__(self) -> int:
        return len(self.rows)

    def set_query(self, query: str) -> Filter:
        self.query = query
        self.filter = parse_filter(query, self.table)
        self._refresh()
        return self.filter

    def sort_by(self, key: str, descending: bool | None = None) -> None:
        """Sort by a column; without ``descending``, numbers start high first, text A-Z,
        and sorting again by the same column flips the direction."""
        column = self.table.column(key)
        if column is None:
            raise KeyError(key)
        if descending is None:
            if self.sort_key == column.key:
                descending = not self.descending
            else:
                descending = column.numeric
        self.sort_key, self.descending = column.key, descending
        self._refresh()

    def reverse(self) -> None:
        self.descending = not self.descending
        self._refresh()

    def original_order(self) -> None:
        self.sort_key, self.descending = None, False
        self._refresh()

    def refilter(self) -> None:
        """Apply the filter again (after marks change, for ``marked=true``)."""
        self._refresh()

    def position_of(self, row: int) -> int | None:
        hits = np.flatnonzero(self.rows == row)
        return int(hits[0]) if len(hits) else None

    def status(self) -> str:
        """One line: how many rows show, and why none do when none do."""
        total = len(self.table)
        shown = len(self.rows)
        parts = [f"{shown:,} of {total:,}" if shown != total else f"{total:,} rows"]
        if self.filter.errors:
            parts.append("; ".join(self.filter.errors))
        elif shown == 0 and self.filter.lookalikes:
            names = sorted({c.key for c in self.table.columns})
            parts.append(
                f"'{self.filter.lookalikes[0]}' is no column (columns: {', '.join(names)})"
            )
        return " · ".join(parts)

    def _refresh(self) -> None:
        n = len(self.table)
        if self.sort_key is not None and n:
            order = self.table.order(self.sort_key, self.descending)
        else:  # file order, or its reverse
            order = np.arange(n, dtype=np.int64)
            if self.descending:
                order = order[::-1].copy()
        mask = filter_mask(self.filter, self.table, self._marked)
        self.rows = order if mask is None else order[mask[order]]


def columns_by_name(columns: Sequence[Column]) -> dict[str, Column]:
    return {c.key: c for c in columns}
