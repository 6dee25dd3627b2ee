"""Caption folders as kohya reads them: tag statistics, token budgets, entangled tags.

A dataset is a folder of images with a caption file beside each one (``img.png`` +
``img.txt`` or ``img.caption``), searched recursively. What kohya's sd-scripts does with it,
and what this module therefore assumes:

* A folder named ``N_name`` (``10_mychar``) repeats its images N times per epoch; the repeat
  count applies to everything below it (the nearest such folder wins), and images outside any
  repeat folder count once. An image's caption weighs ``repeats`` in every statistic that is
  about what training sees: tag share per epoch, pair statistics, shuffled truncation rates.
  Counts of captions stay unweighted, and minimum supports are counted in captions, because a
  pair seen in two images is two observations however often they repeat.
* kohya reads only the **first line** of a caption file, as UTF-8, strips it, and (with
  ``shuffle_caption``) splits it at commas, keeps the first ``keep_tokens`` tags in place and
  shuffles the rest, joining them with ``", "``. It tokenizes that text as written
  (underscores stay underscores) and cuts it after 75 tokens. Statistics here use the first
  line; later lines are reported, not counted.
* A ``.txt``/``.caption`` file without an image beside it is not a caption (kohya never reads
  it, and it may be someone's notes): it is listed as an orphan and left out of statistics and
  out of retagging. When both ``img.txt`` and ``img.caption`` exist, ``.txt`` is used.
* Hidden folders (``.git``, tagsmith's own ``.tagsmith-backup``) are skipped.

Tags are compared in their analysed form (``clean_text(normalize_tag(...))``): A1111 weight
syntax around the tag removed, underscores as spaces, ``\\(`` as ``(``, lowercased, so
``Red_Hair`` and ``(red hair:1.2)`` are one tag.

Files are decoded as UTF-8, UTF-8 with BOM, UTF-16/32 with BOM, BOM-less UTF-16 (detected by
its zero bytes), CP1252, and Latin-1 as the last resort; the encoding and BOM are kept per
file so that ``tagsmith.captions.retag`` can write each file back the way it was.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NamedTuple

from tagsmith.errors import DatasetError
from tagsmith.text.tokenizer import CHUNK_LENGTH, clean_text, load_tokenizer, normalize_tag

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif", ".jxl"})
CAPTION_EXTENSIONS = (".txt", ".caption")  # in order of preference for one image
BACKUP_DIR_NAME = ".tagsmith-backup"

DEFAULT_MIN_SCORE = 0.3
DEFAULT_MAX_Q = 0.05
EMBED_BASELINE_TAGS = 200  # most frequent tags whose pairwise similarity calibrates "close"
COLLISION_PERCENTILE = 95.0
MAX_CLUSTER_NODES = 400

_REPEAT_FOLDER = re.compile(r"^(\d+)(?:_(.*))?$", re.S)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # Python's universal newlines, as kohya's readlines
_SEPARATOR = re.compile(r",|\r\n|\r|\n")
_SYNTAX_CHARS = re.compile(r"[()\[\]]")
_WEIGHT_SUFFIX = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


# -- encodings ------------------------------------------------------------------------------

_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


@dataclass(frozen=True)
class DecodedText:
    """A caption file's text and how to write it back byte for byte."""

    text: str
    encoding: str  # a Python codec name, BOM not included
    bom: bytes = b""

    @property
    def label(self) -> str:
        names = {
            "utf-8": "UTF-8", "utf-16-le": "UTF-16 LE", "utf-16-be": "UTF-16 BE",
            "utf-32-le": "UTF-32 LE", "utf-32-be": "UTF-32 BE", "cp1252": "CP1252",
            "latin-1": "Latin-1",
        }
        name = names.get(self.encoding, self.encoding)
        return f"{name} with BOM" if self.bom else name

    def encode(self, text: str) -> bytes:
        return self.bom + text.encode(self.encoding)


def decode_caption_bytes(data: bytes) -> DecodedText:
    """Decode a caption file, recognising BOMs, BOM-less UTF-16, UTF-8, CP1252 and Latin-1."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return DecodedText(data[len(bom):].decode(codec), codec, bom)
            except UnicodeDecodeError:
                break  # a BOM followed by garbage: fall through to the byte-level guesses
    if b"\x00" in data and len(data) % 2 == 0:
        # Mostly-ASCII UTF-16 without a BOM has a zero byte in every other position.
        odd_zeros = data[1::2].count(0)
        even_zeros = data[0::2].count(0)
        half = len(data) // 2
        for codec, zeros in (("utf-16-le", odd_zeros), ("utf-16-be", even_zeros)):
            if zeros >= half * 0.6:
                try:
                    return DecodedText(data.decode(codec), codec)
                except UnicodeDecodeError:
                    pass
    try:
        return DecodedText(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return DecodedText(data.decode("cp1252"), "cp1252")
    except UnicodeDecodeError:
        # CP1252 leaves five bytes undefined; Latin-1 maps every byte, so this cannot fail.
        return DecodedText(data.decode("latin-1"), "latin-1")


def detect_newline(text: str) -> str:
    """The file's line ending: the first one used, or "" for a single line without one."""
    m = _LINE_BREAK.search(text)
    return m.group(0) if m else ""


# -- tags inside a caption -----------------------------------------------------------------


class CaptionTag(NamedTuple):
    """One comma- or line-separated tag of a caption file and where it sits in the text.

    (A named tuple: a big dataset has a million of them, and tuples are built 5x faster.)
    """

    text: str  # as written, A1111 syntax around it removed: "mayonnaise_bottle"
    key: str  # analysed form used for statistics and matching: "mayonnaise bottle"
    start: int  # span of ``text`` in the decoded file text
    end: int
    seg_start: int  # span between the separators around it, whitespace and syntax included
    seg_end: int
    line: int  # 0-based line of the file
    weighted: bool = False  # wrapped in (), [] or (…:1.2), or part of such a group

    @property
    def is_empty(self) -> bool:
        return not self.key


def _escaped_positions(s: str) -> set[int]:
    out: set[int] = set()
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.add(i + 1)
            i += 2
            continue
        i += 1
    return out


def _bracket_matches(s: str, escaped: set[int]) -> dict[int, int | None]:
    """For every unescaped bracket, the index of its partner (None when it has none)."""
    out: dict[int, int | None] = {}
    stacks: dict[str, list[int]] = {"(": [], "[": []}
    opener = {")": "(", "]": "["}
    for i, ch in enumerate(s):
        if i in escaped or ch == "\\":
            continue
        if ch in stacks:
            stacks[ch].append(i)
            out[i] = None
        elif ch in opener:
            stack = stacks[opener[ch]]
            if stack:
                j = stack.pop()
                out[j], out[i] = i, j
            else:
                out[i] = None
    return out


def _peel_syntax(s: str) -> tuple[int, int, bool]:
    """Span of the tag inside one stripped segment, without A1111 weight syntax around it.

    Handles ``(tag)``, ``[tag]``, ``(tag:1.2)``, nesting, and a group split by commas
    (``(red hair`` … ``blue eyes:1.2)``). Escaped brackets are literal, and a segment without
    a letter or digit (``:)``, ``>_<``) is an emoticon tag and is kept whole.
    """
    i, j = 0, len(s)
    if not _SYNTAX_CHARS.search(s) or not any(ch.isalnum() for ch in s):
        return i, j, False
    escaped = _escaped_positions(s)
    match = _bracket_matches(s, escaped)
    weighted = False

    def trim(a: int, b: int) -> tuple[int, int]:
        while a < b and s[a].isspace():
            a += 1
        while b > a and s[b - 1].isspace():
            b -= 1
        return a, b

    def drop_weight(a: int, b: int) -> int:
        m = _WEIGHT_SUFFIX.search(s, a, b)
        if m and m.end() == b and s[a : m.start()].strip():
            return m.start()
        return b

    while j - i >= 2:
        first, last = s[i], s[j - 1]
        if first in "([" and i not in escaped and match.get(i) == j - 1:
            i, j = i + 1, j - 1
            if first == "(":
                j = drop_weight(i, j)
        elif first in "([" and i not in escaped and i in match and match[i] is None:
            i += 1
        elif last in ")]" and (j - 1) not in escaped and (j - 1) in match and match[j - 1] is None:
            j -= 1
            if last == ")":
                j = drop_weight(i, j)
        else:
            break
        weighted = True
        i, j = trim(i, j)
    return i, j, weighted


@lru_cache(maxsize=1 << 16)
def _cleaned(text: str) -> str:
    return clean_text(text)


@lru_cache(maxsize=1 << 16)
def tag_key(text: str) -> str:
    """The analysed form of a tag as written (no syntax around it): what statistics compare."""
    return clean_text(normalize_tag(text))


def parse_caption_text(text: str) -> list[CaptionTag]:
    """Every tag of a caption file in order, empty ones (``a,,b``, a trailing comma) included.

    Tags are separated by commas and line breaks; whatever lies between them (spaces, weight
    syntax) is kept out of the tag's span so that a rewrite can leave it untouched.
    """
    out: list[CaptionTag] = []
    pos = 0
    line = 0
    for m in _SEPARATOR.finditer(text):
        out.append(_segment_tag(text, pos, m.start(), line))
        if m.group(0) != ",":
            line += 1
        pos = m.end()
    out.append(_segment_tag(text, pos, len(text), line))
    return out


def _segment_tag(text: str, seg_start: int, seg_end: int, line: int) -> CaptionTag:
    seg = text[seg_start:seg_end]
    body = seg.strip()
    if not body:
        return CaptionTag("", "", seg_start, seg_start, seg_start, seg_end, line, False)
    lead = seg.find(body[0])  # everything before the body is whitespace
    if _SYNTAX_CHARS.search(body) is None:  # the common case: no brackets to peel
        start = seg_start + lead
        return CaptionTag(
            body, tag_key(body), start, start + len(body), seg_start, seg_end, line, False
        )
    a, b, weighted = _peel_syntax(body)
    core = body[a:b]
    start = seg_start + lead + a
    return CaptionTag(
        core, tag_key(core) if core else "", start, start + len(core), seg_start, seg_end, line,
        weighted,
    )


def kohya_parts(text: str) -> list[str]:
    """The comma-separated pieces kohya shuffles: first line, stripped, split, each stripped."""
    first = _LINE_BREAK.split(text, maxsplit=1)[0].strip()
    return [t.strip() for t in first.split(",")]


# -- finding captions ----------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionFile:
    """A caption file that belongs to at least one image."""

    path: Path
    rel: str  # POSIX path relative to the dataset root
    images: tuple[str, ...]  # images (relative) that share this caption: img.png and img.jpg
    repeats: int  # from the nearest N_name folder, 1 outside any
    repeat_folder: str  # relative path of that folder ("" when none)

    @property
    def weight(self) -> int:
        """Times per epoch training sees this caption."""
        return self.repeats * len(self.images)


@dataclass
class DatasetFiles:
    root: Path
    captions: list[CaptionFile] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # caption-like files with no image
    uncaptioned_images: list[str] = field(default_factory=list)
    # img.caption beside img.txt: not read for statistics, still rewritten by retag
    shadowed: list[CaptionFile] = field(default_factory=list)
    repeat_folders: dict[str, int] = field(default_factory=dict)  # rel folder -> repeats


def _repeats_of(name: str) -> int | None:
    m = _REPEAT_FOLDER.match(name)
    return int(m.group(1)) if m else None


def find_caption_files(root: str | Path) -> DatasetFiles:
    """Caption files beside images under ``root``, recursively, with their repeat counts."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root} does not exist.")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give the folder that holds the images.")
    found = DatasetFiles(root=root)
    own = _repeats_of(root.resolve().name)
    if own is not None:
        found.repeat_folders["."] = own

    def walk_error(exc: OSError) -> None:
        raise DatasetError(f"Cannot read {exc.filename}: {exc.strerror or exc}.")

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        if rel_dir != ".":
            reps = _repeats_of(here.name)
            if reps is not None:
                found.repeat_folders[rel_dir] = reps
        repeats, folder = _nearest_repeats(rel_dir, found.repeat_folders)
        images: dict[str, list[str]] = {}
        captions: dict[str, dict[str, str]] = {}
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            low = ext.lower()
            if name.startswith("."):
                continue  # editor and tagsmith temporary files, macOS ._ resource forks
            if low in IMAGE_EXTENSIONS:
                images.setdefault(stem, []).append(name)
            elif low in CAPTION_EXTENSIONS:
                captions.setdefault(stem, {})[low] = name
        for stem, by_ext in captions.items():
            chosen = next(by_ext[e] for e in CAPTION_EXTENSIONS if e in by_ext)
            if stem not in images:
                found.orphans.extend(_join(rel_dir, n) for n in by_ext.values())
                continue
            for name in by_ext.values():
                cf = CaptionFile(
                    path=here / name, rel=_join(rel_dir, name),
                    images=tuple(_join(rel_dir, n) for n in images[stem]),
                    repeats=repeats, repeat_folder=folder,
                )
                (found.captions if name == chosen else found.shadowed).append(cf)
        for stem, names in images.items():
            if stem not in captions:
                found.uncaptioned_images.extend(_join(rel_dir, n) for n in names)
    found.captions.sort(key=lambda c: c.rel)
    found.shadowed.sort(key=lambda c: c.rel)
    return found


def _join(rel_dir: str, name: str) -> str:
    return name if rel_dir == "." else f"{rel_dir}/{name}"


def _nearest_repeats(rel_dir: str, folders: dict[str, int]) -> tuple[int, str]:
    parts = [] if rel_dir == "." else rel_dir.split("/")
    for k in range(len(parts), 0, -1):
        key = "/".join(parts[:k])
        if key in folders:
            return folders[key], key
    if "." in folders:
        return folders["."], "."
    return 1, ""


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    """A caption file read and parsed."""

    file: CaptionFile
    decoded: DecodedText
    tags: tuple[CaptionTag, ...]  # all lines, empty entries included

    @property
    def text(self) -> str:
        return self.decoded.text

    @cached_property
    def first_line_tags(self) -> list[CaptionTag]:
        """The tags kohya trains on (the first line), without empty entries."""
        return [t for t in self.tags if t.line == 0 and t.key]

    @cached_property
    def first_line(self) -> str:
        """The text kohya trains on: the first line, stripped."""
        return _LINE_BREAK.split(self.text, maxsplit=1)[0].strip()

    @cached_property
    def parts(self) -> list[str]:
        """The comma-separated pieces kohya shuffles (see ``kohya_parts``)."""
        return [t.strip() for t in self.first_line.split(",")]

    @cached_property
    def n_lines(self) -> int:
        return sum(1 for ln in _LINE_BREAK.split(self.text) if ln.strip())


@dataclass
class Dataset:
    files: DatasetFiles
    captions: list[Caption]

    @property
    def root(self) -> Path:
        return self.files.root


def read_caption(file: CaptionFile) -> Caption:
    try:
        data = file.path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read {file.path}: {exc.strerror or exc}.") from exc
    decoded = decode_caption_bytes(data)
    return Caption(file=file, decoded=decoded, tags=tuple(parse_caption_text(decoded.text)))


def load_dataset(root: str | Path) -> Dataset:
    """Find and read every caption under ``root``; refuse a folder with none."""
    files = find_caption_files(root)
    if not files.captions:
        hint = ""
        if files.orphans:
            k = len(files.orphans)
            hint = (
                f"; {k} .txt/.caption file{'s have' if k != 1 else ' has'} no image beside "
                f"{'them' if k != 1 else 'it'} (e.g. {files.orphans[0]}), so "
                f"{'they are not captions' if k != 1 else 'it is not a caption'}"
            )
        raise DatasetError(
            f"{files.root} holds no caption files beside images (.txt or .caption next to "
            f".png/.jpg/.jpeg/.webp/.bmp){hint}."
        )
    return Dataset(files=files, captions=[read_caption(f) for f in files.captions])


# -- co-occurrence -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStat:
    """Two tags and how much more often they appear together than chance would have it.

    ``together``, ``count_a`` and ``count_b`` count captions; the probabilities behind
    ``npmi``, ``lift``, ``phi`` and the conditionals are weighted by repeats. ``score`` is NPMI
    times Pantel and Lin's discount ``c/(c+1) * m/(m+1)`` (c = captions together, m = captions
    of the rarer tag), so that a pair seen in a handful of captions cannot outrank a pair that
    is as exclusive but seen in most of them. ``p_value`` is the one-sided hypergeometric
    (Fisher) probability of seeing the pair this often by chance, from caption counts;
    ``q_value`` is that p-value adjusted (Benjamini-Hochberg) over every pair tested.
    """

    a: str
    b: str
    together: int
    count_a: int
    count_b: int
    npmi: float
    lift: float
    phi: float
    p_b_given_a: float
    p_a_given_b: float
    score: float
    p_value: float = 1.0
    q_value: float = 1.0

    def to_dict(self) -> dict:
        out: dict = {}
        for k, v in asdict(self).items():
            if k in ("p_value", "q_value"):
                out[k] = float(f"{v:.3g}")
            else:
                out[k] = round(v, 4) if isinstance(v, float) else v
        return out


@dataclass
class Cooccurrence:
    """Caption x tag incidence with weights, ready for pair statistics."""

    tags: list[str]  # column order
    index: dict[str, int]
    matrix: object  # scipy.sparse.csr_matrix (captions x tags), 1 where a caption has a tag
    weights: object  # numpy array, repeats x images per caption
    counts: object  # captions per tag (numpy int array)
    weighted_counts: object  # repeats-weighted presence per tag

    @property
    def n_captions(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def total_weight(self) -> float:
        return float(self.weights.sum())

    def pair(self, a: str, b: str) -> PairStat | None:
        if a not in self.index or b not in self.index:
            return None
        ia, ib = self.index[a], self.index[b]
        col_a = self.matrix[:, ia].toarray().ravel()
        col_b = self.matrix[:, ib].toarray().ravel()
        both = col_a * col_b
        return pair_stat(
            a, b, int(both.sum()), int(self.counts[ia]), int(self.counts[ib]),
            float((both * self.weights).sum()), float(self.weighted_counts[ia]),
            float(self.weighted_counts[ib]), self.total_weight,
        )


def build_cooccurrence(tag_sets: Sequence[Iterable[str]], weights: Sequence[float]) -> Cooccurrence:
    import numpy as np
    from scipy import sparse

    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for r, tags in enumerate(tag_sets):
        for t in dict.fromkeys(tags):  # first-seen order keeps results reproducible
            rows.append(r)
            cols.append(index.setdefault(t, len(index)))
    x = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(tag_sets), len(index))
    )
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:  # every repeat folder is 0_name: fall back to counting captions once
        w = np.ones(len(tag_sets))
    return Cooccurrence(
        tags=list(index), index=index, matrix=x, weights=w,
        counts=np.asarray(x.sum(axis=0)).ravel(),
        weighted_counts=np.asarray(x.T @ w).ravel(),
    )


def pair_stat(
    a: str, b: str, together: int, count_a: int, count_b: int,
    w_ab: float, w_a: float, w_b: float, w_total: float,
    *, p_value: float = 1.0, q_value: float = 1.0,
) -> PairStat:
    """Association of two tags from caption counts (support) and weighted presence (strength)."""
    p_ab, p_a, p_b = w_ab / w_total, w_a / w_total, w_b / w_total
    npmi_a, lift_a, phi_a = _association(p_ab, p_a, p_b)
    npmi, lift, phi = float(npmi_a), float(lift_a), float(phi_a)
    rarer = min(count_a, count_b)
    discount = together / (together + 1) * rarer / (rarer + 1)
    return PairStat(
        a=a, b=b, together=together, count_a=count_a, count_b=count_b, npmi=npmi, lift=lift,
        phi=phi, p_b_given_a=p_ab / p_a if p_a else 0.0, p_a_given_b=p_ab / p_b if p_b else 0.0,
        score=npmi * discount, p_value=p_value, q_value=q_value,
    )


def default_min_support(n_captions: int) -> int:
    """Captions a pair needs before it is ranked: 3, or 1% of the captions when that is more."""
    return max(3, math.ceil(0.01 * n_captions))


def strong_pairs(
    co: Cooccurrence,
    *,
    min_support: int,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
) -> list[PairStat]:
    """Pairs that co-occur far above chance, best first (ties: more captions together first).

    A pair qualifies when it is seen together in at least ``min_support`` captions, its
    ``score`` is at least ``min_score``, and its ``q_value`` is at most ``max_q`` (the
    Benjamini-Hochberg false discovery rate over all pairs that met the support): in a small
    dataset with many tags, some pairs look exclusive by luck alone, and the test removes
    them. Tags in every caption are left out: they co-occur with everything, which says
    nothing about any pair (see ``always_present``).
    """
    import numpy as np

    n = co.n_captions
    keep = np.flatnonzero((co.counts >= min_support) & (co.counts < n))
    if len(keep) < 2:
        return []
    x = co.matrix[:, keep].tocsc().astype(np.float64)
    together = sparse_upper(x.T @ x, min_support)
    if not len(together[0]):
        return []
    weighted = (x.T @ x.multiply(co.weights[:, None]).tocsc()).tocsr()
    rows, cols, counts = together
    ia, ib = keep[rows], keep[cols]
    ca, cb = co.counts[ia], co.counts[ib]
    # P(X >= together) for X ~ Hypergeometric(captions, count_a, count_b).
    p_values = hypergeom_tail(counts, n, ca, cb)
    q_values = benjamini_hochberg(p_values)
    w_ab = np.asarray(weighted[rows, cols]).ravel()
    total = co.total_weight
    npmi, _, _ = _association(
        w_ab / total, co.weighted_counts[ia] / total, co.weighted_counts[ib] / total
    )
    rarer = np.minimum(ca, cb)
    score = npmi * counts / (counts + 1) * rarer / (rarer + 1)
    out: list[PairStat] = []
    for k in np.flatnonzero((score >= min_score) & (q_values <= max_q)):
        a, b, xa, xb = co.tags[ia[k]], co.tags[ib[k]], ia[k], ib[k]
        if b < a:
            a, b, xa, xb = b, a, xb, xa
        out.append(pair_stat(
            a, b, int(counts[k]), int(co.counts[xa]), int(co.counts[xb]), float(w_ab[k]),
            float(co.weighted_counts[xa]), float(co.weighted_counts[xb]), total,
            p_value=float(p_values[k]), q_value=float(q_values[k]),
        ))
    out.sort(key=lambda s: (-s.score, -s.together, s.a, s.b))
    return out


def _association(p_ab, p_a, p_b):  # noqa: ANN001, ANN202 - numpy arrays in, arrays out
    """NPMI, lift and phi of 2x2 tables given by their joint and marginal probabilities.

    NPMI is -1 for pairs never together and 0 for pairs together in every caption (no
    evidence either way), as is phi when a tag is in every caption or none.
    """
    import numpy as np

    p_ab, p_a, p_b = (np.asarray(x, dtype=np.float64) for x in (p_ab, p_a, p_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(p_ab > 0, p_ab / (p_a * p_b), 0.0)
        inner = (p_ab > 0) & (p_ab < 1)
        npmi = np.where(inner, np.log(np.where(inner, lift, 1.0)) / -np.log(
            np.where(inner, p_ab, 0.5)), np.where(p_ab <= 0, -1.0, 0.0))
        lift = np.where(p_ab >= 1, 1.0, lift)
        var = p_a * (1 - p_a) * p_b * (1 - p_b)
        phi = np.where(var > 0, (p_ab - p_a * p_b) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return npmi, lift, phi


def hypergeom_tail(k, n: int, ka, kb):  # noqa: ANN001, ANN201 - numpy arrays
    """P(X >= k) for X ~ Hypergeometric(n items, ka marked, kb drawn), elementwise.

    Summed term by term from k away from the mode (the upper tail when k is above the mode,
    else one minus the lower tail), so that every sum is of terms that shrink geometrically and
    stops once they no longer change it; each term comes from a log-factorial table. Exact to
    rounding, and without importing scipy.stats (over a second at start-up).
    """
    import numpy as np

    k, ka, kb = (np.asarray(a, dtype=np.int64) for a in (k, ka, kb))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])

    def log_pmf(x, a, b):  # noqa: ANN001, ANN202
        return (
            log_fact[a] - log_fact[x] - log_fact[a - x]
            + log_fact[n - a] - log_fact[b - x] - log_fact[n - a - b + x]
            - log_fact[n] + log_fact[b] + log_fact[n - b]
        )

    lo = np.maximum(0, ka + kb - n)
    hi = np.minimum(ka, kb)
    mode = np.floor((ka + 1) * (kb + 1) / (n + 2)).astype(np.int64)
    upper = k > mode  # sum k..hi; else 1 - sum lo..k-1, summed from k-1 downwards
    x = np.where(upper, k, k - 1)
    stop = np.where(upper, hi, lo)
    step = np.where(upper, 1, -1)
    total = np.zeros(len(k))
    active = (x >= lo) & (x <= hi)
    while active.any():
        idx = np.flatnonzero(active)
        term = np.exp(log_pmf(x[idx], ka[idx], kb[idx]))
        total[idx] += term
        done = (x[idx] == stop[idx]) | (term <= total[idx] * 1e-17)
        x[idx] += step[idx]
        active[idx[done]] = False
    return np.clip(np.where(upper, total, 1.0 - total), 0.0, 1.0)


def sparse_upper(m, min_value: float) -> tuple:  # noqa: ANN001 - scipy sparse matrix
    """(rows, cols, values) of the strict upper triangle of ``m`` with values >= min_value."""
    import numpy as np

    coo = m.tocoo()
    mask = (coo.row < coo.col) & (coo.data >= min_value)
    return coo.row[mask], coo.col[mask], np.rint(coo.data[mask]).astype(np.int64)


def benjamini_hochberg(p_values) -> object:  # noqa: ANN001 - numpy array in and out
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order."""
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(ranked, 1.0)
    return q


def always_present(co: Cooccurrence) -> list[str]:
    """Tags in every caption (a trigger word, usually): entangled with the whole dataset."""
    return sorted(t for t, c in zip(co.tags, co.counts) if c == co.n_captions)


# -- clusters ------------------------------------------------------------------------------


@dataclass
class ClusterEmbedding:
    """How close a cluster's tags sit in the text encoder, against the dataset's own tags."""

    mean_cosine: float
    pairs: list[tuple[str, str, float, float | None]]  # a, b, cosine, percentile (or None)
    close_pairs: list[tuple[str, str]]  # at or above the COLLISION_PERCENTILE of dataset pairs

    @property
    def collision(self) -> bool:
        return bool(self.close_pairs)

    def to_dict(self) -> dict:
        return {
            "mean_cosine": round(self.mean_cosine, 4),
            "pairs": [
                {"a": a, "b": b, "cosine": round(c, 4),
                 "percentile": None if p is None else round(p, 1)}
                for a, b, c, p in self.pairs
            ],
            "close_pairs": [list(p) for p in self.close_pairs],
            "collision": self.collision,
        }


@dataclass
class TagCluster:
    tags: list[str]  # most frequent first
    mean_score: float  # average pair score inside the cluster
    together: int  # captions holding every tag of the cluster
    any_of: int  # captions holding at least one
    pairs: list[PairStat]  # its strong pairs
    embedding: ClusterEmbedding | None = None

    def to_dict(self) -> dict:
        return {
            "tags": self.tags,
            "mean_score": round(self.mean_score, 4),
            "together": self.together,
            "any_of": self.any_of,
            "pairs": [p.to_dict() for p in self.pairs],
            "embedding": None if self.embedding is None else self.embedding.to_dict(),
        }


def cluster_tags(
    co: Cooccurrence, pairs: Sequence[PairStat], *, min_score: float = DEFAULT_MIN_SCORE
) -> list[TagCluster]:
    """Average-linkage clusters over the strong pairs: merge while the mean score between two
    clusters (0 for pairs that are not strong) stays at or above ``min_score``.

    Average linkage rather than connected components, so that one tag shared by two groups
    (``1girl`` with a character and with an outfit) does not chain them into one.
    """
    import numpy as np

    nodes: list[str] = []
    seen: set[str] = set()
    for p in pairs:  # strongest first, so a cap keeps the pairs that matter most
        for t in (p.a, p.b):
            if t not in seen and len(nodes) < MAX_CLUSTER_NODES:
                seen.add(t)
                nodes.append(t)
    if len(nodes) < 2:
        return []
    pos = {t: i for i, t in enumerate(nodes)}
    sim = np.zeros((len(nodes), len(nodes)))
    for p in pairs:
        if p.a in pos and p.b in pos:
            sim[pos[p.a], pos[p.b]] = sim[pos[p.b], pos[p.a]] = p.score
    np.fill_diagonal(sim, -np.inf)
    members: list[list[int] | None] = [[i] for i in range(len(nodes))]
    active = np.ones(len(nodes), dtype=bool)
    while True:
        masked = np.where(np.outer(active, active), sim, -np.inf)
        flat = int(np.argmax(masked))
        i, j = divmod(flat, len(nodes))
        if masked[i, j] < min_score:
            break
        ni, nj = len(members[i]), len(members[j])
        # Lance-Williams update for average linkage.
        merged = (ni * sim[i] + nj * sim[j]) / (ni + nj)
        sim[i, :] = merged
        sim[:, i] = merged
        sim[i, i] = -np.inf
        sim[j, :] = -np.inf
        sim[:, j] = -np.inf
        members[i] = members[i] + members[j]
        members[j] = None
        active[j] = False
    by_pair = {(p.a, p.b): p for p in pairs}
    out: list[TagCluster] = []
    for group in members:
        if group is None or len(group) < 2:
            continue
        tags = [nodes[k] for k in group]
        tags.sort(key=lambda t: (-int(co.counts[co.index[t]]), t))
        inner = [
            by_pair[(min(a, b), max(a, b))]
            for k, a in enumerate(tags) for b in tags[k + 1:]
            if (min(a, b), max(a, b)) in by_pair
        ]
        n_pairs = len(tags) * (len(tags) - 1) / 2
        cols = co.matrix[:, [co.index[t] for t in tags]]
        per_caption = np.asarray(cols.sum(axis=1)).ravel()
        out.append(
            TagCluster(
                tags=tags,
                mean_score=sum(p.score for p in inner) / n_pairs,
                together=int((per_caption == len(tags)).sum()),
                any_of=int((per_caption > 0).sum()),
                pairs=sorted(inner, key=lambda s: (-s.score, -s.together)),
            )
        )
    out.sort(key=lambda c: (-c.mean_score * math.sqrt(len(c.tags)), -c.together, c.tags))
    return out


def attach_embeddings(
    clusters: Sequence[TagCluster],
    frequent_tags: Sequence[str],
    embed: Callable[[list[str]], object | None],
) -> None:
    """Fill ``cluster.embedding``: cosine of every pair inside each cluster, and its percentile
    among all pairs of the dataset's most frequent tags (the baseline that says what "close"
    means for this encoder, whose states are all fairly similar to each other). Tags are
    embedded in their analysed form (``red hair``, not ``red_hair``), as a prompt writes them."""
    import numpy as np

    texts: list[str] = []
    pos: dict[str, int] = {}
    for t in list(frequent_tags[:EMBED_BASELINE_TAGS]) + [t for c in clusters for t in c.tags]:
        if t not in pos:
            pos[t] = len(texts)
            texts.append(t)
    if not texts:
        return
    raw = embed(texts)
    if raw is None:  # the caller could not open a model: no embedding column
        return
    vectors = np.asarray(raw, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    base_idx = [pos[t] for t in frequent_tags[:EMBED_BASELINE_TAGS]]
    baseline = None
    if len(base_idx) >= 10:
        b = unit[base_idx] @ unit[base_idx].T
        baseline = np.sort(b[np.triu_indices(len(base_idx), k=1)])
    for c in clusters:
        rows: list[tuple[str, str, float, float | None]] = []
        close: list[tuple[str, str]] = []
        for k, a in enumerate(c.tags):
            for bt in c.tags[k + 1:]:
                cos = float(unit[pos[a]] @ unit[pos[bt]])
                pct = None
                if baseline is not None:
                    pct = 100.0 * np.searchsorted(baseline, cos, side="right") / len(baseline)
                    if pct >= COLLISION_PERCENTILE:
                        close.append((a, bt))
                rows.append((a, bt, cos, pct))
        rows.sort(key=lambda r: -r[2])
        c.embedding = ClusterEmbedding(
            mean_cosine=sum(r[2] for r in rows) / len(rows), pairs=rows, close_pairs=close
        )


# -- tokens and truncation -----------------------------------------------------------------


def shuffled_cut_probabilities(
    fixed_lengths: Sequence[int], flex_lengths: Sequence[int], limit: int = CHUNK_LENGTH,
) -> list[float]:
    """For each shuffled tag, the probability that kohya's shuffle puts any of its tokens past
    ``limit`` (see ``shuffled_cut_batch``)."""
    return shuffled_cut_batch([(list(fixed_lengths), list(flex_lengths))], limit)[0]


def shuffled_cut_batch(
    captions: Sequence[tuple[Sequence[int], Sequence[int]]], limit: int = CHUNK_LENGTH,
) -> list[list[float]]:
    """Exact cut probabilities for many captions, each given as (token lengths of the fixed
    ``keep_tokens`` tags, token lengths of the shuffled tags).

    kohya trains on ``", ".join(fixed + shuffled(flex))``: every tag but the last is followed
    by one comma token (a tag ending in punctuation can merge with that comma into one token;
    ignored here). A shuffled tag of length n is cut when the tags shuffled ahead of it add up
    to more than ``limit - fixed - n`` tokens (each with its comma).

    Uniform shuffling is the same as giving every tag an independent uniform arrival time:
    given a tag's own time x, each other tag is ahead of it with probability x,
    independently. So P(cut) = integral over x in [0, 1] of P(sum of the Bernoulli(x)-chosen
    other tags > threshold). For fixed x, that sum's distribution is given by its generating
    function prod_i (1 - x + x z^w_i) at the roots of unity (discrete Fourier inversion, see
    ``_cut_odds_chunk``); the integrand is a polynomial of degree k in x (k = other tags), so
    Gauss-Legendre quadrature with more than k/2 nodes integrates it exactly. Captions are
    processed in vectorised chunks, one row per (caption, distinct tag length).
    """
    by_length: list[dict[int, float]] = [{} for _ in captions]  # tag length -> P(cut)
    rows: list[tuple[int, int, int]] = []  # (caption, removed step, threshold)
    for c, (fixed, flex) in enumerate(captions):
        fixed_tokens = sum(n + 1 for n in fixed)  # each fixed tag is followed by a comma
        if not flex or fixed_tokens + sum(n + 1 for n in flex) - 1 <= limit:
            continue  # the whole caption fits: nothing is ever cut
        for n in {n for n in flex if n > 0}:
            threshold = limit - fixed_tokens - n
            if threshold < 0:
                by_length[c][n] = 1.0
            else:
                rows.append((c, n + 1, threshold))
    steps = [[n + 1 for n in flex] for _, flex in captions]
    top = [sum(s) for s in steps]
    rows.sort(key=lambda r: (top[r[0]], len(steps[r[0]])))
    start = 0
    while start < len(rows):
        # Chunks of captions of similar size keep the arrays near a million numbers.
        first = rows[start]
        size = top[first[0]] + 1
        n_nodes = len(steps[first[0]]) // 2 + 1
        end = start + 1
        while end < len(rows):
            c = rows[end][0]
            grown_size = max(size, top[c] + 1)
            grown_nodes = max(n_nodes, len(steps[c]) // 2 + 1)
            if (end - start + 1) * (grown_size // 2 + 1) * (grown_nodes + 1) > 1_000_000:
                break
            size, n_nodes = grown_size, grown_nodes
            end += 1
        probs = _cut_odds_chunk(rows[start:end], steps, size, n_nodes + n_nodes % 2)
        for (c, step, _), prob in zip(rows[start:end], probs):
            by_length[c][step - 1] = prob
        start = end
    return [[odds.get(n, 0.0) for n in flex] for odds, (_, flex) in zip(by_length, captions)]


def _cut_odds_chunk(rows, steps, size: int, n_nodes: int) -> list[float]:  # noqa: ANN001
    """P(cut) for rows of (caption, removed step, threshold); ``size`` > every sum of steps
    (so that no sum wraps around the roots of unity).

    Per caption, the generating function G(z) = prod_i (1 - x + x z^w_i) at the roots of
    unity; per row, one factor divided out and P(sum <= t) read directly off the spectrum as
    Re sum_j G_j D_j(t) / size with D_j(t) = sum_{s<=t} e^{2 pi i j s / size}. The sum's
    distribution is real, so half the spectrum suffices (the other half is its conjugate).
    """
    import numpy as np

    x, quad = _gauss_legendre_01(n_nodes)  # an even count keeps x off 1/2, where a factor is 0
    half = size // 2 + 1
    angle = 2 * np.pi * np.arange(half) / size
    captions = sorted({r[0] for r in rows})
    where = {c: i for i, c in enumerate(captions)}
    widths = sorted({w for c in captions for w in steps[c]})
    col = {w: i for i, w in enumerate(widths)}
    multiplicity = np.zeros((len(captions), len(widths)))
    for c in captions:
        for w in steps[c]:
            multiplicity[where[c], col[w]] += 1
    # Factors 1 - x + x z^w with z = e^{-i angle}, as log-modulus and argument so that each
    # caption's product is one matrix product (numpy's complex log and power are slow).
    phase_w = np.asarray(widths, dtype=np.float64)[:, None, None] * angle[None, None, :]
    re_part = 1 - x[None] + x[None] * np.cos(phase_w)
    im_part = -x[None] * np.sin(phase_w)
    factor = re_part + 1j * im_part  # (widths, nodes, half)
    log_mod = 0.5 * np.log(re_part * re_part + im_part * im_part)
    arg = np.arctan2(im_part, re_part)
    total_mod = np.einsum("cw,wgj->cgj", multiplicity, log_mod)
    total_arg = np.einsum("cw,wgj->cgj", multiplicity, arg)
    spectrum = np.exp(total_mod) * (np.cos(total_arg) + 1j * np.sin(total_arg))
    # D_j(t) for every threshold in the chunk, with the half-spectrum weights 1, 2, ..., 2, 1.
    thresholds = sorted({t for _, _, t in rows})
    t_col = {t: i for i, t in enumerate(thresholds)}
    # Geometric sums: D_j(t) = (1 - e^{i angle_j (t+1)}) / (1 - e^{i angle_j}), and t+1 at j=0.
    n_terms = np.minimum(thresholds, size - 1)[:, None] + 1.0  # (thresholds, 1)
    ratio = np.exp(1j * angle[1:])[None, :]
    partial = np.empty((len(thresholds), half), dtype=np.complex128)
    partial[:, 0] = n_terms[:, 0]
    partial[:, 1:] = (1 - ratio ** n_terms) / (1 - ratio)
    doubling = np.full(half, 2.0)
    doubling[0] = 1.0
    if size % 2 == 0:
        doubling[-1] = 1.0
    cdf_weights = partial * doubling / size
    ci = np.array([where[c] for c, _, _ in rows])
    wi = np.array([col[w] for _, w, _ in rows])
    ti = np.array([t_col[t] for _, _, t in rows])
    cdf = np.empty((len(rows), len(quad)))
    for k in range(len(widths)):
        # Rows that leave out a tag of this width: divide that factor out, read the CDF off.
        sel = np.flatnonzero(wi == k)
        if len(sel):
            variant = spectrum[ci[sel]] * (1 / factor[k])
            cdf[sel] = np.einsum("rgj,rj->rg", variant, cdf_weights[ti[sel]]).real
    return list(np.clip((1.0 - cdf) @ quad, 0.0, 1.0))


@lru_cache(maxsize=64)
def _gauss_legendre_01(n: int):  # noqa: ANN202 - (nodes as a column, weights) on [0, 1]
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(n)
    return ((nodes + 1) / 2)[:, None], weights / 2


@dataclass
class LongCaption:
    """A caption past the 75-token limit in file order."""

    rel: str
    n_tokens: int
    cut_tags: list[str]  # tags (as written) with tokens past the limit, in file order
    expected_cut_shuffled: float  # expected number of tags cut per shuffled epoch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expected_cut_shuffled"] = round(self.expected_cut_shuffled, 3)
        return d


@dataclass
class TokenStats:
    keep_tokens: int
    limit: int
    mean: float
    median: float
    p90: float
    max: int
    over_limit: list[LongCaption]  # file order, longest first
    shuffled_cut_share: float  # share of shuffled tag appearances (weighted) cut per epoch
    captions_at_risk: int  # captions long enough that some shuffle cuts a tag
    fixed_cut: int  # captions whose keep_tokens prefix alone passes the limit

    def to_dict(self) -> dict:
        return {
            "keep_tokens": self.keep_tokens,
            "limit": self.limit,
            "mean": round(self.mean, 2),
            "median": self.median,
            "p90": self.p90,
            "max": self.max,
            "over_limit": [c.to_dict() for c in self.over_limit],
            "shuffled_cut_share": round(self.shuffled_cut_share, 4),
            "captions_at_risk": self.captions_at_risk,
            "fixed_cut": self.fixed_cut,
        }


# -- the report ----------------------------------------------------------------------------


@dataclass
class TagStat:
    tag: str  # analysed form
    captions: int
    share: float  # of captions
    weighted_share: float  # of per-epoch exposures (repeats)
    n_tokens: int  # tokens of its most common written form, as kohya tokenizes it
    forms: list[str]  # written forms, most common first ("red_hair", "red hair")
    cut_rate_file_order: float  # weighted share of its appearances past the limit, file order
    cut_rate_shuffled: float  # the same under shuffle_caption with keep_tokens

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class RepeatFolder:
    folder: str
    repeats: int
    captions: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetReport:
    root: str
    n_captions: int
    n_images: int
    repeat_folders: list[RepeatFolder]
    weighted: bool  # repeats differ between captions, so weighting changes numbers
    encodings: dict[str, int]
    tags: list[TagStat]  # most frequent first
    always_present: list[str]
    tokens: TokenStats
    min_support: int
    min_score: float
    max_q: float
    pairs: list[PairStat]
    clusters: list[TagCluster]
    embedding_note: str | None = None  # why the model column is missing, when it is
    notes: list[str] = field(default_factory=list)  # things about the files worth knowing
    orphans: list[str] = field(default_factory=list)
    uncaptioned_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "n_captions": self.n_captions,
            "n_images": self.n_images,
            "repeat_folders": [r.to_dict() for r in self.repeat_folders],
            "weighted_by_repeats": self.weighted,
            "encodings": self.encodings,
            "tags": [t.to_dict() for t in self.tags],
            "always_present": self.always_present,
            "tokens": self.tokens.to_dict(),
            "min_support": self.min_support,
            "min_score": self.min_score,
            "max_q": self.max_q,
            "pairs": [p.to_dict() for p in self.pairs],
            "clusters": [c.to_dict() for c in self.clusters],
            "embedding_note": self.embedding_note,
            "notes": self.notes,
            "orphans": self.orphans,
            "uncaptioned_images": self.uncaptioned_images,
        }


def analyze_dataset(
    root: str | Path,
    *,
    keep_tokens: int = 0,
    min_support: int | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
    embed: Callable[[list[str]], object] | None = None,
    max_pairs: int = 500,
) -> DatasetReport:
    """Everything ``tagsmith dataset`` reports. ``embed`` maps texts to vectors (one row each);
    without it, clusters carry no embedding column."""
    if keep_tokens < 0:
        raise DatasetError("keep_tokens must be 0 or more.")
    ds = load_dataset(root)
    return report_from_dataset(
        ds, keep_tokens=keep_tokens, min_support=min_support, min_score=min_score,
        max_q=max_q, embed=embed, max_pairs=max_pairs,
    )


def report_from_dataset(
    ds: Dataset,
    *,
    keep_tokens: int = 0,
    min_support: int | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
    embed: Callable[[list[str]], object] | None = None,
    max_pairs: int = 500,
) -> DatasetReport:
    caps = ds.captions
    weights = [c.file.weight for c in caps]
    co = build_cooccurrence([[t.key for t in c.first_line_tags] for c in caps], weights)
    n = len(caps)
    support = default_min_support(n) if min_support is None else max(1, min_support)
    pairs = strong_pairs(co, min_support=support, min_score=min_score, max_q=max_q)
    clusters = cluster_tags(co, pairs, min_score=min_score)
    tokens, cut_file, cut_shuffled, token_lengths = _token_stats(ds, keep_tokens)

    forms: dict[str, Counter] = defaultdict(Counter)
    for c in caps:
        for t in c.first_line_tags:
            forms[t.key][t.text] += 1
    total_w = co.total_weight
    tag_stats: list[TagStat] = []
    order = sorted(range(len(co.tags)), key=lambda i: (-int(co.counts[i]), co.tags[i]))
    for i in order:
        key = co.tags[i]
        common = [f for f, _ in forms[key].most_common()]
        wc = float(co.weighted_counts[i])
        tag_stats.append(
            TagStat(
                tag=key, captions=int(co.counts[i]), share=float(co.counts[i]) / n,
                weighted_share=wc / total_w, n_tokens=token_lengths.get(common[0], 0),
                forms=common, cut_rate_file_order=cut_file.get(key, 0.0) / wc if wc else 0.0,
                cut_rate_shuffled=cut_shuffled.get(key, 0.0) / wc if wc else 0.0,
            )
        )
    embedding_note = None
    if embed is not None and clusters:
        attach_embeddings(clusters, [t.tag for t in tag_stats], embed)
    reps = sorted(
        Counter((c.file.repeat_folder, c.file.repeats) for c in caps).items(),
        key=lambda kv: kv[0][0],
    )
    repeat_folders = [RepeatFolder(folder=f or ".", repeats=r, captions=k) for (f, r), k in reps]
    weighted = len({c.file.weight for c in caps}) > 1
    return DatasetReport(
        root=str(ds.root),
        n_captions=n,
        n_images=sum(len(c.file.images) for c in caps),
        repeat_folders=repeat_folders,
        weighted=weighted,
        encodings=dict(Counter(c.decoded.label for c in caps).most_common()),
        tags=tag_stats,
        always_present=always_present(co) if n > 1 else [],
        tokens=tokens,
        min_support=support,
        min_score=min_score,
        max_q=max_q,
        pairs=pairs[:max_pairs],
        clusters=clusters,
        embedding_note=embedding_note,
        notes=_file_notes(ds),
        orphans=list(ds.files.orphans),
        uncaptioned_images=list(ds.files.uncaptioned_images),
    )


def _token_stats(
    ds: Dataset, keep_tokens: int, limit: int = CHUNK_LENGTH
) -> tuple[TokenStats, dict[str, float], dict[str, float], dict[str, int]]:
    """Token counts as kohya sees captions, and weighted cut exposure per tag key."""
    import numpy as np

    tok = load_tokenizer()
    caps = ds.captions
    parts_per_caption = [c.parts for c in caps]
    unique = sorted({p for parts in parts_per_caption for p in parts})
    lengths = dict(zip(unique, (len(ids) for ids in tok.encode_batch(unique))))
    totals = caption_token_counts([c.first_line for c in caps], parts_per_caption, lengths)
    part_keys = {p: tag_key(strip_weight_syntax(p)) if p else "" for p in unique}
    cut_file: dict[str, float] = {}
    cut_shuffled: dict[str, float] = {}
    over: list[LongCaption] = []
    shuffled_cut_weight = 0.0
    shuffled_weight = 0.0
    at_risk = 0
    fixed_cut = 0
    part_lengths_all = [[lengths[p] for p in parts] for parts in parts_per_caption]
    odds = shuffled_cut_batch(
        [(pl[:keep_tokens], pl[keep_tokens:]) for pl in part_lengths_all], limit
    )
    for cap, parts, total, part_lengths, probs in zip(
        caps, parts_per_caption, totals, part_lengths_all, odds
    ):
        w = cap.file.weight
        keys = [part_keys[p] for p in parts]
        # File order: where each tag's tokens fall when the caption is used as written.
        pos = 0
        cut_here: list[str] = []
        for p, n_tok, key in zip(parts, part_lengths, keys):
            if pos + n_tok > limit and n_tok:
                cut_here.append(p)
                if key:
                    cut_file[key] = cut_file.get(key, 0.0) + w
            pos += n_tok + 1
        fixed, flex = part_lengths[:keep_tokens], part_lengths[keep_tokens:]
        fpos = 0
        for n_tok, key in zip(fixed, keys[:keep_tokens]):
            if fpos + n_tok > limit and n_tok:
                if key:
                    cut_shuffled[key] = cut_shuffled.get(key, 0.0) + w
            fpos += n_tok + 1
        if fixed and sum(n + 1 for n in fixed) - 1 > limit:
            fixed_cut += 1
        for key, prob, n_tok in zip(keys[keep_tokens:], probs, flex):
            if key and prob:
                cut_shuffled[key] = cut_shuffled.get(key, 0.0) + w * prob
            if n_tok:
                shuffled_weight += w
                shuffled_cut_weight += w * prob
        if any(probs):
            at_risk += 1
        if total > limit:
            over.append(
                LongCaption(
                    rel=cap.file.rel, n_tokens=total, cut_tags=cut_here,
                    expected_cut_shuffled=float(sum(probs)),
                )
            )
    over.sort(key=lambda c: (-c.n_tokens, c.rel))
    arr = np.asarray(totals) if totals else np.zeros(1)
    stats = TokenStats(
        keep_tokens=keep_tokens,
        limit=limit,
        mean=float(arr.mean()),
        median=float(np.median(arr)),
        p90=float(np.percentile(arr, 90)),
        max=int(arr.max()),
        over_limit=over,
        shuffled_cut_share=shuffled_cut_weight / shuffled_weight if shuffled_weight else 0.0,
        captions_at_risk=at_risk,
        fixed_cut=fixed_cut,
    )
    return stats, cut_file, cut_shuffled, lengths


# A comma touching punctuation (underscore included: CLIP counts it as punctuation) can merge
# with it into one token, so the tag-by-tag sum would be off.
_COMMA_MERGES = re.compile(r"(?:[^\w\s]|_),|,(?:[^\w\s]|_)")


def caption_token_counts(
    lines: Sequence[str], parts: Sequence[Sequence[str]], lengths: dict[str, int]
) -> list[int]:
    """Tokens of each caption line: its tags' tokens plus one per comma, or, where a comma
    touches punctuation, the whole line encoded (exact either way, and the common case needs
    no second pass of the tokenizer over every caption)."""
    out = [sum(lengths[p] for p in ps) + len(ps) - 1 for ps in parts]
    exact = [i for i, line in enumerate(lines) if _COMMA_MERGES.search(line)]
    if exact:
        tok = load_tokenizer()
        for i, ids in zip(exact, tok.encode_batch([lines[i] for i in exact])):
            out[i] = len(ids)
    return out


def strip_weight_syntax(text: str) -> str:
    """A tag as written without the A1111 weight syntax around it (``(x:1.2)`` -> ``x``)."""
    a, b, _ = _peel_syntax(text.strip())
    return text.strip()[a:b]


def _file_notes(ds: Dataset) -> list[str]:
    notes: list[str] = []
    caps = ds.captions
    not_utf8 = Counter(c.decoded.label for c in caps if c.decoded.encoding != "utf-8")
    if not_utf8:
        k = sum(not_utf8.values())
        detail = ", ".join(
            f"{name}: {v}" for name, v in sorted(not_utf8.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        notes.append(
            f"{k} caption file{'s are' if k != 1 else ' is'} not UTF-8 ({detail}); kohya reads "
            "captions as UTF-8 and stops with an error on them (`tagsmith retag` keeps each "
            "file's encoding)"
        )
    multi = [c.file.rel for c in caps if c.n_lines > 1]
    if multi:
        notes.append(
            f"{len(multi)} caption file{'s have' if len(multi) != 1 else ' has'} more than one "
            f"line (e.g. {multi[0]}); kohya reads only the first line, and so do these "
            "statistics"
        )
    empty = [c.file.rel for c in caps if not c.first_line_tags]
    if empty:
        notes.append(
            f"{len(empty)} caption{'s are' if len(empty) != 1 else ' is'} empty (e.g. "
            f"{empty[0]}); kohya trains those images with an empty caption"
        )
    stray = [
        c.file.rel for c in caps
        if c.first_line_tags and any(not p for p in c.parts)
    ]
    if stray:
        notes.append(
            f"{len(stray)} caption{'s have' if len(stray) != 1 else ' has'} empty tags from a "
            f"trailing or doubled comma (e.g. {stray[0]}); kohya keeps them as empty entries "
            "and shuffle_caption scatters the stray commas"
        )
    dupes = [
        c.file.rel for c in caps
        if len({t.key for t in c.first_line_tags}) < len(c.first_line_tags)
    ]
    if dupes:
        notes.append(
            f"{len(dupes)} caption{'s repeat' if len(dupes) != 1 else ' repeats'} a tag (e.g. "
            f"{dupes[0]}); statistics count it once per caption"
        )
    forms: dict[str, set[str]] = {}
    for c in caps:
        for t in c.first_line_tags:
            # Case and spacing do not reach the tokenizer; underscores and escapes do.
            forms.setdefault(t.key, set()).add(_cleaned(t.text))
    mixed = sorted(k for k, v in forms.items() if len(v) > 1)
    if mixed:
        example = " / ".join(sorted(forms[mixed[0]])[:3])
        notes.append(
            f"{len(mixed)} tag{'s are' if len(mixed) != 1 else ' is'} written in more than one "
            f"form (e.g. {example}); kohya tokenizes each form as written, so they train as "
            "different text"
        )
    if ds.files.shadowed:
        k = len(ds.files.shadowed)
        notes.append(
            f"{k} .caption file{'s were' if k != 1 else ' was'} "
            f"ignored because a .txt caption sits beside the same image (e.g. "
            f"{ds.files.shadowed[0].rel}); `tagsmith retag` rewrites both"
        )
    if ds.files.orphans:
        k = len(ds.files.orphans)
        example = ds.files.orphans[0]
        notes.append(
            f"1 .txt/.caption file has no image beside it ({example}); it is not a caption and "
            "was left out"
            if k == 1 else
            f"{k} .txt/.caption files have no image beside them (e.g. {example}); they are not "
            "captions and were left out"
        )
    if ds.files.uncaptioned_images:
        k = len(ds.files.uncaptioned_images)
        notes.append(
            f"{k} image{'s have' if k != 1 else ' has'} no caption file (e.g. "
            f"{ds.files.uncaptioned_images[0]}); kohya trains {'them' if k != 1 else 'it'} with "
            "the repeat folder's class name as caption"
        )
    in_repeat = any(c.file.repeat_folder for c in caps)
    outside = [c.file.rel for c in caps if not c.file.repeat_folder]
    if in_repeat and outside:
        notes.append(
            f"{len(outside)} caption{'s lie' if len(outside) != 1 else ' lies'} outside any "
            f"N_name repeat folder (e.g. {outside[0]}); kohya's folder mode skips "
            f"{'them, here they count' if len(outside) != 1 else 'it, here it counts'} once"
        )
    return notes


# -- the library call for suggest/trigger --dataset ----------------------------------------


def correlated_tags(dataset_dir: Path, tag: str, *, limit: int = 10) -> list[str]:
    """Tags of the dataset that co-occur strongly with ``tag``, best first.

    * ``tag`` in the dataset (compared in analysed form): its partners among the strong pairs
      (same minimum support and score as ``tagsmith dataset``), by score.
    * ``tag`` in every caption (a trigger word): every pair score is 0 for it, so its partners
      are instead the other tags present in at least half of the captions, most frequent first
      — the concepts it will absorb.
    * ``tag`` not in the dataset (a new trigger or a new name for an existing tag): the
      partners of the dataset tag most similar by text (most shared words, then character
      similarity; at least one shared word of three letters or more, or a character
      similarity of 0.8), without that tag itself. Empty when nothing is similar enough.
    """
    ds = load_dataset(dataset_dir)
    tag_sets = [[t.key for t in c.first_line_tags] for c in ds.captions]
    co = build_cooccurrence(tag_sets, [c.file.weight for c in ds.captions])
    key = tag_key(strip_weight_syntax(tag))
    if key not in co.index:
        similar = most_similar_tag(key, co.tags)
        if similar is None:
            return []
        key = similar
    return partners_of(co, key, limit=limit)


def partners_of(
    co: Cooccurrence,
    key: str,
    *,
    limit: int = 10,
    min_support: int | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
) -> list[str]:
    """Strong co-occurrence partners of one tag, as the report ranks them (see
    ``correlated_tags``)."""

    i = co.index[key]
    n = co.n_captions
    if int(co.counts[i]) == n:
        order = sorted(
            (j for j in range(len(co.tags)) if j != i and co.counts[j] * 2 >= n),
            key=lambda j: (-int(co.counts[j]), co.tags[j]),
        )
        return [co.tags[j] for j in order[:limit]]
    support = default_min_support(n) if min_support is None else min_support
    pairs = strong_pairs(co, min_support=support, min_score=min_score, max_q=max_q)
    return [p.b if p.a == key else p.a for p in pairs if key in (p.a, p.b)][:limit]


_WORD = re.compile(r"[^\W_]+")


def most_similar_tag(key: str, candidates: Sequence[str]) -> str | None:
    """The candidate most similar to ``key`` by text, or None (see ``correlated_tags``)."""
    words = {w for w in _WORD.findall(key.lower()) if len(w) >= 3}
    best: tuple[float, float, str] | None = None
    for cand in candidates:
        cw = {w for w in _WORD.findall(cand.lower()) if len(w) >= 3}
        shared = len(words & cw)
        ratio = difflib.SequenceMatcher(None, key, cand).ratio()
        if not shared and ratio < 0.8:
            continue
        jaccard = shared / len(words | cw) if words | cw else 0.0
        rank = (jaccard, ratio, cand)
        if best is None or rank[:2] > best[:2] or (rank[:2] == best[:2] and cand < best[2]):
            best = rank
    return None if best is None else best[2]
