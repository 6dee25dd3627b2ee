"""A1111's prompt preprocessing before attention parsing: comments, AND parts, prompt editing.

This follows AUTOMATIC1111's webui 1.10 (``modules/prompt_parser.py`` and
``processing_scripts/comments.py``), reimplemented:

* **Comments** (webui >= 1.8, on by default): ``#`` hides the rest of its line.
* **AND parts** (composable diffusion): the prompt is split at every word ``AND`` (case
  sensitive) and a trailing ``:N`` is taken off each part as that part's weight, whether or not
  the prompt has an ``AND`` at all (``smile:1.5`` is ``smile`` with weight 1.5). An empty part
  is kept: it is encoded as an empty prompt.
* **Prompt editing** ``[from:to:when]``, ``[to:when]``, ``[from::when]`` and alternation
  ``[a|b]`` are read with the webui's grammar. When the grammar does not accept the part (a
  bare ``|`` anywhere, as in the tag ``|_|``; ``:`` inside an alternation option; ``[a|b:0.5]``;
  a trailing backslash), the webui uses the whole part literally for every step, and so does
  this module. A number with a ``.`` is a fraction of the steps, one without is a step
  (``1e1`` is step 10); ``int()`` truncates, and a step below 1 means the edit is already done
  at the first step (``[a:b:0.01]`` at 20 steps is ``b`` throughout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_STEPS = 20  # the webui's default sampling steps

_AND = re.compile(r"\bAND\b")
# A part's trailing weight: optional spaces, ':', optional spaces, a plain decimal (no exponent).
_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)
# lark's SIGNED_NUMBER between the last ':' and ']', optional whitespace around it.
_WHEN = re.compile(r"(\s*)([+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)(\s*)\]")
_PLAIN_STOP = frozenset("\\[]():|")


# -- comments and AND -------------------------------------------------------------------------


def strip_comments(text: str) -> str:
    """The webui's prompt comments: from ``#`` to the end of its line is left out (a line that
    starts with ``#`` goes with its line break). Equal to the webui's text up to whitespace."""
    if "#" not in text:
        return text
    kept = []
    for line in text.split("\n"):
        if line.startswith("#"):
            continue
        cut = line.find("#")
        kept.append(line if cut < 0 else line[:cut])
    return "\n".join(kept)


@dataclass(frozen=True)
class PromptPart:
    """One ``AND`` part of a prompt: its text (trailing ``:N`` removed) and its weight."""

    text: str
    weight: float = 1.0


def split_and(prompt: str) -> list[PromptPart]:
    """The webui's composable parts: split at ``AND``, each part's trailing ``:N`` its weight."""
    parts = []
    for sub in _AND.split(prompt):
        m = _PART_WEIGHT.search(sub)
        if m is None:  # cannot happen with this pattern; the webui falls back the same way
            parts.append(PromptPart(sub, 1.0))
            continue
        text, weight = m.groups()
        parts.append(PromptPart(text, float(weight) if weight is not None else 1.0))
    return parts


# -- the prompt-editing grammar ---------------------------------------------------------------


@dataclass(frozen=True)
class _Scheduled:
    before: tuple | None  # None: the ``[to:when]`` form
    after: tuple
    number: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _ParseError(Exception):
    pass


class _Parser:
    """A recursive-descent reading of the webui's lark grammar.

    Inside brackets the grammar is deterministic (each construct ends at the first character it
    cannot take); only at the top level may ``[ ] ( ) :`` also stand for themselves, which is
    where a construct that does not close falls back to literal text. ``|`` and a backslash
    before a line break or at the end have no such fallback: the parse fails.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.memo: dict[tuple[str, int], tuple[tuple, int] | None] = {}

    def parse(self) -> tuple:
        text, n = self.text, len(self.text)
        out: list = []
        i = 0
        while True:
            nodes, i = self._prompt(i)
            out.extend(nodes)
            if i >= n:
                return tuple(out)
            if text[i] in "[]():":
                out.append(text[i])
                i += 1
            else:
                raise _ParseError(i)

    def _prompt(self, i: int) -> tuple[list, int]:
        text, n = self.text, len(self.text)
        out: list = []
        start = i
        while i < n:
            ch = text[i]
            if ch == "\\":
                if i + 1 < n and text[i + 1] != "\n":
                    i += 2
                    continue
                break
            if ch not in _PLAIN_STOP:
                i += 1
                continue
            if ch not in "[(":
                break
            got = self._bracket(i) if ch == "[" else self._paren(i)
            if got is None:
                break
            if i > start:
                out.append(text[start:i])
            node, i = got
            out.extend(node)
            start = i
        if i > start:
            out.append(text[start:i])
        return out, i

    def _bracket(self, i: int) -> tuple[tuple, int] | None:
        key = ("[", i)
        if key not in self.memo:
            self.memo[key] = self._bracket_uncached(i)
        return self.memo[key]

    def _bracket_uncached(self, i: int) -> tuple[tuple, int] | None:
        text, n = self.text, len(self.text)
        first, j = self._prompt(i + 1)
        if j >= n:
            return None
        ch = text[j]
        if ch == "]":  # emphasis: the brackets stay in the text
            return ("[", *first, "]"), j + 1
        if ch == "|":
            options = [tuple(first)]
            while j < n and text[j] == "|":
                option, j = self._prompt(j + 1)
                options.append(tuple(option))
            if j < n and text[j] == "]":
                return (_Alternate(tuple(options)),), j + 1
            return None
        if ch == ":":
            m = _WHEN.match(text, j + 1)
            if m:  # [to:when]
                return (_Scheduled(None, tuple(first), m.group(2)),), m.end()
            after, k = self._prompt(j + 1)
            if k < n and text[k] == ":":
                m = _WHEN.match(text, k + 1)
                if m:  # [from:to:when]
                    return (_Scheduled(tuple(first), tuple(after), m.group(2)),), m.end()
        return None

    def _paren(self, i: int) -> tuple[tuple, int] | None:
        key = ("(", i)
        if key in self.memo:
            return self.memo[key]
        text, n = self.text, len(self.text)
        res = None
        first, j = self._prompt(i + 1)
        if j < n and text[j] == ")":
            res = ("(", *first, ")"), j + 1
        elif j < n and text[j] == ":":
            second, k = self._prompt(j + 1)
            if k < n and text[k] == ")":
                res = ("(", *first, ":", *second, ")"), k + 1
        self.memo[key] = res
        return res


def parse_editing(text: str) -> tuple | None:
    """The prompt-editing tree of one AND part, or None where the webui's grammar fails."""
    try:
        return _Parser(text).parse()
    except (_ParseError, RecursionError):
        return None


# -- steps ------------------------------------------------------------------------------------


def when_step(
    number: str, steps: int, *, hires_steps: int | None = None, old_scheduling: bool = False
) -> int:
    """The step at which ``[from:to:NUMBER]`` switches, as the webui computes it."""
    v = float(number)
    total = steps
    if old_scheduling:
        v = v * steps if v < 1 else v
    elif hires_steps is not None:
        total = hires_steps
        v = (v - 1.0) * hires_steps if "." in number else v - steps
    elif "." in number:
        v = v * steps
    return min(total, int(v))


def _walk(nodes: tuple, visit) -> None:  # noqa: ANN001
    for node in nodes:
        if isinstance(node, _Scheduled):
            visit(node)
            if node.before is not None:
                _walk(node.before, visit)
            _walk(node.after, visit)
        elif isinstance(node, _Alternate):
            visit(node)
            for option in node.options:
                _walk(option, visit)


def _render(nodes: tuple, step: int, when) -> str:  # noqa: ANN001
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            if step <= when(node):
                out.append(_render(node.before, step, when) if node.before is not None else "")
            else:
                out.append(_render(node.after, step, when))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, when))
    return "".join(out)


@dataclass(frozen=True)
class Schedule:
    """The texts one AND part takes over the sampling steps: ``(last step, text)`` in order."""

    entries: list[tuple[int, str]]
    parsed: bool  # False: the grammar failed and the part is used literally for every step

    @property
    def first(self) -> str:
        return self.entries[0][1]


def prompt_schedule(
    text: str,
    steps: int = DEFAULT_STEPS,
    *,
    hires_steps: int | None = None,
    old_scheduling: bool = False,
) -> Schedule:
    """The webui's ``get_learned_conditioning_prompt_schedules`` for one part."""
    tree = parse_editing(text)
    total = hires_steps if hires_steps is not None and not old_scheduling else steps
    if tree is None:
        return Schedule([(total, text)], parsed=False)

    def when(node: _Scheduled) -> int:
        return when_step(node.number, steps, hires_steps=hires_steps,
                         old_scheduling=old_scheduling)

    ends = {total}

    def collect(node) -> None:  # noqa: ANN001
        if isinstance(node, _Scheduled):
            w = when(node)
            if w >= 1:
                ends.add(w)
        else:
            ends.update(range(1, total + 1))

    _walk(tree, collect)
    return Schedule([(t, _render(tree, t, when)) for t in sorted(ends)], parsed=True)
