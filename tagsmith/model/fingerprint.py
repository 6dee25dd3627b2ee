"""The model fingerprint: a content hash of the encoder's tensors that keys every cache."""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.model.config import POSITION_IDS, EncoderConfig
from tagsmith.model.safetensors_file import DTYPE_SIZES
from tagsmith.model.sources import TextEncoderSource

FINGERPRINT_VERSION = "tagsmith-te-1"


class FingerprintHasher:
    """Content hash of an encoder: architecture, then each tensor's name, dtype, shape, bytes.

    Canonical names (no file prefix) make the same weights saved as an HF folder or an A1111
    single file hash alike, so they share cache entries. position_ids are left out: tagsmith
    never uses the stored ones.
    """

    def __init__(self, config: EncoderConfig) -> None:
        self._h = hashlib.sha256()
        self._h.update(FINGERPRINT_VERSION.encode())
        arch = {k: v for k, v in config.to_dict().items()}
        self._h.update(json.dumps(arch, sort_keys=True).encode())

    def update(self, name: str, dtype: str, shape: Iterable[int], data: memoryview | bytes) -> None:
        self._h.update(f"\n{name}|{dtype}|{','.join(map(str, shape))}\n".encode())
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


SAMPLE_BLOCKS = 256
SAMPLE_BLOCK_BYTES = 4096


def sample_digest(path: Path) -> str:
    """SHA-256 of the file's first 64 KiB (a safetensors header), its last block and 256
    evenly spaced 4 KiB blocks: ~1 MB read whatever the size. Part of the memo key, so that a
    model rewritten in place with the same size, inode and restored mtime is hashed afresh
    instead of being served the old model's fingerprint (and cached vectors)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        h.update(fh.read(1 << 16))
        step = max(SAMPLE_BLOCK_BYTES, size // SAMPLE_BLOCKS)
        for offset in range(0, size, step):
            fh.seek(offset)
            h.update(fh.read(SAMPLE_BLOCK_BYTES))
        fh.seek(max(0, size - SAMPLE_BLOCK_BYTES))
        h.update(fh.read(SAMPLE_BLOCK_BYTES))
    return h.hexdigest()


def fingerprint_names(tensors: Iterable[str]) -> list[str]:
    return sorted(k for k in tensors if k != POSITION_IDS)


def safetensors_fingerprint(source: TextEncoderSource) -> str:
    """Hash the encoder's tensors straight from the memory-mapped file(s) (~0.3 s per 500 MB).
    An SDXL source hashes both encoders (``sdxl.sdxl_fingerprint``)."""
    if source.parts is not None:
        from tagsmith.model.sdxl import sdxl_fingerprint

        return sdxl_fingerprint({k: safetensors_fingerprint(p) for k, p in source.parts.items()})
    assert source.tensors is not None and source.config is not None
    hasher = FingerprintHasher(source.config)
    maps: dict[Path, mmap.mmap] = {}
    try:
        for name in fingerprint_names(source.tensors):
            ref = source.tensors[name]
            mm = maps.get(ref.file)
            if mm is None:
                with ref.file.open("rb") as fh:
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                maps[ref.file] = mm
            view = memoryview(mm)[ref.start:ref.end]
            try:
                if ref.transposed:
                    # hash the canonical (transposed) bytes, as a diffusers folder stores them
                    size = DTYPE_SIZES[ref.dtype]
                    raw = np.frombuffer(view, dtype=f"<u{size}" if size > 1 else "u1")
                    data = np.ascontiguousarray(raw.reshape(tuple(reversed(ref.shape))).T)
                    del raw
                    hasher.update(name, ref.dtype, ref.shape, data.tobytes())
                else:
                    hasher.update(name, ref.dtype, ref.shape, view)
            finally:
                view.release()
    finally:
        for mm in maps.values():
            mm.close()
    return hasher.hexdigest()


def memo_identity(source: TextEncoderSource) -> dict[str, Any]:
    """What identifies a model source's files cheaply, for the fingerprint memo."""
    cfg = dict(source.folder_config or {})
    return {
        "v": FINGERPRINT_VERSION,
        "format": source.format,
        "files": source.file_stats(),
        "samples": [sample_digest(f) for f in source.files],
        "heads": cfg.get("num_attention_heads"),
        "act": cfg.get("hidden_act"),
        "eps": cfg.get("layer_norm_eps"),
    }
