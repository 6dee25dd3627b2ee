"""Exact top-k cosine neighbours against scikit-learn and a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tagsmith.analysis.neighbors import (
    Neighbors,
    block_rows_for,
    nearest_neighbors,
    normalize_rows,
)

BACKENDS = ["numpy", "torch"]


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 20), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    return (x * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)  # lengths must not matter


def reference(x: np.ndarray, q: np.ndarray | None, k: int, exclude_self: bool):
    """Float64 brute force: the full similarity matrix, sorted by (-sim, index)."""
    xn = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), 1e-300)
    qq = xn if q is None else q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    sims = qq @ xn.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(sims.shape[1]), sims.shape), -sims), axis=1)
    return order[:, :k], np.take_along_axis(sims, order[:, :k], axis=1), sims


def assert_same_up_to_ties(got: Neighbors, ref_idx, ref_sim, full_sims, tol=1e-5) -> None:
    assert got.indices.shape == ref_idx.shape
    assert got.indices.dtype == np.int64 and got.similarities.dtype == np.float32
    # Similarities are the exact top k ...
    np.testing.assert_allclose(got.similarities, ref_sim, atol=tol)
    # ... each index really has the similarity reported for it ...
    true = np.take_along_axis(full_sims, got.indices, axis=1)
    np.testing.assert_allclose(got.similarities, true, atol=tol)
    # ... no row repeats a neighbour, and indices agree wherever there is no near-tie.
    assert all(len(set(r)) == len(r) for r in got.indices.tolist())
    clear = np.ones_like(ref_sim, dtype=bool)
    clear[:, 1:] &= np.abs(np.diff(ref_sim, axis=1)) > tol
    clear[:, :-1] &= np.abs(np.diff(ref_sim, axis=1)) > tol
    assert (got.indices[clear] == ref_idx[clear]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_rows", [None, 7, 64])
def test_self_search_matches_sklearn(backend: str, block_rows: int | None) -> None:
    from sklearn.neighbors import NearestNeighbors

    x = clustered(300)
    k = 8
    got = nearest_neighbors(x, k, backend=backend, block_rows=block_rows)
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x)
    dist, idx = nn.kneighbors(x)
    # sklearn returns each point as its own first neighbour; drop it.
    assert (idx[:, 0] == np.arange(len(x))).all()
    sk_idx, sk_sim = idx[:, 1:], (1 - dist[:, 1:]).astype(np.float32)
    ref_idx, ref_sim, full = reference(x, None, k, True)
    np.testing.assert_allclose(got.similarities, sk_sim, atol=1e-5)
    assert_same_up_to_ties(got, ref_idx, ref_sim, full)
    assert (got.indices == sk_idx).mean() > 0.99
    assert not (got.indices == np.arange(len(x))[:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_against_database(backend: str) -> None:
    x = clustered(200, seed=1)
    q = clustered(37, seed=2)
    got = nearest_neighbors(x, 5, queries=q, backend=backend, block_rows=10)
    ref_idx, ref_sim, full = reference(x, q, 5, False)
    assert_same_up_to_ties(got, ref_idx, ref_sim, full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_self(backend: str) -> None:
    x = clustered(50)
    got = nearest_neighbors(x, 3, exclude_self=False, backend=backend, block_rows=16)
    assert (got.indices[:, 0] == np.arange(50)).all()
    np.testing.assert_allclose(got.similarities[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_capped_and_edge_sizes(backend: str) -> None:
    x = clustered(6)
    got = nearest_neighbors(x, 50, backend=backend)
    assert got.indices.shape == (6, 5) and got.k == 5 and len(got) == 6
    for row, i in zip(got.indices, range(6)):
        assert sorted(row.tolist()) == [j for j in range(6) if j != i]
    one = nearest_neighbors(x[:1], 3, backend=backend)
    assert one.indices.shape == (1, 0)
    empty = nearest_neighbors(np.zeros((0, 4), np.float32), 3, backend=backend)
    assert empty.indices.shape == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors_and_exact_ties(backend: str) -> None:
    x = np.array([[1, 0], [2, 0], [0, 0], [0, 3], [1, 0]], dtype=np.float32)
    got = nearest_neighbors(x, 4, backend=backend, block_rows=2)
    # Rows 0, 1 and 4 point the same way: ties are broken by the lower index.
    assert got.indices[0].tolist()[:2] == [1, 4]
    assert got.indices[4].tolist()[:2] == [0, 1]
    np.testing.assert_allclose(got.similarities[0], [1, 1, 0, 0], atol=1e-6)
    assert got.indices[0].tolist()[2:] == [2, 3]
    # A zero vector is similar to nothing (0), not NaN.
    assert np.isfinite(got.similarities).all()
    np.testing.assert_allclose(got.similarities[2], 0, atol=1e-6)


def test_backends_agree() -> None:
    x = clustered(500, dim=64, seed=5)
    a = nearest_neighbors(x, 10, backend="numpy", block_rows=33)
    b = nearest_neighbors(x, 10, backend="torch", block_rows=100)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-5)
    assert (a.indices == b.indices).mean() > 0.99


def test_progress_reaches_total_monotonically() -> None:
    seen: list[tuple[int, int]] = []
    nearest_neighbors(clustered(100), 3, block_rows=9, progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 100 and {t for _, t in seen} == {100}
    assert len(seen) == 12  # ceil(100 / 9) strips


def test_auto_backend_and_bad_arguments() -> None:
    x = clustered(20)
    assert nearest_neighbors(x, 2).indices.shape == (20, 2)  # torch is imported by now: fine
    with pytest.raises(ValueError, match="unknown backend"):
        nearest_neighbors(x, 2, backend="faiss")
    with pytest.raises(ValueError, match="exclude_self"):
        nearest_neighbors(x, 2, queries=x, exclude_self=True)


def test_block_rows_bounded_by_budget() -> None:
    assert block_rows_for(140_782) == 476  # 256 MiB / (140,782 x 4 bytes)
    assert block_rows_for(140_782, 64 * 2**20) == 119
    assert block_rows_for(10) == 8192 and block_rows_for(10**9) == 16
    assert block_rows_for(140_782, bytes_per_cell=12) == 158


def test_normalize_rows() -> None:
    x = normalize_rows(np.array([[3, 4], [0, 0]], dtype=np.float64))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0, 0]])


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(2, 40), st.integers(1, 6)),
        elements=st.integers(-3, 3).map(float),
    ),
    k=st.integers(1, 6),
    block=st.integers(1, 12),
)
def test_property_against_brute_force(x: np.ndarray, k: int, block: int) -> None:
    # Small integer vectors make many exact ties and zero rows: results must still be the
    # exact top k with the (-similarity, index) order.
    got = nearest_neighbors(x, k, backend="numpy", block_rows=block)
    kk = min(k, len(x) - 1)
    ref_idx, ref_sim, full = reference(x, None, kk, True)
    full = np.nan_to_num(full, nan=0.0)
    np.testing.assert_allclose(got.similarities, np.nan_to_num(ref_sim), atol=1e-5)
    np.testing.assert_allclose(
        got.similarities, np.take_along_axis(full, got.indices, axis=1), atol=1e-5
    )


# -- low-precision products re-checked in fp32 (the GPU's path, run on the CPU) ----------------


@pytest.mark.parametrize("products", ["fp16", "bf16"])
@pytest.mark.parametrize("with_queries", [False, True])
def test_low_precision_products_give_the_fp32_neighbours(products: str, with_queries: bool) -> None:
    x = clustered(700, dim=48, seed=11)
    q = clustered(90, dim=48, seed=12) if with_queries else None
    exact = nearest_neighbors(x, 8, queries=q, backend="torch", products="fp32")
    got = nearest_neighbors(x, 8, queries=q, backend="torch", products=products,
                            memory_budget=64 * 1024)  # many small strips
    ref_idx, ref_sim, full = reference(x, q, 8, exclude_self=q is None)
    assert_same_up_to_ties(got, ref_idx, ref_sim, full)
    np.testing.assert_array_equal(got.indices, exact.indices)
    np.testing.assert_allclose(got.similarities, exact.similarities, atol=1e-6)


def test_near_ties_the_bound_cannot_settle_are_redone_in_fp32() -> None:
    """Many rows a hair apart (below bf16's resolution): the low pass cannot rank them, its
    candidates cannot be proven complete, and those rows are recomputed exactly."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(32).astype(np.float32)
    x = base + 1e-4 * rng.standard_normal((300, 32)).astype(np.float32)
    x[::7] = rng.standard_normal((len(x[::7]), 32))  # and some ordinary rows
    got = nearest_neighbors(x, 5, backend="torch", products="bf16")
    ref_idx, ref_sim, full = reference(x, None, 5, exclude_self=True)
    assert_same_up_to_ties(got, ref_idx, ref_sim, full, tol=1e-6)


def test_product_error_bound_holds() -> None:
    import torch

    from tagsmith.analysis.neighbors import product_error_bound

    x = normalize_rows(clustered(400, dim=768, seed=4))
    exact = x.astype(np.float64) @ x.T.astype(np.float64)
    for products, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        t = torch.from_numpy(x).to(dtype)
        low = (t @ t.T).float().numpy()
        assert np.abs(low - exact).max() <= product_error_bound(768, products)
