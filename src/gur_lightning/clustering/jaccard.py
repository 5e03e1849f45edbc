"""k-reciprocal Jaccard distance (docs/method.md §7.2), exact, in memory that grows with N·k.

The reference (``compute_jaccard_distance`` in cluster-contrast's ``faiss_rerank.py``) builds three
dense N x N float32 matrices in Python loops. This module computes the same distances with sparse
matrix algebra (docs/performance.md, techniques 5-7):

1. kNN lists incl. the point itself (:func:`~gur_lightning.clustering.knn.exact_knn`).
2. k-reciprocal sets ``A = K ∘ K^T`` at k1 and ``H`` at ``round(k1/2)`` (first
   ``round(k1/2) + 1`` columns, as the reference's ``[:k + 1]`` slice): elementwise products of
   0/1 kNN indicators.
3. Expansion: for ``c ∈ A_i``, ``|H_c ∩ A_i| = (A H)[i, c]`` (both are symmetric), and ``H_c``
   joins ``E_i`` when ``3 |H_c ∩ A_i| > 2 |H_c|`` (the reference's ``> 2/3 |H_c|`` in float64
   agrees with this integer test for every set size below 2000).
4. Weights ``V[i, j] = softmax_{j ∈ E_i}(2 x_i.x_j)`` (= softmax of ``-(2 - 2 x_i.x_j)``).
5. Query expansion ``V_qe = Q V`` with ``Q[i, j] = 1/k2`` on the k2 nearest neighbours incl. self.
6. ``S(i, j) = Σ_c min(V_qe[i, c], V_qe[j, c])`` over shared columns only, ``d = 1 - S/(2 - S)``
   in float32 as the reference, clamped at 0; pairs without a shared column have ``d = 1``.

Step 6 walks the inverted index of ``V_qe`` by row chunks and accumulates each chunk's pairs
``j > i`` in a compact (chunk x partners) buffer; only pairs with ``d <= max_distance`` are kept.
The dense and the sparse outputs come from the same accumulation, so they agree exactly.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

from gur_lightning.clustering._validation import as_feature_tensor, check_positive_int
from gur_lightning.clustering.knn import KnnResult, exact_knn, pair_dots, resolve_kernels
from gur_lightning.clustering.options import JaccardOptions
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

JACCARD_CHUNK_ROWS = 64
"""Rows per accumulation chunk: small enough that the (rows x partners) buffer stays in cache."""
PREFILTER_MARGIN = 1e-4
"""Slack of the float64 ``S >= 2(1 - eps)/(2 - eps)`` prefilter: the kept pairs are then decided
by the float32 distance itself, so the margin only has to exceed float32 rounding (~1e-7)."""
DENSE_LIMIT = 50_000
"""Largest N for which a dense (N, N) output is produced (10 GB of float32 at that size)."""


@dataclass
class JaccardTimings:
    """Seconds spent in each step of one :func:`jaccard_distance` call (for benchmarks / logs).

    Attributes:
        knn: Exact kNN search (step 1).
        weights: Reciprocal sets, expansion, softmax weights and query expansion (steps 2-5).
        jaccard: Shared-support accumulation and output assembly (step 6).
        knn_rows_rescored: Rows whose kNN boundaries were re-ranked in float64.
        knn_rows_recomputed: Rows whose kNN was recomputed against all points.
        nnz_expanded: Non-zeros of ``V`` (pairs in the expanded reciprocal sets).
        nnz_query_expanded: Non-zeros of ``V_qe``.
        contributions: Shared-column contributions summed (the cost driver of step 6).
        pairs_kept: Pairs ``i < j`` stored in the output.
        knn_backend: The kNN engine that ran (``torch-cpu``, ``torch-cuda``, ``faiss-cpu`` or
            ``faiss-gpu``; empty before the search).
    """

    knn: float = 0.0
    weights: float = 0.0
    jaccard: float = 0.0
    knn_rows_rescored: int = 0
    knn_rows_recomputed: int = 0
    nnz_expanded: int = 0
    nnz_query_expanded: int = 0
    contributions: int = 0
    pairs_kept: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    knn_backend: str = ""


def half_k(k1: int) -> int:
    """``int(np.around(k1 / 2))``, the reference's k for ``H`` (numpy rounds half to even)."""
    return int(np.around(k1 / 2.0))


def _indicator(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """0/1 int32 CSR matrix with ones at (rows, cols) (pairs assumed distinct)."""
    data = np.ones(rows.size, dtype=np.int32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def reciprocal_expansion(
    knn: np.ndarray, k1: int, compiled: ModuleType | None = None
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Steps 2-3 of docs/method.md §7.2: k-reciprocal sets and their 2/3 expansion.

    Args:
        knn: (N, >= k1) int64 neighbour lists incl. self, nearest first.
        k1: Neighbourhood size.
        compiled: The numba kernels module to build the sets row by row (same sets) instead of
            by sparse matrix algebra.

    Returns:
        ``(A, H, E)``: 0/1 CSR patterns of ``N(i, k1)``, ``N(i, round(k1/2))`` and the expanded
        set ``E_i``; rows index ``i``.
    """
    n = knn.shape[0]
    if compiled is not None:
        kh = min(half_k(k1) + 1, k1)
        sets = compiled.reciprocal_expansion_sets(np.asarray(knn, dtype=np.int64), k1, kh)
        a_mat, h_mat, e_mat = (
            sp.csr_matrix(
                (np.ones(idx.size, dtype=np.int32), idx.astype(np.int32), ptr), shape=(n, n)
            )
            for ptr, idx in (sets[0:2], sets[2:4], sets[4:6])
        )
        return a_mat, h_mat, e_mat
    rows = np.repeat(np.arange(n, dtype=np.int64), k1)
    k_mat = _indicator(rows, knn[:, :k1].reshape(-1), n)
    a_mat = k_mat.multiply(k_mat.T).tocsr()
    kh = min(half_k(k1) + 1, k1)
    rows_h = np.repeat(np.arange(n, dtype=np.int64), kh)
    h_full = _indicator(rows_h, knn[:, :kh].reshape(-1), n)
    h_mat = h_full.multiply(h_full.T).tocsr()
    h_size = np.diff(h_mat.indptr).astype(np.int64)
    # |H_c ∩ A_i| for c ∈ A_i: (A H^T)[i, c] = (A H)[i, c] since H is symmetric.
    overlap = (a_mat @ h_mat).multiply(a_mat).tocsr()
    overlap.eliminate_zeros()
    o_rows = np.repeat(np.arange(n), np.diff(overlap.indptr))
    o_cols = overlap.indices
    accept = 3 * overlap.data.astype(np.int64) > 2 * h_size[o_cols]
    m_mat = _indicator(o_rows[accept], o_cols[accept], n)
    e_mat = (a_mat + m_mat @ h_mat).tocsr()
    e_mat.data[:] = 1
    e_mat.sort_indices()
    return a_mat, h_mat, e_mat


def _pair_dots(
    x: np.ndarray, knn: KnnResult, rows: np.ndarray, cols: np.ndarray, k1: int
) -> np.ndarray:
    """Inner products ``x_rows . x_cols``: from the kNN search where listed, else computed."""
    n = x.shape[0]
    known_key = (np.arange(n, dtype=np.int64)[:, None] * n + knn.indices[:, :k1]).reshape(-1)
    known_dot = knn.dots[:, :k1].reshape(-1)
    order = np.argsort(known_key)
    known_key, known_dot = known_key[order], known_dot[order]
    want = rows.astype(np.int64) * n + cols
    pos = np.minimum(np.searchsorted(known_key, want), known_key.size - 1)
    found = known_key[pos] == want
    out = np.where(found, known_dot[pos], 0.0).astype(np.float32)
    miss = np.flatnonzero(~found)
    if miss.size:
        out[miss] = pair_dots(x, rows[miss], cols[miss])
    return out


def softmax_weights(x: np.ndarray, knn: KnnResult, e_mat: sp.csr_matrix, k1: int) -> sp.csr_matrix:
    """Step 4: ``V[i, j] = exp(2 x_i.x_j) / Σ_{j' ∈ E_i} exp(2 x_i.x_j')`` on the pattern of E.

    Returns:
        float64 CSR (N, N) whose rows sum to 1 (rows with empty ``E_i`` are empty).
    """
    n = e_mat.shape[0]
    counts = np.diff(e_mat.indptr)
    rows = np.repeat(np.arange(n), counts)
    logits = 2.0 * _pair_dots(x, knn, rows, e_mat.indices, k1).astype(np.float64)
    nonempty = counts > 0
    starts = e_mat.indptr[:-1][nonempty]
    row_max = np.full(n, 0.0)
    row_max[nonempty] = np.maximum.reduceat(logits, starts)
    w = np.exp(logits - row_max[rows])
    row_sum = np.ones(n)
    row_sum[nonempty] = np.add.reduceat(w, starts)
    w /= row_sum[rows]
    return sp.csr_matrix((w, e_mat.indices.copy(), e_mat.indptr.copy()), shape=(n, n))


def query_expansion(v_mat: sp.csr_matrix, knn: np.ndarray, k2: int) -> sp.csr_matrix:
    """Step 5: ``V_qe[i] = mean_{j ∈ R[i, :k2]} V[j]`` as a sparse product; float32 CSR."""
    n = v_mat.shape[0]
    if k2 == 1:
        out = v_mat.astype(np.float32)
    else:
        rows = np.repeat(np.arange(n, dtype=np.int64), k2)
        q = sp.csr_matrix(
            (np.full(rows.size, 1.0 / k2), (rows, knn[:, :k2].reshape(-1))), shape=(n, n)
        )
        out = (q @ v_mat).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def similarity_threshold(max_distance: float) -> float:
    """Smallest ``S`` with ``1 - S/(2 - S) <= max_distance``: ``2(1 - eps)/(2 - eps)``."""
    return 2.0 * (1.0 - max_distance) / (2.0 - max_distance)


def min_sum_to_distance(s: np.ndarray) -> np.ndarray:
    """``max(0, 1 - S/(2 - S))`` in float32 arithmetic, as the reference computes it."""
    s32 = np.asarray(s, dtype=np.float32)
    d = np.float32(1.0) - s32 / (np.float32(2.0) - s32)
    return np.maximum(d, np.float32(0.0))


def locality_order(vqe: sp.csr_matrix) -> np.ndarray:
    """Row order that keeps rows sharing columns close (reverse Cuthill-McKee on ``V_qe``).

    Step 6 accumulates each chunk of rows against its partners; when the chunk's rows are
    neighbours their partner sets overlap and the accumulation buffer stays small and cached
    (about 1.6x faster on shuffled input; real data sorted by file name is already local).
    """
    pattern = sp.csr_matrix(
        (np.ones(vqe.nnz, dtype=np.int8), vqe.indices, vqe.indptr), shape=vqe.shape
    )
    return np.asarray(reverse_cuthill_mckee(pattern, symmetric_mode=False), dtype=np.int64)


def shared_support_pairs(
    vqe: sp.csr_matrix,
    max_distance: float | None,
    chunk_rows: int = JACCARD_CHUNK_ROWS,
    reorder: bool = True,
    compiled: ModuleType | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Step 6: Jaccard distances of all pairs ``i != j`` with a shared column of ``V_qe``.

    For each chunk of rows, every entry ``(i, c)`` is paired with the later rows ``j > i`` of
    column ``c`` (a slice of the column's posting list, which is sorted by row), and
    ``min(V[i, c], V[j, c])`` is accumulated into a (chunk x partners) buffer with
    ``np.bincount`` after renumbering the chunk's partners compactly. Each unordered pair is
    summed once, so ``d(i, j) = d(j, i)`` exactly.

    Args:
        vqe: (N, N) float32 CSR with sorted indices.
        max_distance: Keep pairs with ``d <= max_distance``; ``None`` keeps every pair with a
            shared column.
        chunk_rows: Rows per chunk.
        reorder: Process rows in :func:`locality_order` (same result, faster).
        compiled: The numba kernels module (:func:`~gur_lightning.clustering.knn.resolve_kernels`)
            to accumulate each row into a dense scratch row instead of the numpy chunks; the
            sums, hence the distances, are bit for bit the same.

    Returns:
        ``(rows, cols, dist, diag, contributions)``: one entry per unordered pair (original
        indices, ``rows != cols``), their float32 distances, the float32 self-distances
        ``d(i, i)`` (N,), and the number of contributions summed.
    """
    n = vqe.shape[0]
    perm = locality_order(vqe) if reorder and n > chunk_rows else np.arange(n, dtype=np.int64)
    # Only rows are permuted: the columns (shared support) keep their identity.
    vp = vqe[perm] if reorder and n > chunk_rows else vqe
    indptr, indices, data = vp.indptr.astype(np.int64), vp.indices, vp.data
    row_of_entry = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    # Position of every CSR entry inside the CSC posting lists (rows ascending per column):
    # scipy's CSR -> CSC conversion is a counting sort that keeps row order inside a column,
    # so converting the entry numbers gives the stable column order (8x a stable argsort).
    entry_ids = sp.csr_matrix(
        (np.arange(indices.size, dtype=np.int64), indices, indptr), shape=(n, n)
    )
    csc_order = np.ascontiguousarray(entry_ids.tocsc().data, dtype=np.int64)
    pos_in_csc = np.empty(indices.size, dtype=np.int64)
    pos_in_csc[csc_order] = np.arange(indices.size)
    colptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=n), out=colptr[1:])
    csc_rows = row_of_entry[csc_order]
    csc_vals = data[csc_order]
    # S(i, i) = Σ_c V[i, c]: the reference's min(V[i, c], V[i, c]) accumulation; an empty row
    # shares nothing, not even with itself (d = 1).
    diag_p = min_sum_to_distance(np.bincount(row_of_entry, weights=data, minlength=n))
    diag_p[np.diff(indptr) == 0] = 1.0
    diag = np.empty(n, dtype=np.float32)
    diag[perm] = diag_p
    s_min = (
        -np.inf if max_distance is None else similarity_threshold(max_distance) - PREFILTER_MARGIN
    )

    def chunk_pairs(r0: int, r1: int, flags: np.ndarray, local: np.ndarray) -> tuple | None:
        """Pairs (i, j > i) of rows r0..r1-1 of the permuted matrix, or None when none."""
        e0, e1 = indptr[r0], indptr[r1]
        starts = pos_in_csc[e0:e1] + 1
        lengths = colptr[indices[e0:e1] + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return None
        offsets = np.cumsum(lengths) - lengths
        src = np.repeat(starts - offsets, lengths)
        src += np.arange(total)
        partner = csc_rows[src]
        vals = np.minimum(np.repeat(data[e0:e1], lengths), csc_vals[src])
        flags[partner] = True
        uniq = np.flatnonzero(flags)
        flags[uniq] = False
        local[uniq] = np.arange(uniq.size)
        width = uniq.size
        flat = np.repeat((row_of_entry[e0:e1] - r0) * width, lengths)
        flat += local[partner]
        acc = np.bincount(flat, weights=vals, minlength=(r1 - r0) * width)
        keep = np.flatnonzero(acc > s_min) if max_distance is not None else np.flatnonzero(acc)
        dist = min_sum_to_distance(acc[keep])
        if max_distance is not None:
            ok = dist <= np.float32(max_distance)
            keep, dist = keep[ok], dist[ok]
        il, jl = np.divmod(keep, width)
        return perm[il + r0], perm[uniq[jl]], dist, total

    def worker(chunk_starts: list[int]) -> list[tuple]:
        # Scratch arrays of this worker's own (a chunk renumbers its partners in them).
        flags = np.zeros(n, dtype=bool)
        local = np.zeros(n, dtype=np.int64)
        found = (chunk_pairs(r0, min(r0 + chunk_rows, n), flags, local) for r0 in chunk_starts)
        return [part for part in found if part is not None]

    share = worker
    if compiled is not None:
        # The kernel's typed inputs, converted once and shared read-only by the workers.
        kernel_inputs = (
            indptr,
            indices.astype(np.int64),
            np.ascontiguousarray(data, dtype=np.float32),
            pos_in_csc,
            colptr,
            csc_rows,
            np.ascontiguousarray(csc_vals, dtype=np.float32),
            float(s_min),
            np.float32(1.0 if max_distance is None else max_distance),
            max_distance is not None,
        )
        kernel = compiled.shared_support_rows

        def compiled_worker(chunk_starts: list[int]) -> list[tuple]:
            # One dense float64 scratch row per worker, reset entry by entry as it is read.
            acc = np.zeros(n, dtype=np.float64)
            seen = np.full(n, -1, dtype=np.int64)
            rows = [np.arange(r0, min(r0 + chunk_rows, n), dtype=np.int64) for r0 in chunk_starts]
            li, lj, dist, total = kernel(
                np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
                *kernel_inputs,
                acc,
                seen,
            )
            return [(perm[li], perm[lj], dist, int(total))]

        share = compiled_worker

    # numpy releases the GIL in the gathers, ufuncs and bincount that make up a chunk, and the
    # compiled kernel releases it throughout, so the chunks are shared out among threads
    # (torch's thread count, which the caller sets): about 1.8x on 2 cores. Interleaved shares
    # balance the load; the result does not depend on it.
    chunk_starts = list(range(0, n, chunk_rows))
    workers = max(1, min(torch.get_num_threads(), len(chunk_starts)))
    if workers == 1:
        parts = share(chunk_starts)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaccard") as pool:
            shares = pool.map(share, [chunk_starts[w::workers] for w in range(workers)])
            parts = [part for result in shares for part in result]
    out_rows = [part[0] for part in parts]
    out_cols = [part[1] for part in parts]
    out_dist = [part[2] for part in parts]
    contributions = sum(part[3] for part in parts)
    if out_rows:
        rows_all = np.concatenate(out_rows)
        cols_all = np.concatenate(out_cols)
        dist_all = np.concatenate(out_dist)
    else:
        rows_all = np.zeros(0, dtype=np.int64)
        cols_all = np.zeros(0, dtype=np.int64)
        dist_all = np.zeros(0, dtype=np.float32)
    return rows_all, cols_all, dist_all, diag, contributions


def _as_symmetric_csr(
    n: int, rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, diag: np.ndarray
) -> sp.csr_matrix:
    """CSR of the pairs ``i < j`` in both triangles plus the given diagonal entries.

    Explicit zeros are kept and column indices sorted. ``diag`` (N,) holds d(i, i), NaN for a
    diagonal entry to leave out.
    """
    on_diag = np.flatnonzero(~np.isnan(diag))
    all_rows = np.concatenate([rows, cols, on_diag])
    all_cols = np.concatenate([cols, rows, on_diag])
    all_dist = np.concatenate([dist, dist, diag[on_diag]]).astype(np.float32)
    order = np.lexsort((all_cols, all_rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(all_rows, minlength=n), out=indptr[1:])
    # Built from raw arrays: the coo route could drop the explicit zeros DBSCAN relies on.
    return sp.csr_matrix((all_dist[order], all_cols[order].astype(np.int64), indptr), shape=(n, n))


def jaccard_distance(
    features: Any,
    options: JaccardOptions | None = None,
    *,
    max_distance: float | None = None,
    timings: JaccardTimings | None = None,
) -> np.ndarray | sp.csr_matrix:
    """k-reciprocal Jaccard distance of docs/method.md §7.2 (the reference's ``search_option=3``).

    Args:
        features: (N, D) torch tensor (CPU or CUDA) or numpy array, fed as the method feeds them
            (flip-averaged features or CAE vectors; not re-normalised, §17.11).
        options: ``k1``, ``k2`` and the kNN engine options (default
            :class:`~gur_lightning.clustering.options.JaccardOptions`). If ``N < k1``, ``k1`` is
            reduced to ``N`` (a warning is logged; the reference would index faiss's ``-1``
            padding instead). Every point is then in every other's reciprocal set, so the
            distances shrink (typically below 0.5) and DBSCAN tends to find one cluster: use a
            ``k1`` well below N on tiny data. ``k2`` is reduced to ``k1`` if larger; ``1``
            disables the expansion. ``options.knn.kernels`` also picks the compiled or numpy
            reciprocal sets and Jaccard accumulation (same result).
        max_distance: ``None`` for the dense (N, N) float32 matrix; otherwise a number in
            ``[0, 1)`` and a ``scipy.sparse`` CSR matrix holding every pair with
            ``d <= max_distance`` (both triangles and the diagonal, zeros stored explicitly,
            column indices sorted). No N x N array is formed.
        timings: Optional record filled with per-step seconds and sizes.

    Returns:
        Dense float32 ``np.ndarray`` (N, N) or ``scipy.sparse.csr_matrix`` (see ``max_distance``).
        Symmetric, ``d(i, i) ≈ 0`` (clamped at 0), ``d = 1`` for pairs without a shared column.

    Raises:
        ValueError: On invalid features (not 2-D, empty, NaN/inf, unsupported device) or options.
    """
    opts = options if options is not None else JaccardOptions()
    x_t = as_feature_tensor(features)
    n = x_t.shape[0]
    k1 = check_positive_int(opts.k1, "k1")
    k2 = check_positive_int(opts.k2, "k2")
    if max_distance is not None and not 0.0 <= float(max_distance) < 1.0:
        raise ValueError(
            f"max_distance must lie in [0, 1) (pairs without a shared column sit at 1, so a "
            f"sparse matrix would be dense), got {max_distance}"
        )
    if max_distance is None and n > DENSE_LIMIT:
        raise ValueError(
            f"a dense ({n}, {n}) Jaccard matrix needs {4 * n * n / 1e9:.0f} GB; pass "
            f"max_distance to get the sparse matrix of the pairs you need"
        )
    if n < k1:
        log.warning("jaccard_distance: N=%d < k1=%d; using k1=%d", n, k1, n)
        k1 = n
    k2 = min(k2, k1)
    timings = timings if timings is not None else JaccardTimings()
    kh = min(half_k(k1) + 1, k1)
    knn = exact_knn(x_t, k1, boundaries=(k2, kh, k1), options=opts.knn)
    timings.knn = knn.seconds
    timings.knn_backend = knn.backend
    timings.knn_rows_rescored = knn.rows_rescored
    timings.knn_rows_recomputed = knn.rows_recomputed
    t0 = time.perf_counter()
    x = x_t.cpu().numpy()
    compiled = resolve_kernels(opts.knn.kernels)
    _, _, e_mat = reciprocal_expansion(knn.indices, k1, compiled)
    v_mat = softmax_weights(x, knn, e_mat, k1)
    vqe = query_expansion(v_mat, knn.indices, k2)
    timings.nnz_expanded = int(e_mat.nnz)
    timings.nnz_query_expanded = int(vqe.nnz)
    del v_mat, e_mat
    t1 = time.perf_counter()
    timings.weights = t1 - t0
    rows, cols, dist, diag, contributions = shared_support_pairs(
        vqe, max_distance, compiled=compiled
    )
    timings.contributions = contributions
    timings.pairs_kept = int(rows.size)
    if max_distance is None:
        out: np.ndarray | sp.csr_matrix = np.ones((n, n), dtype=np.float32)
        out[rows, cols] = dist
        out[cols, rows] = dist
        out[np.arange(n), np.arange(n)] = diag
    else:
        # d(i, i) > max_distance only for a row of V_qe without any entry (d = 1).
        diag_kept = np.where(diag <= np.float32(max_distance), diag, np.nan)
        out = _as_symmetric_csr(n, rows, cols, dist, diag_kept)
    timings.jaccard = time.perf_counter() - t1
    log.debug(
        "jaccard_distance: N=%d knn %.2fs weights %.2fs jaccard %.2fs (%d contributions)",
        n,
        timings.knn,
        timings.weights,
        timings.jaccard,
        contributions,
    )
    return out
