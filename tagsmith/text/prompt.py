"""Tags and prompts as users write them, laid out the way AUTOMATIC1111's webui tokenizes them.

Two readings of user text:

* a **tag** (``tagsmith tokenize TAG``, caption files, vocabularies) is literal text: Danbooru
  underscores become spaces, escaped ``\\(`` ``\\)`` become parentheses, and only syntax that
  wraps the whole tag is removed (``(tag:1.2)``, ``((tag))``, ``[tag]``, ``<lora:name:0.8>``).
  ``hijikata_toushirou_(gintama)`` keeps its parentheses, as the Danbooru name and a kohya
  caption do.
* a **prompt** (``tagsmith tokenize --prompt``) follows A1111's rules exactly: unescaped ``( )``
  and ``[ ]`` are emphasis, ``(text:1.2)`` sets a weight, ``BREAK`` starts a new chunk, extra
  networks ``<lora:...>`` are removed, and the prompt is cut into chunks of 75 tokens (each
  encoded as BOS + 75 + EOS), moving the words after the last comma to the next chunk when that
  comma is within 20 tokens of the end (A1111's ``comma_padding_backtrack`` default).

Prompt editing ``[from:to:when]``, ``[to:when]``, ``[from::when]`` and alternation ``[a|b]``
change the prompt between sampling steps. The layout shows the prompt of the first step (the
one that sets composition); every branch is still listed as a tag (``scheduled=True`` for the
ones absent from the first step). ``AND`` (composable diffusion) starts a separate sub-prompt,
laid out here as a new chunk.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field

from tagsmith.text.tokenizer import (
    CHUNK_LENGTH,
    COMMA_ID,
    EOS_ID,
    TagTokens,
    clean_text,
    load_tokenizer,
    normalize_tag,
    piece_text,
)

COMMA_PADDING_BACKTRACK = 20  # A1111 default for opts.comma_padding_backtrack
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
# A1111's attention grammar (modules/prompt_parser.py), reimplemented.
_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_WEIGHTED_WHOLE = re.compile(r"^\((.*):\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*\)$", re.S)
_NUMBER = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*$")


# -- tags -----------------------------------------------------------------------------------


def strip_tag_syntax(tag: str) -> str:
    """Remove A1111 syntax that wraps a whole tag, keeping literal parentheses inside it.

    ``(mayonnaise bottle:1.2)`` -> ``mayonnaise bottle``; ``((red hair))`` -> ``red hair``;
    ``[blurry]`` -> ``blurry``; ``<lora:foo:0.8>`` -> empty; ``name_(series)`` unchanged.
    """
    text = _EXTRA_NETWORK.sub("", tag).strip()
    while True:
        m = _WEIGHTED_WHOLE.match(text)
        if m and _balanced(m.group(1)):
            text = m.group(1).strip()
            continue
        if len(text) >= 2 and (
            (text[0] == "(" and text[-1] == ")") or (text[0] == "[" and text[-1] == "]")
        ) and not text.endswith("\\" + text[-1]) and _balanced(text[1:-1]):
            text = text[1:-1].strip()
            continue
        return text


def _balanced(text: str) -> bool:
    depth = {"(": 0, "[": 0}
    closing = {")": "(", "]": "["}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
        i += 1
    return all(v == 0 for v in depth.values())


def analysed_tag_text(tag: str, *, underscores: bool = True) -> str:
    """The text tagsmith analyses for a tag: syntax stripped, normalised, reference-cleaned."""
    return clean_text(normalize_tag(strip_tag_syntax(tag), underscores=underscores))


# -- prompt editing (scheduling and alternation) -----------------------------------------------


def _find_close(text: str, start: int) -> int | None:
    """Index of the ``]`` that closes the ``[`` at ``start``, honouring escapes and nesting."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def expand_first_step(prompt: str) -> tuple[str, list[str]]:
    """The prompt as the first sampling step sees it, and the text of branches it leaves out."""
    out: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\" and i + 1 < len(prompt):
            out.append(prompt[i : i + 2])
            i += 2
            continue
        if ch == "[":
            close = _find_close(prompt, i)
            if close is not None:
                inner = prompt[i + 1 : close]
                colon = _split_top(inner, ":")
                bars = _split_top(inner, "|")
                if len(colon) in (2, 3) and _NUMBER.match(colon[-1]):
                    if len(colon) == 3:  # [from:to:when]
                        first, later = colon[0], colon[1]
                    else:  # [to:when] adds text later
                        first, later = "", colon[0]
                    sub, sub_dropped = expand_first_step(first)
                    out.append(sub)
                    dropped.extend(sub_dropped)
                    if later.strip():
                        dropped.append(later)
                    i = close + 1
                    continue
                if len(bars) > 1:
                    sub, sub_dropped = expand_first_step(bars[0])
                    out.append(sub)
                    dropped.extend(sub_dropped)
                    dropped.extend(b for b in bars[1:] if b.strip())
                    i = close + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out), dropped


# -- attention ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A run of prompt text with one attention weight; ``is_break`` marks BREAK/AND."""

    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_attention(prompt: str) -> list[Segment]:
    """A1111's ``parse_prompt_attention``: text runs with weights, BREAK as its own segment."""
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _ATTENTION.finditer(prompt):
        text, weight = m.group(0), m.group(1)
        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif text == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for j, part in enumerate(_BREAK.split(text)):
                if j > 0:
                    res.append(["BREAK", -1.0])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [
        Segment("", 1.0, True) if (t == "BREAK" and w == -1) else Segment(t, w) for t, w in res
    ]


# -- layout ---------------------------------------------------------------------------------


@dataclass
class PromptTag:
    """One comma-separated tag of a prompt and where its tokens fall."""

    index: int
    text: str  # as analysed (syntax removed, cleaned)
    ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (chunk, position 0..74)
    weight: float = 1.0
    scheduled: bool = False  # a prompt-editing branch absent from the first step

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def chunk(self) -> int | None:
        return self.positions[0][0] if self.positions else None

    @property
    def chunk_end(self) -> int | None:
        return self.positions[-1][0] if self.positions else None

    @property
    def crosses_boundary(self) -> bool:
        return bool(self.positions) and self.positions[0][0] != self.positions[-1][0]


@dataclass
class PromptChunk:
    """75 token slots of one chunk (BOS/EOS not included); ``length`` counts real tokens."""

    ids: list[int]
    length: int
    tag_indices: list[int]


@dataclass
class PromptLayout:
    prompt: str
    chunks: list[PromptChunk]
    tags: list[PromptTag]

    @property
    def n_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    def tag_at(self, chunk: int, position: int) -> PromptTag | None:
        for t in self.tags:
            if (chunk, position) in t.positions:
                return t
        return None


def layout_prompt(prompt: str, *, underscores: bool = True) -> PromptLayout:
    """Tokenize a whole prompt as A1111 does and say where each tag lands in which chunk."""
    tok = load_tokenizer()
    text = _EXTRA_NETWORK.sub("", prompt)
    first, dropped = expand_first_step(text)
    subprompts = _AND.split(first)

    # Token stream: (id, weight, tag index or None for commas); None entries mark BREAK.
    stream: list[tuple[int, float, int | None] | None] = []
    tags: list[PromptTag] = []
    for k, sub in enumerate(subprompts):
        if k > 0:
            stream.append(None)
        segments = parse_attention(sub)
        cleaned = [clean_text(normalize_tag(s.text, underscores=underscores)) for s in segments]
        encs = tok.encode_cleaned_batch(cleaned)
        current: PromptTag | None = None
        pieces_text: list[str] = []
        for seg, seg_text, enc in zip(segments, cleaned, encs):
            if seg.is_break:
                if current is not None:
                    current.text = " ".join(pieces_text).strip()
                current, pieces_text = None, []
                stream.append(None)
                continue
            run_start: int | None = None
            run_end = 0
            for tid, piece, (a, b) in zip(enc.ids, enc.tokens, enc.offsets):
                if tid == COMMA_ID:
                    if current is not None and run_start is not None:
                        pieces_text.append(seg_text[run_start:run_end])
                    if current is not None:
                        current.text = " ".join(p for p in pieces_text if p).strip()
                    current, pieces_text, run_start = None, [], None
                    stream.append((tid, seg.weight, None))
                    continue
                if "," in seg_text[a:b]:
                    # A punctuation run such as "),": its text up to the comma ends the tag.
                    head = seg_text[a : a + seg_text[a:b].index(",")]
                    if current is not None:
                        if run_start is not None:
                            pieces_text.append(seg_text[run_start:a] + head)
                        current.ids.append(tid)
                        current.tokens.append(piece)
                        current.text = " ".join(p for p in pieces_text if p).strip()
                        stream.append((tid, seg.weight, current.index))
                    else:
                        stream.append((tid, seg.weight, None))
                    current, pieces_text, run_start = None, [], None
                    continue
                if current is None:
                    current = PromptTag(index=len(tags), text="", weight=seg.weight)
                    tags.append(current)
                if run_start is None:
                    run_start = a
                run_end = b
                current.ids.append(tid)
                current.tokens.append(piece)
                if len(current.ids) == 1:
                    current.weight = seg.weight
                else:
                    current.weight = max(current.weight, seg.weight)
                stream.append((tid, seg.weight, current.index))
            if current is not None and run_start is not None:
                pieces_text.append(seg_text[run_start:run_end])
        if current is not None:
            current.text = " ".join(p for p in pieces_text if p).strip()
    chunks = _chunk_stream(stream, tags)
    for extra in dropped:
        for part in extra.split(","):
            t = analysed_tag_text(part, underscores=underscores)
            if t:
                ids = tok.encode(t)
                tags.append(
                    PromptTag(
                        index=len(tags),
                        text=t,
                        ids=ids,
                        tokens=[tok.id_to_token(i) for i in ids],
                        scheduled=True,
                    )
                )
    return PromptLayout(prompt=prompt, chunks=chunks, tags=tags)


def _chunk_stream(
    stream: list[tuple[int, float, int | None] | None], tags: list[PromptTag]
) -> list[PromptChunk]:
    """A1111's ``tokenize_line`` chunking, recording each tag token's (chunk, position)."""
    chunks: list[PromptChunk] = []
    cur: list[tuple[int, float, int | None]] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal cur, last_comma
        length = len(cur)
        ids = [t[0] for t in cur] + [EOS_ID] * (CHUNK_LENGTH - length)
        idx = len(chunks)
        tag_indices: list[int] = []
        for pos, (_, _, tag_index) in enumerate(cur):
            if tag_index is not None:
                tags[tag_index].positions.append((idx, pos))
                if tag_index not in tag_indices:
                    tag_indices.append(tag_index)
        chunks.append(PromptChunk(ids=ids, length=length, tag_indices=tag_indices))
        cur = []
        last_comma = -1

    for item in stream:
        if item is None:  # BREAK or AND
            close_chunk()
            continue
        token = item[0]
        if token == COMMA_ID:
            last_comma = len(cur)
        elif (
            COMMA_PADDING_BACKTRACK != 0
            and len(cur) == CHUNK_LENGTH
            and last_comma != -1
            and len(cur) - last_comma <= COMMA_PADDING_BACKTRACK
        ):
            break_location = last_comma + 1
            moved = cur[break_location:]
            cur = cur[:break_location]
            close_chunk()
            cur = moved
        if len(cur) == CHUNK_LENGTH:
            close_chunk()
        cur.append(item)
    if cur or not chunks:
        close_chunk()
    return chunks


def split_prompt_tags(prompt: str, *, underscores: bool = True) -> list[str]:
    """The comma-separated tags of a prompt, syntax removed, in order (scheduled ones last)."""
    return [t.text for t in layout_prompt(prompt, underscores=underscores).tags if t.text]


# -- tags for analysis ----------------------------------------------------------------------


def analyze_tags(tags: list[str] | tuple[str, ...], *, underscores: bool = True) -> list[TagTokens]:
    """Token split of each tag as written by a user (syntax around it removed, see module doc)."""
    tok = load_tokenizer()
    res = tok.analyze_batch([strip_tag_syntax(t) for t in tags], underscores=underscores)
    return [dataclasses.replace(r, tag=t) for r, t in zip(res, tags)]


_INVISIBLE = {"Cc", "Cf", "Zl", "Zp"}


def tag_warnings(analysis: TagTokens) -> list[str]:
    """Things about a tag a user should know before training or prompting with it."""
    out: list[str] = []
    odd = sorted(
        {f"U+{ord(ch):04X}" for ch in analysis.tag if unicodedata.category(ch) in _INVISIBLE}
    )
    if odd:
        out.append(
            "contains control or invisible characters (" + ", ".join(odd[:5]) + ")"
            "; the tokenizer sees the cleaned text shown"
        )
    if analysis.n_tokens > CHUNK_LENGTH:
        cut = piece_text(analysis.tokens[CHUNK_LENGTH - 1])
        out.append(
            f"is {analysis.n_tokens} tokens; a 75-token chunk ends after '{cut}' (token 75): "
            "kohya truncates the rest, A1111 carries it into a new chunk"
        )
    return out
