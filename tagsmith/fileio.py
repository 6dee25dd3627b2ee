"""Reading the user's text files (regular files only, bounded) and writing files atomically.

Nothing a user owns is ever half-written: every write goes to a temporary file in the same
folder, is flushed to disk, then renamed over the target in one step; a temporary file a killed
run left behind is removed by the next successful write of the same file. Reads open only
regular files (a FIFO, a device or a symlink to ``/dev/zero`` is refused, never waited on) and
stop at a size limit, gzip included. CSV cells that a spreadsheet would run as a formula are
escaped here, in the one CSV writer every command uses.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from tagsmith.errors import FileFormatError, InputError

MAX_LINE_CHARS = 10_000  # a "tag" longer than this is a wrong file, not a tag
MAX_LIST_BYTES = 512 * 1024 * 1024  # one tag list or vocabulary, after decompression
# POSIX renames an open file, so the writer's lock covers the rename; Windows cannot.
_RENAME_WHILE_OPEN = os.name != "nt"
_STALE_TMP_AGE_S = 3600.0  # where temp files cannot be locked: older ones count as abandoned


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (temp file, fsync, rename)."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path``, on error it vanishes."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file name to write to.")
    if not parent.is_dir():
        raise InputError(f"Cannot write {target}: the folder {parent} does not exist.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise InputError(f"Cannot write {target}: {exc.strerror or exc}.") from exc
    _lock(fd)  # held until the file is closed: tells a later run this one is still alive
    try:
        # mkstemp makes the file 0600; the rename would keep that. A new file gets the mode
        # any program would give it (0666 less the umask), a replaced file keeps its own.
        os.chmod(tmp, _mode_for(target))
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if _RENAME_WHILE_OPEN:
                os.replace(tmp, target)
        if not _RENAME_WHILE_OPEN:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    remove_abandoned_temp_files(target)


def _lock(fd: int) -> None:
    with contextlib.suppress(ImportError, OSError):
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_abandoned_temp_files(target: str | Path) -> list[str]:
    """Remove the temporary files a killed write of ``target`` left beside it.

    Only names ``atomic_writer`` makes for this very target (``.<name>.<8 random>.tmp``) are
    considered, and only those no live process holds: a writer keeps its temp file locked
    (flock) until it is renamed, so a file that can be locked belongs to a dead run. Where
    locks are unavailable, files older than an hour count as abandoned.
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp")
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent if str(target.parent) else "."):
            if pattern.fullmatch(entry.name) and _abandoned(entry.path):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _abandoned(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            import fcntl
        except ImportError:
            return time.time() - os.fstat(fd).st_mtime > _STALE_TMP_AGE_S
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        return True
    finally:
        os.close(fd)


# -- reading: regular files only, bounded -----------------------------------------------------


def read_regular_bytes(
    path: str | Path, *, limit: int, what: str = "file", follow_symlinks: bool = True
) -> bytes:
    """The bytes of a regular file, refusing FIFOs, devices and files over ``limit`` bytes.

    Opening never blocks (a FIFO is opened non-blocking and then refused), and at most
    ``limit + 1`` bytes are read, so a file that grows while it is read is refused too.
    Raises ``InputError`` with one sentence; ``OSError`` only for what the caller words itself
    (a missing file, a permission problem) when it chooses to catch it.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _file_kind(st.st_mode)
            raise InputError(f"{path} is {kind}, not a regular file; tagsmith reads only files.")
        if st.st_size > limit:
            raise InputError(
                f"{path} is {_size(st.st_size)}, more than tagsmith reads as one {what} "
                f"({_size(limit)})."
            )
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(
                f"{path} grew past {_size(limit)} while it was read, more than tagsmith reads "
                f"as one {what}."
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def require_regular_file(path: str | Path, what: str = "file") -> None:
    """Refuse, in one sentence, a path that is a FIFO, a device or a socket (reading one would
    wait forever or never end); a missing path or a folder is left to the caller's wording."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(
            f"{path} is {_file_kind(mode)}, not a regular file; give tagsmith a {what}."
        )


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def gunzip_bounded(data: bytes, *, limit: int, label: str) -> bytes:
    """Decompress gzip ``data`` (several members too), refusing to expand past ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while data:
            piece = d.decompress(data, max(1, limit + 1 - total))
            total += len(piece)
            out.append(piece)
            if total > limit:
                raise InputError(
                    f"{label} expands to more than {_size(limit)} when decompressed; tagsmith "
                    "stops there (a list that large is a wrong file or a decompression bomb)."
                )
            data = d.unconsumed_tail
            if d.eof:
                break
        if not d.eof:
            raise zlib.error("the compressed data ends early")
        data = d.unused_data.lstrip(b"\x00")
    return b"".join(out)


# -- CSV: one writer, formula cells escaped ---------------------------------------------------

# OWASP "CSV Injection": a cell that starts with one of these is run as a formula by
# spreadsheets. Such a cell gets a leading apostrophe (shown as text, not evaluated).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text


def csv_cell(value: object) -> str:
    """A CSV cell for ``value``: None is empty, numbers as written, formula starts escaped.

    ``'`` is put before text that starts with ``= + - @``, a tab or a carriage return (also
    after leading apostrophes, so that ``csv_value`` can undo it exactly); numbers such as
    ``-0.25`` are left alone. JSON and Parquet outputs keep the raw text.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text and not _is_number(text) and text.lstrip("'").startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_value(cell: str) -> str:
    """The text ``csv_cell`` was given (one escaping apostrophe removed)."""
    if cell.startswith("'") and cell.lstrip("'").startswith(_FORMULA_START):
        return cell[1:]
    return cell


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A whole CSV document, every cell through ``csv_cell``."""
    buf = io.StringIO()
    write_csv_rows(buf, header, rows)
    return buf.getvalue()


def write_csv_rows(fh: IO[str], header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow([csv_cell(h) for h in header])
    for row in rows:
        w.writerow([csv_cell(v) for v in row])


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV file atomically (see ``csv_cell`` for what is escaped)."""
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        write_csv_rows(fh, header, rows)


def _mode_for(target: Path) -> int:
    """The permission bits ``target`` should end up with: its old ones, or 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # os.umask can only be read by setting it; /proc gives it without that race where it exists.
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def read_tag_lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file (``-`` for stdin) with their 1-based line numbers.

    A BOM and CRLF line endings are accepted. Invalid UTF-8 is refused with the line number.
    """
    name = str(path)
    if name == "-":
        raw = sys.stdin.buffer.read(MAX_LIST_BYTES + 1)
        label = "standard input"
        if len(raw) > MAX_LIST_BYTES:
            raise InputError(f"Standard input holds more than {_size(MAX_LIST_BYTES)} of tags.")
    else:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{p} is a folder, not a file with one tag per line.")
        if not p.exists():
            raise InputError(f"{p} does not exist.")
        try:
            raw = read_regular_bytes(p, limit=MAX_LIST_BYTES, what="tag list")
        except OSError as exc:
            raise InputError(f"Cannot read {p}: {exc.strerror or exc}.") from exc
        label = str(p)
    return _numbered(decode_text(raw, label), label)


def decode_text(data: bytes, label: str) -> str:
    """A text file's bytes as str, the same for every reader of tag lists: UTF-8 (a BOM
    dropped), or UTF-16 with a byte-order mark or recognisably without one (what Windows
    Notepad's "Unicode" saves); anything else is refused in one sentence."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise FileFormatError(
                f"{label} starts with a UTF-16 byte-order mark but is not UTF-16 text; save it "
                "as UTF-8 and try again."
            ) from None
    if b"\x00" in data and (codec := bomless_utf16(data)):
        return data.decode(codec)
    return decode_utf8(data, label)


def decode_utf8(data: bytes, label: str) -> str:
    """``data`` as UTF-8 (a BOM dropped), or the one sentence every reader uses to refuse it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileFormatError(
            f"{label} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8 and try again."
        ) from exc


def bomless_utf16(data: bytes) -> str | None:
    """"utf-16-le"/"utf-16-be" when ``data`` reads as UTF-16 without a byte-order mark (mostly
    ASCII text then has a zero byte in every other position), else None."""
    if len(data) < 4 or len(data) % 2:
        return None
    half = len(data) // 2
    for codec, zeros in (("utf-16-le", data[1::2].count(0)), ("utf-16-be", data[0::2].count(0))):
        if zeros >= half * 0.6:
            try:
                data.decode(codec)
            except UnicodeDecodeError:
                continue
            return codec
    return None


_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def _numbered(text: str, label: str) -> list[tuple[int, str]]:
    out = []
    # CRLF, LF or a lone CR, as editors and the csv module break lines (not splitlines(),
    # which also breaks at form feeds and the like: line numbers must match an editor's).
    for i, line in enumerate(_LINE_ENDS.split(text), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise InputError(
                f"Line {i} of {label} has {len(line):,} characters; "
                "expected one tag per line."
            )
        out.append((i, line))
    return out
