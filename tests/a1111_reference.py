"""Independent references for the A1111 and kohya tests, written from how those tools behave.

* ``slow_clip_tokenizer``: what transformers' slow ``CLIPTokenizer`` (the class the A1111
  webui and kohya's sd-scripts tokenize with) does, over the independent BPE of
  tests/reference_clip_bpe.py.
* ``lark_schedule``: the webui 1.10 prompt-editing grammar run by lark (the parser the webui
  uses), with the webui's step arithmetic, returning ``[(end_step, text)]`` or None where the
  grammar fails.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import ftfy
from reference_clip_bpe import ReferenceClipBpe

GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@lru_cache(maxsize=1)
def _parser():  # noqa: ANN202
    import lark

    return lark.Lark(GRAMMAR)


def lark_schedule(text: str, steps: int) -> list[tuple[int, str]] | None:
    import lark

    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        return None

    def when_of(node: lark.Tree) -> int:
        number = str(node.children[-2])
        v = float(number) * steps if "." in number else float(number)
        return min(steps, int(v))

    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            w = when_of(node)
            if w >= 1:
                ends.add(w)
        elif node.data == "alternate":
            ends.update(range(1, steps + 1))

    def render(node, step: int) -> str:  # noqa: ANN001
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return render(before, step) if step <= when_of(node) else render(after, step)
        if node.data == "alternate":
            options = node.children
            return render(options[(step - 1) % len(options)], step)
        return "".join(render(c, step) for c in node.children)

    return [(t, render(tree, t)) for t in sorted(ends)]


class SlowClipTokenizer:
    """transformers' slow ``CLIPTokenizer`` with ftfy installed, as the webui (transformers
    4.30) and kohya (4.44) run it: ftfy.fix_text, ``re``'s whitespace collapsed, stripped,
    lowercased, no ``html.unescape``; then CLIP's BPE (tests/reference_clip_bpe.py). (The
    ``CLIPTokenizer`` of transformers 5 is a different, ftfy-less tokenizer.)"""

    def __init__(self) -> None:
        self.bpe = ReferenceClipBpe()
        self.comma = self.bpe.encoder[",</w>"]
        self.eos = self.bpe.encoder["<|endoftext|>"]

    def clean(self, text: str) -> str:
        return re.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()

    def ids(self, text: str) -> list[int]:
        return self.bpe.encode_cleaned(self.clean(text))


def slow_clip_tokenizer(folder: Path | None = None) -> SlowClipTokenizer:  # noqa: ARG001
    return SlowClipTokenizer()


def slow_ids(tokenizer: SlowClipTokenizer, text: str) -> list[int]:
    return tokenizer.ids(text)


# -- the webui's whole prompt path, for one positive prompt ---------------------------------

_ATTENTION_TOKEN = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def attention(text: str) -> list[list]:
    """[text, weight] runs as the webui's parse_prompt_attention gives them."""
    out: list[list] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def scale(start: int, factor: float) -> None:
        for run in out[start:]:
            run[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok[0] == "\\":
            out.append([tok[1:], 1.0])
        elif tok in opened:
            opened[tok].append(len(out))
        elif number is not None and opened["("]:
            scale(opened["("].pop(), float(number))
        elif tok == ")" and opened["("]:
            scale(opened["("].pop(), 1.1)
        elif tok == "]" and opened["["]:
            scale(opened["["].pop(), 1 / 1.1)
        else:
            for k, piece in enumerate(_BREAK.split(tok)):
                if k:
                    out.append(["BREAK", -1])
                out.append([piece, 1.0])
    for start in opened["("]:
        scale(start, 1.1)
    for start in opened["["]:
        scale(start, 1 / 1.1)
    merged: list[list] = []
    for run in out or [["", 1.0]]:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return merged


def comments_removed(text: str) -> str:
    text = re.sub("(^|\n)#[^\n]*(\n|$)", "\n", text)
    return re.sub("#[^\n]*(\n|$)", "\n", text)


def and_parts(prompt: str) -> list[tuple[str, float]]:
    out = []
    for sub in re.split(r"\bAND\b", prompt):
        m = re.match(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", sub)
        out.append((m.group(1), float(m.group(2)) if m.group(2) else 1.0))
    return out


def chunks_of(tokenizer, text: str, backtrack: int = 20) -> list[tuple[list[int], list[float]]]:  # noqa: ANN001
    """tokenize_line: 75-token chunks (without BOS/EOS, padded with EOS) and multipliers."""
    runs = attention(text)
    ids_per_run = [slow_ids(tokenizer, t) for t, _ in runs]
    comma, eos = tokenizer.comma, tokenizer.eos
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, mults, last_comma
        pad = 75 - len(ids)
        chunks.append((ids + [eos] * pad, mults + [1.0] * pad))
        ids, mults, last_comma = [], [], -1

    for (t, w), run_ids in zip(runs, ids_per_run):
        if t == "BREAK" and w == -1:
            close()
            continue
        for tid in run_ids:
            if tid == comma:
                last_comma = len(ids)
            elif len(ids) == 75 and last_comma != -1 and 75 - last_comma <= backtrack:
                keep = last_comma + 1
                moved_ids, moved_mults = ids[keep:], mults[keep:]
                ids, mults = ids[:keep], mults[:keep]
                close()
                ids, mults = moved_ids, moved_mults
            if len(ids) == 75:
                close()
            ids.append(tid)
            mults.append(w)
    if ids or not chunks:
        close()
    return chunks


def webui_first_step(tokenizer, prompt: str, steps: int = 20):  # noqa: ANN001, ANN201
    """Per AND part: (weight, chunks) for the first sampling step, as the webui 1.10 runs it."""
    text = re.sub(r"<(\w+):([^>]+)>", "", comments_removed(prompt))
    out = []
    for part, weight in and_parts(text):
        schedule = lark_schedule(part, steps)
        first = part if schedule is None else schedule[0][1]
        out.append((weight, chunks_of(tokenizer, first)))
    return out
