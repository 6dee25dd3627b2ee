"""Reading safetensors files without torch: the header checked against the file size, one
tensor as a numpy array, and sniffing a file's format from its first bytes."""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagsmith.errors import ModelNotFoundError, UnsupportedModelError

SAFETENSORS_SUFFIXES = (".safetensors",)


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# Header of a legacy (pre-zip) torch.save file: pickle protocol 2 then torch's magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


_MAX_HEADER = 100 * 1024 * 1024


# safetensors dtype code -> bytes per element, and our short names for messages.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes sit inside a safetensors file."""

    file: Path
    key: str
    dtype: str  # safetensors code: F32, F16, BF16, I64, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int
    # A canonical tensor can be part of a stored one (OpenCLIP's fused q/k/v ``in_proj``: rows
    # [a, b) of ``key``, bytes already narrowed) or its transpose (OpenCLIP's bare
    # ``text_projection`` is used as x @ P, a Linear weight is P^T); ``shape`` is canonical.
    rows: tuple[int, int] | None = None
    transposed: bool = False

    def part(self, rows: tuple[int, int]) -> TensorRef:
        """Rows [a, b) of this (row-major) tensor, without reading it."""
        a, b = rows
        row_bytes = (self.end - self.start) // self.shape[0]
        return TensorRef(self.file, self.key, self.dtype, (b - a, *self.shape[1:]),
                         self.start + a * row_bytes, self.start + b * row_bytes, rows)

    def transpose(self) -> TensorRef:
        return TensorRef(self.file, self.key, self.dtype, tuple(reversed(self.shape)),
                         self.start, self.end, self.rows, not self.transposed)


def sniff_format(path: Path) -> str:
    """'safetensors', 'zip-pickle', 'legacy-pickle' or 'unknown', from the first bytes."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
            fh.seek(0, 2)
            if fh.tell() > len(head):
                fh.seek(-1, 2)
            tail = fh.read(1)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
    if head.startswith(b"PK\x03\x04"):
        return "zip-pickle"
    # torch's legacy format, or any pickle (protocol 2-5): torch.load(weights_only=True) judges it.
    is_pickle = head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    if head.startswith(_LEGACY_TORCH_MAGIC[:4]) or is_pickle:
        return "legacy-pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= _MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    # Protocol 0/1 pickles have no header: they open with MARK, EMPTY_DICT/LIST or GLOBAL and
    # end with STOP. Called a pickle (and then only ever opened with weights_only=True).
    if head[:1] in (b"(", b"}", b"]", b"c") and tail == b".":
        return "legacy-pickle"
    return "unknown"


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorRef]
    metadata: dict
    data_start: int
    file_size: int


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse a safetensors header and check it against the file size (pure Python).

    Raises UnsupportedModelError naming what is wrong: not safetensors, damaged, truncated.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UnsupportedModelError(
                    f"'{path}' is too short ({size} bytes) to be a safetensors file; it may be "
                    "an interrupted download."
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise UnsupportedModelError(
                    f"'{path}' is not a safetensors file (its first bytes do not describe a "
                    "header); it may be damaged or in another format."
                )
            if 8 + n > size:
                raise UnsupportedModelError(
                    f"'{path}' is truncated: its header alone needs {8 + n:,} bytes but the file "
                    f"has {size:,}; it may be an interrupted download."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnsupportedModelError(
            f"'{path}' is damaged or not a safetensors file (its header is not valid JSON)."
        ) from None
    data_start = 8 + n
    data_len = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorRef] = {}
    need = 0
    try:
        for key, info in header.items():
            dtype = str(info["dtype"])
            shape = tuple(_dim(d) for d in info["shape"])
            begin, end = (_dim(x) for x in info["data_offsets"])
            if dtype not in DTYPE_SIZES or end < begin:
                raise ValueError(key)
            # Python integers: a shape such as [2**62, 4] must not wrap around in int64.
            if end - begin != DTYPE_SIZES[dtype] * math.prod(shape):
                raise ValueError(key)
            need = max(need, end)
            tensors[key] = TensorRef(path, key, dtype, shape, data_start + begin, data_start + end)
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(
            f"'{path}' is damaged: its safetensors header describes a tensor inconsistently."
        ) from None
    if need > data_len:
        raise UnsupportedModelError(
            f"'{path}' is truncated: its header describes {need:,} bytes of tensors but only "
            f"{data_len:,} are in the file; it may be an interrupted download or copy."
        )
    return SafetensorsHeader(tensors, metadata if isinstance(metadata, dict) else {},
                             data_start, size)


def _dim(value: object) -> int:
    """A size or offset from a header: a non-negative JSON integer below 2**53."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 53:
        raise ValueError(value)
    return value


_MAPS: dict[tuple, mmap.mmap] = {}


def mapped_tensor_array(ref: TensorRef) -> np.ndarray:
    """One fp32/fp16 tensor as a read-only array over the memory-mapped file (no copy; one
    mapping per file, kept for the process); other dtypes are read as ``read_tensor_array``."""
    np_dtype = {"F32": "<f4", "F16": "<f2"}.get(ref.dtype)
    if np_dtype is None:
        return read_tensor_array(ref)
    st = ref.file.stat()
    key = (str(ref.file), st.st_ino, st.st_size, st.st_mtime_ns)  # a rewritten file: a new map
    mm = _MAPS.get(key)
    if mm is None:
        with ref.file.open("rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        _MAPS[key] = mm
    count = int(np.prod(ref.shape, dtype=np.int64))
    arr = np.frombuffer(mm, dtype=np_dtype, count=count, offset=ref.start)
    if ref.transposed:
        return arr.reshape(tuple(reversed(ref.shape))).T
    return arr.reshape(ref.shape)


def read_tensor_array(ref: TensorRef) -> np.ndarray:
    """One tensor from a safetensors file as a numpy array (bf16 widened to float32)."""
    count = int(np.prod(ref.shape, dtype=np.int64))
    with ref.file.open("rb") as fh:
        fh.seek(ref.start)
        if ref.dtype == "BF16":
            raw = np.fromfile(fh, dtype="<u2", count=count)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            np_dtype = {
                "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2",
                "U32": "<u4", "U64": "<u8",
            }.get(ref.dtype)
            if np_dtype is None:
                raise UnsupportedModelError(
                    f"'{ref.file}' stores {ref.key} as {ref.dtype}, which tagsmith cannot read."
                )
            arr = np.fromfile(fh, dtype=np_dtype, count=count)
    if arr.size != count:
        raise UnsupportedModelError(f"'{ref.file}' is truncated inside tensor {ref.key}.")
    if ref.transposed:
        return arr.reshape(tuple(reversed(ref.shape))).T
    return arr.reshape(ref.shape)
