"""Text from strangers made safe to show in a terminal: control characters, bidi overrides and
undecodable bytes become visible escapes (``\\x1b``, ``\\u202e``, ``\\xe9``)."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), the bidi
# embeddings, overrides and isolates, the implicit marks, the line and paragraph separators,
# and lone surrogates (how Python holds file-name bytes that are not valid UTF-8).
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def _escape(m: re.Match) -> str:
    ch = m.group(0)
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape kept: show the byte itself
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` with every character that could move the cursor, recolour the terminal, reorder
    the line or fail to encode replaced by a visible escape; everything else unchanged."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None
