"""Compiled (numba) kernels of the pseudo-label engine; numpy / scipy paths are the fallback.

* kNN block scan (:func:`seed_rows`, :func:`scan_block`). The CPU kNN
  (:mod:`gur_lightning.clustering.knn`) multiplies blocks of the symmetric Gram matrix and
  keeps, per row, the best ``depth`` candidates by float32 key ``2 x_i.x_j - |x_j|^2``
  (docs/performance.md, techniques 1-2). In numpy the upkeep of that pool costs a third of the kNN
  at N = 10,000: four full passes over every block to find the candidates that beat a row's or
  a column's threshold, then sorting the survivors into the pool in batches. Here each block is
  read once and each survivor is inserted into its row's sorted pool, thresholds always
  current. The pools equal the numpy scan's exactly: the same float32 keys (``2 g`` is exact,
  then one rounded subtraction), the same strict comparison against a row's last key, and on
  equal keys the entry already in the pool (or, when seeding, the lower column) first.
* k-reciprocal sets and their expansion (:func:`reciprocal_expansion_sets`, docs/method.md §7.2
  steps 2-3), row by row instead of by sparse matrix algebra: the same sets.
* Jaccard accumulation on shared support (:func:`shared_support_rows`, step 6) into a dense
  scratch row, in the numpy path's order of additions: bit for bit the same sums.

Kernels with a signature are compiled on import and cached on disk by numba, so only the
first import after an install pays for the compilation (a few seconds). All release the GIL,
so the kNN's and the Jaccard step's worker threads run them side by side.
"""

from __future__ import annotations

import numba
import numpy as np

_POOL_ARGS = "float32[:, ::1], int64[:, ::1], float32[:, ::1]"
_SEED_SIGNATURE = f"void(float32[:, :], int64, float32[::1], {_POOL_ARGS})"
_SCAN_SIGNATURE = f"void(float32[:, :], int64, int64, float32[::1], {_POOL_ARGS})"


@numba.njit(inline="always", nogil=True, cache=True)
def _insert(
    key: np.ndarray, idx: np.ndarray, dot: np.ndarray, row: int, k: float, j: int, d: float
) -> None:
    """Insert (key k, column j, dot d) into pool row ``row``, which it is known to beat.

    The row is sorted by descending key; the entry goes after every entry with a key at least
    as large (so earlier entries win ties) and the last entry falls off.
    """
    p = key.shape[1] - 1
    while p > 0 and key[row, p - 1] < k:
        key[row, p] = key[row, p - 1]
        idx[row, p] = idx[row, p - 1]
        dot[row, p] = dot[row, p - 1]
        p -= 1
    key[row, p] = k
    idx[row, p] = j
    dot[row, p] = d


@numba.njit(_SEED_SIGNATURE, nogil=True, cache=True)
def seed_rows(
    g: np.ndarray, s: int, norms: np.ndarray, key: np.ndarray, idx: np.ndarray, dot: np.ndarray
) -> None:  # pragma: no cover - compiled; exercised through the kNN tests
    """Overwrite the pools of rows ``s .. s+B-1`` with their best keys in a diagonal block.

    Args:
        g: (B, B) float32 block ``X[s:s+B] X[s:s+B]^T`` (all of it, both triangles).
        s: First row (and column) of the block.
        norms: (N,) float32 squared norms ``|x_j|^2``.
        key: (N, depth) float32 pool keys, descending per row (written for the block's rows).
        idx: (N, depth) int64 pool columns (-1 where a row has fewer than depth candidates).
        dot: (N, depth) float32 pool inner products.
    """
    rows_b, cols_b = g.shape
    depth = key.shape[1]
    # A running top-depth per row in local arrays: a record of a random stream of B keys is
    # set about depth (1 + ln(B / depth)) times, and each insertion shifts half the list.
    top_key = np.empty(depth, dtype=np.float32)
    top_col = np.empty(depth, dtype=np.int64)
    for r in range(rows_b):
        held = 0
        theta = -np.inf
        for c in range(cols_b):
            kv = (g[r, c] + g[r, c]) - norms[s + c]
            if held < depth or kv > theta:
                p = held if held < depth else depth - 1
                while p > 0 and top_key[p - 1] < kv:
                    top_key[p] = top_key[p - 1]
                    top_col[p] = top_col[p - 1]
                    p -= 1
                top_key[p] = kv
                top_col[p] = c
                if held < depth:
                    held += 1
                if held == depth:
                    theta = top_key[depth - 1]
        i = s + r
        for q in range(depth):
            if q < held:
                key[i, q] = top_key[q]
                idx[i, q] = s + top_col[q]
                dot[i, q] = g[r, top_col[q]]
            else:
                key[i, q] = -np.inf
                idx[i, q] = -1
                dot[i, q] = 0.0


@numba.njit(_SCAN_SIGNATURE, nogil=True, cache=True)
def scan_block(
    g: np.ndarray,
    s: int,
    t: int,
    norms: np.ndarray,
    key: np.ndarray,
    idx: np.ndarray,
    dot: np.ndarray,
) -> None:  # pragma: no cover - compiled; exercised through the kNN tests
    """Insert the candidates of an off-diagonal block into its rows' and its columns' pools.

    Entry (r, c) is a candidate for row ``s + r`` with key ``2 g - |x_{t+c}|^2`` and, by
    symmetry, for row ``t + c`` with key ``2 g - |x_{s+r}|^2``.

    Args:
        g: (B, C) float32 block ``X[s:s+B] X[t:t+C]^T``, ``s + B <= t``.
        s: First row of the block.
        t: First column of the block.
        norms: (N,) float32 squared norms.
        key: (N, depth) float32 pool keys, updated in place.
        idx: (N, depth) int64 pool columns, updated in place.
        dot: (N, depth) float32 pool inner products, updated in place.
    """
    rows_b, cols_b = g.shape
    last = key.shape[1] - 1
    # Local copies of the columns' thresholds, refreshed on insertion: a copy can only be
    # lower than the pool's (thresholds never fall), so it lets no candidate slip.
    col_theta = np.empty(cols_b, dtype=np.float32)
    col_norm = np.empty(cols_b, dtype=np.float32)
    for c in range(cols_b):
        col_theta[c] = key[t + c, last]
        col_norm[c] = norms[t + c]
    hits = np.empty(cols_b, dtype=np.int64)
    for r in range(rows_b):
        i = s + r
        row_norm = norms[i]
        theta = key[i, last]
        # Branch-free sweep that collects the columns where either key beats its threshold
        # (vectorised by the compiler); survivors are rare once the thresholds have settled.
        found = 0
        for c in range(cols_b):
            two_g = g[r, c] + g[r, c]
            hits[found] = c
            found += (two_g - col_norm[c] > theta) | (two_g - row_norm > col_theta[c])
        for q in range(found):
            c = hits[q]
            gv = g[r, c]
            k_row = (gv + gv) - col_norm[c]
            if k_row > key[i, last]:
                _insert(key, idx, dot, i, k_row, t + c, gv)
            k_col = (gv + gv) - row_norm
            if k_col > key[t + c, last]:
                _insert(key, idx, dot, t + c, k_col, i, gv)
                col_theta[c] = key[t + c, last]


@numba.njit(nogil=True, cache=True)
def _grow(a: np.ndarray, capacity: int) -> np.ndarray:  # pragma: no cover - compiled
    """A copy of ``a`` with room for ``capacity`` entries."""
    out = np.empty(capacity, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


_SHARED_SUPPORT_SIGNATURE = (
    "Tuple((int64[::1], int64[::1], float32[::1], int64))("
    "int64[::1], int64[::1], int64[::1], float32[::1], int64[::1], int64[::1], int64[::1], "
    "float32[::1], float64, float32, boolean, float64[::1], int64[::1])"
)


@numba.njit(_SHARED_SUPPORT_SIGNATURE, nogil=True, cache=True)
def shared_support_rows(
    rows: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    pos_in_csc: np.ndarray,
    colptr: np.ndarray,
    csc_rows: np.ndarray,
    csc_vals: np.ndarray,
    s_min: float,
    max_distance: float,
    bounded: bool,
    acc: np.ndarray,
    seen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:  # pragma: no cover - compiled
    """Jaccard distances of rows ``rows`` to their later partners (docs/method.md §7.2, step 6).

    For row ``i`` and each of its entries ``(i, c)`` in ascending column order, every later row
    ``j > i`` of column ``c`` adds ``min(V[i, c], V[j, c])`` to ``S(i, j)``: the same additions
    in the same order as the numpy accumulation, so the float64 sums agree bit for bit.

    Args:
        rows: (R,) rows to process.
        indptr: (N + 1,) CSR row pointers of ``V_qe``.
        indices: (nnz,) CSR columns, ascending per row.
        data: (nnz,) float32 CSR values.
        pos_in_csc: (nnz,) position of each CSR entry in the column-major (CSC) order.
        colptr: (N + 1,) CSC column pointers.
        csc_rows: (nnz,) CSC rows, ascending per column.
        csc_vals: (nnz,) float32 CSC values.
        s_min: Pairs with ``S <= s_min`` are dropped before their distance is computed.
        max_distance: Pairs with a float32 distance above it are dropped (when ``bounded``).
        bounded: Whether ``max_distance`` applies; otherwise every pair with ``S != 0`` is kept.
        acc: (N,) float64 scratch, all zero (left all zero).
        seen: (N,) int64 scratch, all -1 (left with stale marks, which never equal a row).

    Returns:
        ``(i, j, distance, contributions)`` of the kept pairs (float32 distances
        ``max(0, 1 - S / (2 - S))``) and the number of additions made.
    """
    capacity = 1024
    out_i = np.empty(capacity, dtype=np.int64)
    out_j = np.empty(capacity, dtype=np.int64)
    out_d = np.empty(capacity, dtype=np.float32)
    kept = 0
    contributions = 0
    touched = np.empty(acc.shape[0], dtype=np.int64)
    one = np.float32(1.0)
    two = np.float32(2.0)
    zero = np.float32(0.0)
    for i in rows:
        count = 0
        for e in range(indptr[i], indptr[i + 1]):
            v = data[e]
            end = colptr[indices[e] + 1]
            contributions += end - pos_in_csc[e] - 1
            for p in range(pos_in_csc[e] + 1, end):
                j = csc_rows[p]
                if seen[j] != i:
                    seen[j] = i
                    touched[count] = j
                    count += 1
                acc[j] += min(v, csc_vals[p])
        for q in range(count):
            j = touched[q]
            s = acc[j]
            acc[j] = 0.0
            if s == 0.0 or s <= s_min:
                continue
            s32 = np.float32(s)
            d = one - s32 / (two - s32)
            if d < zero:
                d = zero
            if bounded and d > max_distance:
                continue
            if kept == capacity:
                capacity *= 2
                out_i = _grow(out_i, capacity)
                out_j = _grow(out_j, capacity)
                out_d = _grow(out_d, capacity)
            out_i[kept] = i
            out_j[kept] = j
            out_d[kept] = d
            kept += 1
    return out_i[:kept].copy(), out_j[:kept].copy(), out_d[:kept].copy(), contributions


@numba.njit(nogil=True, cache=True)
def _sort_small(a: np.ndarray) -> None:  # pragma: no cover - compiled
    """Sort a short array in place (insertion sort: no allocation, fast below ~100 entries)."""
    for p in range(1, a.shape[0]):
        v = a[p]
        q = p
        while q > 0 and a[q - 1] > v:
            a[q] = a[q - 1]
            q -= 1
        a[q] = v


@numba.njit(nogil=True, cache=True)
def _reciprocal_lists(
    knn: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """k-reciprocal neighbours ``{j in N(i, k) : i in N(j, k)}`` of every row, ascending.

    Returns:
        ``(members (N, k) int64 padded with -1, counts (N,) int64)``.
    """
    n = knn.shape[0]
    members = np.full((n, k), -1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        m = 0
        for a in range(k):
            j = knn[i, a]
            for b in range(k):
                if knn[j, b] == i:
                    members[i, m] = j
                    m += 1
                    break
        _sort_small(members[i, :m])
        counts[i] = m
    return members, counts


@numba.njit(
    "Tuple((int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1]))"
    "(int64[:, :], int64, int64)",
    nogil=True,
    cache=True,
)
def reciprocal_expansion_sets(
    knn: np.ndarray, k1: int, kh: int
) -> tuple[np.ndarray, ...]:  # pragma: no cover - compiled
    """Steps 2-3 of docs/method.md §7.2: sets ``A_i = R(i, k1)``, ``H_i = R(i, kh)`` and ``E_i``.

    ``E_i`` is ``A_i`` joined with every ``H_c`` (``c`` in ``A_i``) that shares more than two
    thirds of its members with ``A_i``, tested in integers: ``3 |H_c ∩ A_i| > 2 |H_c|``.

    Args:
        knn: (N, >= k1) int64 neighbour lists including the point itself, nearest first.
        k1: Size of the reciprocal neighbourhood.
        kh: Size of the half neighbourhood (``round(k1 / 2) + 1``, at most k1).

    Returns:
        CSR ``(indptr, indices)`` of A, H and E in that order, indices ascending per row.
    """
    n = knn.shape[0]
    a_members, a_counts = _reciprocal_lists(knn, k1)
    h_members, h_counts = _reciprocal_lists(knn, kh)
    a_ptr = np.zeros(n + 1, dtype=np.int64)
    h_ptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        a_ptr[i + 1] = a_ptr[i] + a_counts[i]
        h_ptr[i + 1] = h_ptr[i] + h_counts[i]
    a_idx = np.empty(a_ptr[n], dtype=np.int64)
    h_idx = np.empty(h_ptr[n], dtype=np.int64)
    for i in range(n):
        a_idx[a_ptr[i] : a_ptr[i + 1]] = a_members[i, : a_counts[i]]
        h_idx[h_ptr[i] : h_ptr[i + 1]] = h_members[i, : h_counts[i]]
    in_a = np.full(n, -1, dtype=np.int64)
    in_e = np.full(n, -1, dtype=np.int64)
    row = np.empty(k1 + k1 * kh, dtype=np.int64)
    e_ptr = np.zeros(n + 1, dtype=np.int64)
    e_idx = np.empty(max(1, int(a_ptr[n]) * 2), dtype=np.int64)
    for i in range(n):
        size = 0
        for p in range(a_ptr[i], a_ptr[i + 1]):
            in_a[a_idx[p]] = i
            in_e[a_idx[p]] = i
            row[size] = a_idx[p]
            size += 1
        for p in range(a_ptr[i], a_ptr[i + 1]):
            c = a_idx[p]
            shared = 0
            for q in range(h_ptr[c], h_ptr[c + 1]):
                if in_a[h_idx[q]] == i:
                    shared += 1
            if 3 * shared > 2 * (h_ptr[c + 1] - h_ptr[c]):
                for q in range(h_ptr[c], h_ptr[c + 1]):
                    m = h_idx[q]
                    if in_e[m] != i:
                        in_e[m] = i
                        row[size] = m
                        size += 1
        if e_ptr[i] + size > e_idx.shape[0]:
            e_idx = _grow(e_idx, 2 * (e_ptr[i] + size))
        _sort_small(row[:size])
        e_idx[e_ptr[i] : e_ptr[i] + size] = row[:size]
        e_ptr[i + 1] = e_ptr[i] + size
    return a_ptr, a_idx, h_ptr, h_idx, e_ptr, e_idx[: e_ptr[n]].copy()
