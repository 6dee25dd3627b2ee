"""The globals a pickle would import, read with pickletools: nothing is ever unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

_USUAL_GLOBALS = (
    "torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
    "builtins.bytearray", "builtins.slice", "builtins.complex",
)


def unsafe_globals(path: Path, fmt: str) -> list[str]:
    """Globals a pickle would import, read with pickletools (nothing is unpickled), minus the
    ones torch's weights_only loader allows."""
    import io
    import pickletools

    try:
        if fmt == "zip-pickle":
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(name) if name else b""
        else:
            with path.open("rb") as fh:
                data = fh.read(64 * 1024 * 1024)
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    stream = io.BytesIO(data)
    found: list[str] = []
    for _ in range(4):  # torch's legacy format is several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - garbage after the pickles ends the scan
            break
        if stream.tell() >= len(data):
            break
    return [g for g in found if not g.startswith(_USUAL_GLOBALS)]
