"""On-disk embedding cache, one SQLite file per model fingerprint.

Rows are keyed by (clip skip, representation, context, precision) and the exact text, and carry
a CRC of text and vector so a damaged row is noticed and recomputed instead of returned. SQLite
in WAL mode gives the crash and concurrency guarantees: a transaction is either fully in the
file or not at all, so a process killed mid-write (even with SIGKILL) leaves the previous
state, and several processes can read and write at once (writers wait on a busy timeout).
A file that is not a database any more is moved aside and started afresh.

Where: ``--cache-dir``, else ``$TAGSMITH_CACHE_DIR``, else the platform cache dir
(``platformdirs.user_cache_dir("tagsmith")``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagsmith.errors import CacheError

SCHEMA_VERSION = "1"
_BUSY_TIMEOUT_S = 60.0
_QUERY_CHUNK = 500


def _ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"Cannot create the cache folder '{path}' ({exc.strerror or exc}); give another "
            "with --cache-dir or turn the cache off with --no-cache."
        ) from None
    return path


@dataclass(frozen=True)
class CacheVariant:
    """Everything besides the text and the model that changes a vector."""

    clip_skip: int
    representation: str
    context: str  # "" when the tag is embedded on its own
    precision: str  # fp32 | fp16 | bf16 | auto (this machine's default)

    def label(self) -> str:
        return f"{self.clip_skip}|{self.representation}|{self.precision}|{self.context}"


def _checksum(variant_label: str, text: str, blob: bytes) -> int:
    crc = zlib.crc32(variant_label.encode("utf-8"))
    crc = zlib.crc32(text.encode("utf-8", "surrogatepass"), crc)
    return zlib.crc32(blob, crc)


class EmbeddingCache:
    """Vectors of one model (``fingerprint``) on disk. Safe across processes and crashes."""

    def __init__(self, cache_dir: Path, fingerprint: str, dim: int) -> None:
        self.cache_dir = cache_dir
        self.fingerprint = fingerprint
        self.dim = dim
        self.path = _ensure_dir(cache_dir / "embeddings") / f"{fingerprint}.sqlite"
        self.notes: list[str] = []
        self._variant_ids: dict[CacheVariant, int] = {}
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise CacheError(
                    f"The embedding cache '{self.path}' stayed locked by another process for "
                    f"{_BUSY_TIMEOUT_S:.0f} s; try again or use --no-cache."
                ) from None
            raise CacheError(
                f"Cannot open the embedding cache '{self.path}' ({exc}); give another folder "
                "with --cache-dir or use --no-cache."
            ) from None
        except sqlite3.DatabaseError:
            # Not a database any more (disk trouble, a partial copy): keep it for inspection
            # and start a fresh one; the vectors are recomputable.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            for suffix in ("-wal", "-shm"):
                try:
                    os.remove(str(self.path) + suffix)
                except OSError:
                    pass
            self.notes.append(
                f"The embedding cache file was damaged and has been moved to {aside.name}; "
                "vectors will be recomputed."
            )
            try:
                return self._connect()
            except sqlite3.DatabaseError as exc2:
                raise CacheError(
                    f"Cannot open the embedding cache '{self.path}' ({exc2}); use --no-cache."
                ) from None
        except OSError as exc:
            raise CacheError(
                f"Cannot open the embedding cache '{self.path}' ({exc.strerror or exc}); give "
                "another folder with --cache-dir or use --no-cache."
            ) from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=_BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            # WAL: readers never block the writer and a killed writer leaves the last commit.
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")
            _retry_busy(lambda: self._create_schema(conn))
            # A quick structural check: a mangled file fails here rather than mid-run.
            conn.execute("SELECT count(*) FROM variants").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS variants (id INTEGER PRIMARY KEY, clip_skip INTEGER,"
                " representation TEXT, context TEXT, precision TEXT,"
                " UNIQUE (clip_skip, representation, context, precision))"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (variant INTEGER NOT NULL, text TEXT NOT NULL,"
                " vector BLOB NOT NULL, checksum INTEGER NOT NULL, PRIMARY KEY (variant, text))"
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('fingerprint', ?), ('dim', ?)",
                (SCHEMA_VERSION, self.fingerprint, str(self.dim)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError("The embedding cache has been closed.")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading and writing --------------------------------------------------------------------
    def _variant_id(self, variant: CacheVariant, *, create: bool) -> int | None:
        vid = self._variant_ids.get(variant)
        if vid is not None:
            return vid
        params = (variant.clip_skip, variant.representation, variant.context, variant.precision)
        select = (
            "SELECT id FROM variants WHERE clip_skip = ? AND representation = ? AND context = ?"
            " AND precision = ?"
        )
        row = self.conn.execute(select, params).fetchone()
        if row is None and create:
            _retry_busy(lambda: self.conn.execute(
                "INSERT OR IGNORE INTO variants (clip_skip, representation, context, precision)"
                " VALUES (?, ?, ?, ?)", params,
            ))
            row = self.conn.execute(select, params).fetchone()
        if row is None:
            return None
        self._variant_ids[variant] = int(row[0])
        return int(row[0])

    def get_many(self, variant: CacheVariant, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors found for ``texts``; damaged rows are left out (so they get recomputed)."""
        try:
            vid = self._variant_id(variant, create=False)
            if vid is None:
                return {}
            label = variant.label()
            found: dict[str, np.ndarray] = {}
            unique = list(dict.fromkeys(texts))
            nbytes = self.dim * 4
            damaged = 0
            for i in range(0, len(unique), _QUERY_CHUNK):
                chunk = unique[i:i + _QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self.conn.execute(
                    f"SELECT text, vector, checksum FROM vectors WHERE variant = ?"
                    f" AND text IN ({marks})",
                    (vid, *chunk),
                )
                for text, blob, checksum in rows:
                    if (
                        not isinstance(blob, bytes)
                        or len(blob) != nbytes
                        or _checksum(label, text, blob) != checksum
                    ):
                        damaged += 1
                        continue
                    found[text] = np.frombuffer(blob, dtype="<f4")
            if damaged:
                self.notes.append(
                    f"{damaged} damaged cache entr{'y' if damaged == 1 else 'ies'} found; "
                    "recomputed."
                )
            return found
        except sqlite3.DatabaseError as exc:
            self._degrade(exc)
            return {}

    def put_many(self, variant: CacheVariant, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors in one transaction (all of them or none)."""
        if self._conn is None:
            return
        label = variant.label()
        rows = []
        for text, vec in items:
            blob = np.ascontiguousarray(vec, dtype="<f4").tobytes()
            if len(blob) != self.dim * 4:
                raise ValueError(f"vector for {text!r} has {len(blob) // 4} values, not {self.dim}")
            rows.append((text, blob, _checksum(label, text, blob)))
        if not rows:
            return
        try:
            vid = self._variant_id(variant, create=True)

            def write() -> None:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self.conn.executemany(
                        "INSERT OR REPLACE INTO vectors (variant, text, vector, checksum)"
                        " VALUES (?, ?, ?, ?)",
                        [(vid, t, b, c) for t, b, c in rows],
                    )
                    self.conn.execute("COMMIT")
                except BaseException:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise

            _retry_busy(write)
        except sqlite3.DatabaseError as exc:
            self._degrade(exc)

    def count(self, variant: CacheVariant | None = None) -> int:
        if variant is None:
            return int(self.conn.execute("SELECT count(*) FROM vectors").fetchone()[0])
        vid = self._variant_id(variant, create=False)
        if vid is None:
            return 0
        row = self.conn.execute("SELECT count(*) FROM vectors WHERE variant = ?", (vid,))
        return int(row.fetchone()[0])

    def _degrade(self, exc: sqlite3.DatabaseError) -> None:
        # A cache problem must not cost the user their results: carry on without it.
        self.notes.append(f"The embedding cache stopped working ({exc}); continuing without it.")
        self.close()


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry_busy(fn, attempts: int = 20):  # noqa: ANN001, ANN202 - small helper
    """Run ``fn``, retrying when SQLite reports a lock its busy handler could not wait out
    (setting WAL mode and upgrading a read to a write lock do not use the busy handler)."""
    delay = 0.01
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    return None


# -- fingerprint memo -----------------------------------------------------------------------


class SourceMemo:
    """Remembers what inspecting a weights file found (fingerprint, architecture, notes),
    keyed by the files' path, size, mtime and inode, so opening a model again costs a stat()
    instead of hashing hundreds of megabytes or importing torch for a .ckpt."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "sources"

    @staticmethod
    def key(identity: object) -> str:
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, identity: object) -> dict | None:
        path = self.dir / f"{self.key(identity)}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("identity") != json.loads(json.dumps(identity)):
            return None
        value = data.get("value")
        return value if isinstance(value, dict) else None

    def put(self, identity: object, value: Mapping) -> None:
        try:
            _ensure_dir(self.dir)
            atomic_write_text(
                self.dir / f"{self.key(identity)}.json",
                json.dumps({"identity": identity, "value": dict(value)}, sort_keys=True),
            )
        except (OSError, CacheError):
            pass  # memoising is an optimisation; failing to store it costs only time


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    from tagsmith.errors import InputError
    from tagsmith.fileio import atomic_write_bytes as write

    try:
        write(path, data)
    except InputError as exc:  # callers treat a cache that cannot be written as an OSError
        raise OSError(exc.message) from exc
