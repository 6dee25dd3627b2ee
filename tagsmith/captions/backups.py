"""Retag backups and undo, safe against a hostile shared dataset.

A dataset downloaded from someone else can carry anything under ``.tagsmith-backup/``: a
manifest naming ``../../outside/victim.txt``, a planted backup with a future timestamp, symlinks
to ``$HOME``. So undo trusts nothing it finds in the folder:

* every run ``apply_retag`` makes is **recorded outside the dataset**, in the user's cache
  folder (``<cache>/retag-runs/``): the backup's real path and the SHA-256 of its manifest.
  ``undo_last_retag`` restores only backups recorded there whose manifest is unchanged, newest
  recorded first; other backups (planted, copied from another machine, or with a timestamp in
  the future) are never restored and the sentence says so;
* every path in a manifest must be a plain relative path inside the dataset: no absolute path,
  no ``..``, no symlinked folder on the way, no symlink as the file itself;
* a restored file keeps the permission bits the file has now (masked to ``0o777``): a mode is
  never taken from the manifest;
* a ``.tagsmith-backup`` that is a symlink (or not a folder) is refused, for writing and undo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagsmith.captions.files import BACKUP_DIR_NAME
from tagsmith.errors import DatasetError, InputError, TagsmithError
from tagsmith.fileio import atomic_write_text, read_regular_bytes
from tagsmith.paths import resolve_cache_dir

MANIFEST_NAME = "manifest.json"
UNDONE_NAME = "undone.json"
MANIFEST_VERSION = 1
TMP_MARK = ".tagsmith-"
RUNS_DIR_NAME = "retag-runs"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_MAX_COPY_BYTES = 1 << 30
_TMP_NAME_BYTES = 180  # room for ".tagsmith-XXXXXXXX.tmp" inside a 255-byte file name
_STAMP = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)(?:-\d+)?$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


# -- writing primitives -----------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_prefix(name: str) -> str:
    """``.<name>.tagsmith-``, the name cut short enough that the temp file's name fits 255 bytes."""
    raw = os.fsencode(name)[:_TMP_NAME_BYTES]
    return f".{os.fsdecode(raw)}{TMP_MARK}"


def replace_file_bytes(
    path: Path, data: bytes, *, mode: int | None = None, sync_dir: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one step, keeping its permission bits (``& 0o777``).

    The data is on disk before the rename, so even a power cut leaves the old or the new file;
    ``sync_dir=False`` leaves making the rename itself durable to the caller (one folder sync
    per folder at the end of a run instead of one per file).
    """
    if mode is None:
        mode = path.stat().st_mode
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode & 0o777)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_if_regular(path: Path, limit: int = _MAX_COPY_BYTES) -> bytes | None:
    """A regular file's bytes (symlinks not followed), or None when it is missing or not one."""
    try:
        return read_regular_bytes(path, limit=limit, follow_symlinks=False)
    except (OSError, InputError):
        return None


# -- where backups live -----------------------------------------------------------------------


def backup_base(root: Path, *, create: bool) -> Path | None:
    """``root/.tagsmith-backup`` if it is a real folder (made when ``create``), else a sentence."""
    base = root / BACKUP_DIR_NAME
    try:
        st = os.lstat(base)
    except FileNotFoundError:
        if not create:
            return None
        os.mkdir(base)
        st = os.lstat(base)
    if stat.S_ISLNK(st.st_mode):
        raise DatasetError(
            f"{base} is a symbolic link (to {os.readlink(base)}); tagsmith keeps backups only "
            "in a real folder inside the dataset, so it neither writes nor restores through "
            "it; remove the link and try again."
        )
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetError(f"{base} is not a folder; move it away and try again.")
    return base


def new_backup_dir(root: Path) -> tuple[Path, bool]:
    """A fresh ``<UTC timestamp>/`` folder under the backup base, and whether the base is new."""
    base_is_new = not os.path.lexists(root / BACKUP_DIR_NAME)
    base = backup_base(root, create=True)
    assert base is not None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    for k in range(1000):
        candidate = base / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            candidate.mkdir()
            return candidate, base_is_new
        except FileExistsError:
            continue
    raise DatasetError(f"Cannot create a backup folder under {base}.")


def safe_target(root: Path, rel: object, *, what: str = "the backup manifest") -> Path:
    """``root/rel`` when ``rel`` is a plain relative path whose folders are real folders inside
    ``root`` and whose file, if present, is not a symlink; otherwise one sentence."""

    def refuse(why: str) -> DatasetError:
        return DatasetError(
            f"{what} names the path {rel!r}, which {why}; tagsmith writes only inside the "
            f"dataset folder {root}, so nothing was restored."
        )

    if not isinstance(rel, str) or not rel:
        raise refuse("is not a file name")
    if "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel[:2]:
        raise refuse("is absolute")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or (os.sep != "/" and "\\" in rel):
        raise refuse("leaves the dataset or is not a plain relative path")
    cur = root
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            raise refuse(f"goes through {cur}, which does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            raise refuse(f"goes through the symbolic link {cur}")
        if not stat.S_ISDIR(st.st_mode):
            raise refuse(f"goes through {cur}, which is not a folder")
    target = cur / parts[-1]
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            raise refuse("is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise refuse("is not a regular file")
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target.parent)]) != real_root:
        raise refuse("resolves outside it")
    return target


# -- the record of this user's runs -----------------------------------------------------------


def runs_dir() -> Path:
    return resolve_cache_dir() / RUNS_DIR_NAME


def _record_path(backup: Path) -> Path:
    key = sha256(os.fsencode(os.path.realpath(backup)))[:32]
    return runs_dir() / f"{key}.json"


def record_run(root: Path, backup: Path, manifest: bytes) -> None:
    """Remember, outside the dataset, that this user's run made ``backup`` (see module doc)."""
    folder = runs_dir()
    record = {
        "root": os.path.realpath(root),
        "backup": os.path.basename(backup),
        "backup_path_sha256": sha256(os.fsencode(os.path.realpath(backup))),
        "manifest_sha256": sha256(manifest),
        "created_ns": time.time_ns(),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_record_path(backup), json.dumps(record))
    except (OSError, TagsmithError) as exc:
        why = exc.message if isinstance(exc, TagsmithError) else (exc.strerror or str(exc))
        raise DatasetError(
            f"Cannot record the run in {folder} ({why.rstrip('.')}), and undo needs that "
            "record; nothing was changed (the backup was removed). Set TAGSMITH_CACHE_DIR to "
            "a writable folder and try again."
        ) from None


def _recorded(backup: Path) -> dict | None:
    data = read_if_regular(_record_path(backup), limit=1 << 20)
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if record.get("backup_path_sha256") != sha256(os.fsencode(os.path.realpath(backup))):
        return None
    if not isinstance(record.get("created_ns"), int):
        return None
    return record


def _in_future(name: str) -> bool:
    m = _STAMP.match(name)
    if not m:
        return False
    made = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    return made.timestamp() > time.time() + 300


def _complete_backups(root: Path) -> list[Path]:
    base = backup_base(root, create=False)
    if base is None:
        return []
    out = []
    for p in sorted(base.iterdir()):
        if p.is_symlink() or not p.is_dir():
            continue
        manifest = p / MANIFEST_NAME
        if manifest.is_file() and not manifest.is_symlink() and not (p / UNDONE_NAME).exists():
            out.append(p)
    return out


def list_backups(root: str | Path) -> list[Path]:
    """Backups this user's runs made in ``root`` (recorded, manifest unchanged, not undone, not
    dated in the future), oldest first."""
    found = []
    for p in _complete_backups(Path(root)):
        record = _recorded(p)
        if record is None or _in_future(p.name):
            continue
        if read_if_regular(p / MANIFEST_NAME, MAX_MANIFEST_BYTES) is None:
            continue
        found.append((record["created_ns"], p))
    return [p for _, p in sorted(found)]


# -- undo -------------------------------------------------------------------------------------


@dataclass
class UndoResult:
    backup: Path
    restored: list[str]
    already_old: list[str]
    maps: list[dict]


def _manifest_entries(backup: Path) -> tuple[dict, list[dict]]:
    raw = read_if_regular(backup / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    record = _recorded(backup)
    if raw is None or record is None or sha256(raw) != record.get("manifest_sha256"):
        raise DatasetError(
            f"The backup manifest {backup / MANIFEST_NAME} changed after tagsmith wrote it, so "
            "it is not trusted; nothing was restored."
        )
    try:
        manifest = json.loads(raw)
        entries = manifest["files"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise TypeError
        for e in entries:
            if not all(_SHA.match(str(e.get(k, ""))) for k in ("old_sha256", "new_sha256")):
                raise ValueError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise DatasetError(f"The backup manifest {backup / MANIFEST_NAME} is unreadable.") from None
    return manifest, entries


def _no_run_message(root: Path) -> str:
    foreign = [p for p in _complete_backups(root) if _recorded(p) is None or _in_future(p.name)]
    if not foreign:
        return f"{root} has no retag run to undo (no backup in {BACKUP_DIR_NAME}/)."
    k = len(foreign)
    return (
        f"{root} has no retag run of yours to undo: {k} backup{'s' if k != 1 else ''} in "
        f"{BACKUP_DIR_NAME}/ (e.g. {foreign[-1].name}) {'were' if k != 1 else 'was'} not made by "
        "tagsmith on this machine (no run of yours recorded it in "
        f"{runs_dir()}), so tagsmith does not restore "
        f"{'them' if k != 1 else 'it'} (a shared dataset can carry planted backups); the "
        "original files are in its files/ folder if you want to copy them back by hand."
    )


def undo_last_retag(root: str | Path) -> UndoResult:
    """Restore the files of this user's newest retag run in ``root`` that is not undone yet."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist or is not a folder.")
    backups = list_backups(root)
    if not backups:
        raise DatasetError(_no_run_message(root))
    backup = backups[-1]
    manifest, entries = _manifest_entries(backup)
    to_restore: list[tuple[dict, Path, bytes]] = []
    already: list[str] = []
    edited: list[str] = []
    for e in entries:
        rel = e.get("path")
        target = safe_target(root, rel)
        copy = safe_target(backup / "files", rel, what=f"the backup {backup.name}")
        original = read_if_regular(copy)
        if original is None or sha256(original) != e["old_sha256"]:
            raise DatasetError(
                f"The backup copy of {rel} in {backup} is missing or damaged; nothing was restored."
            )
        current = read_if_regular(target)
        digest = None if current is None else sha256(current)
        if digest == e["old_sha256"]:
            already.append(rel)
        elif digest == e["new_sha256"]:
            to_restore.append((e, target, original))
        else:
            edited.append(rel)
    if edited:
        more = f" and {len(edited) - 1} more" if len(edited) > 1 else ""
        raise DatasetError(
            f"{edited[0]}{more} changed after the retag run, so undoing it would lose those "
            f"edits; nothing was restored (the originals are in {backup / 'files'})."
        )
    restored: list[str] = []
    folders: set[Path] = set()
    try:
        for e, target, original in to_restore:
            replace_file_bytes(target, original, sync_dir=False)  # keeps the file's own mode
            if isinstance(e.get("mtime_ns"), int):
                with contextlib.suppress(OSError, ValueError, OverflowError):
                    os.utime(target, ns=(time.time_ns(), e["mtime_ns"]))
            restored.append(e["path"])
            folders.add(target.parent)
        clean_temp_files(root, [e["path"] for e in entries])
        replace_file_bytes(
            backup / UNDONE_NAME,
            json.dumps({"undone": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            .encode("utf-8"),
            mode=0o644,
        )
    except OSError as exc:
        raise DatasetError(
            f"Cannot finish the undo in {root}: {exc.strerror or exc}; {len(restored)} of "
            f"{len(to_restore)} files were restored, each entirely; free some space (or fix "
            f"the permissions) and run `tagsmith retag --undo {root}` again to finish."
        ) from None
    finally:
        for folder in folders:
            fsync_dir(folder)
    return UndoResult(
        backup=backup, restored=restored, already_old=already, maps=manifest.get("maps", [])
    )


def clean_temp_files(root: Path, rels: Sequence[str]) -> None:
    """Remove temporary files a killed run left beside the captions it was rewriting."""
    names_by_folder: dict[Path, set[str]] = {}
    for rel in rels:
        target = root / rel
        names_by_folder.setdefault(target.parent, set()).add(temp_prefix(target.name))
    for folder, prefixes in names_by_folder.items():
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                # Our temporary files are named ".<caption name>.tagsmith-<random>.tmp".
                name = entry.name
                if not (name.endswith(".tmp") and TMP_MARK in name):
                    continue
                if name[: name.rindex(TMP_MARK) + len(TMP_MARK)] in prefixes:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
