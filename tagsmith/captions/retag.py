"""Renaming tags in caption files, safely and reversibly.

``plan_retag`` reads every caption file of a dataset (see ``tagsmith.captions.files``: only
``.txt``/``.caption`` files beside an image, both when both exist) and works out the new bytes
of each file without writing anything. ``apply_retag`` then

1. copies every file it is about to change into ``DIR/.tagsmith-backup/<UTC timestamp>/files/``
   and writes ``manifest.json`` there **last**, atomically: a backup folder without a manifest
   is an interrupted backup, and no caption has been touched yet when that happens;
2. rewrites the files one at a time, each through a temporary file in the same folder that is
   flushed to disk and renamed over the original, so that a crash, a kill or Ctrl-C leaves every
   file either entirely old or entirely new.

3. records the run outside the dataset (``tagsmith.captions.backups``), so that undo restores
   only backups this user's own runs made, never one planted in a shared dataset.

``undo_last_retag`` (in ``tagsmith.captions.backups``) restores the newest recorded backup that
has not been undone, byte for byte, with the original modification times; each file keeps its
own permission bits. It checks first that every listed file is still either what the run left
(restored) or what it found (nothing to do); a file edited since makes it refuse, naming the
file, before anything is restored. A backup that fails midway (a full disk) is removed again.

What a rewrite keeps: tag order, separators, spacing, line endings, the file's encoding and BOM,
and A1111 weight syntax around a tag (``(mayonnaise bottle:1.2)`` ->
``(mayonnaise-container:1.2)``). Tags match in analysed form, so ``mayonnaise_bottle``,
``Mayonnaise Bottle`` and ``mayonnaise bottle`` are one tag, as are ``name_\\(series\\)`` and
``name (series)``. The new tag is written exactly as typed.

De-duplication rule: when, after renaming, a line holds the new tag more than once and at least
one of those came from the map, the first occurrence stays where it is, with its weight, and
the later ones are removed together with the comma before them. Other repeated tags are left
alone. (A later occurrence that is half of a comma-split weight group, ``(a, b:1.2)``, is
renamed but kept, since removing it would unbalance the brackets; the plan says so.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tagsmith.captions.backups import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    TMP_MARK,
    UNDONE_NAME,
    UndoResult,
    backup_base,
    fsync_dir,
    list_backups,
    new_backup_dir,
    read_if_regular,
    record_run,
    replace_file_bytes,
    safe_target,
    sha256,
    undo_last_retag,
)
from tagsmith.captions.files import (
    BACKUP_DIR_NAME,
    CaptionFile,
    DecodedText,
    check_caption_text,
    decode_caption_bytes,
    find_caption_files,
    read_caption_bytes,
)
from tagsmith.captions.parse import CaptionTag, parse_caption_text, strip_weight_syntax, tag_key
from tagsmith.errors import DatasetError, UsageError

# Test hook: seconds to sleep after each rewritten file, so a test can kill a run midway.
DELAY_ENV = "TAGSMITH_TEST_RETAG_DELAY"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# -- the map --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagMapping:
    old: str  # as typed
    new: str  # as typed (stripped): written to the files exactly so
    key: str  # analysed form of ``old``: what it matches
    new_key: str  # analysed form of ``new``

    @property
    def spec(self) -> str:
        return f"{self.old}={self.new}"


def _split_spec(spec: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(spec):
        if spec[i] == "\\" and i + 1 < len(spec) and spec[i + 1] == "=":
            cur.append("=")
            i += 2
            continue
        if spec[i] == "=":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(spec[i])
        i += 1
    parts.append("".join(cur))
    return parts


def parse_maps(specs: Sequence[str]) -> list[TagMapping]:
    """``OLD=NEW`` strings to mappings; refuses bad syntax, conflicts and chains in one sentence.

    ``\\=`` stands for a literal ``=`` inside a tag (``=_=``).
    """
    if not specs:
        raise UsageError('Give at least one --map "OLD=NEW".')
    out: list[TagMapping] = []
    for spec in specs:
        parts = _split_spec(spec)
        if len(parts) != 2:
            raise UsageError(
                f"--map {spec!r} must be OLD=NEW with exactly one '=' (write \\= for an '=' "
                "inside a tag)."
            )
        old, new = parts[0].strip(), parts[1].strip()
        if not old or not new:
            side = "old" if not old else "new"
            raise UsageError(f"--map {spec!r} has an empty {side} tag; write it as OLD=NEW.")
        for side, text in (("old", old), ("new", new)):
            if "," in text or _LINE_BREAK.search(text):
                raise UsageError(
                    f"--map {spec!r}: the {side} tag contains a comma or line break; map one "
                    "tag at a time."
                )
        key = tag_key(strip_weight_syntax(old))
        new_key = tag_key(strip_weight_syntax(new))
        if not key or not new_key:
            raise UsageError(
                f"--map {spec!r} has a tag that is empty once weight syntax is removed."
            )
        if strip_weight_syntax(new) != new:
            raise UsageError(
                f"--map {spec!r}: write the new tag without weight syntax; the weight around each "
                "old tag is kept."
            )
        mapping = TagMapping(old=old, new=new, key=key, new_key=new_key)
        if any(m.key == key and m.new == new for m in out):
            continue  # the same map given twice
        out.append(mapping)
    by_key: dict[str, TagMapping] = {}
    for m in out:
        if m.key in by_key:
            raise UsageError(
                f"The map conflicts: '{m.old}' is mapped to both '{by_key[m.key].new}' and "
                f"'{m.new}'."
            )
        by_key[m.key] = m
    for m in out:
        other = by_key.get(m.new_key)
        if other is not None and other is not m:
            raise UsageError(
                f"The map chains: '{m.new}' is the new tag of '{m.spec}' and the old tag of "
                f"'{other.spec}'; run retag once per step instead."
            )
    return out


# -- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagEdit:
    line: int  # 1-based
    old: str  # the tag as written (syntax around it excluded)
    new: str | None  # None: removed as a duplicate
    note: str = ""


@dataclass
class FileChange:
    file: CaptionFile
    decoded: DecodedText
    old_bytes: bytes
    new_bytes: bytes
    new_text: str
    edits: list[TagEdit]

    @property
    def rel(self) -> str:
        return self.file.rel

    def line_diffs(self) -> list[tuple[int, str, str]]:
        """(1-based line, old line, new line) for every line that changed."""
        old_lines = _LINE_BREAK.split(self.decoded.text)
        new_lines = _LINE_BREAK.split(self.new_text)
        return [
            (i + 1, a, b) for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b
        ]

    def to_dict(self) -> dict:
        return {
            "file": self.rel,
            "encoding": self.decoded.label,
            "edits": [
                {"line": e.line, "old": e.old, "new": e.new, **({"note": e.note} if e.note else {})}
                for e in self.edits
            ],
            "diff": [{"line": n, "old": a, "new": b} for n, a, b in self.line_diffs()],
        }


@dataclass
class RetagPlan:
    root: Path
    mappings: list[TagMapping]
    changes: list[FileChange]
    scanned: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    already: int = 0  # captions that hold an old tag only as its new spelling already

    @property
    def renamed(self) -> Counter:
        """Occurrences renamed per mapping spec."""
        out: Counter = Counter()
        for ch in self.changes:
            for e in ch.edits:
                if e.new is not None:
                    out[_spec_for(self.mappings, e.old)] += 1
        return out

    @property
    def removed(self) -> int:
        return sum(1 for ch in self.changes for e in ch.edits if e.new is None)

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "maps": [{"old": m.old, "new": m.new} for m in self.mappings],
            "scanned": self.scanned,
            "changed": len(self.changes),
            "renamed": dict(self.renamed),
            "duplicates_removed": self.removed,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "files": [c.to_dict() for c in self.changes],
        }


def _spec_for(mappings: Sequence[TagMapping], old_text: str) -> str:
    key = tag_key(old_text)
    return next((m.spec for m in mappings if m.key == key), "?")


def plan_retag(root: str | Path, mappings: Sequence[TagMapping]) -> RetagPlan:
    """What ``apply_retag`` would write; reads files, writes nothing."""
    files = find_caption_files(root)
    every = sorted(files.captions + files.shadowed, key=lambda c: c.rel)
    if not every:
        raise DatasetError(
            f"{files.root} holds no caption files beside images (.txt or .caption next to "
            ".png/.jpg/.jpeg/.webp/.bmp); nothing to retag."
        )
    plan = RetagPlan(root=files.root, mappings=list(mappings), changes=[], scanned=len(every))
    old_keys = {m.key for m in mappings}
    for cf in every:
        if cf.path.is_symlink():
            plan.skipped.append((cf.rel, "it is a symbolic link"))
            continue
        data = read_caption_bytes(cf.path, follow_symlinks=False)
        decoded = decode_caption_bytes(data)
        check_caption_text(decoded.text, cf.path)
        if not os.stat(cf.path).st_mode & 0o222 or not os.access(cf.path, os.W_OK):
            # Marked read-only (even for root, who could write it anyway): left alone.
            plan.skipped.append((cf.rel, "it is read-only"))
            continue
        if decoded.encode(decoded.text) != data:
            plan.skipped.append((cf.rel, f"its bytes do not survive {decoded.label} round trip"))
            continue
        new_text, edits = rewrite_caption_text(decoded.text, mappings)
        if new_text == decoded.text:
            plan.already += any(t.key in old_keys for t in parse_caption_text(decoded.text))
            continue
        plan.changes.append(
            FileChange(
                file=cf, decoded=decoded, old_bytes=data, new_bytes=decoded.encode(new_text),
                new_text=new_text, edits=edits,
            )
        )
    return plan


def _self_contained(text: str, tag: CaptionTag) -> bool:
    """True when the syntax around the tag opens and closes within its own segment."""
    body = text[tag.seg_start:tag.seg_end]
    before = body[: tag.start - tag.seg_start]
    after = body[tag.end - tag.seg_start:]
    return before.count("(") == after.count(")") and before.count("[") == after.count("]")


def rewrite_caption_text(
    text: str, mappings: Sequence[TagMapping]
) -> tuple[str, list[TagEdit]]:
    """The caption text with the map applied and the de-duplication rule (module doc)."""
    by_key = {m.key: m for m in mappings}
    tags = parse_caption_text(text)
    # (start, end, replacement) spans, non-overlapping.
    spans: list[tuple[int, int, str]] = []
    edits: list[tuple[int, TagEdit]] = []
    final_key: list[str] = []
    renamed: list[bool] = []
    for t in tags:
        m = by_key.get(t.key) if t.key else None
        final_key.append(m.new_key if m else t.key)
        renamed.append(m is not None)
    drop: set[int] = set()
    kept_note: dict[int, str] = {}
    seen: dict[tuple[int, str], int] = {}
    from_map = {(t.line, final_key[i]) for i, t in enumerate(tags) if renamed[i]}
    for i, t in enumerate(tags):
        if not final_key[i]:
            continue
        slot = (t.line, final_key[i])
        if seen.setdefault(slot, i) == i or slot not in from_map:
            continue  # the first occurrence, or a duplicate the map did not create
        prev = tags[i - 1]
        if not _self_contained(text, t) or prev.line != t.line or text[prev.seg_end] != ",":
            kept_note[i] = "kept: part of a weight group spanning commas"
            continue
        drop.add(i)
    for i, t in enumerate(tags):
        if i in drop:
            prev = tags[i - 1]
            spans.append((prev.seg_end, t.seg_end, ""))
            edits.append((t.start, TagEdit(line=t.line + 1, old=t.text, new=None,
                                           note="removed: duplicate of an earlier tag")))
        elif renamed[i]:
            new = by_key[t.key].new
            if new != t.text:
                spans.append((t.start, t.end, new))
            if new != t.text or i in kept_note:
                edits.append((t.start, TagEdit(line=t.line + 1, old=t.text, new=new,
                                               note=kept_note.get(i, ""))))
    out = text
    for start, end, repl in sorted(spans, reverse=True):
        out = out[:start] + repl + out[end:]
    return out, [e for _, e in sorted(edits, key=lambda x: x[0])]


# -- writing --------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as fh:
        fh.write(data)


def _flush_to_disk(paths: Sequence[Path]) -> None:
    """Make freshly written files durable: one sync(2) where there is one (a few ms), else an
    fsync per file."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for p in paths:
        with open(p, "rb+") as fh:
            os.fsync(fh.fileno())


@dataclass
class RetagResult:
    backup: Path | None
    written: list[str]
    changed_since_plan: list[str]  # left alone: the file changed between plan and write


def apply_retag(
    plan: RetagPlan, *, on_file: Callable[[int, int, str], None] | None = None
) -> RetagResult:
    """Back up, then rewrite every planned file atomically (see the module doc).

    ``on_file(done, total, rel)`` is called after each file is replaced. A KeyboardInterrupt
    between or during files propagates; every file is then either old or new. A backup that
    cannot be completed is removed again, so "nothing was changed" holds on disk too.
    """
    if not plan.changes:
        return RetagResult(backup=None, written=[], changed_since_plan=[])
    root = plan.root
    for ch in plan.changes:
        safe_target(root, ch.rel, what="The plan")  # no symlinked folder appeared since
        if not os.access(ch.file.path.parent, os.W_OK | os.X_OK):
            raise DatasetError(
                f"Cannot rewrite {ch.file.path}: its folder is not writable; nothing was changed."
            )
    stale = [ch.rel for ch in plan.changes if read_if_regular(ch.file.path) != ch.old_bytes]
    changes = [ch for ch in plan.changes if ch.rel not in set(stale)]
    if not changes:
        return RetagResult(backup=None, written=[], changed_since_plan=stale)
    try:
        backup, base_is_new = new_backup_dir(root)
    except OSError as exc:
        raise DatasetError(
            f"Cannot create the backup folder in {root}: {exc.strerror or exc}; nothing "
            "was changed."
        ) from exc
    try:
        _write_backup(plan, changes, backup)
    except BaseException as exc:
        _remove_backup(backup, base_is_new)
        if isinstance(exc, OSError) and not isinstance(exc, DatasetError):
            raise DatasetError(
                f"Cannot write the backup in {root / BACKUP_DIR_NAME}: {exc.strerror or exc}; "
                "nothing was changed (the partial backup was removed)."
            ) from None
        raise
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    written: list[str] = []
    folders: set[Path] = set()
    try:
        for k, ch in enumerate(changes, start=1):
            _rewrite_one(ch, plan, written, len(changes))
            folders.add(ch.file.path.parent)
            if on_file is not None:
                on_file(k, len(changes), ch.rel)
            if delay:
                time.sleep(delay)
    finally:
        for folder in folders:
            fsync_dir(folder)
    return RetagResult(backup=backup, written=written, changed_since_plan=stale)


def _write_backup(plan: RetagPlan, changes: Sequence[FileChange], backup: Path) -> None:
    """Copies, then the manifest (last, atomically), then the record of this run."""
    entries = []
    copies = []
    for ch in changes:
        st = ch.file.path.stat()
        copies.append(backup / "files" / ch.rel)
        _write_new(copies[-1], ch.old_bytes)
        entries.append({
            "path": ch.rel,
            "old_sha256": sha256(ch.old_bytes),
            "new_sha256": sha256(ch.new_bytes),
            "old_size": len(ch.old_bytes),
            "mode": st.st_mode & 0o777,  # for information; undo keeps the file's own mode
            "mtime_ns": st.st_mtime_ns,
            "encoding": ch.decoded.label,
        })
    manifest = {
        "version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "maps": [{"old": m.old, "new": m.new} for m in plan.mappings],
        "files": entries,
    }
    # ensure_ascii: file names that are not valid UTF-8 survive as \udcXX escapes.
    data = json.dumps(manifest, indent=1).encode("ascii")
    # Every copy is on disk before the manifest says the backup is complete.
    _flush_to_disk(copies)
    replace_file_bytes(backup / MANIFEST_NAME, data, mode=0o644)
    record_run(plan.root, backup, data)


def _remove_backup(backup: Path, base_is_new: bool) -> None:
    shutil.rmtree(backup, ignore_errors=True)
    if base_is_new:
        with contextlib.suppress(OSError):
            os.rmdir(backup.parent)


def _rewrite_one(ch: FileChange, plan: RetagPlan, written: list[str], total: int) -> None:
    try:
        replace_file_bytes(ch.file.path, ch.new_bytes, sync_dir=False)
    except OSError as exc:
        raise DatasetError(
            f"Cannot write {ch.file.path}: {exc.strerror or exc}; {len(written)} of {total} "
            f"files were rewritten, `tagsmith retag --undo {plan.root}` restores them."
        ) from exc
    written.append(ch.rel)


__all__ = [
    "MANIFEST_NAME", "TMP_MARK", "UNDONE_NAME", "FileChange", "RetagPlan", "RetagResult",
    "TagEdit", "TagMapping", "UndoResult", "apply_retag", "backup_base", "list_backups",
    "parse_maps", "plan_retag", "replace_file_bytes", "rewrite_caption_text", "undo_last_retag",
]
