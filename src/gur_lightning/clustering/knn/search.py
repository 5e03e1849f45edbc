"""exact_knn: one engine fills a candidate pool, the exactness guards settle its boundaries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gur_lightning.clustering._validation import as_feature_tensor, check_positive_int
from gur_lightning.clustering.knn.backends import (
    resolve_kernels,
    resolve_knn_backend,
    resolve_knn_device,
)
from gur_lightning.clustering.knn.engines import blocked_cpu_pool, chunked_gpu_pool, faiss_pool
from gur_lightning.clustering.knn.exact import _certify_proposals, _settle_near_ties
from gur_lightning.clustering.knn.products import ieee_float32_matmul
from gur_lightning.clustering.options import KnnOptions
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class KnnResult:
    """Exact neighbour lists of every point, the point itself included.

    Attributes:
        indices: (N, k) int64, by ascending squared Euclidean distance; the sets of the first
            ``b`` columns are exact for every requested boundary ``b`` (ties: lower index first).
        dots: (N, k) float32 inner products ``x_i . x_j`` of the listed pairs.
        rows_rescored: Rows whose near-tied boundaries were re-ranked in float64.
        rows_recomputed: Rows recomputed against all points (failed proposal certificate, or a
            float64 re-ranking that reached past the candidate pool).
        backend: ``"torch-cpu"``, ``"torch-cuda"``, ``"faiss-cpu"`` or ``"faiss-gpu"``.
        seconds: Wall time of the search.
    """

    indices: np.ndarray
    dots: np.ndarray
    rows_rescored: int
    rows_recomputed: int
    backend: str
    seconds: float


def exact_knn(
    features: Any,
    k: int,
    *,
    boundaries: Sequence[int] | None = None,
    options: KnnOptions | None = None,
) -> KnnResult:
    """The ``k`` nearest neighbours of every point by squared Euclidean distance, self included.

    Implements the kNN of docs/method.md §7.2 step 1 (the reference's faiss ``IndexFlatL2``
    search), made exact at the boundaries that matter (see :mod:`gur_lightning.clustering.knn`).

    Args:
        features: (N, D) torch tensor (CPU or CUDA) or numpy array; need not be unit-norm.
        k: Neighbours per point, 1 <= k <= N.
        boundaries: Prefix sizes whose neighbour *sets* must be exact (default ``(k,)``; ``k`` is
            always included). The Jaccard distance passes (k2, round(k1/2) + 1, k1).
        options: How the search runs (engine, block size, near-tie tolerance, proposals,
            kernels); default :class:`~gur_lightning.clustering.options.KnnOptions`. None of
            them changes the neighbour sets.

    Returns:
        A :class:`KnnResult` with (N, k) indices and dots.

    Raises:
        ValueError: On invalid features or options (see :func:`as_feature_tensor`).
    """
    start = time.perf_counter()
    opts = options if options is not None else KnnOptions()
    block_size, pool_extra = opts.block_size, opts.pool_extra
    tie_tolerance, proposal_dtype = opts.tie_tolerance, opts.proposal_dtype
    x_in = as_feature_tensor(features)
    n = x_in.shape[0]
    k = check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k={k} neighbours requested but there are only N={n} points")
    bounds = sorted({int(b) for b in (boundaries or ())} | {k})
    if bounds[0] < 1 or bounds[-1] > k:
        raise ValueError(f"boundaries must lie in [1, k={k}], got {list(boundaries or ())}")
    block_size = check_positive_int(block_size, "block_size")
    pool_extra = check_positive_int(pool_extra, "pool_extra", minimum=0)
    if not tie_tolerance >= 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    if proposal_dtype not in (None, torch.bfloat16, torch.float16, torch.int8):
        raise ValueError(
            f"proposal_dtype must be None, torch.bfloat16, torch.float16 or torch.int8, got "
            f"{proposal_dtype}"
        )
    run_device = resolve_knn_device(x_in, opts.device)
    engine = resolve_knn_backend(opts.backend, run_device)
    compiled = resolve_kernels(opts.kernels)
    depth = min(n, k + 1 + pool_extra)
    x = x_in.cpu()
    xn = x.numpy()
    norms = np.einsum("nd,nd->n", xn, xn)
    rows_recomputed = 0
    with ieee_float32_matmul():
        if engine == "faiss":
            if proposal_dtype is not None:
                raise ValueError("proposal_dtype applies to the torch engine, not to faiss")
            pool, name = faiss_pool(xn, depth)
        else:
            prop_depth = depth if proposal_dtype is None else min(n, depth + opts.proposal_margin)
            if run_device.type == "cuda":
                if proposal_dtype == torch.int8:
                    raise ValueError("int8 proposals are implemented for the CPU engine only")
                pool = chunked_gpu_pool(x_in.to(run_device), prop_depth, proposal_dtype)
                name = "torch-cuda"
            else:
                pool = blocked_cpu_pool(x, norms, prop_depth, block_size, proposal_dtype, compiled)
                name = "torch-cpu"
            if proposal_dtype is not None:
                pool, rows_recomputed = _certify_proposals(x, norms, pool, depth, proposal_dtype)
        rescored, recomputed = (
            _settle_near_ties(xn, norms, pool, bounds, tie_tolerance)
            if tie_tolerance > 0
            else (0, 0)
        )
    seconds = time.perf_counter() - start
    log.debug(
        "exact_knn: N=%d k=%d %s %.2fs, %d rows re-ranked in float64, %d recomputed",
        n,
        k,
        name,
        seconds,
        rescored,
        rows_recomputed + recomputed,
    )
    return KnnResult(
        indices=np.ascontiguousarray(pool.idx[:, :k]),
        dots=np.ascontiguousarray(pool.dot[:, :k]),
        rows_rescored=rescored,
        rows_recomputed=rows_recomputed + recomputed,
        backend=name,
        seconds=seconds,
    )
