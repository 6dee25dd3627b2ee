"""The SD1.5 CLIP tokenizer, exact and offline.

Stable Diffusion 1.5 tokenizes prompts with OpenAI CLIP ViT-L/14's byte-level BPE: 49,408 ids,
BOS 49406, EOS 49407, padded with EOS. tagsmith ships the tokenizer built from CLIP's own merges
file (``tagsmith/_data``) and runs it through the Rust ``tokenizers`` backend. Text is cleaned
exactly as CLIP's reference tokenizer cleans it (ftfy, HTML unescaped twice, whitespace
collapsed, lowercased) in Python first, because the Rust normalizers cannot do what ftfy does.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

BOS_ID = 49406
EOS_ID = 49407
PAD_ID = EOS_ID  # SD1.5 pads with EOS
VOCAB_SIZE = 49408
COMMA_ID = 267
CHUNK_LENGTH = 75  # A1111: tokens per chunk, BOS and EOS not counted
MAX_LENGTH = 77  # positions in the text encoder
WORD_END = "</w>"

# Python's \s, as the reference's whitespace_clean uses it (via the `regex` module, same set).
_WHITESPACE = re.compile(r"\s+")
# Printable ASCII without '&' is left untouched by ftfy and html.unescape: skip both (20x faster).
_PLAIN_ASCII = re.compile(r"[ -%'-~]*")


def clean_text(text: str) -> str:
    """Clean text exactly as CLIP's reference tokenizer does before BPE.

    ftfy.fix_text, html.unescape twice, strip, collapse whitespace to single spaces, lowercase.
    """
    if not _PLAIN_ASCII.fullmatch(text):
        import ftfy

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    text = _WHITESPACE.sub(" ", text.strip()).strip()
    return text.lower()


@dataclass(frozen=True)
class Word:
    """One pre-tokenizer unit (a letter run, one digit, or a punctuation run) and its pieces."""

    text: str
    pieces: tuple[str, ...]
    ids: tuple[int, ...]

    @property
    def known(self) -> bool:
        """True when the word is one whole-word token the model has seen as such."""
        return len(self.ids) == 1 and self.pieces[0].endswith(WORD_END)

    @property
    def is_punctuation(self) -> bool:
        return not any(ch.isalnum() for ch in self.text)


@dataclass(frozen=True)
class TagTokens:
    """How one tag splits into CLIP tokens."""

    tag: str  # as the user gave it
    text: str  # as analysed: underscores to spaces, prompt syntax removed, cleaned
    ids: tuple[int, ...]  # without BOS/EOS
    tokens: tuple[str, ...]  # vocabulary piece strings, e.g. "onnaise</w>"
    words: tuple[Word, ...] = field(default=())

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def known_words(self) -> list[str]:
        return [w.text for w in self.words if w.known]

    @property
    def unknown_words(self) -> list[str]:
        return [w.text for w in self.words if not w.known]

    @property
    def all_known(self) -> bool:
        """True when every word is a single known whole-word token."""
        return all(w.known for w in self.words)

    @property
    def truncated_at(self) -> int | None:
        """Index of the first token SD drops (past 75 in one chunk), or None."""
        return CHUNK_LENGTH if len(self.ids) > CHUNK_LENGTH else None

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "text": self.text,
            "tokens": list(self.tokens),
            "ids": list(self.ids),
            "n_tokens": self.n_tokens,
            "known_words": self.known_words,
            "unknown_words": self.unknown_words,
        }


_BYTE_DECODER: dict[str, int] | None = None


def _byte_decoder() -> dict[str, int]:
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        printable = (
            list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1))
        )
        codes = printable[:]
        n = 0
        for b in range(256):
            if b not in printable:
                printable.append(b)
                codes.append(256 + n)
                n += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(printable, codes)}
    return _BYTE_DECODER


def piece_text(piece: str) -> str:
    """Human-readable text of a vocabulary piece: bytes decoded, ``</w>`` removed."""
    if piece in ("<|startoftext|>", "<|endoftext|>"):
        return piece
    core = piece[: -len(WORD_END)] if piece.endswith(WORD_END) else piece
    dec = _byte_decoder()
    try:
        raw = bytes(dec[ch] for ch in core)
    except KeyError:
        return core
    return raw.decode("utf-8", errors="replace")


class ClipTokenizer:
    """CLIP ViT-L/14 BPE as SD1.5 uses it. Thread-safe; get one with ``load_tokenizer()``."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        path = resources.files("tagsmith") / "_data" / "clip_tokenizer.json"
        self._tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        self._lock = threading.Lock()
        self._vocab: dict[str, int] | None = None
        self._id_to_token: list[str] | None = None

    # -- ids -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` after reference cleaning, without BOS/EOS."""
        return self._tok.encode(clean_text(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids for many texts at once (Rust, parallel), without BOS/EOS."""
        cleaned = [clean_text(t) for t in texts]
        encs = self._tok.encode_batch(cleaned, add_special_tokens=False)
        return [e.ids for e in encs]

    def encode_cleaned_batch(self, cleaned: Sequence[str]):  # noqa: ANN201 - tokenizers.Encoding
        """Encodings for texts already passed through ``clean_text``."""
        return self._tok.encode_batch(list(cleaned), add_special_tokens=False)

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = self._tok.get_vocab(with_added_tokens=True)
        return self._vocab

    def id_to_token(self, token_id: int) -> str:
        if self._id_to_token is None:
            table = [""] * VOCAB_SIZE
            for tok, i in self.vocab.items():
                table[i] = tok
            self._id_to_token = table
        return self._id_to_token[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def whole_word_id(self, word: str) -> int | None:
        """Id of ``word`` as one whole-word token (``word</w>``), or None if it has none."""
        return self.vocab.get(clean_text(word) + WORD_END)

    # -- analysis --------------------------------------------------------------------------
    def analyze(self, tag: str, *, underscores: bool = True) -> TagTokens:
        return self.analyze_batch([tag], underscores=underscores)[0]

    def analyze_batch(
        self, tags: Sequence[str], *, underscores: bool = True
    ) -> list[TagTokens]:
        """Token split of each tag, normalised as a Danbooru tag (see ``normalize_tag``)."""
        texts = [clean_text(normalize_tag(t, underscores=underscores)) for t in tags]
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [
            _tag_tokens(tag, text, enc) for tag, text, enc in zip(tags, texts, encs)
        ]


def _tag_tokens(tag: str, text: str, enc) -> TagTokens:  # noqa: ANN001 - tokenizers.Encoding
    ids = tuple(enc.ids)
    pieces = tuple(enc.tokens)
    words: list[Word] = []
    cur_word: int | None = None
    start = 0
    for i, wid in enumerate(enc.word_ids):
        if wid != cur_word:
            if cur_word is not None:
                words.append(_word(text, enc, start, i, ids, pieces))
            cur_word = wid
            start = i
    if cur_word is not None:
        words.append(_word(text, enc, start, len(ids), ids, pieces))
    return TagTokens(tag=tag, text=text, ids=ids, tokens=pieces, words=tuple(words))


def _word(text: str, enc, start: int, end: int, ids, pieces) -> Word:  # noqa: ANN001
    begin = enc.offsets[start][0]
    finish = enc.offsets[end - 1][1]
    return Word(text=text[begin:finish], pieces=pieces[start:end], ids=ids[start:end])


@lru_cache(maxsize=1)
def load_tokenizer() -> ClipTokenizer:
    """The shared SD1.5 tokenizer (loaded once per process, ~0.1 s)."""
    return ClipTokenizer()


# -- tags as users write them -------------------------------------------------------------

_ESCAPED_PAREN = re.compile(r"\\([()\[\]])")


def normalize_tag(tag: str, *, underscores: bool = True) -> str:
    """A Danbooru-style tag as SD sees it: underscores to spaces, escapes made literal.

    ``mayonnaise_bottle`` -> ``mayonnaise bottle``; ``hijikata_toushirou_\\(gintama\\)`` ->
    ``hijikata toushirou (gintama)``. Underscores inside a tag that is only punctuation or
    emoticon-like (``^_^``, ``>_<``) are kept, as tagcomplete keeps them.
    """
    text = tag.strip()
    if underscores and "_" in text and _is_wordy(text):
        text = text.replace("_", " ")
    text = _ESCAPED_PAREN.sub(r"\1", text)
    return _WHITESPACE.sub(" ", text).strip()


def _is_wordy(tag: str) -> bool:
    # Emoticon tags such as ^_^, >_<, o_o, 0_0 keep their underscore (tagcomplete does too).
    letters = sum(ch.isalnum() for ch in tag)
    return not (len(tag) <= 3 or letters <= 2 and len(tag) <= 5)


def iter_nonempty(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        if line.strip():
            yield line
