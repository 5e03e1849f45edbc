import logging
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gur_lightning.clustering import JaccardOptions, KnnOptions, jaccard_distance
from gur_lightning.clustering.jaccard import (
    JaccardTimings,
    half_k,
    min_sum_to_distance,
    reciprocal_expansion,
    shared_support_pairs,
    similarity_threshold,
)
from gur_lightning.clustering.knn import exact_knn
from gur_lightning.clustering.knn.backends import load_compiled_kernels
from tests.clustering.reference import reference_jaccard

KERNELS = load_compiled_kernels()
needs_numba = pytest.mark.skipif(KERNELS is None, reason="numba kernels unavailable")
KERNEL_CHOICES = ["numpy", pytest.param("numba", marks=needs_numba)]


def _clustered(n: int, d: int, per: int = 15, spread: float = 0.7, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per), d))
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _random(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CASES = {
    "random": lambda: _random(200, 64),
    "clustered": lambda: _clustered(200, 64),
    "clustered_duplicates": lambda: _with_duplicates(_clustered(220, 32, per=25, seed=3)),
    "non_unit_cae_like": lambda: _cae_like(180),
}


def _with_duplicates(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[[5, 60, 61, 150]] = x[4]
    x[[100, 101]] = x[99]
    return x


def _cae_like(n: int) -> np.ndarray:
    # Concatenated probability vectors (CAE, docs/method.md §8): not unit norm (§17.11).
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((n, 40)) * 3 + np.repeat(
        rng.standard_normal((n // 20, 40)), 20, 0
    )
    a = np.exp(logits[:, :25]) / np.exp(logits[:, :25]).sum(1, keepdims=True)
    b = np.exp(logits[:, 25:]) / np.exp(logits[:, 25:]).sum(1, keepdims=True)
    return np.concatenate([a, b], 1).astype(np.float32)


@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_equals_reference_port(case, kernels):
    x = CASES[case]()
    ref = reference_jaccard(x, 30, 6)
    ours = jaccard_distance(x, JaccardOptions(30, 6, knn=KnnOptions(kernels=kernels)))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # Not a vacuous match: the clustered cases have many close pairs.
    assert (ref < 0.9).sum() > x.shape[0]


@pytest.mark.parametrize(("k1", "k2"), [(5, 1), (7, 3), (12, 12), (20, 6)])
def test_dense_equals_reference_other_k(k1, k2):
    x = _clustered(150, 16, seed=k1)
    np.testing.assert_allclose(
        jaccard_distance(x, JaccardOptions(k1, k2)),
        reference_jaccard(x, k1, k2),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
@pytest.mark.parametrize("max_distance", [0.0, 0.3, 0.6, 0.95])
def test_sparse_holds_exactly_the_pairs_within_max_distance(max_distance, kernels):
    x = _with_duplicates(_clustered(220, 32, per=25, seed=3))
    dense = jaccard_distance(x, JaccardOptions(knn=KnnOptions(kernels="numpy")))
    graph = jaccard_distance(
        x, JaccardOptions(knn=KnnOptions(kernels=kernels)), max_distance=max_distance
    )
    assert sp.issparse(graph) and graph.format == "csr"
    assert graph.has_sorted_indices
    stored = np.zeros(dense.shape, dtype=bool)
    coo = graph.tocoo()
    stored[coo.row, coo.col] = True
    assert coo.row.size == graph.nnz  # no duplicate entries
    np.testing.assert_array_equal(stored, dense <= np.float32(max_distance))
    np.testing.assert_array_equal(coo.data, dense[coo.row, coo.col])
    # Zeros (duplicates, most of the diagonal) are stored explicitly, as DBSCAN needs.
    assert (coo.data == 0).sum() == (dense == 0).sum() > 6
    if max_distance > 0:  # d(i, i) is 0 up to float32 rounding (~1e-7)
        assert stored[np.arange(x.shape[0]), np.arange(x.shape[0])].all()
    assert (graph != graph.T).nnz == 0


def test_threshold_helpers():
    for eps in (0.0, 0.3, 0.55, 0.6, 0.9):
        s = similarity_threshold(eps)
        assert abs((1 - s / (2 - s)) - eps) < 1e-12
    np.testing.assert_allclose(min_sum_to_distance(np.array([0.0, 1.0, 1.2])), [1.0, 0.0, 0.0])
    assert half_k(30) == 15 and half_k(5) == 2 and half_k(7) == 4 and half_k(1) == 0


def test_two_thirds_rule_is_the_integer_rule():
    # The reference tests len(intersection) > 2/3 * len(H) in float64; the implementation uses
    # 3 * count > 2 * |H|. They agree for every set size up to 2000.
    for h in range(2001):
        for m in {max(0, 2 * h // 3 - 1), 2 * h // 3, 2 * h // 3 + 1}:
            assert (m > 2 / 3 * h) == (3 * m > 2 * h)


def _numpy_peak(n: int) -> tuple[int, int]:
    x = _clustered(n, 32, per=20, spread=0.3, seed=7)
    tracemalloc.start()
    graph = jaccard_distance(x, JaccardOptions(knn=KnnOptions(block_size=256)), max_distance=0.6)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, graph.nnz


def test_sparse_path_memory_grows_linearly():
    # numpy allocations (tracemalloc sees them) must grow like N·k, not N^2: doubling N may
    # not come close to quadrupling the peak, and stays far below one dense N x N matrix.
    small, nnz_small = _numpy_peak(5_000)
    large, nnz_large = _numpy_peak(10_000)
    assert nnz_large > 1.8 * nnz_small
    assert large < 2.6 * small, (small, large)
    assert large < 10_000 * 10_000 * 4 / 4, large


def test_all_identical_features():
    x = np.tile(_random(1, 8), (40, 1))
    np.testing.assert_allclose(
        jaccard_distance(x, JaccardOptions(10, 3)), reference_jaccard(x, 10, 3), atol=1e-5
    )


def test_fewer_points_than_k1_reduces_k1(caplog):
    x = _clustered(12, 8)
    with caplog.at_level(logging.WARNING, logger="gur_lightning.clustering.jaccard"):
        d = jaccard_distance(x, JaccardOptions(k1=30, k2=6))
    assert "k1=30" in caplog.text
    np.testing.assert_allclose(d, reference_jaccard(x, 12, 6), atol=1e-5)
    one = jaccard_distance(x[:1])
    np.testing.assert_array_equal(one, [[0.0]])
    # Documented consequence: with k1 = N everybody is everybody's reciprocal neighbour.
    assert d.max() < 0.5  # below any eps used by the method: one cluster


def test_timings_are_filled():
    t = JaccardTimings()
    jaccard_distance(_clustered(100, 8), max_distance=0.5, timings=t)
    assert t.knn > 0 and t.contributions > 0 and t.nnz_query_expanded >= 100


@pytest.mark.parametrize(
    ("features", "kwargs", "match"),
    [
        (np.full((10, 4), np.nan, dtype=np.float32), {}, "NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), {}, "NaN or infinite"),
        (np.zeros(5, dtype=np.float32), {}, "2-D"),
        (np.zeros((0, 4), dtype=np.float32), {}, "empty"),
        (np.eye(4, dtype=np.float32), {"max_distance": 1.0}, r"\[0, 1\)"),
        (np.eye(4, dtype=np.float32), {"options": JaccardOptions(k1=0)}, "k1"),
        (
            np.eye(4, dtype=np.float32),
            {"options": JaccardOptions(knn=KnnOptions(backend="annoy"))},
            "knn_backend",
        ),
        (
            np.eye(4, dtype=np.float32),
            {"options": JaccardOptions(knn=KnnOptions(device="meta"))},
            "device",
        ),
        (torch.zeros((4, 4), device="meta"), {}, "device 'meta'"),
        (np.array([[1, 2], [3, 4]], dtype=complex), {}, "real numbers"),
    ],
)
def test_bad_input_is_rejected_clearly(features, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        jaccard_distance(features, **kwargs)


def test_integer_and_float64_input_are_cast():
    x = _clustered(60, 8)
    np.testing.assert_array_equal(
        jaccard_distance(x.astype(np.float64), JaccardOptions(10, 3)),
        jaccard_distance(x, JaccardOptions(10, 3)),
    )


def _pair_table(rows, cols, dist) -> dict:
    return {(int(i), int(j)): float(d) for i, j, d in zip(rows, cols, dist, strict=True)}


@needs_numba
@pytest.mark.parametrize("max_distance", [None, 0.6])
@pytest.mark.parametrize(("chunk_rows", "reorder"), [(4, True), (64, False), (7, True)])
def test_compiled_accumulation_equals_a_plain_pair_loop(max_distance, chunk_rows, reorder):
    """Shared-support sums against a loop over all pairs; compiled and numpy bit for bit."""
    rng = np.random.default_rng(chunk_rows)
    n = 90
    dense = rng.random((n, n)).astype(np.float32)
    dense[dense < 0.9] = 0.0  # ~9 entries per row
    dense[[3, 40]] = 0.0  # rows without support: d = 1 to everyone, themselves included
    dense /= np.maximum(dense.sum(1, keepdims=True), 1e-30)
    vqe = sp.csr_matrix(dense)
    vqe.sort_indices()
    expect = {}
    for i in range(n):
        for j in range(i + 1, n):
            s = float(np.minimum(dense[i].astype(np.float64), dense[j]).sum())
            if s == 0.0:
                continue
            d = float(min_sum_to_distance(np.array([s]))[0])
            if max_distance is None or d <= np.float32(max_distance):
                expect[(i, j)] = d
    results = [
        shared_support_pairs(vqe, max_distance, chunk_rows, reorder, compiled)
        for compiled in (None, KERNELS)
    ]
    tables = []
    for rows, cols, dist, diag, contributions in results:
        # One entry per unordered pair; orient it (i < j) to compare with the loop.
        oriented = _pair_table(np.minimum(rows, cols), np.maximum(rows, cols), dist)
        assert len(oriented) == rows.size
        assert oriented.keys() == expect.keys()
        np.testing.assert_allclose(
            [oriented[k] for k in expect], list(expect.values()), atol=1e-6, rtol=0
        )
        assert diag[3] == diag[40] == 1.0
        tables.append((oriented, diag, contributions))
    (plain, plain_diag, plain_count), (fast, fast_diag, fast_count) = tables
    assert plain == fast  # identical float32 distances, not merely close
    np.testing.assert_array_equal(plain_diag, fast_diag)
    # Each shared column of each unordered pair is one addition.
    nnz_per_col = np.diff(vqe.tocsc().indptr)
    assert plain_count == fast_count == int((nnz_per_col * (nnz_per_col - 1) // 2).sum())


@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
@pytest.mark.parametrize("k1", [4, 20, 30])
def test_reciprocal_expansion_equals_the_set_definitions(k1, kernels):
    """A, H and E against docs/method.md §7.2 steps 2-3 written as Python set loops."""
    x = _with_duplicates(_clustered(160, 12, per=12, seed=k1))
    knn = exact_knn(x, k1).indices
    kh = min(half_k(k1) + 1, k1)

    def reciprocal(k: int) -> list[set[int]]:
        near = [set(knn[i, :k].tolist()) for i in range(len(knn))]
        return [{j for j in near[i] if i in near[j]} for i in range(len(knn))]

    a_sets, h_sets = reciprocal(k1), reciprocal(kh)
    e_sets = []
    for a in a_sets:
        e = set(a)
        for c in a:
            if len(h_sets[c] & a) > 2 / 3 * len(h_sets[c]):
                e |= h_sets[c]
        e_sets.append(e)
    compiled = KERNELS if kernels == "numba" else None
    mats = reciprocal_expansion(knn, k1, compiled)
    for mat, sets in zip(mats, (a_sets, h_sets, e_sets), strict=True):
        mat = mat.tocsr()
        assert mat.has_sorted_indices or kernels == "numpy"
        for i in range(len(knn)):
            row = mat.indices[mat.indptr[i] : mat.indptr[i + 1]]
            assert set(row.tolist()) == sets[i]
            assert len(row) == len(sets[i])
    if k1 >= 20:  # not vacuous: the expansion adds members beyond A for some rows
        assert sum(len(e) > len(a) for a, e in zip(a_sets, e_sets, strict=True)) > 0
