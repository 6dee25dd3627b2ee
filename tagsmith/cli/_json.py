"""The one JSON writer behind every command's ``--json``: plain JSON, streamed, never re-parsed.

rich's ``print_json`` re-parses, pretty-prints and highlights what it is given: 27 s of CPU for
20,000 tokenized tags. Here an object is written with the C encoder in one call, and a list (or
any iterable of items, e.g. a generator) is streamed one item per line, so a 140k-row result
starts reaching a pipe at once and never sits in memory twice as text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

_BATCH = 512  # items per write() call: few syscalls, little memory


def dumps(value: Any) -> str:
    """One item as compact JSON (non-ASCII kept as is, as every tagsmith file is UTF-8)."""
    return json.dumps(value, ensure_ascii=False)


def iter_json(data: Any, *, encode: Callable[[Any], str] = dumps) -> Iterator[str]:
    """The text of ``data`` as JSON in pieces.

    A mapping (or a scalar) is indented by two spaces, as people read a single result; a list,
    tuple or other iterable is an array with one compact item per line. ``encode`` turns one
    array item into JSON text (embed uses it to print float32 vectors in 9 digits).
    """
    if data is None or isinstance(data, (Mapping, str, bytes, int, float, bool)):
        yield json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"cannot write {type(data).__name__} as JSON")
    batch: list[str] = []
    first = True
    for item in data:
        batch.append(("[\n" if first else ",\n") + encode(item))
        first = False
        if len(batch) >= _BATCH:
            yield "".join(batch)
            batch = []
    batch.append("[]\n" if first else "\n]\n")
    yield "".join(batch)


def write_json(data: Any, stream: IO[str] | None = None, *,
               encode: Callable[[Any], str] = dumps) -> None:
    """Write ``data`` as JSON to ``stream`` (default: standard output), streaming arrays."""
    out = sys.stdout if stream is None else stream
    for piece in iter_json(data, encode=encode):
        # A file name that is not valid UTF-8 holds lone surrogates, which cannot be encoded:
        # they become JSON's own \udcXX escapes (json.loads gives the same name back).
        out.write(piece.encode("utf-8", "backslashreplace").decode("utf-8"))
    out.flush()
