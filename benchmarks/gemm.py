"""The fp32 matrix-product limit of this machine, and what it says about `score`'s floor.

Prints numpy (OpenBLAS) and torch GEMM rates on 1 and on all cores for N = 2048, 4096, 8192,
then suggest-sized products (M rows x 768 @ 768 x 3072) on 1 and 2 BLAS threads, and the
arithmetic floor of a full Danbooru `score` at the best rate measured: 87 TFLOP of encoder
GEMMs (511k positions after prefix sharing) plus 15 TFLOP of neighbour products. A shared
machine lowers every number: the load average is printed beside each line; run it quiet.

    python benchmarks/gemm.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # benchmarks/tokenize.py would shadow the standard library's tokenize

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ENCODE_TFLOP = 87.0
NEIGHBOUR_TFLOP = 15.0


def best_seconds(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 4096, fewer repeats")
    a = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    cores = os.cpu_count() or 1
    sizes = (2048, 4096) if a.quick else (2048, 4096, 8192)
    best = 0.0
    print(f"{cores} cores; load average {load()}")
    for n in sizes:
        x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        tx = torch.from_numpy(x)
        reps = 2 if n >= 8192 or a.quick else 4
        for threads in sorted({1, cores}):
            with threadpool_limits(threads, user_api="blas"):
                t_np = best_seconds(lambda: x @ x, reps)  # noqa: B023
            torch.set_num_threads(threads)
            t_pt = best_seconds(lambda: tx @ tx, reps)  # noqa: B023
            rate_np, rate_pt = 2 * n**3 / t_np / 1e9, 2 * n**3 / t_pt / 1e9
            best = max(best, rate_np, rate_pt)
            print(f"  N={n:5d} {threads} thread{'s' if threads > 1 else ' '}: numpy "
                  f"{rate_np:6.1f} GFLOP/s, torch {rate_pt:6.1f} GFLOP/s   (load {load()})",
                  flush=True)
    print("suggest-sized products, M x 768 @ 768 x 3072 (ms, best of 10):")
    w = np.random.default_rng(1).standard_normal((768, 3072), dtype=np.float32)
    for m in (80, 256, 512, 1024):
        h = np.random.default_rng(2).standard_normal((m, 768), dtype=np.float32)
        times = []
        for threads in (1, min(2, cores)):
            with threadpool_limits(threads, user_api="blas"):
                times.append(best_seconds(lambda: h @ w, 10) * 1e3)  # noqa: B023
        print(f"  M={m:5d}: 1 thread {times[0]:6.2f}, 2 threads {times[1]:6.2f}   "
              f"(load {load()})")
    total = ENCODE_TFLOP + NEIGHBOUR_TFLOP
    print(f"best fp32 GEMM rate here: {best:.0f} GFLOP/s -> a full Danbooru score is "
          f"{total:.0f} TFLOP = {total * 1e3 / best / 60:.1f} minutes of pure arithmetic "
          f"(encoder {ENCODE_TFLOP * 1e3 / best / 60:.1f}, neighbours "
          f"{NEIGHBOUR_TFLOP * 1e3 / best / 60:.1f})")


if __name__ == "__main__":
    main()
