import builtins
import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from gur_lightning.clustering.knn import (
    KnnOptions,
    exact_knn,
    faiss_available,
    resolve_kernels,
)
from gur_lightning.clustering.knn.backends import load_compiled_kernels
from gur_lightning.clustering.knn.engines import blocked_cpu_pool, chunked_gpu_pool
from gur_lightning.clustering.knn.pool import RANK_MERGE_WIDTH, CandidatePool
from tests.clustering.reference import reference_knn

KERNELS = load_compiled_kernels()
needs_numba = pytest.mark.skipif(KERNELS is None, reason="numba kernels unavailable")
SCAN_ENGINES = ["numpy", pytest.param("numba", marks=needs_numba)]


def _sets_equal(a: np.ndarray, b: np.ndarray, boundaries) -> bool:
    return all(
        set(a[i, :k].tolist()) == set(b[i, :k].tolist())
        for i in range(a.shape[0])
        for k in boundaries
    )


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 15), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.mark.parametrize("kernels", SCAN_ENGINES)
@pytest.mark.parametrize("block_size", [64, 97, 4096])
def test_matches_float64_brute_force_with_duplicates(block_size, kernels):
    x = _clustered(400, 24)
    x[[7, 150, 399]] = x[3]  # exact duplicates: ties resolved by index
    ref = reference_knn(x, 30)
    res = exact_knn(
        x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=block_size, kernels=kernels)
    )
    assert res.indices.shape == (400, 30)
    assert _sets_equal(res.indices, ref, (6, 16, 30))
    # dots are the float32 inner products of the listed pairs
    expect = np.einsum("nd,nkd->nk", x.astype(np.float64), x[res.indices].astype(np.float64))
    np.testing.assert_allclose(res.dots, expect, atol=1e-5)


def test_exact_duplicates_order_by_index():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    dups = [10, 20, 30, 40, 45]
    x[dups] = x[10]
    res = exact_knn(x, 3, options=KnnOptions(block_size=16))
    # Five points at distance 0 from each other: every one lists the three lowest indices.
    for i in dups:
        assert set(res.indices[i].tolist()) == {10, 20, 30}
    assert res.rows_rescored >= len(dups)


def test_ranks_by_euclidean_distance_not_inner_product():
    x = np.array([[1.0, 0.0], [10.0, 0.0], [0.9, 0.3], [-1.0, 0.0]], dtype=np.float32)
    # Squared distances (by hand): row 0 -> [0, 81, 0.1, 4]; row 1 -> [81, 0, 82.9, 121];
    # row 3 -> [4, 121, 3.7, 0]. Row 0's largest inner product is with x1 (10), yet L2 picks x2.
    res = exact_knn(x, 2)
    assert set(res.indices[0].tolist()) == {0, 2}
    assert set(res.indices[1].tolist()) == {1, 0}
    assert set(res.indices[3].tolist()) == {3, 2}


def test_near_tie_at_boundary_resolved_in_float64():
    # Points c, c + e_0 and c + (1 + 2^-10) e_j with a large integer offset c: exactly
    # representable in float32, true squared distances 1 and 1.00195 from the first point, but
    # float32 Gram arithmetic (|c|^2 ~ 1.6e5) cannot separate them: raw float32 picks the wrong
    # neighbour in about 1 case in 6 on this construction. The guard must get all right.
    rng = np.random.default_rng(0)
    d = 16
    for trial in range(60):
        x = np.tile(np.round(rng.uniform(50, 150, size=d)), (3, 1))
        x[1, 0] += 1.0
        x[2, 1 + trial % (d - 1)] += 1.0 + 2.0**-10
        x32 = x.astype(np.float32)
        assert np.array_equal(x32.astype(np.float64), x)
        res = exact_knn(x32, 2)
        assert set(res.indices[0].tolist()) == {0, 1}, trial


@pytest.mark.parametrize("proposal", [torch.bfloat16, torch.float16, torch.int8])
def test_low_precision_proposals_are_certified_exact(proposal):
    x = _clustered(300, 32, seed=2)
    x[[10, 20]] = x[5]
    ref = reference_knn(x, 30)
    res = exact_knn(
        x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=128, proposal_dtype=proposal)
    )
    assert _sets_equal(res.indices, ref, (6, 16, 30))
    expect = np.einsum("nd,nkd->nk", x.astype(np.float64), x[res.indices].astype(np.float64))
    np.testing.assert_allclose(res.dots, expect, atol=1e-5)


def test_int8_proposal_bound_holds():
    from gur_lightning.clustering.knn.products import ProposalProduct

    x = torch.from_numpy(_clustered(200, 64, seed=6) * 3.0)
    norms = (x * x).sum(1).numpy()
    product = ProposalProduct(x, torch.int8)
    approx = product.block(0, 200, 0, 200, torch.empty(200, 200))
    exact = (x.double() @ x.double().t()).numpy()
    err = 2 * np.abs(approx - exact).max(axis=1)
    assert (err <= product.outsider_bound(norms)).all()


def test_k_equal_to_n_and_errors():
    x = _clustered(20, 4)
    res = exact_knn(x, 20)
    assert all(sorted(r.tolist()) == list(range(20)) for r in res.indices)
    with pytest.raises(ValueError, match="only N=20"):
        exact_knn(x, 21)
    with pytest.raises(ValueError, match="knn_backend"):
        exact_knn(x, 3, options=KnnOptions(backend="annoy"))
    with pytest.raises(ValueError, match="NaN"):
        exact_knn(np.full((5, 3), np.nan, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="device"):
        exact_knn(torch.zeros((5, 3), device="meta"), 2)


def test_torch_input_and_numpy_input_agree():
    x = _clustered(120, 16, seed=3)
    a = exact_knn(x, 10)
    b = exact_knn(torch.from_numpy(x), 10)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_backend_matches():
    x = _clustered(300, 24, seed=4)
    ref = reference_knn(x, 30)
    res = exact_knn(x, 30, boundaries=(6, 16, 30), options=KnnOptions(backend="faiss"))
    assert res.backend.startswith("faiss")
    assert _sets_equal(res.indices, ref, (6, 16, 30))


def test_row_chunk_engine_matches_blocked_engine():
    # The GPU engine (row chunks + topk) is device-agnostic: run it on CPU tensors here.
    x = _clustered(500, 16, seed=8)
    norms = (x * x).sum(1)
    chunked = chunked_gpu_pool(torch.from_numpy(x), 39, None)
    blocked = blocked_cpu_pool(torch.from_numpy(x), norms, 39, 128, None)
    for i in range(500):
        assert set(chunked.idx[i, :31].tolist()) == set(blocked.idx[i, :31].tolist())
    np.testing.assert_allclose(chunked.key, blocked.key, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _clustered(500, 32, seed=5)
    cpu = exact_knn(x, 30, boundaries=(6, 16, 30))
    gpu = exact_knn(torch.from_numpy(x).cuda(), 30, boundaries=(6, 16, 30))
    assert gpu.backend == "torch-cuda"
    assert _sets_equal(cpu.indices, gpu.indices, (6, 16, 30))


@pytest.mark.parametrize("kernels", SCAN_ENGINES)
@pytest.mark.parametrize("threads", [1, 3])
def test_pipelined_workers_give_the_serial_result(threads, kernels):
    """T workers multiply blocks on one thread each and scan in turn: same pool, same truth."""
    x = _clustered(600, 20, seed=3)
    x[[5, 300, 599]] = x[2]  # exact duplicates across blocks
    norms = (x * x).sum(1)
    compiled = resolve_kernels(kernels)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = blocked_cpu_pool(torch.from_numpy(x), norms, 39, 64, None, compiled)
        torch.set_num_threads(threads)
        pooled = blocked_cpu_pool(torch.from_numpy(x), norms, 39, 64, None, compiled)
        assert torch.get_num_threads() == threads  # the caller's thread count is restored
        res = exact_knn(
            x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=64, kernels=kernels)
        )
    finally:
        torch.set_num_threads(saved)
    np.testing.assert_array_equal(pooled.idx, serial.idx)
    np.testing.assert_array_equal(pooled.key, serial.key)
    assert _sets_equal(res.indices, reference_knn(x, 30), (6, 16, 30))


@pytest.mark.parametrize("max_per_row", [1, 5, RANK_MERGE_WIDTH, 3 * RANK_MERGE_WIDTH])
def test_pool_merge_is_a_stable_cut_with_ties(max_per_row: int) -> None:
    """Rank merges against a plain per-row list: stable sort by descending key, cut at depth."""
    rng = np.random.default_rng(max_per_row)
    n, depth = 40, 6
    pool = CandidatePool(n, depth)
    kept: list[list[tuple[float, int, float]]] = [[] for _ in range(n)]
    next_col = 0
    for _ in range(12):
        rows, cols, keys, dots = [], [], [], []
        for r in range(n):
            for _ in range(int(rng.integers(0, max_per_row + 1))):
                key = float(rng.integers(0, 5))  # few values: many exact ties
                rows.append(r)
                cols.append(next_col)
                keys.append(key)
                dots.append(key / 2 + 0.25)
                next_col += 1
        pool.merge(
            np.array(rows, dtype=np.int64),
            np.array(cols, dtype=np.int64),
            np.array(keys, dtype=np.float32),
            np.array(dots, dtype=np.float32),
        )
        for r, c, k, d in zip(rows, cols, keys, dots, strict=True):
            # Only keys above the row's current cut enter, as in the pool.
            if len(kept[r]) < depth or k > kept[r][depth - 1][0]:
                kept[r].append((k, c, d))
                kept[r].sort(key=lambda e: -e[0])  # stable: earlier arrivals first on ties
                del kept[r][depth:]
    for r in range(n):
        assert pool.idx[r, : len(kept[r])].tolist() == [c for _, c, _ in kept[r]]
        assert pool.key[r, : len(kept[r])].tolist() == [k for k, _, _ in kept[r]]
        assert pool.dot[r, : len(kept[r])].tolist() == pytest.approx([d for *_, d in kept[r]])
        assert (pool.idx[r, len(kept[r]) :] == -1).all()


def _integer_points(n: int, d: int, seed: int) -> np.ndarray:
    """Small-integer points: float32 products are exact, and equal keys abound."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[rng.integers(0, n, size=n // 10)] = x[0]  # exact duplicates
    return x


@needs_numba
@pytest.mark.parametrize(("n", "block", "depth"), [(300, 64, 12), (150, 47, 39), (30, 8, 40)])
def test_compiled_scan_keeps_the_exact_top_keys_like_the_numpy_scan(n, block, depth):
    """Both scans hold each row's best ``depth`` keys; on ties they keep the same entries.

    Integer points make every float32 key exact, so the truth is a plain per-row sort of
    ``2 x_i.x_j - |x_j|^2`` in integers. Which of several equal keys at a row's cut survive
    depends on the scan order, so the compiled scan must match the numpy one entry by entry.
    """
    x = _integer_points(n, 5, seed=n)
    norms = (x * x).sum(1)
    xt = torch.from_numpy(x)
    compiled = blocked_cpu_pool(xt, norms, depth, block, None, KERNELS)
    plain = blocked_cpu_pool(xt, norms, depth, block, None, None)
    np.testing.assert_array_equal(compiled.idx, plain.idx)
    np.testing.assert_array_equal(compiled.key, plain.key)
    np.testing.assert_array_equal(compiled.dot, plain.dot)
    xi = x.astype(np.int64)
    gram = xi @ xi.T
    keys = 2 * gram - (xi * xi).sum(1)[None, :]
    kept = min(depth, n)
    for i in range(n):
        best = np.sort(keys[i])[::-1][:kept]
        assert compiled.key[i, :kept].tolist() == best.tolist()
        cut = best[-1]
        above = set(np.flatnonzero(keys[i] > cut).tolist())
        held = compiled.idx[i, :kept]
        assert above <= set(held.tolist())
        # Every held entry is a real pair with its own key and inner product.
        assert (keys[i, held] == compiled.key[i, :kept]).all()
        assert (gram[i, held] == compiled.dot[i, :kept]).all()
        assert (compiled.idx[i, kept:] == -1).all()
        assert len(set(held.tolist())) == kept


@needs_numba
def test_compiled_scan_reads_non_contiguous_blocks_and_short_edges():
    """The last block is narrower than the buffer it is a view of (rows strided by ``side``)."""
    x = _clustered(203, 12, seed=9)
    res_numba = exact_knn(
        x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=64, kernels="numba")
    )
    res_numpy = exact_knn(
        x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=64, kernels="numpy")
    )
    np.testing.assert_array_equal(res_numba.indices, res_numpy.indices)
    np.testing.assert_array_equal(res_numba.dots, res_numpy.dots)
    assert _sets_equal(res_numba.indices, reference_knn(x, 30), (6, 16, 30))


@contextlib.contextmanager
def _kernels_unimportable() -> Iterator[None]:
    """Inside: importing the numba kernels fails as it does without numba.

    The loader's cache is emptied on entry and on exit, so the failure is seen inside and the
    real kernels are back afterwards.
    """
    real_import = builtins.__import__

    def no_kernels(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_kernels" in fromlist:
            raise ImportError("No module named 'numba'")
        return real_import(name, globals, locals, fromlist, level)

    load_compiled_kernels.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(builtins, "__import__", no_kernels)
            yield
    finally:
        load_compiled_kernels.cache_clear()


def test_kernels_choice_and_fallback():
    with pytest.raises(ValueError, match="kernels must be 'auto', 'numba' or 'numpy'"):
        exact_knn(_clustered(20, 4), 3, options=KnnOptions(kernels="cython"))
    assert resolve_kernels("numpy") is None
    # Without numba, "auto" falls back to numpy and an explicit "numba" says what to do.
    x = _clustered(100, 8, seed=1)
    with _kernels_unimportable():
        assert resolve_kernels("auto") is None
        with pytest.raises(ValueError, match="pip install numba"):
            resolve_kernels("numba")
        np.testing.assert_array_equal(exact_knn(x, 10).indices, reference_knn(x, 10)[:, :10])


def test_kernel_import_failure_is_logged_once(caplog):
    with _kernels_unimportable(), caplog.at_level("WARNING"):
        assert load_compiled_kernels() is None
        assert load_compiled_kernels() is None
    messages = [r.getMessage() for r in caplog.records if "numba kernels" in r.getMessage()]
    assert len(messages) == 1 and "No module named 'numba'" in messages[0]
    assert load_compiled_kernels() is KERNELS


@pytest.mark.parametrize("size", [512, 1100, 2048])
def test_diagonal_block_multiplied_as_a_recursive_triangle(size):
    """Blocks of 512+ rows are split into triangles: the result is the full product, exactly
    symmetric (every lower quarter is a transpose), and the strided buffer view is honoured."""
    from gur_lightning.clustering.knn.products import MIN_DIAGONAL_SPLIT, ProposalProduct

    assert size >= 2 * MIN_DIAGONAL_SPLIT  # the split path, not one plain product
    rng = np.random.default_rng(size)
    # Small integers: every float32 product is exact, so the comparison can be exact too.
    x = torch.from_numpy(rng.integers(-3, 4, size=(size + 7, 6)).astype(np.float32))
    product = ProposalProduct(x, None)
    buf = torch.full((2048, 2048), np.nan)
    g = product.diagonal(5, 5 + size, buf)
    expect = (x[5 : 5 + size].double() @ x[5 : 5 + size].double().t()).numpy()
    assert g.shape == (size, size)
    np.testing.assert_array_equal(g, expect)
    np.testing.assert_array_equal(g, g.T)


@pytest.mark.parametrize("kernels", SCAN_ENGINES)
def test_large_diagonal_blocks_give_the_float64_neighbours(kernels):
    x = _clustered(1300, 16, seed=11)
    x[[700, 1299]] = x[3]
    res = exact_knn(
        x, 30, boundaries=(6, 16, 30), options=KnnOptions(block_size=1024, kernels=kernels)
    )
    assert _sets_equal(res.indices, reference_knn(x, 30), (6, 16, 30))
