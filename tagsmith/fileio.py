"""Reading the user's text files and writing files atomically.

Nothing a user owns is ever half-written: every write goes to a temporary file in the same
folder, is flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tagsmith.errors import InputError

MAX_LINE_CHARS = 10_000  # a "tag" longer than this is a wrong file, not a tag


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
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_tag_lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file (``-`` for stdin) with their 1-based line numbers.

    A BOM and CRLF line endings are accepted. Invalid UTF-8 is refused with the line number.
    """
    name = str(path)
    if name == "-":
        raw = sys.stdin.buffer.read()
        label = "standard input"
    else:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{p} is a folder, not a file with one tag per line.")
        if not p.exists():
            raise InputError(f"{p} does not exist.")
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise InputError(f"Cannot read {p}: {exc.strerror or exc}.") from exc
        label = str(p)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raw_text = raw.decode("utf-16")
        return _numbered(raw_text, label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{label} is not valid UTF-8 (line {line}); save it as UTF-8 and try again."
        ) from exc
    return _numbered(text, label)


def _numbered(text: str, label: str) -> list[tuple[int, str]]:
    out = []
    # split("\n"), not splitlines(): line numbers must match what an editor shows.
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise InputError(
                f"Line {i} of {label} has {len(line):,} characters; "
                "expected one tag per line."
            )
        out.append((i, line))
    return out
