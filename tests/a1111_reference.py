"""Independent references for the A1111 and kohya tests, written from how those tools behave.

* ``slow_clip_tokenizer``: transformers' slow ``CLIPTokenizer`` (the class the A1111 webui and
  kohya's sd-scripts tokenize with), built from tagsmith's merges file with a vocabulary laid
  out here, not read from tagsmith.
* ``lark_schedule``: the webui 1.10 prompt-editing grammar run by lark (the parser the webui
  uses), with the webui's step arithmetic, returning ``[(end_step, text)]`` or None where the
  grammar fails.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from reference_clip_bpe import MERGES_PATH, bytes_to_unicode

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


def write_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt in the layout of openai/clip-vit-large-patch14."""
    lines = gzip.open(MERGES_PATH).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def slow_clip_tokenizer(folder: Path):  # noqa: ANN201 - transformers.CLIPTokenizer
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_clip_vocab(folder)
    return CLIPTokenizer(str(vocab_path), str(merges_path))


def slow_ids(tokenizer, text: str) -> list[int]:  # noqa: ANN001
    return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
