"""Build tagsmith/_data/clip_tokenizer.json from CLIP's BPE merges file.

Run once when the merges file changes (it never has since 2021):

    python data/build_tokenizer.py

The merges file is `open_clip/bpe_simple_vocab_16e6.txt.gz` from the PyPI package
open-clip-torch (MIT); tagsmith ships a copy in tagsmith/_data/ with its licence. The vocabulary
is laid out exactly as CLIP's reference `SimpleTokenizer` lays it out: 256 byte symbols, the
same 256 with `</w>`, the first 48,894 merges, then `<|startoftext|>` (49406) and
`<|endoftext|>` (49407): 49,408 ids.

Text cleaning (ftfy, HTML unescaping, whitespace, lowercase) is not part of this file: the
reference does it in Python and so does tagsmith (tagsmith.text.tokenizer.clean_text), because
the Rust normalizers cannot reproduce ftfy.

The pre-tokenizer stored here (the reference pattern, run by the Rust regex engine) is exact on
ASCII text only. For other text tagsmith splits words in Python with the `regex` module, as the
reference does, and feeds them to this same BPE with the Split step removed (see
tagsmith.text.tokenizer). tests/test_tokenizer_parity.py checks that this script still rebuilds
the shipped file (same JSON).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from tagsmith.text.tokenizer import _byte_decoder

DATA = Path(__file__).resolve().parent.parent / "tagsmith" / "_data"
MERGES = DATA / "bpe_simple_vocab_16e6.txt.gz"
OUT = DATA / "clip_tokenizer.json"

# CLIP's reference pattern without the two special-token alternatives (added tokens match those).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build() -> Tokenizer:
    lines = gzip.open(MERGES, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_byte_decoder())  # byte order: the same table the decoder uses
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab_list) == 49408, len(vocab_list)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
        unk_token="<|endoftext|>",
        fuse_unk=False,
    )
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken("<|startoftext|>", normalized=False, special=True),
            AddedToken("<|endoftext|>", normalized=False, special=True),
        ]
    )
    return tok


if __name__ == "__main__":
    build().save(str(OUT))
    print(f"wrote {OUT}")
