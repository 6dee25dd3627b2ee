"""Exact top-k cosine neighbours: brute force vs tagsmith, one process, the same vectors.

- brute force: every query strip multiplied against all rows (numpy ``sgemm``), top k by
  ``argpartition`` per strip: N^2 products;
- tagsmith: ``nearest_neighbors`` as ``score`` calls it once the encoder has imported torch
  (symmetric strips: half the products, columns pruned by their row's k-th best);
- bf16 + re-check: ``products="bf16"``, the GPU's scheme on the CPU (bf16 products pick
  candidates, fp32 re-checks them under ``product_error_bound``, unproven rows redone).

Each result is compared with brute force: same neighbour indices (rows whose lists differ only
where two similarities are within 1e-6 are counted as ties) and the largest similarity gap.

Vectors: clustered random unit vectors like tag embeddings (``--n``, 768 dimensions, clusters
of ~50), or ``--vectors file.npy`` (e.g. the vectors benchmarks/score.py saves from the
full-size random-weight encoder).

    python benchmarks/neighbors.py --n 16000 [--n 60000] [--k 5] [--vectors v.npy]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# benchmarks/tokenize.py would shadow the standard library's tokenize module (torch imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402, F401 - tagsmith picks the torch backend, as in `score`

from tagsmith.analysis.neighbors import nearest_neighbors, normalize_rows  # noqa: E402


def clustered(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 50), dim)).astype(np.float32)
    return normalize_rows(centres[rng.integers(0, len(centres), n)]
                          + 0.6 * rng.standard_normal((n, dim)).astype(np.float32))


def brute_force(x: np.ndarray, k: int, rows: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    idx = np.empty((len(x), k), dtype=np.int64)
    sim = np.empty((len(x), k), dtype=np.float32)
    for s in range(0, len(x), rows):
        strip = x[s : s + rows] @ x.T
        r = np.arange(len(strip))
        strip[r, r + s] = -np.inf
        part = np.argpartition(-strip, k, axis=1)[:, :k]
        vals = np.take_along_axis(strip, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        idx[s : s + rows] = np.take_along_axis(part, order, axis=1)
        sim[s : s + rows] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def agreement(got_idx: np.ndarray, got_sim: np.ndarray, ref_idx: np.ndarray,
              ref_sim: np.ndarray) -> str:
    differ = np.flatnonzero((got_idx != ref_idx).any(axis=1))
    # A differing row is a tie when its k-th similarities agree and the sets differ only at
    # values within 1e-6 of each other (fp32 summation order).
    ties = sum(np.allclose(got_sim[i], ref_sim[i], atol=1e-6) for i in differ)
    gap = float(np.abs(got_sim - ref_sim).max())
    return (f"rows differing {len(differ) - ties}, at fp32 ties {ties}, "
            f"max |sim gap| {gap:.1e}")


def bench(x: np.ndarray, k: int) -> None:
    n = len(x)
    print(f"\n{n:,} x {x.shape[1]} unit vectors, k={k}, CPU x{os.cpu_count()}, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    ref_idx, ref_sim = brute_force(x, k)
    t_brute = time.perf_counter() - t0
    print(f"  brute force            {t_brute:8.2f}s")
    for label, products in (("tagsmith", "auto"), ("bf16 + fp32 re-check", "bf16")):
        t0 = time.perf_counter()
        got = nearest_neighbors(x, k, normalized=True, products=products)
        t = time.perf_counter() - t0
        print(f"  {label:<22} {t:8.2f}s  brute / this {t_brute / t:5.2f}x  "
              f"{agreement(got.indices, got.similarities, ref_idx, ref_sim)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, action="append", help="vector count (repeatable)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--vectors", default=None, help="a .npy file of vectors instead")
    args = p.parse_args()
    if args.vectors:
        full = normalize_rows(np.load(args.vectors))
        for n in args.n or [len(full)]:
            bench(np.ascontiguousarray(full[:n]), args.k)
    else:
        for n in args.n or [16000]:
            bench(clustered(n), args.k)


if __name__ == "__main__":
    main()
