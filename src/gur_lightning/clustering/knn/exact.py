"""Exactness of the neighbour sets at the boundaries the Jaccard distance uses.

float32 may order a near-tie at a boundary differently from exact arithmetic, so every row whose
key gap at a boundary is below the tolerance is re-ranked with float64 distances (exact
duplicates tie exactly and fall back to index order; docs/performance.md, technique 4). Pools
proposed by a low-precision product are rescored exactly in float32 and certified by a per-row
error bound; rows that fail are recomputed exactly (docs/performance.md, technique 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gur_lightning.clustering.knn.pool import CandidatePool
from gur_lightning.clustering.knn.products import (
    RESCORE_CHUNK_ROWS,
    ProposalProduct,
    _exact_dots,
)

FLOAT64_SHORTLIST_SLACK = 1e-9
"""Slack of a full float64 row recompute: candidates within it of the cut are re-ranked exactly."""


def _certify_proposals(
    x: torch.Tensor, norms: np.ndarray, pool: CandidatePool, depth: int, proposal: torch.dtype
) -> tuple[CandidatePool, int]:
    """Rescore a low-precision pool exactly in float32, certify it and trim it to ``depth``.

    A point outside the pool has proposal key at most the pool's last proposal key ``p_last``;
    its exact key is at most ``p_last + bound_i``, where ``bound_i`` bounds the proposal error of
    row ``i`` (:meth:`ProposalProduct.outsider_bound`). If that stays below the exact
    ``depth``-th key, no outsider can enter the exact top ``depth``; otherwise the row is
    recomputed exactly in float32.
    """
    xn = x.numpy()
    n = xn.shape[0]
    bound = ProposalProduct(x, proposal).outsider_bound(norms)
    p_last = pool.key[:, -1].astype(np.float64)
    dots = _exact_dots(xn, np.arange(n), pool.idx)
    keys = np.where(pool.idx >= 0, 2.0 * dots - norms[np.maximum(pool.idx, 0)], -np.inf)
    order = np.argsort(-keys, axis=1)[:, :depth]
    trimmed = CandidatePool(n, depth)
    trimmed.key = np.take_along_axis(keys, order, axis=1).astype(np.float32)
    trimmed.idx = np.take_along_axis(pool.idx, order, axis=1)
    trimmed.dot = np.take_along_axis(dots, order, axis=1)
    # A pool that already holds every point has no outsider to fear.
    full = (pool.idx[:, -1] < 0) | (pool.depth >= n)
    bad = np.flatnonzero(~full & (p_last + bound >= trimmed.key[:, -1]))
    xt = torch.from_numpy(xn)
    nt = torch.from_numpy(norms)
    for s in range(0, bad.size, RESCORE_CHUNK_ROWS):
        rows = bad[s : s + RESCORE_CHUNK_ROWS]
        g = torch.mm(xt[torch.from_numpy(rows)], xt.t())
        key, pos = torch.topk(2.0 * g - nt[None, :], depth, dim=1)
        trimmed.key[rows] = key.numpy()
        trimmed.idx[rows] = pos.numpy()
        trimmed.dot[rows] = g.gather(1, pos).numpy()
    return trimmed, int(bad.size)


def _float64_rerank(x: np.ndarray, rows: np.ndarray, cand: np.ndarray) -> tuple:
    """Sort candidates ``cand`` (R, P; -1 = none) of ``rows`` by float64 distance, then index.

    Distances are ``sum((x_i - x_j)^2)`` in float64, so exact duplicates tie exactly.

    Returns:
        (sorted indices (R, P), sorted float64 squared distances (R, P), +inf for none).
    """
    diff = x[rows].astype(np.float64)[:, None, :] - x[np.maximum(cand, 0)].astype(np.float64)
    d64 = np.einsum("rpd,rpd->rp", diff, diff)
    d64 = np.where(cand >= 0, d64, np.inf)
    idx_key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((idx_key, d64), axis=1)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(d64, order, axis=1)


def _settle_near_ties(
    x: np.ndarray,
    norms: np.ndarray,
    pool: CandidatePool,
    boundaries: Sequence[int],
    tolerance: float,
) -> tuple[int, int]:
    """Re-rank in float64 every row whose key gap at a boundary is below ``tolerance``.

    Modifies ``pool.idx`` / ``pool.dot`` in place (their keys are then stale). A row whose float64
    order could involve a point outside the pool is recomputed against all points in float64.

    Returns:
        (rows re-ranked, rows recomputed against all points).
    """
    n, depth = pool.idx.shape
    # float32 key errors scale with |x_i| |x_j|: the tolerance is absolute for unit vectors and
    # grows with the norms otherwise (large-norm features would defeat a fixed threshold).
    lengths = np.sqrt(np.maximum(norms, 0.0)).astype(np.float64)
    tol = tolerance * np.maximum(1.0, lengths * lengths.max())
    flagged = np.zeros(n, dtype=bool)
    for b in boundaries:
        if b < depth:
            gap = pool.key[:, b - 1].astype(np.float64) - pool.key[:, b]
            flagged |= (gap < tol) & (pool.idx[:, b] >= 0)
    rows_all = np.flatnonzero(flagged)
    kmax = max(boundaries)
    redo: list[np.ndarray] = []
    for s in range(0, rows_all.size, RESCORE_CHUNK_ROWS):
        rows = rows_all[s : s + RESCORE_CHUNK_ROWS]
        new_idx, d_sorted = _float64_rerank(x, rows, pool.idx[rows])
        # An outsider has float32 key <= the pool's last key, hence a true squared distance of
        # at least |x_i|^2 - last_key - tolerance: it cannot displace a closer kept neighbour.
        outsider = norms[rows].astype(np.float64) - pool.key[rows, -1] - tol[rows]
        if depth < n:
            redo.append(rows[(pool.idx[rows, -1] >= 0) & ~(d_sorted[:, kmax - 1] < outsider)])
        pool.idx[rows] = new_idx
        pool.dot[rows] = _exact_dots(x, rows, new_idx)
    redo_rows = np.concatenate(redo) if redo else np.zeros(0, dtype=np.int64)
    if redo_rows.size:
        x64 = x.astype(np.float64)
        norms64 = np.einsum("nd,nd->n", x64, x64)
    for i in redo_rows.tolist():
        d_norm = norms64 + norms64[i] - 2.0 * (x64 @ x64[i])
        cut = np.partition(d_norm, depth - 1)[depth - 1]
        cand = np.flatnonzero(d_norm <= cut + FLOAT64_SHORTLIST_SLACK)
        new_idx, _ = _float64_rerank(x, np.array([i]), cand[None, :])
        pool.idx[i] = new_idx[0, :depth]
        pool.dot[i] = _exact_dots(x, np.array([i]), pool.idx[i : i + 1])[0]
    return int(rows_all.size), int(redo_rows.size)
