"""The three engines that fill a candidate pool (docs/method.md §7.2 step 1).

* CPU torch (default): a symmetric blocked Gram matrix. Each block pair is multiplied once and
  serves both its rows and its columns; the diagonal blocks seed a per-row running threshold,
  after which a block only costs a comparison against it and a small merge (docs/performance.md,
  techniques 1-2). With several torch threads, a pool of worker threads multiplies blocks side by
  side while one of them scans, in a fixed order.
* GPU torch: row chunks against all points and ``torch.topk``.
* faiss (optional dependency): ``IndexFlatL2``, on GPU only when ``faiss.get_num_gpus() > 0``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch

from gur_lightning.clustering.knn.backends import _faiss_num_gpus
from gur_lightning.clustering.knn.pool import (
    FLUSH_ENTRIES_MIN,
    FLUSH_ENTRIES_PER_ROW,
    CandidatePool,
    _PendingCandidates,
)
from gur_lightning.clustering.knn.products import ProposalProduct, _exact_dots

GPU_CHUNK_ELEMENTS = 1 << 27
"""Largest (rows x N) similarity chunk on GPU: 512 MB of float32."""


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, restoring the caller's count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _is_turn(state: dict[str, int], index: int) -> bool:
    """Whether the blocks before ``index`` have been scanned (the condition of a wait)."""
    return state["scanned"] == index


def blocked_cpu_pool(
    x: torch.Tensor,
    norms: np.ndarray,
    depth: int,
    block: int,
    proposal: torch.dtype | None,
    kernels: ModuleType | None = None,
) -> CandidatePool:
    """Best-``depth`` pool per row from a symmetric blocked Gram matrix (CPU).

    Every block pair (I, J), I <= J, is multiplied once; the diagonal blocks seed the running
    thresholds, then every block is scanned against them, always one at a time and in the same
    order, so the result does not depend on the scheduling below. The scan is the compiled
    :mod:`~gur_lightning.clustering._kernels` when ``kernels`` is given, else the numpy
    :func:`_scan_block`; both give the same pool.

    Scheduling: the scan is single-threaded (a tenth of the work at N = 10,000 compiled, a
    third in numpy). With T > 1 torch threads, T workers each multiply their next block on one
    thread and then scan it in turn, so that one worker's scan runs beside the others'
    products instead of leaving T - 1 cores idle (one T-thread product at a time cannot
    overlap the scan: its threads wait for each other whenever the scan takes a core from one
    of them).

    Args:
        x: (N, D) float32 CPU features.
        norms: (N,) float32 squared norms ``|x_j|^2``.
        depth: Candidates kept per row (at most N).
        block: Rows per Gram block.
        proposal: None for exact float32 products, or a cheaper proposal format (see
            :class:`~gur_lightning.clustering.knn.products.ProposalProduct`).
        kernels: The compiled kernels module, or None for the numpy scan.

    Returns:
        The filled pool: (N, depth) keys, column indices and inner products per row.
    """
    n = x.shape[0]
    pool = CandidatePool(n, depth)
    product = ProposalProduct(x, proposal)
    starts = list(range(0, n, block))
    side = min(block, n)
    # Diagonal blocks first: seeding overwrites a row's pool, so it must precede the rest.
    pairs = [(s, s) for s in starts]
    pairs += [(s, t) for bi, s in enumerate(starts) for t in starts[bi + 1 :]]
    scan, finish = _block_scanner(pool, norms, side, kernels)

    def multiply(i: int, buf: torch.Tensor) -> np.ndarray:
        s, t = pairs[i]
        e, u = min(s + block, n), min(t + block, n)
        return product.diagonal(s, e, buf) if s == t else product.block(s, e, t, u, buf)

    workers = min(torch.get_num_threads(), len(pairs))
    if workers <= 1:
        buf = torch.empty((side, side), dtype=torch.float32)
        for i, (s, t) in enumerate(pairs):
            scan(multiply(i, buf), s, t)
        finish()
        return pool

    claim = threading.Lock()
    turn = threading.Condition()
    state = {"next": 0, "scanned": 0}

    def work() -> None:
        buf = torch.empty((side, side), dtype=torch.float32)
        while True:
            with claim:
                i = state["next"]
                state["next"] += 1
            if i >= len(pairs):
                return
            g = multiply(i, buf)
            with turn:
                turn.wait_for(functools.partial(_is_turn, state, i))
                try:
                    scan(g, *pairs[i])
                finally:
                    # Even a failed scan passes the turn on, so no worker waits forever.
                    state["scanned"] += 1
                    turn.notify_all()

    with _torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="knn") as helpers:
        for future in [helpers.submit(work) for _ in range(workers)]:
            future.result()
    finish()
    return pool


def _block_scanner(
    pool: CandidatePool, norms: np.ndarray, side: int, kernels: ModuleType | None
) -> tuple[Callable[[np.ndarray, int, int], None], Callable[[], None]]:
    """Return ``(scan(g, s, t), finish())`` that feed Gram blocks into ``pool``.

    ``scan`` takes a (B, C) block ``X[s:s+B] X[t:t+C]^T`` (the whole block when ``s == t``);
    ``finish`` completes the pool once every block has been scanned.
    """
    if kernels is not None:
        norms32 = np.ascontiguousarray(norms, dtype=np.float32)

        def compiled_scan(g: np.ndarray, s: int, t: int) -> None:
            if s == t:
                kernels.seed_rows(g, s, norms32, pool.key, pool.idx, pool.dot)
            else:
                kernels.scan_block(g, s, t, norms32, pool.key, pool.idx, pool.dot)

        return compiled_scan, lambda: None
    masks = (np.empty((side, side), dtype=bool), np.empty((side, side), dtype=bool))
    pending = _PendingCandidates(
        pool, max(FLUSH_ENTRIES_MIN, FLUSH_ENTRIES_PER_ROW * pool.key.shape[0])
    )

    def numpy_scan(g: np.ndarray, s: int, t: int) -> None:
        _scan_block(pool, pending, g, s, t, norms, masks)

    return numpy_scan, pending.flush


def _scan_block(
    pool: CandidatePool,
    pending: _PendingCandidates,
    g: np.ndarray,
    s: int,
    t: int,
    norms: np.ndarray,
    masks: tuple[np.ndarray, np.ndarray],
) -> None:
    """Collect the candidates of one Gram block ``g = X[s:s+B] X[t:t+C]^T``.

    A diagonal block (``s == t``) seeds its rows' pools directly; an off-diagonal block adds
    candidates for its rows and, transposed, for its columns to ``pending``.

    ``2 g_ij - |x_j|^2 > theta_i`` implies ``g_ij > (theta_i + min_J |x_j|^2) / 2``, a scalar per
    row (and likewise per column for the transposed use of an off-diagonal block), so the scan
    is two comparisons on the raw product; exact keys are computed only for the survivors.
    """
    rows_b, cols_b = g.shape
    e, u = s + rows_b, t + cols_b
    mask = masks[0][:rows_b, :cols_b]
    if t == s:
        # Seed the rows' thresholds with their exact depth-th best key inside the diagonal
        # block: a value-only partition costs a fraction of a top-k or of merging a weak seed.
        key = 2.0 * g - norms[s:e][None, :]
        kk = min(pool.depth, cols_b)
        theta = np.partition(key, cols_b - kk, axis=1)[:, cols_b - kk]
        np.greater_equal(key, theta[:, None], out=mask)
        counts = mask.sum(axis=1)
        if (counts == kk).all():
            # The usual case, no tie at the kk-th key: every row holds exactly kk candidates
            # and its pool is still empty, so they are written directly, sorted by key (a
            # stable sort keeps the lower index first on ties, as the merge would).
            cols = np.flatnonzero(mask).reshape(rows_b, kk) % cols_b
            cand = np.take_along_axis(key, cols, axis=1)
            order = np.argsort(-cand, axis=1, kind="stable")
            cols = np.take_along_axis(cols, order, axis=1)
            pool.key[s:e, :kk] = np.take_along_axis(cand, order, axis=1)
            pool.idx[s:e, :kk] = cols + t
            pool.dot[s:e, :kk] = np.take_along_axis(g, cols, axis=1)
            return
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, cols_b)
        pool.merge(r + s, c + t, key.reshape(-1)[flat], g.reshape(-1)[flat])
        return
    lim_rows = (pool.theta[s:e] + norms[t:u].min()) * 0.5
    lim_cols = (pool.theta[t:u] + norms[s:e].min()) * 0.5
    np.greater(g, lim_rows[:, None], out=mask)
    tmp = masks[1][:rows_b, :cols_b]
    np.greater(g, lim_cols[None, :], out=tmp)
    mask |= tmp
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return
    r, c = np.divmod(flat, cols_b)
    gv = g.reshape(-1)[flat]
    key_row = 2.0 * gv - norms[t + c]
    sel_row = key_row > pool.theta[s + r]
    key_col = 2.0 * gv - norms[s + r]
    sel_col = key_col > pool.theta[t + c]
    pending.add(r[sel_row] + s, c[sel_row] + t, key_row[sel_row], gv[sel_row])
    pending.add(c[sel_col] + t, r[sel_col] + s, key_col[sel_col], gv[sel_col])


def chunked_gpu_pool(x: torch.Tensor, depth: int, proposal: torch.dtype | None) -> CandidatePool:
    """Best-``depth`` pool per row from row chunks against all points and ``topk`` (GPU).

    Device-agnostic: it runs wherever ``x`` lives (the CUDA engine of
    :func:`~gur_lightning.clustering.knn.search.exact_knn`).

    Args:
        x: (N, D) float32 features.
        depth: Candidates kept per row (at most N).
        proposal: None for float32 products, or a cheaper dtype the products are taken in.

    Returns:
        The filled pool: (N, depth) keys, column indices and inner products per row.
    """
    n = x.shape[0]
    pool = CandidatePool(n, depth)
    norms = (x * x).sum(1)
    xs = x if proposal is None else x.to(proposal)
    chunk = max(1, min(n, GPU_CHUNK_ELEMENTS // n))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        g = torch.mm(xs[s:e], xs.t()).float()
        top_key, top_pos = torch.topk(2.0 * g - norms[None, :], depth, dim=1)
        pool.key[s:e] = top_key.cpu().numpy()
        pool.idx[s:e] = top_pos.cpu().numpy()
        pool.dot[s:e] = g.gather(1, top_pos).cpu().numpy()
    return pool


def faiss_pool(x: np.ndarray, depth: int) -> tuple[CandidatePool, str]:
    """Best-``depth`` pool per row from faiss ``IndexFlatL2`` (GPU only if faiss has GPUs).

    Args:
        x: (N, D) float32 features.
        depth: Candidates kept per row (at most N).

    Returns:
        The filled pool (keys are negated squared distances, which order and differ like the
        torch engines' keys) and the engine's name, ``faiss-cpu`` or ``faiss-gpu``.
    """
    import faiss

    n, d = x.shape
    name = "faiss-cpu"
    index = faiss.IndexFlatL2(d)
    if _faiss_num_gpus() > 0:
        # Only reached when faiss reports GPUs: calling GPU functions otherwise kills the process.
        resources = faiss.StandardGpuResources()  # must outlive the search below
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        name = "faiss-gpu"
    index.add(x)
    dist, idx = index.search(x, depth)
    pool = CandidatePool(n, depth)
    idx = np.asarray(idx, dtype=np.int64)
    valid = idx >= 0
    pool.idx = np.where(valid, idx, -1)
    # faiss returns squared distances; the negated distance orders and gaps like the key does.
    pool.key = np.where(valid, -np.asarray(dist, dtype=np.float32), -np.inf).astype(np.float32)
    pool.dot = _exact_dots(x, np.arange(n), pool.idx)
    return pool, name
