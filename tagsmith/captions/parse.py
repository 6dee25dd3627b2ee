"""Caption syntax: a caption file's text split into tags, with A1111 weight syntax peeled off.

Tags are separated by commas and line breaks. kohya trains on the first line only: stripped,
split at commas, each piece stripped (``kohya_parts``).

Tags are compared in their analysed form (``clean_text(normalize_tag(...))``): A1111 weight
syntax around the tag removed, underscores as spaces, ``\\(`` as ``(``, lowercased, so
``Red_Hair`` and ``(red hair:1.2)`` are one tag.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from tagsmith.text.tokenizer import clean_text, normalize_tag

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # Python's universal newlines, as kohya's readlines
_SEPARATOR = re.compile(r",|\r\n|\r|\n")
_SYNTAX_CHARS = re.compile(r"[()\[\]]")
_WEIGHT_SUFFIX = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


class CaptionTag(NamedTuple):
    """One comma- or line-separated tag of a caption file and where it sits in the text.

    (A named tuple: a big dataset has a million of them, and tuples are built 5x faster.)
    """

    text: str  # as written, A1111 syntax around it removed: "mayonnaise_bottle"
    key: str  # analysed form used for statistics and matching: "mayonnaise bottle"
    start: int  # span of ``text`` in the decoded file text
    end: int
    seg_start: int  # span between the separators around it, whitespace and syntax included
    seg_end: int
    line: int  # 0-based line of the file
    weighted: bool = False  # wrapped in (), [] or (…:1.2), or part of such a group

    @property
    def is_empty(self) -> bool:
        return not self.key


def _escaped_positions(s: str) -> set[int]:
    out: set[int] = set()
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.add(i + 1)
            i += 2
            continue
        i += 1
    return out


def _bracket_matches(s: str, escaped: set[int]) -> dict[int, int | None]:
    """For every unescaped bracket, the index of its partner (None when it has none)."""
    out: dict[int, int | None] = {}
    stacks: dict[str, list[int]] = {"(": [], "[": []}
    opener = {")": "(", "]": "["}
    for i, ch in enumerate(s):
        if i in escaped or ch == "\\":
            continue
        if ch in stacks:
            stacks[ch].append(i)
            out[i] = None
        elif ch in opener:
            stack = stacks[opener[ch]]
            if stack:
                j = stack.pop()
                out[j], out[i] = i, j
            else:
                out[i] = None
    return out


def _peel_syntax(s: str) -> tuple[int, int, bool]:
    """Span of the tag inside one stripped segment, without A1111 weight syntax around it.

    Handles ``(tag)``, ``[tag]``, ``(tag:1.2)``, nesting, and a group split by commas
    (``(red hair`` … ``blue eyes:1.2)``). Escaped brackets are literal, and a segment without
    a letter or digit (``:)``, ``>_<``) is an emoticon tag and is kept whole.
    """
    i, j = 0, len(s)
    if not _SYNTAX_CHARS.search(s) or not any(ch.isalnum() for ch in s):
        return i, j, False
    escaped = _escaped_positions(s)
    match = _bracket_matches(s, escaped)
    weighted = False

    def trim(a: int, b: int) -> tuple[int, int]:
        while a < b and s[a].isspace():
            a += 1
        while b > a and s[b - 1].isspace():
            b -= 1
        return a, b

    def drop_weight(a: int, b: int) -> int:
        m = _WEIGHT_SUFFIX.search(s, a, b)
        if m and m.end() == b and s[a : m.start()].strip():
            return m.start()
        return b

    while j - i >= 2:
        first, last = s[i], s[j - 1]
        if first in "([" and i not in escaped and match.get(i) == j - 1:
            i, j = i + 1, j - 1
            if first == "(":
                j = drop_weight(i, j)
        elif first in "([" and i not in escaped and i in match and match[i] is None:
            i += 1
        elif last in ")]" and (j - 1) not in escaped and (j - 1) in match and match[j - 1] is None:
            j -= 1
            if last == ")":
                j = drop_weight(i, j)
        else:
            break
        weighted = True
        i, j = trim(i, j)
    return i, j, weighted


@lru_cache(maxsize=1 << 16)
def _cleaned(text: str) -> str:
    return clean_text(text)


@lru_cache(maxsize=1 << 16)
def tag_key(text: str) -> str:
    """The analysed form of a tag as written (no syntax around it): what statistics compare."""
    return clean_text(normalize_tag(text))


def parse_caption_text(text: str) -> list[CaptionTag]:
    """Every tag of a caption file in order, empty ones (``a,,b``, a trailing comma) included.

    Tags are separated by commas and line breaks; whatever lies between them (spaces, weight
    syntax) is kept out of the tag's span so that a rewrite can leave it untouched.
    """
    out: list[CaptionTag] = []
    pos = 0
    line = 0
    for m in _SEPARATOR.finditer(text):
        out.append(_segment_tag(text, pos, m.start(), line))
        if m.group(0) != ",":
            line += 1
        pos = m.end()
    out.append(_segment_tag(text, pos, len(text), line))
    return out


def _segment_tag(text: str, seg_start: int, seg_end: int, line: int) -> CaptionTag:
    seg = text[seg_start:seg_end]
    body = seg.strip()
    if not body:
        return CaptionTag("", "", seg_start, seg_start, seg_start, seg_end, line, False)
    lead = seg.find(body[0])  # everything before the body is whitespace
    if _SYNTAX_CHARS.search(body) is None:  # the common case: no brackets to peel
        start = seg_start + lead
        return CaptionTag(
            body, tag_key(body), start, start + len(body), seg_start, seg_end, line, False
        )
    a, b, weighted = _peel_syntax(body)
    core = body[a:b]
    start = seg_start + lead + a
    return CaptionTag(
        core, tag_key(core) if core else "", start, start + len(core), seg_start, seg_end, line,
        weighted,
    )


def kohya_parts(text: str) -> list[str]:
    """The comma-separated pieces kohya shuffles: first line, stripped, split, each stripped."""
    first = _LINE_BREAK.split(text, maxsplit=1)[0].strip()
    return [t.strip() for t in first.split(",")]


def kohya_separator_groups(first_line: str, separator: str) -> tuple[list[str], ...] | None:
    """kohya's ``keep_tokens_separator``: (fixed, shuffled, fixed suffix) tags of a first line
    that holds the separator, or None when it does not. The first separator ends the fixed
    tags, a second one starts the fixed suffix (later ones stay inside the suffix); each group
    is split at commas, stripped, and empty tags are dropped. ``keep_tokens`` does not apply.
    """
    if not separator or separator not in first_line:
        return None
    fixed, flex = first_line.split(separator, 1)
    suffix = ""
    if separator in flex:
        flex, suffix = flex.split(separator, 1)

    def tags(text: str) -> list[str]:
        return [t for t in (p.strip() for p in text.split(",")) if t]

    return tags(fixed), tags(flex), tags(suffix)


def strip_weight_syntax(text: str) -> str:
    """A tag as written without the A1111 weight syntax around it (``(x:1.2)`` -> ``x``)."""
    a, b, _ = _peel_syntax(text.strip())
    return text.strip()[a:b]
