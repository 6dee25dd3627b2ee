"""Exact top-k cosine nearest neighbours by blocked matrix products.

A block of query rows is multiplied against every database row at once, its top k picked,
and the block's similarity matrix dropped before the next one, so peak memory is about
``memory_budget`` (256 MiB) on top of the inputs and the ``n x k`` results, never the full
``n x n`` matrix. Results are exact (no approximate index): for 140k Danbooru tags x
768 dimensions that is ~15 TFLOP, minutes on two CPU cores, seconds on a GPU.

Two backends give the same results: numpy (BLAS ``sgemm`` + ``argpartition``) and torch
(``mm`` + ``topk``), used when torch is already imported (the encoder has loaded it) or when
asked for; it is the faster of the two on CPU and the only one that can use a GPU.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Similarity matrix bytes per block (query rows x database rows x float32).
DEFAULT_MEMORY_BUDGET = 256 * 2**20

ProgressCallback = Callable[[int, int], None]  # (query rows done, total query rows)


@dataclass(frozen=True)
class Neighbors:
    """Top-k neighbours of each query row, most similar first (ties by lower index)."""

    indices: np.ndarray  # (n_queries, k) int64 rows of the database
    similarities: np.ndarray  # (n_queries, k) float32 cosine similarity

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32; all-zero rows stay zero (similarity 0 to all)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def block_rows_for(
    n_database: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, bytes_per_cell: int = 4
) -> int:
    """Query rows per block so one block's work arrays fit ``memory_budget`` bytes."""
    return int(max(16, min(8192, memory_budget // max(1, bytes_per_cell * n_database))))


def nearest_neighbors(
    vectors: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    exclude_self: bool | None = None,
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: str = "auto",
    device: str | None = None,
    progress: ProgressCallback | None = None,
    normalized: bool = False,
    products: str = "auto",
) -> Neighbors:
    """Exact top-``k`` cosine neighbours among the rows of ``vectors``.

    With ``queries`` (an ``(m, dim)`` array), neighbours of each query row among ``vectors``;
    without, of each row of ``vectors`` among the others. ``exclude_self`` (default: true when
    ``queries`` is None) drops the row itself, so ``k`` is capped at ``n - 1``. ``backend`` is
    ``"numpy"``, ``"torch"`` or ``"auto"`` (torch when it is already imported, else numpy);
    ``device`` is a torch device (default: CUDA when available). ``normalized=True`` says
    the rows are already unit float32 (saves a copy of the inputs). Ctrl-C between blocks
    raises ``KeyboardInterrupt`` with nothing half-done left behind.

    ``products`` (torch only): "fp32", or "fp16"/"bf16" for a low-precision pass whose
    candidates are re-checked in fp32 with a proven error bound (``_rerank_topk``: the same
    neighbours as fp32); "auto" is fp16 on a CUDA device, fp32 elsewhere.
    """
    db = np.asarray(vectors, dtype=np.float32) if normalized else normalize_rows(vectors)
    if db.ndim != 2:
        raise ValueError("vectors must be a 2-D array")
    self_search = queries is None
    q = db if self_search else (
        np.asarray(queries, dtype=np.float32) if normalized else normalize_rows(queries)
    )
    if exclude_self is None:
        exclude_self = self_search
    if exclude_self and not self_search:
        raise ValueError("exclude_self needs queries=None (rows are their own queries)")
    n_db = db.shape[0]
    k = min(int(k), n_db - (1 if exclude_self else 0))
    n_q = q.shape[0]
    if k <= 0 or n_q == 0:
        return Neighbors(
            np.zeros((n_q, 0), dtype=np.int64), np.zeros((n_q, 0), dtype=np.float32)
        )
    if backend == "auto":
        backend = "torch" if "torch" in sys.modules else "numpy"
    # numpy's argpartition returns an int64 index per cell besides the float32 similarity.
    rows = block_rows or block_rows_for(n_db, memory_budget, 12 if backend == "numpy" else 4)
    ops: _NumpyOps | _TorchOps
    if backend == "torch":
        ops = _TorchOps(device)
        ctx = ops.torch.inference_mode()
    elif backend == "numpy":
        ops = _NumpyOps()
        ctx = contextlib.nullcontext()
    else:
        raise ValueError(f"unknown backend {backend!r}")
    with ctx:
        if backend == "torch":
            assert isinstance(ops, _TorchOps)
            low = products if products != "auto" else (
                "fp16" if ops.dev.type == "cuda" else "fp32")
            if low != "fp32":
                return _rerank_topk(ops, db, None if self_search else q, k, exclude_self, low,
                                    memory_budget, progress)
        return _blocked_topk(ops, db, None if self_search else q, k, exclude_self, rows, progress)


# Unit roundoff of the low-precision formats a product pass may use.
_UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}


def product_error_bound(dim: int, products: str) -> float:
    """A bound on |low-precision product - exact| for two unit vectors of ``dim`` values.

    Rounding each input to the format moves each term q_i x_i by at most (2u + u^2)|q_i x_i|,
    so the sum moves by at most (2u + u^2) |q| |x| = 2u + u^2 (Cauchy-Schwarz); rounding the
    result to the format adds u (|q.x| <= 1), fp32 accumulation at most dim * 2^-24, and fp16's
    subnormals at most 2^-25 sqrt(dim). Doubled for safety.
    """
    u = _UNIT_ROUNDOFF[products]
    return 2.0 * (3 * u + u * u + dim * 2.0**-24 + 2.0**-25 * dim**0.5)


def _rerank_topk(
    ops: _TorchOps,
    db: np.ndarray,
    q: np.ndarray | None,
    k: int,
    exclude_self: bool,
    products: str,
    memory_budget: int,
    progress: ProgressCallback | None,
) -> Neighbors:
    """Exact top k from low-precision products (tensor cores on a GPU), without a host sync
    per strip.

    Per strip of queries: the low-precision products pick ``k + margin`` candidates, whose
    similarities are recomputed in fp32 from the fp32 vectors; the best k of those are the
    answer. It is provably the fp32 answer when every non-candidate is out of reach: its low
    product is at most the smallest candidate's, so its true similarity is at most that plus
    the error bound ``eps``; if that is below the k-th re-checked similarity, no non-candidate
    can enter the top k. Rows where it cannot be proven (near-ties, duplicates) are flagged on
    the device and redone with full fp32 strips at the end: one sync for the whole search.
    """
    torch = ops.torch
    dev = ops.dev
    low = torch.float16 if products == "fp16" else torch.bfloat16
    eps = product_error_bound(db.shape[1], products)
    n_db = db.shape[0]
    db32 = ops.put(db)
    q32 = db32 if q is None else ops.put(q)
    db_low = db32.to(low)
    q_low = db_low if q is None else q32.to(low)
    n_q = q32.shape[0]
    margin = min(n_db, k + max(k, 16))
    rows = block_rows_for(n_db, memory_budget, 2 + 4)  # the low strip and its fp32 copy
    rows = max(1, min(rows, memory_budget // max(1, margin * db.shape[1] * 4)))
    best_sim = torch.empty((n_q, k), dtype=torch.float32, device=dev)
    best_idx = torch.empty((n_q, k), dtype=torch.int64, device=dev)
    unproven = torch.zeros(n_q, dtype=torch.bool, device=dev)
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        strip = (q_low[start:stop] @ db_low.T).float()
        if exclude_self:
            r = torch.arange(stop - start, device=dev)
            strip[r, r + start] = -float("inf")
        approx, cand = torch.topk(strip, margin, dim=1, sorted=False)
        del strip
        exact = torch.einsum("rd,rkd->rk", q32[start:stop], db32[cand])
        if exclude_self:
            exact = exact.masked_fill(cand == torch.arange(start, stop, device=dev)[:, None],
                                      -float("inf"))
        top, pos = torch.topk(exact, k, dim=1, sorted=False)
        best_sim[start:stop] = top
        best_idx[start:stop] = torch.gather(cand, 1, pos)
        if margin < n_db - (1 if exclude_self else 0):
            reach = approx.amin(dim=1) + eps  # the most a non-candidate can be
            unproven[start:stop] = reach >= top.amin(dim=1)
        if progress is not None:
            progress(stop, n_q)
    redo = torch.nonzero(unproven).squeeze(1)  # the one sync
    if len(redo):
        for i in range(0, len(redo), max(1, memory_budget // (4 * n_db))):
            ids = redo[i : i + max(1, memory_budget // (4 * n_db))]
            strip = q32[ids] @ db32.T
            if exclude_self:
                strip[torch.arange(len(ids), device=dev), ids] = -float("inf")
            top, idx = torch.topk(strip, k, dim=1, sorted=False)
            best_sim[ids] = top
            best_idx[ids] = idx
    sim_np = ops.get(best_sim)
    idx_np = ops.get(best_idx).astype(np.int64, copy=False)
    order = np.lexsort((idx_np, -sim_np), axis=1)
    return Neighbors(
        np.take_along_axis(idx_np, order, axis=1),
        np.take_along_axis(sim_np, order, axis=1).astype(np.float32, copy=False),
    )


class _NumpyOps:
    inf = np.inf

    def put(self, x: np.ndarray) -> np.ndarray:
        return x

    def get(self, x: np.ndarray) -> np.ndarray:
        return x

    def full(self, shape: tuple[int, int], value: float, integer: bool = False) -> np.ndarray:
        return np.full(shape, value, dtype=np.int64 if integer else np.float32)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n)

    def mm(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T

    def topk(self, x: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest along ``axis``, unordered, with their positions."""
        size = x.shape[axis]
        if k >= size:
            idx = np.broadcast_to(
                np.arange(size).reshape((-1, 1) if axis == 0 else (1, -1)), x.shape
            )
            return x, np.ascontiguousarray(idx)
        idx = np.argpartition(x, size - k, axis=axis)
        idx = idx[size - k :] if axis == 0 else idx[:, size - k :]
        return np.take_along_axis(x, idx, axis=axis), idx

    def cat(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs, axis=1)

    def take(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, idx, axis=1)

    def beaten(self, strip: np.ndarray, floor: np.ndarray) -> np.ndarray:
        """Columns of ``strip`` whose largest value reaches ``floor`` (one per column)."""
        return np.flatnonzero(strip.max(axis=0) >= floor)

    def row_min(self, x: np.ndarray) -> np.ndarray:
        return x.min(axis=1)

    def columns(self, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return x[:, cols]


class _TorchOps:
    inf = float("inf")

    def __init__(self, device: str | None) -> None:
        import torch

        self.torch = torch
        self.dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def put(self, x: np.ndarray):  # noqa: ANN201 - torch.Tensor
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)

    def get(self, x) -> np.ndarray:  # noqa: ANN001
        return x.cpu().numpy()

    def full(self, shape: tuple[int, int], value: float, integer: bool = False):  # noqa: ANN201
        dtype = self.torch.int64 if integer else self.torch.float32
        return self.torch.full(shape, value, dtype=dtype, device=self.dev)

    def arange(self, n: int):  # noqa: ANN201
        return self.torch.arange(n, device=self.dev)

    def mm(self, a, b):  # noqa: ANN001, ANN201
        if self.dev.type == "cpu":
            # numpy's BLAS (OpenBLAS) ran these strip products 1.2-1.9x faster than torch's
            # MKL on the 2-core AMD EPYC here; the result is shared, not copied
            return self.torch.from_numpy(a.numpy() @ b.numpy().T)
        return a @ b.T

    def topk(self, x, k: int, axis: int):  # noqa: ANN001, ANN201
        return self.torch.topk(x, min(k, x.shape[axis]), dim=axis, sorted=False)

    def cat(self, xs: list):  # noqa: ANN201
        return self.torch.cat(xs, dim=1)

    def take(self, x, idx):  # noqa: ANN001, ANN201
        return self.torch.gather(x, 1, idx)

    def beaten(self, strip, floor):  # noqa: ANN001, ANN201
        return self.torch.nonzero(strip.amax(dim=0) >= floor).squeeze(1)

    def row_min(self, x):  # noqa: ANN001, ANN201
        return x.amin(dim=1)

    def columns(self, x, cols):  # noqa: ANN001, ANN201
        return x.index_select(1, cols)


def _blocked_topk(
    ops: _NumpyOps | _TorchOps,
    db: np.ndarray,
    q: np.ndarray | None,
    k: int,
    exclude_self: bool,
    rows: int,
    progress: ProgressCallback | None,
) -> Neighbors:
    """Top k by strips of query rows; a self-search uses each product for both of its rows.

    In a self-search the similarity matrix is symmetric, so strip ``I`` is only multiplied
    against rows from ``I`` on (half the products of a plain strip scan): its row-wise top k
    serves the strip's own rows, its column-wise top k the later rows, and both are merged into
    running top-k lists. Peak memory is one ``rows x n`` strip plus the ``n x k`` results.
    """
    n_db = db.shape[0]
    symmetric = q is None
    n_q = n_db if q is None else q.shape[0]
    dbx = ops.put(db)
    qx = dbx if q is None else ops.put(q)
    best_sim = ops.full((n_q, k), -ops.inf)
    best_idx = ops.full((n_q, k), -1, integer=True)

    def merge(rows, sim, idx) -> None:  # noqa: ANN001 - rows: a slice or an index array
        s_all = ops.cat([best_sim[rows], sim])
        i_all = ops.cat([best_idx[rows], idx])
        top_sim, pos = ops.topk(s_all, k, axis=1)
        best_sim[rows] = top_sim
        best_idx[rows] = ops.take(i_all, pos)

    total_work = n_q * (n_db + 1) // 2 if symmetric else n_q * n_db
    done_work = 0
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        col0 = start if symmetric else 0
        strip = ops.mm(qx[start:stop], dbx[col0:])
        if exclude_self:
            r = ops.arange(stop - start)
            strip[r, r] = -ops.inf
        sim, idx = ops.topk(strip, k, axis=1)
        merge(slice(start, stop), sim, idx + col0)
        if symmetric and stop < n_q:
            # Column j of the rest of the strip holds row (stop + j)'s similarities to this
            # strip's rows, which that row's own strip never computes. Only columns whose
            # best value reaches their row's current k-th best can change it: after the
            # first strips that is a few percent of them, so most of the strip is read once
            # (a max) instead of sorted.
            rest = strip[:, stop - start :]
            cols = ops.beaten(rest, ops.row_min(best_sim[stop:]))
            if len(cols):
                sim, idx = ops.topk(ops.columns(rest, cols), k, axis=0)
                merge(cols + stop, sim.T, idx.T + start)
        del strip
        done_work += (stop - start) * (n_db - col0)
        if progress is not None:
            progress(min(n_q, round(n_q * done_work / total_work)), n_q)
    sim_np = ops.get(best_sim)
    idx_np = ops.get(best_idx).astype(np.int64, copy=False)
    # Most similar first, ties by lower index.
    order = np.lexsort((idx_np, -sim_np), axis=1)
    return Neighbors(
        np.take_along_axis(idx_np, order, axis=1),
        np.take_along_axis(sim_np, order, axis=1).astype(np.float32, copy=False),
    )
