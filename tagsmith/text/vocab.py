"""Tag vocabulary readers: tagcomplete CSV, WD14 ``selected_tags.csv`` and plain tag lists.

The format is detected from the content, not the file name:

- **tagcomplete** (a1111-sd-webui-tagcomplete, e.g. ``tags/danbooru.csv``, e621 lists): no
  header, ``tag,category,post_count,"alias1,alias2"``. Count and aliases are optional
  (tagcomplete's own custom lists use ``tag,category``), so 2 to 4 columns are accepted.
- **wd14** (the ``selected_tags.csv`` shipped with WD14 taggers): a header row naming the
  columns, normally ``tag_id,name,category,count``. Any header that names a ``name`` or ``tag``
  column (plus optional ``category``/``type``, ``count``/``post_count``, ``aliases``) is read
  the same way, by column name.
- **plain**: one tag per line, each optionally followed by its count (``tag,count``; the second
  column of a two-column file without a header is read as a post count, not a category).

Accepted everywhere: gzip compression (detected by its magic bytes), a UTF-8 byte-order mark,
CRLF line ends, CSV quoting (a quoted tag may contain commas), blank rows, and counts written
as floats with no fraction (``1234.0``). Bad rows (empty tag, wrong number of columns, a count
that is not a whole number, a header row where the format has none) are skipped and reported
as ``RowProblem`` with their 1-based physical line number. Tags that normalise to the same text
(``long_hair``, ``Long Hair`` and ``long hair``: CLIP lowercases) are merged into one entry,
keeping the highest count.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tagsmith.errors import FileFormatError, InputError
from tagsmith.fileio import (
    MAX_LIST_BYTES,
    bomless_utf16,
    decode_text,
    gunzip_bounded,
    read_regular_bytes,
)
from tagsmith.text.prompt import strip_tag_syntax
from tagsmith.text.tokenizer import normalize_tag

VOCAB_ENV = "TAGSMITH_VOCAB"
FORMATS = ("tagcomplete", "wd14", "plain")

# Rows looked at to decide the format; enough to outvote a few bad rows at the top.
_SAMPLE_ROWS = 200
_GZIP_MAGIC = b"\x1f\x8b"
# Header cells we understand, mapped to the field they fill.
_HEADER_NAMES = {
    "name": "tag",
    "tag": "tag",
    "tag_name": "tag",
    "category": "category",
    "type": "category",
    "count": "count",
    "post_count": "count",
    "postcount": "count",
    "aliases": "aliases",
    "alias": "aliases",
    "tag_id": None,
    "id": None,
}
_FORMAT_HINT = (
    "a tagcomplete CSV (tag,category,count,aliases), a WD14 selected_tags.csv "
    "(tag_id,name,category,count) or one tag per line"
)


@dataclass(frozen=True)
class VocabEntry:
    """One tag of a vocabulary."""

    tag: str  # as in the file, e.g. "mayonnaise_bottle"
    text: str  # as analysed: normalize_tag(tag) -> "mayonnaise bottle"
    category: int | None = None
    count: int | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowProblem:
    """A row that was skipped, and why."""

    line: int  # 1-based physical line number in the file
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


# How tag lists number their categories. tagcomplete's danbooru.csv and WD14 files use
# Danbooru's numbers; tagcomplete's e621.csv uses e621's, where 5 is species, not meta.
CATEGORY_NUMBERINGS: dict[str, dict[str, int]] = {
    # 9: the rating tags (general, sensitive, questionable, explicit) of WD14's selected_tags
    "danbooru": {"general": 0, "artist": 1, "copyright": 3, "character": 4, "meta": 5,
                 "rating": 9},
    "e621": {"general": 0, "artist": 1, "copyright": 3, "character": 4, "species": 5,
             "invalid": 6, "meta": 7, "lore": 8},
}
_E621_ONLY = frozenset({6, 7, 8})


def category_names(numbering: str) -> dict[int, str]:
    """Category number -> name in ``numbering`` ("danbooru" or "e621")."""
    return {number: name for name, number in CATEGORY_NUMBERINGS[numbering].items()}


def guess_numbering(categories: Iterable[int | None], file_name: str = "") -> str:
    """"e621" when the file is named so or uses e621's own numbers (6 invalid, 7 meta,
    8 lore), else "danbooru" (tagcomplete's and WD14's numbering)."""
    if "e621" in file_name.lower():
        return "e621"
    return "e621" if any(c in _E621_ONLY for c in categories) else "danbooru"


@dataclass
class Vocabulary:
    """The tags read from one file, in file order, one entry per normalised text."""

    entries: list[VocabEntry]
    format: str  # "tagcomplete" | "wd14" | "plain"
    path: Path | None
    problems: list[RowProblem]
    duplicates_removed: int  # rows merged because they normalise to the same text
    # Things worth saying that are not bad rows (e.g. a WD14 file without its header).
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VocabEntry]:
        return iter(self.entries)

    def by_text(self) -> dict[str, VocabEntry]:
        return {e.text: e for e in self.entries}

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.entries]

    @property
    def numbering(self) -> str:
        """Whose category numbers the file uses: "e621" when it is named so or uses e621's
        own numbers (6 invalid, 7 meta, 8 lore), else "danbooru"."""
        return guess_numbering((e.category for e in self.entries),
                               self.path.name if self.path is not None else "")

    def summary(self) -> str:
        """One line for users: how many tags, merged duplicates and skipped rows."""
        name = self.path.name if self.path else "vocabulary"
        n = len(self.entries)
        parts = [f"{n:,} tag{'s' if n != 1 else ''} from {name} ({self.format})"]
        if self.duplicates_removed:
            n = self.duplicates_removed
            parts.append(f"{n:,} duplicate{'s' if n != 1 else ''} merged")
        if self.problems:
            n = len(self.problems)
            parts.append(f"{n:,} bad row{'s' if n != 1 else ''} skipped")
        return ", ".join(parts)


PROBLEMS_SHOWN = 5


def problem_lines(problems: list[RowProblem], shown: int = PROBLEMS_SHOWN) -> list[str]:
    """What every command says about skipped rows: the first few by line, then a count."""
    out = [f"skipped {p}" for p in problems[:shown]]
    if len(problems) > shown:
        out.append(f"… and {len(problems) - shown:,} more bad rows")
    return out


def default_vocab_path() -> Path | None:
    """The vocabulary named by ``$TAGSMITH_VOCAB``, or None when it is unset or empty."""
    value = os.environ.get(VOCAB_ENV, "").strip()
    return Path(value).expanduser() if value else None


def read_vocabulary(path: str | Path, *, underscores: bool = True) -> Vocabulary:
    """Read a tag vocabulary file in any supported format (see the module docstring).

    ``underscores=False`` keeps underscores in tags (for vocabularies of prompt words rather
    than Danbooru tags). Raises ``InputError``/``FileFormatError`` with one sentence when the
    file cannot be used at all; bad rows are skipped and listed in ``problems``.
    """
    path = Path(path)
    text = _read_text(path)
    return parse_vocabulary(text, path=path, underscores=underscores)


def parse_vocabulary(
    text: str, *, path: Path | None = None, underscores: bool = True
) -> Vocabulary:
    """Parse vocabulary text already decoded (BOM removed); see ``read_vocabulary``."""
    where = str(path) if path is not None else "the vocabulary"
    records = _records(text, where)
    head = list(itertools.islice(records, _SAMPLE_ROWS))
    if not head:
        raise FileFormatError(f"{where} has no tags (only blank lines).")
    layout = _detect_layout(head, where)
    if layout.header_line is not None:
        head = head[1:]
    problems: list[RowProblem] = []
    entries: list[VocabEntry] = []
    index: dict[str, int] = {}
    duplicates = 0
    tag_col, cat_col, count_col, alias_col = (
        layout.tag_col, layout.category_col, layout.count_col, layout.aliases_col
    )
    min_cols, max_cols = layout.min_cols, layout.max_cols
    # A plain list is often copied from prompts: `(maid:1.2)` is the tag maid, as tokenize
    # reads it. (CSV tag lists hold tag names, where parentheses are part of the name.)
    plain = layout.format == "plain"
    for line, row in itertools.chain(head, records):
        # Fast path for well-formed rows (all of a real tag list); anything unusual, including
        # every kind of bad row, goes through _parse_row, which explains the problem.
        entry = None
        n = len(row)
        if min_cols <= n <= max_cols:
            tag = strip_tag_syntax(row[tag_col].strip()) if plain else row[tag_col].strip()
            try:
                category = int(row[cat_col]) if cat_col is not None and cat_col < n else None
                count = int(row[count_col]) if count_col is not None and count_col < n else None
            except ValueError:
                pass
            else:
                if tag and (category is None or category >= 0) and (count is None or count >= 0):
                    text = _normalize(tag, underscores)
                    if text:
                        al = row[alias_col] if alias_col is not None and alias_col < n else ""
                        aliases = (
                            tuple(a.strip() for a in al.split(",") if a.strip()) if al else ()
                        )
                        entry = VocabEntry(tag, text, category, count, aliases)
        if entry is None:
            entry = _parse_row(row, line, layout, problems, underscores)
            if entry is None:
                continue
        i = index.get(entry.text)
        if i is None:
            index[entry.text] = len(entries)
            entries.append(entry)
        else:
            duplicates += 1
            entries[i] = _merged(entries[i], entry)
    if not entries:
        first = f" (first: {problems[0]})" if problems else ""
        raise FileFormatError(
            f"No tags could be read from {where}: all {len(problems):,} rows were bad{first}."
        )
    return Vocabulary(
        entries=entries,
        format=layout.format,
        path=path,
        problems=problems,
        duplicates_removed=duplicates,
        notes=layout.notes,
    )


# -- bytes to text ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"Vocabulary file {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a vocabulary file.")
    try:
        data = read_regular_bytes(path, limit=MAX_LIST_BYTES, what="vocabulary")
    except OSError as exc:
        raise InputError(f"Cannot read vocabulary file {path}: {exc.strerror or exc}.") from exc
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gunzip_bounded(data, limit=MAX_LIST_BYTES, label=f"The vocabulary {path}")
        except (OSError, EOFError, zlib.error) as exc:
            raise FileFormatError(
                f"{path} looks gzip-compressed but cannot be decompressed ({exc})."
            ) from exc
    if not data.strip():
        raise FileFormatError(f"Vocabulary file {path} is empty.")
    bom16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    if b"\x00" in data and not bom16 and not bomless_utf16(data):
        raise FileFormatError(f"{path} is a binary file, not {_FORMAT_HINT}.")
    return decode_text(data, str(path))  # UTF-8 or UTF-16, as every tag-list reader takes


# -- rows ------------------------------------------------------------------------------------


def _records(text: str, where: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with the physical line each starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FileFormatError(
                f"Cannot read line {line} of {where} as CSV ({exc}; an unclosed quote?)."
            ) from None
        # A quoted field may span lines: the record starts where the previous one ended.
        start = line
        line = reader.line_num + 1
        if not row or (not row[0].strip() and all(not cell.strip() for cell in row)):
            continue
        yield start, row


@dataclass
class _Layout:
    format: str
    tag_col: int
    category_col: int | None
    count_col: int | None
    aliases_col: int | None
    min_cols: int
    max_cols: int
    header_line: int | None = None
    header_cells: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def _is_number(cell: str) -> bool:
    return _parse_count(cell) is not None or cell.strip() == ""


def _header_fields(row: list[str]) -> dict[str, int] | None:
    """Column roles when ``row`` is a header we understand, else None."""
    cells = [c.strip().lower() for c in row]
    if not all(c in _HEADER_NAMES for c in cells):
        return None
    roles: dict[str, int] = {}
    for i, c in enumerate(cells):
        role = _HEADER_NAMES[c]
        if role is not None and role not in roles:
            roles[role] = i
    return roles if "tag" in roles else None


def _looks_like_header(row: list[str]) -> bool:
    return _header_fields(row) is not None or (
        len(row) > 1 and all(c.strip().lower() in _HEADER_NAMES for c in row)
    )


def _detect_layout(records: list[tuple[int, list[str]]], where: str) -> _Layout:
    first_line, first = records[0]
    # One-column lists have no header: a first line "name" is more likely a tag than a title.
    roles = _header_fields(first) if len(first) > 1 else None
    if roles is not None:
        cells = tuple(c.strip().lower() for c in first)
        fmt = "wd14" if "tag_id" in cells or cells[:2] == ("id", "name") else (
            "tagcomplete" if "category" in roles else "plain"
        )
        layout = _Layout(
            format=fmt,
            tag_col=roles["tag"],
            category_col=roles.get("category"),
            count_col=roles.get("count"),
            aliases_col=roles.get("aliases"),
            min_cols=len(first) - (1 if roles.get("aliases") == len(first) - 1 else 0),
            max_cols=len(first),
            header_line=first_line,
            header_cells=cells,
        )
        if fmt == "tagcomplete":
            # tagcomplete files have no header; read it as one but say so.
            layout.header_line = None
        return layout

    # No header: pick the layout that fits most of the first rows (ties go to the earlier one,
    # so a bare two-column file is tag,count).
    sample = [row for _, row in records[:_SAMPLE_ROWS]]
    fits = {
        "wd14": lambda r: len(r) == 4 and _parse_count(r[0]) is not None
        and not _is_number(r[1]) and _is_number(r[2]) and _is_number(r[3]),
        "plain-count": lambda r: len(r) == 2 and bool(r[0].strip()) and _is_number(r[1]),
        "tagcomplete": lambda r: 2 <= len(r) <= 4 and bool(r[0].strip())
        and all(_is_number(c) for c in r[1:3]),
        "plain": lambda r: len(r) == 1,
    }
    scores = {name: sum(1 for r in sample if fit(r)) for name, fit in fits.items()}
    best = max(scores, key=lambda name: scores[name])  # first maximum wins ties
    if scores[best] == 0:
        line, row = records[0]
        shown = ",".join(row)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise FileFormatError(
            f"Cannot tell the format of {where}: expected {_FORMAT_HINT}, "
            f"but line {line} reads {shown!r}."
        )
    if best == "wd14":
        layout = _Layout("wd14", 1, 2, 3, None, 4, 4)
        layout.notes.append(
            f"{where} has no header row; read its columns as tag_id,name,category,count."
        )
        return layout
    if best == "tagcomplete":
        return _Layout("tagcomplete", 0, 1, 2, 3, 2, 4)
    # plain or plain-count: each line is a tag, with or without its count
    return _Layout("plain", 0, None, 1, None, 1, 2)


def _parse_count(cell: str) -> int | None:
    """A non-negative whole number, also written as a float (``1234.0``); None otherwise."""
    s = cell.strip()
    if not s:
        return None
    try:
        return int(s) if int(s) >= 0 else None
    except ValueError:
        pass
    try:
        value = float(s)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def _parse_row(
    row: list[str],
    line: int,
    layout: _Layout,
    problems: list[RowProblem],
    underscores: bool,
) -> VocabEntry | None:
    n = len(row)
    if n < layout.min_cols or n > layout.max_cols:
        if _looks_like_header(row):
            problems.append(RowProblem(line, _header_message(layout)))
            return None
        expected = (
            f"{layout.min_cols}"
            if layout.min_cols == layout.max_cols
            else f"{layout.min_cols} to {layout.max_cols}"
        )
        if any("\n" in cell for cell in row):
            hint = " (an unclosed quote joins the lines after it)"
        else:
            hint = " (quote tags that contain commas)" if n > layout.max_cols else ""
        problems.append(RowProblem(line, f"expected {expected} columns, found {n}{hint}"))
        return None
    tag = row[layout.tag_col].strip()
    if layout.format == "plain":
        tag = strip_tag_syntax(tag)
    if not tag:
        problems.append(RowProblem(line, "empty tag"))
        return None
    category = count = None
    col = layout.category_col
    if col is not None and col < n and row[col]:
        category = _number_or_problem(row, col, "category", line, layout, problems)
        if category is None:
            return None
    col = layout.count_col
    if col is not None and col < n and row[col]:
        count = _number_or_problem(row, col, "count", line, layout, problems)
        if count is None:
            return None
    aliases: tuple[str, ...] = ()
    col = layout.aliases_col
    if col is not None and col < n and row[col]:
        aliases = tuple(a.strip() for a in row[col].split(",") if a.strip())
    text = _normalize(tag, underscores)
    if not text:
        problems.append(RowProblem(line, "empty tag"))
        return None
    return VocabEntry(tag, text, category, count, aliases)


def _number_or_problem(
    row: list[str],
    col: int,
    what: str,
    line: int,
    layout: _Layout,
    problems: list[RowProblem],
) -> int | None:
    cell = row[col]
    try:
        value = int(cell)
    except ValueError:
        value = _parse_count(cell) if cell.strip() else 0
    else:
        if value < 0:
            value = None
    if value is None:
        if layout.header_line is not None and tuple(
            c.strip().lower() for c in row
        ) == layout.header_cells:
            problems.append(RowProblem(line, "repeated header row"))
        elif _looks_like_header(row):
            problems.append(RowProblem(line, _header_message(layout)))
        else:
            problems.append(RowProblem(line, f"{what} {cell.strip()!r} is not a whole number"))
    return value


def _normalize(tag: str, underscores: bool) -> str:
    """``normalize_tag`` with a fast path for the common case (the full list in ~0.1 s).

    For a stripped tag longer than 5 characters without a backslash, ``normalize_tag`` always
    turns underscores into spaces and collapses whitespace; ``str.split`` splits on exactly
    the characters ``re``'s ``\\s`` matches, so the result is identical (a test checks it).
    """
    if "\ufeff" in tag:  # a BOM left inside the file (files joined with cat) is no character
        tag = tag.replace("\ufeff", "")
    # Lowercased, as CLIP reads every text: Long_Hair and long hair are one tag (same tokens).
    if len(tag) <= 5 or "\\" in tag:
        return normalize_tag(tag, underscores=underscores).lower()
    if underscores:
        tag = tag.replace("_", " ")
    return " ".join(tag.split()).lower()


def _header_message(layout: _Layout) -> str:
    if layout.header_line is None:
        return f"header row in a {layout.format} file, which has none"
    return "repeated header row"


def _merged(kept: VocabEntry, new: VocabEntry) -> VocabEntry:
    """Two rows with the same normalised text: keep the higher count, pool the aliases."""
    winner, loser = (new, kept) if (new.count or -1) > (kept.count or -1) else (kept, new)
    return VocabEntry(
        tag=winner.tag,
        text=winner.text,
        category=winner.category if winner.category is not None else loser.category,
        count=winner.count,
        aliases=tuple(dict.fromkeys(winner.aliases + loser.aliases)),
    )
