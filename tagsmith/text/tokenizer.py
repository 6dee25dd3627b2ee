r"""The SD1.5 CLIP tokenizer, exact and offline.

Stable Diffusion 1.5 tokenizes prompts with OpenAI CLIP ViT-L/14's byte-level BPE: 49,408 ids,
BOS 49406, EOS 49407, padded with EOS. tagsmith ships the tokenizer built from CLIP's own merges
file (``tagsmith/_data``) and runs it through the Rust ``tokenizers`` backend. Text is cleaned
exactly as CLIP's reference tokenizer cleans it (ftfy, HTML unescaped twice, whitespace
collapsed, lowercased) in Python first, because the Rust normalizers cannot do what ftfy does.

Parity with the reference (OpenAI CLIP's ``SimpleTokenizer``, which transformers' slow
``CLIPTokenizer`` and so A1111 follow) is tested id for id against an independent pure-Python
BPE over every Danbooru tag and alias, a set of hard cases and arbitrary text
(tests/test_tokenizer_parity.py); ``encode`` has no known difference from it. What it takes:

* **Cleaning.** Printable ASCII without ``&`` skips ftfy and ``html.unescape``: both leave such
  text unchanged (a property test checks it against the full path), and skipping them makes
  cleaning the 140k Danbooru tags ~100x faster. Other text goes the reference's way step for
  step, whitespace collapsed with the ``regex`` module's ``\s`` as the reference does (Python's
  ``re`` also counts U+001C..U+001F; ftfy removes those first anyway).
* **Splitting into words.** ASCII text is split by the Rust pre-tokenizer stored in the
  tokenizer file (the reference pattern; on ASCII the two regex engines agree). Other text,
  and any text containing ``<|``, is split in Python with the reference's own pattern,
  compiled with the ``regex`` module and ``IGNORECASE`` as the reference compiles it, and the
  words go to the same BPE as they are. The Rust engine gets three things wrong there: (1) its
  Unicode tables are older than the ``regex`` module's (17,480 code points, e.g. U+0558,
  U+A7CE, U+2B73A, are letters or digits to the reference and not to it: such a word split
  differently); (2) with ``IGNORECASE`` the reference's "other" class misses U+0345
  (combining ypogegrammeni, which case-folds to a letter), so the reference drops it like
  whitespace; (3) ``'ſ`` (long s) matches the contraction ``'s`` and stays one word.
* **Special tokens in text.** Literal ``<|endoftext|>`` / ``<|startoftext|>`` in user text
  become the EOS / BOS id, as in the reference, wherever the reference's scan starts a word
  there (``a <|endoftext|> b``, ``a<|endoftext|>b``). After punctuation, as in
  ``!<|endoftext|>``, the ``<|`` joins the punctuation run and the text is ordinary pieces, as
  in the reference; Rust's added-token matcher would have extracted EOS there.
* **Two cleanings.** ``clean_text`` is the reference's (above), the default everywhere.
  ``clean_text_transformers`` is what transformers' slow ``CLIPTokenizer`` does, which the
  A1111 webui and kohya's sd-scripts run: ftfy, whitespace collapsed with Python's ``re``,
  lowercase, and no ``html.unescape`` (ftfy still unescapes entities in text without ``<``,
  so ``&amp;amp;`` and ``fish &amp; chips <3`` differ from the reference). ``encode`` and
  ``encode_batch`` take ``cleaning="transformers"`` for it.
* **Tags are not prompts.** ``normalize_tag`` (Danbooru underscores, tagcomplete's emoticon
  exclusions, escaped brackets) is tagsmith's own reading of a tag before the reference
  cleaning; ``analyze_batch`` applies it, ``encode`` / ``encode_batch`` do not.

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
from typing import Any

BOS_ID = 49406
EOS_ID = 49407
PAD_ID = EOS_ID  # SD1.5 pads with EOS
VOCAB_SIZE = 49408
COMMA_ID = 267
CHUNK_LENGTH = 75  # A1111: tokens per chunk, BOS and EOS not counted
MAX_LENGTH = 77  # positions in the text encoder
WORD_END = "</w>"

# CLIP's reference pre-tokenizer pattern, verbatim (for the ``regex`` module, with IGNORECASE).
SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
    r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

_regex_whitespace: Any = None


def clean_text(text: str) -> str:
    """Clean text exactly as CLIP's reference tokenizer does before BPE.

    ftfy.fix_text, html.unescape twice, strip, collapse whitespace to single spaces, lowercase.
    """
    if text.isascii() and text.isprintable() and "&" not in text:
        # ftfy and html.unescape leave printable ASCII without '&' as it is, and its only
        # whitespace is ' ', so split/join is the reference's strip + collapse.
        return " ".join(text.split()).lower()
    return _clean_text_reference(text)


def _clean_text_reference(text: str) -> str:
    """The reference's cleaning, step for step (``clean_text`` without its fast path)."""
    global _regex_whitespace
    import ftfy
    import regex

    if _regex_whitespace is None:
        _regex_whitespace = regex.compile(r"\s+")
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _regex_whitespace.sub(" ", text).strip().lower()


def clean_text_transformers(text: str) -> str:
    """Clean text as transformers' slow ``CLIPTokenizer`` does with ftfy installed (the A1111
    webui and kohya): ftfy.fix_text, whitespace collapsed, stripped, lowercased; no
    ``html.unescape``."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return " ".join(text.split()).lower()  # ftfy leaves such text unchanged
    import ftfy

    return _RE_WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


_RE_WHITESPACE = re.compile(r"\s+")
CLEANINGS = {"reference": clean_text, "transformers": clean_text_transformers}


def cleaner(cleaning: str):  # noqa: ANN201 - Callable[[str], str]
    """The cleaning function by name: ``reference`` (OpenAI CLIP) or ``transformers``."""
    try:
        return CLEANINGS[cleaning]
    except KeyError:
        raise ValueError(f"unknown cleaning {cleaning!r}; use one of {sorted(CLEANINGS)}") from None


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


def shorten(text: str, width: int = 32) -> str:
    """``text`` cut to ``width`` characters with an ellipsis, for messages about long tags."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


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

        self._tok = Tokenizer.from_str(_tokenizer_json())
        self._lock = threading.Lock()
        self._word_tok: Any = None
        self._split: Any = None
        self._vocab: dict[str, int] | None = None
        self._id_to_token: list[str] | None = None
        self._words: dict[tuple[int, ...], Word] = {}
        self._ends: list[bool] | None = None

    # -- ids -----------------------------------------------------------------------------
    def encode(self, text: str, *, cleaning: str = "reference") -> list[int]:
        """Ids of ``text`` after cleaning (the reference's unless told), without BOS/EOS."""
        return self._ids_cleaned([cleaner(cleaning)(text)])[0]

    def encode_batch(
        self, texts: Sequence[str], *, cleaning: str = "reference"
    ) -> list[list[int]]:
        """Ids for many texts at once (Rust, parallel), without BOS/EOS."""
        clean = cleaner(cleaning)
        return self._ids_cleaned([clean(t) for t in texts])

    def encode_cleaned_batch(self, cleaned: Sequence[str]) -> list[Any]:
        """Encodings for texts already passed through ``clean_text``.

        Each has ``ids``, ``tokens``, ``offsets`` (character spans in its text) and
        ``word_ids`` (which word of the text each token belongs to), like
        ``tokenizers.Encoding``.
        """
        return self._route(list(cleaned), self._tok.encode_batch, self._encode_split)

    def _ids_cleaned(self, cleaned: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking (tokenizers >= 0.20); the ids are the same.
        fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encs = self._route(cleaned, fast, self._encode_split_ids)
        return [e.ids for e in encs]

    @staticmethod
    def _route(cleaned: list[str], rust: Any, split: Any) -> list[Any]:
        # ASCII goes to the Rust pre-tokenizer; the rest needs the reference's regex engine.
        slow = [i for i, t in enumerate(cleaned) if not t.isascii() or "<|" in t]
        if not slow:
            return rust(cleaned, add_special_tokens=False)
        out: list[Any] = [None] * len(cleaned)
        if len(slow) < len(cleaned):
            is_slow = set(slow)
            fast = [i for i in range(len(cleaned)) if i not in is_slow]
            for i, enc in zip(fast, rust([cleaned[i] for i in fast], add_special_tokens=False)):
                out[i] = enc
        for i, enc in zip(slow, split([cleaned[i] for i in slow])):
            out[i] = enc
        return out

    def _encode_split(self, texts: list[str]) -> list[_SplitEncoding]:
        word_tok, split = self._word_tokenizer()
        spans = [[m.span() for m in split.finditer(t)] for t in texts]
        words = [[t[a:b] for a, b in sp] for t, sp in zip(texts, spans)]
        encs = word_tok.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        result = []
        for sp, enc in zip(spans, encs):
            word_ids = enc.word_ids
            offsets = [(sp[w][0] + a, sp[w][0] + b) for (a, b), w in zip(enc.offsets, word_ids)]
            result.append(_SplitEncoding(enc.ids, enc.tokens, offsets, word_ids))
        return result

    def _encode_split_ids(self, texts: list[str]) -> list[Any]:
        word_tok, split = self._word_tokenizer()
        words = [split.findall(t) for t in texts]
        fast = getattr(word_tok, "encode_batch_fast", word_tok.encode_batch)
        return fast(words, is_pretokenized=True, add_special_tokens=False)

    def _word_tokenizer(self) -> tuple[Any, Any]:
        """The same BPE without its pre-tokenizer, fed words split in Python, and the split."""
        with self._lock:
            if self._word_tok is None:
                import regex
                from tokenizers import Tokenizer, pre_tokenizers

                tok = Tokenizer.from_str(_tokenizer_json())
                tok.pre_tokenizer = pre_tokenizers.ByteLevel(
                    add_prefix_space=False, use_regex=False
                )
                self._split = regex.compile(SPLIT_PATTERN, regex.IGNORECASE)
                self._word_tok = tok
            return self._word_tok, self._split

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = self._tok.get_vocab(with_added_tokens=True)
        return self._vocab

    def id_to_token(self, token_id: int) -> str:
        return self._token_table()[token_id]

    def _token_table(self) -> list[str]:
        if self._id_to_token is None:
            table = [""] * VOCAB_SIZE
            for tok, i in self.vocab.items():
                table[i] = tok
            self._id_to_token = table
        return self._id_to_token

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def whole_word_id(self, word: str) -> int | None:
        """Id of ``word`` as one whole-word token (``word</w>``), or None if it has none."""
        return self.vocab.get(clean_text(word) + WORD_END)

    # -- analysis --------------------------------------------------------------------------
    def analyze(self, tag: str, *, underscores: bool = True) -> TagTokens:
        return self.analyze_batch([tag], underscores=underscores)[0]

    def analyze_batch(self, tags: Sequence[str], *, underscores: bool = True) -> list[TagTokens]:
        """Token split of each tag, normalised as a Danbooru tag (see ``normalize_tag``)."""
        texts = [clean_text(normalize_tag(t, underscores=underscores)) for t in tags]
        return self._analyze(tags, texts, self._ids_cleaned(texts))

    def analyze_ids(
        self, tags: Sequence[str], ids: Sequence[Sequence[int]], *, underscores: bool = True
    ) -> list[TagTokens]:
        """``analyze_batch`` for tags whose ids are already known (a cached vocabulary index
        holds them): the same result without tokenizing again."""
        texts = [clean_text(normalize_tag(t, underscores=underscores)) for t in tags]
        return self._analyze(tags, texts, ids)

    def _analyze(
        self, tags: Sequence[str], texts: Sequence[str], all_ids: Sequence[Sequence[int]]
    ) -> list[TagTokens]:
        table = self._token_table()
        ends = self._word_ends()
        words = self._words
        if len(words) > _WORD_CACHE_SIZE:
            words.clear()
        out = []
        for tag, text, ids in zip(tags, texts, all_ids):
            key = tuple(ids)
            pieces = tuple(map(table.__getitem__, key))
            out.append(
                TagTokens(
                    tag=tag,
                    text=text,
                    ids=key,
                    tokens=pieces,
                    words=_split_words(key, pieces, ends, words),
                )
            )
        return out

    def _word_ends(self) -> list[bool]:
        """For each id: does a word end with this token (``</w>`` pieces, special tokens)."""
        if self._ends is None:
            self._ends = [
                piece.endswith(WORD_END) or i >= BOS_ID
                for i, piece in enumerate(self._token_table())
            ]
        return self._ends


# Words recur across a vocabulary (88k distinct in 440k Danbooru tag words): share them.
_WORD_CACHE_SIZE = 200_000


def _split_words(
    ids: tuple[int, ...],
    pieces: tuple[str, ...],
    ends: list[bool],
    cache: dict[tuple[int, ...], Word],
) -> tuple[Word, ...]:
    # Every word's last piece, and only that one, carries </w>; special tokens stand alone.
    words = []
    start = 0
    for i, tid in enumerate(ids, 1):
        if ends[tid]:
            key = ids[start:i]
            word = cache.get(key)
            if word is None:
                word = Word(text=_pieces_text(pieces[start:i]), pieces=pieces[start:i], ids=key)
                cache[key] = word
            words.append(word)
            start = i
    return tuple(words)


def _pieces_text(pieces: tuple[str, ...]) -> str:
    joined = "".join(pieces)
    if joined.endswith(WORD_END):
        joined = joined[: -len(WORD_END)]
    if joined.isascii():
        return joined  # printable ASCII bytes map to themselves; special tokens are ASCII
    dec = _byte_decoder()
    return bytes(dec[ch] for ch in joined).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _SplitEncoding:
    """The parts of a ``tokenizers.Encoding`` tagsmith reads, offsets made absolute."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


def _tokenizer_json() -> str:
    path = resources.files("tagsmith") / "_data" / "clip_tokenizer.json"
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def load_tokenizer() -> ClipTokenizer:
    """The shared SD1.5 tokenizer (loaded once per process, ~0.1 s)."""
    return ClipTokenizer()


# -- tags as users write them -------------------------------------------------------------

_ESCAPED_PAREN = re.compile(r"\\([()\[\]])")

# tagcomplete's default "Underscore replacement exclusion list" (its setting
# tac_undersocreReplacementExclusionList, spelling theirs): these tags are inserted with their
# underscores; every other tag has every "_" turned into a space.
TAGCOMPLETE_UNDERSCORE_EXCLUSIONS = frozenset(
    "0_0,(o)_(o),+_+,+_-,._.,<o>_<o>,<|>_<|>,=_=,>_<,3_3,6_9,>_o,@_@,^_^,o_o,u_u,x_x,|_|,||_||".split(
        ","
    )
)


def normalize_tag(tag: str, *, underscores: bool = True) -> str:
    """A Danbooru-style tag as SD sees it: underscores to spaces, escapes made literal.

    ``mayonnaise_bottle`` -> ``mayonnaise bottle``; ``hijikata_toushirou_\\(gintama\\)`` ->
    ``hijikata toushirou (gintama)``. The emoticon tags in tagcomplete's default exclusion list
    (``^_^``, ``>_<``, ``o_o``, ``<o>_<o>`` ...) keep their underscores, as tagcomplete inserts
    them; other tags lose all of theirs (``t_t`` -> ``t t``, as tagcomplete does too). The list
    is matched case-insensitively, since CLIP lowercases anyway.
    """
    text = tag.strip()
    if "\\" in text:
        text = _ESCAPED_PAREN.sub(r"\1", text)
    if underscores and "_" in text and text.lower() not in TAGCOMPLETE_UNDERSCORE_EXCLUSIONS:
        text = text.replace("_", " ")
    return " ".join(text.split())  # str.split's whitespace is re's \s: collapse and strip


def iter_nonempty(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        if line.strip():
            yield line
