"""Score files read column by column, so the explorer opens 140k rows in a blink.

``tagsmith.analysis.score_io.read_score_file`` builds one ``ScoreRow`` per tag, parsing every row's
neighbour list; for the full Danbooru list that is most of the time to first paint. The table
needs whole columns, and the neighbours of one row at a time, so this reader keeps the
columns as they come out of the file (CSV cells, JSON values, Arrow arrays), turns the numeric
ones into numpy arrays, and builds a ``ScoreRow`` only for the row on screen.

It follows the schema in ``tagsmith.analysis.score``'s docstring. Any file it cannot read is handed
to ``read_score_file``, whose sentence (with the bad line) is what the user sees; tests check
that both readers agree cell for cell on every format.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import itertools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.fileio import csv_value

# Rows shown while the rest of a big text file is still being read.
FIRST_CHUNK_ROWS = 2_000
_NUMERIC = ("count", "category", "n_tokens", "shares_token_count", "leak_similarity",
            "distinctiveness", "leak_risk", "leak_similarity_raw", "leak_percentile",
            "nearest_percentile")
# 4 decimals, as score writes
_ROUNDED = ("leak_similarity", "distinctiveness", "leak_risk", "leak_similarity_raw")
_TEXT = ("tag", "text", "category_name", "tokens", "unknown_words", "known_words",
         "head_token", "shares_token_with")


class _Unreadable(Exception):
    """This reader gave up; ``read_score_file`` will say why (or read it after all)."""


@dataclass
class ScoreColumns:
    """A score file's columns. Text columns are lists of str ("" for null), numeric columns
    float64 arrays (NaN for null), ``tokens``/``unknown_words`` space-separated as in CSV."""

    text: dict[str, list[str]]
    numbers: dict[str, np.ndarray]
    neighbors: Callable[[int], list[tuple[str, float]]]
    complete: bool = True
    _rows: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.text["tag"])

    def row(self, i: int) -> Any:
        """The ``tagsmith.analysis.score.ScoreRow`` of row ``i``."""
        if self._rows is not None:
            return self._rows[i]
        from tagsmith.analysis.score import ScoreNeighbor, ScoreRow

        def opt_int(name: str) -> int | None:
            v = self.numbers[name][i]
            return None if math.isnan(v) else int(v)

        def opt_float(name: str) -> float | None:
            v = self.numbers[name][i]
            return None if math.isnan(v) else float(v)

        def words(name: str) -> tuple[str, ...]:
            v = self.text[name][i]
            return tuple(v.split(" ")) if v else ()

        return ScoreRow(
            tag=self.text["tag"][i],
            text=self.text["text"][i] or self.text["tag"][i],
            count=opt_int("count"),
            category=opt_int("category"),
            category_name=self.text["category_name"][i] or None,
            tokens=words("tokens"),
            n_tokens=opt_int("n_tokens") or 0,
            known_words=words("known_words"),
            unknown_words=words("unknown_words"),
            head_token=self.text["head_token"][i] or None,
            shares_token_with=self.text["shares_token_with"][i] or None,
            shares_token_count=opt_int("shares_token_count"),
            neighbors=tuple(ScoreNeighbor(t, s) for t, s in self.neighbors(i)),
            leak_similarity=opt_float("leak_similarity"),
            distinctiveness=opt_float("distinctiveness"),
            leak_risk=opt_float("leak_risk"),
            leak_similarity_raw=opt_float("leak_similarity_raw"),
            leak_percentile=opt_float("leak_percentile"),
            nearest_percentile=opt_float("nearest_percentile"),
        )

    @classmethod
    def from_rows(cls, rows: Sequence[Any]) -> ScoreColumns:
        """Columns over ``ScoreRow``s already read (the fallback path)."""
        text = {
            "tag": [r.tag for r in rows],
            "text": [r.text for r in rows],
            "category_name": [r.category_name or "" for r in rows],
            "tokens": [" ".join(r.tokens) for r in rows],
            "known_words": [" ".join(r.known_words) for r in rows],
            "unknown_words": [" ".join(r.unknown_words) for r in rows],
            "head_token": [r.head_token or "" for r in rows],
            "shares_token_with": [r.shares_token_with or "" for r in rows],
        }
        numbers = {
            name: np.array([getattr(r, name) for r in rows], dtype=np.float64)
            if rows else np.zeros(0)
            for name in _NUMERIC
        }
        return cls(text, numbers, lambda i: [(n.tag, n.similarity) for n in rows[i].neighbors],
                   _rows=rows)


def read_score_columns(
    path: Path, first_chunk: Callable[[ScoreColumns], None] | None = None
) -> ScoreColumns:
    """Read a score file. ``first_chunk`` gets the first rows of a big CSV/JSONL file early.

    Raises what ``read_score_file`` raises for a file that is not a score file.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
        if head == b"PAR1":
            return _read_parquet(path, first_chunk)
        with path.open("r", encoding="utf-8-sig", newline="") as fh, gc_paused():
            first = fh.read(1)
            while first and first.isspace():
                first = fh.read(1)
            fh.seek(0)
            if first == "{":
                return _read_jsonl(fh, first_chunk)
            return _read_csv(fh, first_chunk)
    except (_Unreadable, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError,
            csv.Error):
        pass
    from tagsmith.analysis.score_io import read_score_file

    # The reference reader either explains what is wrong with the file or reads it after all.
    return ScoreColumns.from_rows(read_score_file(path))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of cells are made: none of them is garbage,
    and the collector rescanning them costs as much as the parsing (1.6x faster without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """float64 column, NaN for empty cells and nulls; raises ValueError on anything else."""
    return np.array([float(v) if v not in ("", None) else math.nan for v in values],
                    dtype=np.float64) if len(values) else np.zeros(0)


def _rounded(numbers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name in _ROUNDED:
        numbers[name] = np.round(numbers[name], 4)
    for name in ("leak_percentile", "nearest_percentile"):  # 2 decimals, as score writes
        numbers[name] = np.round(numbers[name], 2)
    return numbers


def _csv_columns(header: list[str], rows: list[list[str]], complete: bool) -> ScoreColumns:
    index = {name: i for i, name in enumerate(header)}
    if "tag" not in index or "n_tokens" not in index:
        raise _Unreadable
    width = len(header)
    if any(len(r) != width for r in rows):
        raise _Unreadable
    cols = list(zip(*rows)) if rows else [() for _ in header]

    def column(name: str) -> Sequence[str]:
        i = index.get(name)
        return cols[i] if i is not None else [""] * len(rows)

    # Cells a spreadsheet would run as formulas were written with a leading apostrophe.
    text = {name: [csv_value(v) for v in column(name)] for name in _TEXT}
    numbers = _rounded({name: _numbers(column(name)) for name in _NUMERIC})
    raw_neighbors = column("neighbors")

    def neighbors(i: int) -> list[tuple[str, float]]:
        cell = raw_neighbors[i]
        return [(str(t), round(float(s), 4)) for t, s in json.loads(cell)] if cell else []

    return ScoreColumns(text, numbers, neighbors, complete=complete)


def _read_csv(fh: io.TextIOBase, first_chunk: Callable[[ScoreColumns], None] | None
              ) -> ScoreColumns:
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        raise _Unreadable
    rows: list[list[str]] = []
    if first_chunk is not None:
        rows.extend(itertools.islice(reader, FIRST_CHUNK_ROWS))
        if len(rows) == FIRST_CHUNK_ROWS:
            first_chunk(_csv_columns(header, [r for r in rows if r], complete=False))
    rows.extend(reader)  # the csv module's own loop: no Python per row
    if not all(rows):
        rows = [r for r in rows if r]  # blank lines, as the reference reader skips them
    return _csv_columns(header, rows, complete=True)


def _jsonl_columns(text: dict[str, list[str]], raw: dict[str, list[Any]], lines: list[str],
                   complete: bool) -> ScoreColumns:
    if not complete:  # a snapshot: the reader goes on appending to these lists
        text = {k: v[:] for k, v in text.items()}
        lines = lines[:]
    numbers = _rounded({name: _numbers(raw[name]) for name in _NUMERIC})

    def neighbors(i: int) -> list[tuple[str, float]]:
        # Kept as the line's text: 140k parsed neighbour lists would cost ~10x the memory
        # and slow the garbage collector down for as long as the app runs.
        return [(str(n["tag"]), round(float(n["similarity"]), 4))
                if isinstance(n, dict) else (str(n[0]), round(float(n[1]), 4))
                for n in json.loads(lines[i]).get("neighbors") or ()]

    return ScoreColumns(text, numbers, neighbors, complete=complete)


def _read_jsonl(fh: io.TextIOBase, first_chunk: Callable[[ScoreColumns], None] | None
                ) -> ScoreColumns:
    text: dict[str, list[str]] = {name: [] for name in _TEXT}
    raw: dict[str, list[Any]] = {name: [] for name in _NUMERIC}
    lines: list[str] = []
    loads = json.loads
    for line in fh:
        if not line.strip():
            continue
        o = loads(line)
        if not isinstance(o, dict) or "tag" not in o:
            raise _Unreadable
        for name, values in text.items():
            v = o.get(name)
            values.append("" if v is None else " ".join(v) if isinstance(v, list) else str(v))
        for name, values in raw.items():
            values.append(o.get(name))
        lines.append(line)
        if first_chunk is not None and len(lines) == FIRST_CHUNK_ROWS:
            first_chunk(_jsonl_columns(text, raw, lines, complete=False))
            first_chunk = None
    return _jsonl_columns(text, raw, lines, complete=True)


def _read_parquet(path: Path, first_chunk: Callable[[ScoreColumns], None] | None = None
                  ) -> ScoreColumns:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _Unreadable from None
    try:
        if first_chunk is not None:
            source = pq.ParquetFile(path)
            if source.metadata.num_rows > FIRST_CHUNK_ROWS:
                batch = next(source.iter_batches(batch_size=FIRST_CHUNK_ROWS))
                first_chunk(_parquet_columns(pa.Table.from_batches([batch]), complete=False))
        table = pq.read_table(path)
    except _Unreadable:
        raise
    except Exception:  # noqa: BLE001 - pyarrow raises many kinds; the reference explains
        raise _Unreadable from None
    return _parquet_columns(table, complete=True)


def _parquet_columns(table: Any, complete: bool) -> ScoreColumns:
    import pyarrow as pa
    import pyarrow.compute as pc

    names = set(table.column_names)
    if not {"tag", "n_tokens"} <= names:
        raise _Unreadable
    n = table.num_rows

    def text_column(name: str) -> list[str]:
        if name not in names:
            return [""] * n
        column = table.column(name)
        if pa.types.is_list(column.type):
            # Joined inside Arrow: no Python list per row.
            column = pc.binary_join(column, " ")
        return column.fill_null("").to_pylist()

    def number_column(name: str) -> np.ndarray:
        if name not in names:
            return np.full(n, math.nan)
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    text = {name: text_column(name) for name in _TEXT}
    numbers = _rounded({name: number_column(name) for name in _NUMERIC})
    # Only the neighbour lists stay in Arrow, read one row at a time.
    nb = table.column("neighbors").combine_chunks() if "neighbors" in names else None

    def neighbors(i: int) -> list[tuple[str, float]]:
        if nb is None:
            return []
        return [(str(x["tag"]), round(float(x["similarity"]), 4)) for x in nb[i].as_py() or ()]

    return ScoreColumns(text, numbers, neighbors, complete=complete)
