"""Score files on disk: ``write_scores`` writes CSV, JSONL or Parquet atomically and
``read_score_file`` reads them back, following the schema in ``tagsmith.analysis.score``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tagsmith.analysis.score import COLUMNS, ScoreNeighbor, ScoreRow, ScoreSummary, round_score
from tagsmith.errors import FileFormatError, InputError, UsageError
from tagsmith.fileio import atomic_writer, csv_value, require_regular_file, write_csv

SCORE_FORMATS = ("csv", "jsonl", "parquet")


def format_for_path(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else from the extension (.csv, .jsonl/.ndjson, .parquet/.pq)."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in SCORE_FORMATS:
            raise UsageError(f"Unknown format {fmt!r}: use csv, jsonl or parquet.")
        return fmt
    suffix = Path(path).suffix.lower()
    by_suffix = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in by_suffix:
        raise UsageError(
            f"Cannot tell the output format from {Path(path).name!r}: name it .csv, .jsonl or "
            ".parquet, or give --format."
        )
    return by_suffix[suffix]


def write_scores(
    rows: Sequence[ScoreRow],
    path: str | Path,
    fmt: str | None = None,
    *,
    summary: ScoreSummary | None = None,
) -> Path:
    """Write rows atomically: ``path`` is replaced only by a complete file."""
    fmt = format_for_path(path, fmt)
    path = Path(path)
    if fmt == "parquet":
        pa, pq = _pyarrow()
        table = _to_arrow(rows, pa)
        if summary is not None:
            meta = {b"tagsmith": json.dumps(summary.to_dict(), default=str).encode()}
            table = table.replace_schema_metadata(meta)
        with atomic_writer(path, "wb") as fh:
            pq.write_table(table, fh)
        return path
    if fmt == "csv":
        write_csv(path, COLUMNS, (_csv_cells(r) for r in rows))
        return path
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        for r in rows:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return path


def _csv_cells(r: ScoreRow) -> list[str]:
    def opt(v: object) -> str:
        return "" if v is None else str(v)

    return [
        r.tag, r.text, opt(r.count), opt(r.category), opt(r.category_name),
        " ".join(r.tokens), str(r.n_tokens), " ".join(r.known_words), " ".join(r.unknown_words),
        opt(r.head_token), opt(r.shares_token_with), opt(r.shares_token_count),
        json.dumps([[n.tag, n.similarity] for n in r.neighbors], ensure_ascii=False)
        if r.neighbors else "",
        opt(r.leak_similarity), opt(r.distinctiveness), opt(r.leak_risk),
        opt(r.leak_similarity_raw), opt(r.leak_percentile), opt(r.nearest_percentile),
    ]


def _pyarrow():  # noqa: ANN202 - (pyarrow, pyarrow.parquet)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "Parquet needs pyarrow: install it with `pip install 'tagsmith[parquet]'`, "
            "or write .csv or .jsonl."
        ) from None
    return pa, pq


def _arrow_schema(pa):  # noqa: ANN001, ANN202
    strs = pa.list_(pa.string())
    return pa.schema([
        ("tag", pa.string()), ("text", pa.string()), ("count", pa.int64()),
        ("category", pa.int64()), ("category_name", pa.string()), ("tokens", strs),
        ("n_tokens", pa.int64()),
        ("known_words", strs), ("unknown_words", strs), ("head_token", pa.string()),
        ("shares_token_with", pa.string()), ("shares_token_count", pa.int64()),
        ("neighbors", pa.list_(pa.struct([("tag", pa.string()),
                                          ("similarity", pa.float32())]))),
        ("leak_similarity", pa.float32()), ("distinctiveness", pa.float32()),
        ("leak_risk", pa.float32()), ("leak_similarity_raw", pa.float32()),
        ("leak_percentile", pa.float32()), ("nearest_percentile", pa.float32()),
    ])


def _to_arrow(rows: Sequence[ScoreRow], pa):  # noqa: ANN001, ANN202
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for r in rows:
        for c in COLUMNS:
            v = getattr(r, c)
            if c == "neighbors":
                v = [{"tag": n.tag, "similarity": n.similarity} for n in v]
            elif isinstance(v, tuple):
                v = list(v)
            cols[c].append(v)
    return pa.Table.from_pydict(cols, schema=_arrow_schema(pa))


def read_score_file(path: str | Path) -> list[ScoreRow]:
    """Rows of a score file written by ``write_scores`` (csv, jsonl or parquet).

    The format comes from the content (parquet's magic bytes, a JSON object on the first line),
    else CSV. Raises ``InputError``/``FileFormatError`` with one sentence.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Score file {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a score file.")
    require_regular_file(path, "score file")
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{path} is not a tagsmith score file (not UTF-8 text).") from exc
    if text.lstrip().startswith("{"):
        return _read_jsonl(text, path)
    return _read_csv(text, path)


def read_score_metadata(path: str | Path) -> dict | None:
    """The run summary stored in a parquet score file, or None (CSV/JSONL carry none)."""
    path = Path(path)
    with path.open("rb") as fh:
        if fh.read(4) != b"PAR1":
            return None
    _, pq = _pyarrow()
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"tagsmith")
    return json.loads(raw) if raw else None


def _row_from_values(v: dict[str, Any]) -> ScoreRow:
    def opt_int(x: Any) -> int | None:
        return None if x is None or x == "" else int(x)

    def opt_float(x: Any) -> float | None:
        return None if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) \
            else round_score(float(x))

    def opt_pct(x: Any) -> float | None:
        return None if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) \
            else round(float(x), 2)

    def words(x: Any) -> tuple[str, ...]:
        if x is None or x == "":
            return ()
        return tuple(x.split(" ")) if isinstance(x, str) else tuple(x)

    nb = v.get("neighbors") or ()
    if isinstance(nb, str):
        nb = json.loads(nb)
    neighbors = tuple(
        ScoreNeighbor(n["tag"], round_score(n["similarity"])) if isinstance(n, dict)
        else ScoreNeighbor(str(n[0]), round_score(n[1]))
        for n in nb
    )
    return ScoreRow(
        tag=str(v["tag"]),
        text=str(v.get("text") or v["tag"]),
        count=opt_int(v.get("count")),
        category=opt_int(v.get("category")),
        category_name=v.get("category_name") or None,
        tokens=words(v.get("tokens")),
        n_tokens=int(v.get("n_tokens") or 0),
        known_words=words(v.get("known_words")),
        unknown_words=words(v.get("unknown_words")),
        head_token=v.get("head_token") or None,
        shares_token_with=v.get("shares_token_with") or None,
        shares_token_count=opt_int(v.get("shares_token_count")),
        neighbors=neighbors,
        leak_similarity=opt_float(v.get("leak_similarity")),
        distinctiveness=opt_float(v.get("distinctiveness")),
        leak_risk=opt_float(v.get("leak_risk")),
        leak_similarity_raw=opt_float(v.get("leak_similarity_raw")),
        leak_percentile=opt_pct(v.get("leak_percentile")),
        nearest_percentile=opt_pct(v.get("nearest_percentile")),
    )


def _bad(path: Path, line: int, exc: Exception) -> FileFormatError:
    return FileFormatError(f"{path} is not a tagsmith score file (line {line}: {exc}).")


def _read_csv(text: str, path: Path) -> list[ScoreRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise FileFormatError(f"Score file {path} is empty.")
    if "tag" not in header or "n_tokens" not in header:
        raise FileFormatError(
            f"{path} is not a tagsmith score file (its header has no tag and n_tokens columns)."
        )
    rows = []
    for values in reader:
        if not values:
            continue
        try:
            rows.append(_row_from_values(dict(zip(header, map(csv_value, values)))))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise _bad(path, reader.line_num, exc) from None
    return rows


def _read_jsonl(text: str, path: Path) -> list[ScoreRow]:
    rows = []
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_row_from_values(json.loads(line)))
        except (KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
            raise _bad(path, i, exc) from None
    return rows


def _read_parquet(path: Path) -> list[ScoreRow]:
    _, pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
        raise FileFormatError(f"{path} is not a readable parquet file ({exc}).") from None
    missing = {"tag", "n_tokens"} - set(table.column_names)
    if missing:
        raise FileFormatError(f"{path} is not a tagsmith score file (no tag/n_tokens columns).")
    return [_row_from_values(r) for r in table.to_pylist()]
