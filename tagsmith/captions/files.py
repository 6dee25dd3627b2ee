"""Caption folders as kohya reads them: finding the caption files beside images, their
repeat folders, and decoding and parsing each file.

A dataset is a folder of images with a caption file beside each one (``img.png`` +
``img.txt`` or ``img.caption``), searched recursively. What kohya's sd-scripts does with it,
and what this module therefore assumes:

* A folder named ``N_name`` (``10_mychar``) repeats its images N times per epoch; the repeat
  count applies to everything below it (the nearest such folder wins), and images outside any
  repeat folder count once (``CaptionFile.weight``).
* kohya reads only the **first line** of a caption file, as UTF-8, and strips it
  (``Caption.first_line``); later lines are reported, not counted.
* A ``.txt``/``.caption`` file without an image beside it is not a caption (kohya never reads
  it, and it may be someone's notes): it is listed as an orphan and left out of statistics and
  out of retagging. When both ``img.txt`` and ``img.caption`` exist, ``.txt`` is used.
* Hidden folders (``.git``, tagsmith's own ``.tagsmith-backup``) are skipped, symlinked folders
  are not followed, and a tree nested deeper than ``MAX_DEPTH`` folders is refused.
* Only regular files are read (a caption that is a FIFO or a link to ``/dev/zero`` is refused
  with a sentence, never waited on), and one caption may cost at most ``MAX_CAPTION_BYTES``,
  ``MAX_CAPTION_TAGS`` tags and ``MAX_TAG_CHARS`` characters per tag: past that it is a wrong
  file, and the sentence names it.

Files are decoded as UTF-8, UTF-8 with BOM, UTF-16/32 with BOM, BOM-less UTF-16 (detected by
its zero bytes), CP1252, and Latin-1 as the last resort; the encoding and BOM are kept per
file so that ``tagsmith.captions.retag`` can write each file back the way it was.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tagsmith.captions.parse import _LINE_BREAK, CaptionTag, parse_caption_text
from tagsmith.errors import DatasetError, InputError
from tagsmith.fileio import read_regular_bytes

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif", ".jxl"})
CAPTION_EXTENSIONS = (".txt", ".caption")  # in order of preference for one image
BACKUP_DIR_NAME = ".tagsmith-backup"
MAX_DEPTH = 64  # folders below the dataset root
MAX_CAPTION_BYTES = 1 << 20  # real captions are a few KiB; kohya trains on 225 tokens at most
MAX_CAPTION_TAGS = 1_000
MAX_TAG_CHARS = 2_000

_REPEAT_FOLDER = re.compile(r"^(\d+)(?:_(.*))?$", re.S)


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

    for dirpath, dirnames, filenames in _walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = dirpath
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


def _walk(root: Path):  # noqa: ANN202 - yields (folder, subfolder names, file names)
    """``os.walk`` top-down without recursion (Python 3.11's recurses, so a tree 1,000 folders
    deep raised RecursionError), not following symlinked folders, refusing depth > MAX_DEPTH."""
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError as exc:
            where = exc.filename or here
            raise DatasetError(f"Cannot read {where}: {exc.strerror or exc}.") from None
        dirs, files, links = [], [], set()
        for e in entries:
            try:
                is_dir = e.is_dir()  # as os.walk: a symlinked folder is listed, not entered
                if is_dir and e.is_symlink():
                    links.add(e.name)
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(e.name)
        yield here, dirs, files  # the caller prunes ``dirs`` in place, as with os.walk
        real = [d for d in dirs if d not in links]
        if real and depth >= MAX_DEPTH:
            raise DatasetError(
                f"{root} is nested more than {MAX_DEPTH} folders deep (at {here}); tagsmith "
                "stops there rather than walk a tree no dataset has."
            )
        stack.extend((here / d, depth + 1) for d in reversed(real))


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


def read_caption_bytes(path: Path, *, follow_symlinks: bool = True) -> bytes:
    """A caption file's bytes: a regular file of at most MAX_CAPTION_BYTES, else one sentence."""
    try:
        return read_regular_bytes(
            path, limit=MAX_CAPTION_BYTES, what="caption", follow_symlinks=follow_symlinks
        )
    except InputError as exc:
        raise DatasetError(exc.message) from None
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from exc


def check_caption_text(text: str, path: Path) -> None:
    """Refuse a caption whose parsing would cost more than any real caption (module doc)."""
    n_tags = text.count(",") + len(_LINE_BREAK.findall(text)) + 1
    if n_tags > MAX_CAPTION_TAGS:
        raise DatasetError(
            f"{path} holds {n_tags:,} tags, more than tagsmith reads in one caption "
            f"({MAX_CAPTION_TAGS:,}); it is not a caption file."
        )
    longest = max((len(part) for part in re.split(r"[,\r\n]", text)), default=0)
    if longest > MAX_TAG_CHARS:
        raise DatasetError(
            f"{path} holds a tag of {longest:,} characters, more than tagsmith reads as one tag "
            f"({MAX_TAG_CHARS:,}); it is not a caption file."
        )


def read_caption(file: CaptionFile) -> Caption:
    data = read_caption_bytes(file.path)
    decoded = decode_caption_bytes(data)
    check_caption_text(decoded.text, file.path)
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
