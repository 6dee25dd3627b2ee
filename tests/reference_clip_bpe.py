"""An independent pure-Python CLIP BPE, written from the algorithm of OpenAI CLIP's reference
``SimpleTokenizer`` (clip/simple_tokenizer.py), used to check tagsmith's tokenizer id for id.

It shares nothing with tagsmith except the merges file it reads: its own byte table, its own
vocabulary layout, its own cleaning (ftfy, HTML unescaped twice, strip, whitespace collapsed
with the ``regex`` module's ``\\s``, lowercase) and its own splitting regex, compiled with the
``regex`` module and ``IGNORECASE`` exactly as the reference compiles it.

    ref = ReferenceClipBpe()
    ref.encode("a photo of a cat")          # [320, 1125, 539, 320, 2368]
    ref.encode_with_specials("a cat")       # [49406, 320, 2368, 49407]
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

import ftfy
import regex

MERGES_PATH = (
    Path(__file__).resolve().parent.parent / "tagsmith" / "_data" / ("bpe_simple_vocab_16e6.txt.gz")
)

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"

# The reference's pattern, verbatim, including the two special-token alternatives: literal
# "<|endoftext|>" in user text becomes the EOS id when nothing glues onto its left.
PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
    r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character: printable Latin-1 bytes map to themselves,
    the other 68 bytes to code points from 256 upwards, in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
    for b in range(256):
        if b not in keep:
            table[b] = chr(256 + extra)
            extra += 1
    # The reference orders the vocabulary as: the kept bytes ascending, then the others.
    order = sorted(keep) + [b for b in range(256) if b not in keep]
    return {b: table[b] for b in order}


def basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


_WS = regex.compile(r"\s+")


def whitespace_clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


class ReferenceClipBpe:
    """CLIP's reference tokenizer: cleaning, regex split, byte mapping, lowest-rank merges."""

    def __init__(self, merges_path: Path = MERGES_PATH) -> None:
        raw = gzip.open(merges_path, "rb").read().decode("utf-8")
        lines = raw.split("\n")
        # Line 0 is a version header; CLIP uses the next 49152 - 256 - 2 merges.
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder: dict[str, int] = {}
        for i, piece in enumerate(vocab):
            self.encoder[piece] = i  # as dict(zip(...)): a later duplicate would win
        self.decoder = {i: piece for piece, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(merges):
            self.ranks[pair] = i
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)
        self.cache: dict[str, tuple[str, ...]] = {}
        self.clear_cache()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def clear_cache(self) -> None:
        self.cache = {SOT: (SOT,), EOT: (EOT,)}

    # -- BPE -------------------------------------------------------------------------------
    def bpe(self, token: str) -> tuple[str, ...]:
        """Pieces of one byte-mapped pre-token, merging the lowest-ranked pair until none."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word: list[str] = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            best_rank = None
            best = None
            for pair in zip(word, word[1:]):
                r = self.ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = tuple(word)
        self.cache[token] = result
        return result

    # -- text ------------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        return whitespace_clean(basic_clean(text)).lower()

    def pretokens(self, text: str) -> list[str]:
        """Pre-tokens of already-cleaned text."""
        return self.pattern.findall(text)

    def pieces(self, text: str) -> list[str]:
        return self.pieces_cleaned(self.clean(text))

    def pieces_cleaned(self, cleaned: str) -> list[str]:
        """Pieces of text already passed through ``clean``."""
        return self.pieces_of_words(self.pretokens(cleaned))

    def pieces_of_words(self, words: list[str]) -> list[str]:
        """Pieces of pre-tokens, each byte-mapped and merged on its own."""
        out: list[str] = []
        for pre in words:
            mapped = "".join(self.byte_encoder[b] for b in pre.encode("utf-8"))
            out.extend(self.bpe(mapped))
        return out

    def encode(self, text: str) -> list[int]:
        """Ids without BOS/EOS, as ``SimpleTokenizer.encode``."""
        return self.encode_cleaned(self.clean(text))

    def encode_cleaned(self, cleaned: str) -> list[int]:
        return [self.encoder[p] for p in self.pieces_cleaned(cleaned)]

    def encode_with_specials(self, text: str) -> list[int]:
        return [self.encoder[SOT], *self.encode(text), self.encoder[EOT]]

    def decode_piece(self, piece_id: int) -> str:
        return self.decoder[piece_id]
