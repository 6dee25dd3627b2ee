"""Tags and prompts as users write them, laid out the way AUTOMATIC1111's webui tokenizes them.

Two readings of user text:

* a **tag** (``tagsmith tokenize TAG``, caption files, vocabularies) is literal text: Danbooru
  underscores become spaces, escaped ``\\(`` ``\\)`` become parentheses, and only syntax that
  wraps the whole tag is removed (``(tag:1.2)``, ``((tag))``, ``[tag]``, ``<lora:name:0.8>``).
  ``hijikata_toushirou_(gintama)`` keeps its parentheses, as the Danbooru name and a kohya
  caption do.
* a **prompt** (``tagsmith tokenize --prompt``) follows the A1111 webui 1.10 exactly:
  ``#`` comments, extra networks ``<lora:...>`` removed, ``AND`` parts with their ``:N``
  weights, prompt editing read with the webui's grammar (``prompt_editing``), then unescaped
  ``( )`` and ``[ ]`` are emphasis, ``(text:1.2)`` sets a weight, ``BREAK`` starts a new chunk,
  and each part is cut into chunks of 75 tokens (each encoded as BOS + 75 + EOS), moving the
  words after the last comma to the next chunk when that comma is within 20 tokens of the end
  (the webui's ``comma_padding_backtrack`` default). Underscores and backslashes reach the
  tokenizer as the webui sends them, and text is cleaned as transformers' slow tokenizer
  cleans it.

The layout shows the prompt of the first sampling step (the one that sets composition); tags
that later steps bring in are listed too (``scheduled=True``).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field

from tagsmith.text.prompt_editing import (
    DEFAULT_STEPS,
    prompt_schedule,
    split_and,
    strip_comments,
)
from tagsmith.text.tokenizer import (
    CHUNK_LENGTH,
    COMMA_ID,
    EOS_ID,
    TAGCOMPLETE_UNDERSCORE_EXCLUSIONS,
    TagTokens,
    clean_text,
    cleaner,
    load_tokenizer,
    normalize_tag,
    piece_text,
)

COMMA_PADDING_BACKTRACK = 20  # A1111 default for opts.comma_padding_backtrack
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
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
    text: str  # as tokenized (syntax removed, cleaned)
    ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (chunk, position 0..74)
    weight: float = 1.0  # the largest multiplier of its own tokens (see ``multipliers``)
    scheduled: bool = False  # a prompt-editing branch absent from the first step
    multipliers: list[float] = field(default_factory=list)  # one per token, as A1111 applies
    part: int = 0  # which AND part it belongs to

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
    multipliers: list[float] = field(default_factory=list)  # 75, padding at 1.0
    part: int = 0  # the AND part this chunk encodes


@dataclass
class LaidOutPart:
    """One AND part: its text and weight, and whether prompt editing could be read in it."""

    text: str
    weight: float
    first_step: str  # the text the first sampling step encodes
    edited: bool  # the part has prompt editing that changes over the steps
    literal: bool  # the webui's editing grammar failed: the part is used literally


@dataclass
class PromptLayout:
    prompt: str
    chunks: list[PromptChunk]
    tags: list[PromptTag]
    parts: list[LaidOutPart] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    def tag_at(self, chunk: int, position: int) -> PromptTag | None:
        for t in self.tags:
            if (chunk, position) in t.positions:
                return t
        return None


def _underscores_to_spaces(text: str) -> str:
    """tagcomplete's reading, tag by tag: ``_`` to spaces except in its emoticon tags."""
    return ",".join(
        p if p.strip().lower() in TAGCOMPLETE_UNDERSCORE_EXCLUSIONS else p.replace("_", " ")
        for p in text.split(",")
    )


def layout_prompt(
    prompt: str,
    *,
    underscores: bool = False,
    comments: bool = True,
    steps: int = DEFAULT_STEPS,
    cleaning: str = "transformers",
) -> PromptLayout:
    """Tokenize a whole prompt as the A1111 webui (1.10) does and say where each tag lands.

    Comments go first (``comments``), then extra networks, then the prompt is split into its
    ``AND`` parts (each with its weight); each part's prompt editing is read for ``steps``
    sampling steps and the first step's text is laid out in 75-token chunks, every part in
    chunks of its own. Underscores are tokenized as written (``_`` is its own token, as the
    webui sends it) unless ``underscores`` turns them into spaces as tagcomplete inserts tags.
    Text is cleaned per attention fragment as transformers' slow ``CLIPTokenizer`` cleans it.
    """
    tok = load_tokenizer()
    clean = cleaner(cleaning)
    text = strip_comments(prompt) if comments else prompt
    text = _EXTRA_NETWORK.sub("", text)
    tags: list[PromptTag] = []
    chunks: list[PromptChunk] = []
    parts: list[LaidOutPart] = []
    later_texts: list[tuple[int, str]] = []
    for k, part in enumerate(split_and(text)):
        schedule = prompt_schedule(part.text, steps)
        parts.append(LaidOutPart(part.text, part.weight, schedule.first,
                                 edited=len({t for _, t in schedule.entries}) > 1,
                                 literal=not schedule.parsed))
        later_texts.extend((k, t) for _, t in schedule.entries[1:])
        stream = _token_stream(schedule.first, k, tags, tok, clean, underscores)
        chunks.extend(_chunk_stream(stream, tags, len(chunks), k))
    _add_scheduled_tags(later_texts, tags, tok, cleaning, underscores)
    return PromptLayout(prompt=prompt, chunks=chunks, tags=tags, parts=parts)


def _token_stream(text, part, tags, tok, clean, underscores):  # noqa: ANN001, ANN202
    """(id, multiplier, tag index or None for separators) per token; None marks BREAK.

    A tag is the text between commas. A token that holds a comma (``),`` ``,;``) ends the tag
    before it and belongs to it; its multiplier is its own fragment's.
    """
    stream: list[tuple[int, float, int | None] | None] = []
    segments = parse_attention(text)
    raw = [s.text for s in segments]
    if underscores:
        raw = [_underscores_to_spaces(t) for t in raw]
    cleaned = [clean(t) for t in raw]
    encs = tok.encode_cleaned_batch(cleaned)
    current: PromptTag | None = None
    pieces_text: list[str] = []

    def finish() -> None:
        if current is not None:
            current.text = " ".join(p for p in pieces_text if p).strip()

    for seg, seg_text, enc in zip(segments, cleaned, encs):
        if seg.is_break:
            finish()
            current, pieces_text = None, []
            stream.append(None)
            continue
        run_start: int | None = None
        run_end = 0
        for tid, piece, (a, b) in zip(enc.ids, enc.tokens, enc.offsets):
            holds_comma = tid != COMMA_ID and "," in seg_text[a:b]
            if tid == COMMA_ID or holds_comma:
                if current is not None:
                    if holds_comma:  # its text up to the comma ends the tag
                        start = a if run_start is None else run_start
                        pieces_text.append(seg_text[start : a + seg_text[a:b].index(",")])
                    elif run_start is not None:
                        pieces_text.append(seg_text[run_start:run_end])
                    if holds_comma:
                        current.ids.append(tid)
                        current.tokens.append(piece)
                        current.multipliers.append(seg.weight)
                    finish()
                stream.append((tid, seg.weight, current.index if holds_comma and current else None))
                current, pieces_text, run_start = None, [], None
                continue
            if current is None:
                current = PromptTag(index=len(tags), text="", weight=seg.weight, part=part)
                tags.append(current)
            if run_start is None:
                run_start = a
            run_end = b
            if current.ids:
                current.weight = max(current.weight, seg.weight)
            current.ids.append(tid)
            current.tokens.append(piece)
            current.multipliers.append(seg.weight)
            stream.append((tid, seg.weight, current.index))
        if current is not None and run_start is not None:
            pieces_text.append(seg_text[run_start:run_end])
    finish()
    return stream


def _add_scheduled_tags(later_texts, tags, tok, cleaning, underscores) -> None:  # noqa: ANN001
    """Tags that later sampling steps bring in (prompt editing), listed after the laid-out ones."""
    clean = cleaner(cleaning)
    seen = {(t.part, t.text) for t in tags}
    for part, text in later_texts:
        plain = "".join(s.text for s in parse_attention(text) if not s.is_break)
        if underscores:
            plain = _underscores_to_spaces(plain)
        for piece in plain.split(","):
            t = clean(piece)
            if t and (part, t) not in seen:
                seen.add((part, t))
                ids = tok.encode(t, cleaning=cleaning)
                tags.append(PromptTag(index=len(tags), text=t, ids=ids,
                                      tokens=[tok.id_to_token(i) for i in ids],
                                      scheduled=True, part=part,
                                      multipliers=[1.0] * len(ids)))


def _chunk_stream(
    stream: list[tuple[int, float, int | None] | None],
    tags: list[PromptTag],
    offset: int = 0,
    part: int = 0,
) -> list[PromptChunk]:
    """A1111's ``tokenize_line`` chunking of one AND part, recording each tag token's (chunk,
    position); chunks are numbered from ``offset``. An empty part is one empty chunk."""
    chunks: list[PromptChunk] = []
    cur: list[tuple[int, float, int | None]] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal cur, last_comma
        length = len(cur)
        ids = [t[0] for t in cur] + [EOS_ID] * (CHUNK_LENGTH - length)
        mults = [t[1] for t in cur] + [1.0] * (CHUNK_LENGTH - length)
        idx = offset + len(chunks)
        tag_indices: list[int] = []
        for pos, (_, _, tag_index) in enumerate(cur):
            if tag_index is not None:
                tags[tag_index].positions.append((idx, pos))
                if tag_index not in tag_indices:
                    tag_indices.append(tag_index)
        chunks.append(PromptChunk(ids=ids, length=length, tag_indices=tag_indices,
                                  multipliers=mults, part=part))
        cur = []
        last_comma = -1

    for item in stream:
        if item is None:  # BREAK
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


def split_prompt_tags(prompt: str, *, underscores: bool = False) -> list[str]:
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
