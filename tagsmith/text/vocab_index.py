"""A vocabulary with its token ids, cached on disk so a 140k-tag list loads in a blink.

Parsing the Danbooru list and tokenizing its 140k tags costs ~3 s; suggest runs often, so the
parsed and tokenized form is stored once per vocabulary file (keyed by its path, size and
modification time, and tagsmith's version) as a plain ``.npz`` of arrays (no pickle), written
atomically. Any damaged or stale entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagsmith import __version__
from tagsmith.fileio import atomic_write_bytes
from tagsmith.paths import resolve_cache_dir
from tagsmith.text.vocab import Vocabulary, problem_lines, read_vocabulary

_FORMAT_VERSION = 3  # 2: the bad rows' lines are kept; 3: tags merged case-insensitively


@dataclass
class VocabIndex:
    """Texts, counts, categories and token ids (CSR) of a vocabulary, in file order."""

    texts: list[str]
    counts: np.ndarray  # int64, -1 where unknown
    categories: np.ndarray  # int16, -1 where unknown
    indptr: np.ndarray  # int64, len(texts) + 1
    token_ids: np.ndarray  # int32, concatenated ids (no BOS/EOS)
    format: str = "plain"
    summary: str = ""
    problems: list[str] = field(default_factory=list)  # problem_lines() of the bad rows
    cache_file: Path | None = field(default=None, repr=False)  # where it is cached, if it is
    _row_of: dict[str, int] | None = field(default=None, repr=False)
    _by_token: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.texts)

    def ids(self, row: int) -> np.ndarray:
        return self.token_ids[self.indptr[row] : self.indptr[row + 1]]

    def row(self, text: str) -> int | None:
        if self._row_of is None:
            self._row_of = {t: i for i, t in enumerate(self.texts)}
        return self._row_of.get(text)

    def count(self, row: int) -> int | None:
        c = int(self.counts[row])
        return c if c >= 0 else None

    def rows_with_token(self, token_id: int, *, whole_word: bool = False) -> np.ndarray:
        """Rows whose ids contain ``token_id``, most frequent first.

        ``whole_word=True`` keeps only rows where the token is a word of its own (the token
        before it ends a word): ``tau</w>`` in ``tau`` but not in ``u|tau</w>`` (utau).
        """
        if self._by_token is None:
            rows = np.repeat(np.arange(len(self.texts)), np.diff(self.indptr))
            order = np.lexsort((-self.counts[rows], self.token_ids))
            self._by_token = (self.token_ids[order], order)
        sorted_ids, positions = self._by_token
        lo = np.searchsorted(sorted_ids, token_id, side="left")
        hi = np.searchsorted(sorted_ids, token_id, side="right")
        pos = positions[lo:hi]  # flat positions, most frequent row first
        rows = np.searchsorted(self.indptr, pos, side="right") - 1
        if whole_word:
            ends = _word_end_table()
            starts_word = (pos == self.indptr[rows]) | ends[self.token_ids[np.maximum(pos - 1, 0)]]
            rows = rows[starts_word]
        _, first = np.unique(rows, return_index=True)
        return rows[np.sort(first)]

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary) -> VocabIndex:
        from tagsmith.text.tokenizer import load_tokenizer

        texts = vocab.texts
        ids = load_tokenizer().encode_batch(texts)
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        indptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = np.fromiter((x for i in ids for x in i), dtype=np.int32, count=int(indptr[-1]))
        counts = np.array([-1 if e.count is None else e.count for e in vocab.entries],
                          dtype=np.int64)
        cats = np.array([-1 if e.category is None else e.category for e in vocab.entries],
                        dtype=np.int16)
        return cls(texts=texts, counts=counts, categories=cats, indptr=indptr, token_ids=flat,
                   format=vocab.format, summary=vocab.summary(),
                   problems=problem_lines(vocab.problems))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            version=np.array([_FORMAT_VERSION]),
            texts=np.frombuffer("\n".join(self.texts).encode("utf-8"), dtype=np.uint8),
            counts=self.counts,
            categories=self.categories,
            indptr=self.indptr,
            token_ids=self.token_ids,
            meta=np.frombuffer("\n".join([self.format, self.summary, *self.problems]).encode(),
                               dtype=np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> VocabIndex:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"][0]) != _FORMAT_VERSION:
                raise ValueError("old format")
            texts = z["texts"].tobytes().decode("utf-8").split("\n")
            fmt, summary, *problems = z["meta"].tobytes().decode("utf-8").split("\n")
            index = cls(
                texts=texts if texts != [""] else [],
                counts=z["counts"], categories=z["categories"], indptr=z["indptr"],
                token_ids=z["token_ids"], format=fmt, summary=summary, problems=problems,
            )
        if len(index.indptr) != len(index.texts) + 1 or len(index.counts) != len(index.texts):
            raise ValueError("inconsistent arrays")
        return index


_WORD_END: np.ndarray | None = None


def _word_end_table() -> np.ndarray:
    """For every token id, whether its piece ends a word (``</w>``)."""
    global _WORD_END
    if _WORD_END is None:
        from tagsmith.text.tokenizer import VOCAB_SIZE, WORD_END, load_tokenizer

        table = np.zeros(VOCAB_SIZE, dtype=bool)
        for piece, i in load_tokenizer().vocab.items():
            table[i] = piece.endswith(WORD_END)
        _WORD_END = table
    return _WORD_END


def load_vocab_index(
    path: str | Path, *, cache_dir: Path | None = None, use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
    vocabulary: Vocabulary | None = None,
) -> VocabIndex:
    """The vocabulary at ``path`` with token ids, from the cache when it is fresh
    (``vocabulary``: the file already read, used instead of reading it again on a miss).

    ``progress`` hears which of the two it is doing (building takes seconds for a big list).
    """
    p = Path(path)
    say = progress or (lambda message: None)
    if not use_cache or not p.is_file():
        say(f"reading the vocabulary {p.name} and tokenizing its tags")
        return VocabIndex.from_vocabulary(vocabulary or read_vocabulary(p))
    st = p.stat()
    key = hashlib.sha256(
        f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{__version__}".encode()
    ).hexdigest()[:24]
    cached = resolve_cache_dir(cache_dir) / "vocab" / f"{key}.npz"
    if cached.is_file():
        say(f"reading the vocabulary index of {p.name}")
        try:
            index = VocabIndex.from_file(cached)
            index.cache_file = cached
            return index
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
            pass  # damaged or stale: rebuild below
    say(f"building the vocabulary index of {p.name} (once per file, cached afterwards)")
    index = VocabIndex.from_vocabulary(vocabulary or read_vocabulary(p))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, index.to_bytes())
        index.cache_file = cached
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs speed
        pass
    return index


def vocabulary_token_ids(
    vocab: Vocabulary, *, cache_dir: Path | None = None, use_cache: bool = True
) -> list[list[int]] | None:
    """Token ids of every entry of ``vocab`` (read from a file), from the cached vocabulary
    index that suggest also uses: a repeat tokenizes nothing. None when ``vocab`` has no file or
    the index does not list the same texts (then callers tokenize)."""
    if vocab.path is None or not Path(vocab.path).is_file():
        return None
    index = load_vocab_index(vocab.path, cache_dir=cache_dir, use_cache=use_cache,
                             vocabulary=vocab)
    if index.texts != vocab.texts:
        return None
    flat = index.token_ids.tolist()
    bounds = index.indptr.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
