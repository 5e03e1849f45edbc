"""DBSCAN on the k-reciprocal Jaccard distance through a sparse radius graph (method.md §7.3).

The reference runs ``sklearn.cluster.DBSCAN(eps, min_samples=4, metric="precomputed")`` on the
dense N x N matrix. scikit-learn only needs each point's neighbours within ``eps``, so this module
hands it the sparse matrix of the pairs with ``d <= eps`` (performance.md, technique 8): explicit
zeros are stored (scikit-learn reads a missing entry as "not a neighbour"), the diagonal is
present, and each row is sorted by distance (what scikit-learn's precomputed-graph check expects,
so it neither warns nor copies). DBSCAN's labels depend only on the neighbour sets, hence they are
identical to those on the dense matrix.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from gur_lightning.clustering._validation import check_positive_int
from gur_lightning.clustering.jaccard import (
    DEFAULT_K1,
    DEFAULT_K2,
    JaccardTimings,
    jaccard_distance,
)
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_MIN_SAMPLES = 4
"""DBSCAN ``min_samples`` (method.md §7.3; counts the point itself)."""


def sort_rows_by_distance(graph: sp.csr_matrix) -> sp.csr_matrix:
    """Reorder every CSR row by ascending distance (then column), keeping explicit zeros.

    Args:
        graph: (N, N) CSR matrix of distances.

    Returns:
        A new CSR matrix with the same entries, rows sorted by value.
    """
    n = graph.shape[0]
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    order = np.lexsort((graph.indices, graph.data, rows))
    out = sp.csr_matrix(
        (graph.data[order], graph.indices[order], graph.indptr.copy()), shape=graph.shape
    )
    out.has_sorted_indices = False
    return out


def dbscan_on_graph(
    graph: sp.csr_matrix, eps: float, min_samples: int = DEFAULT_MIN_SAMPLES
) -> np.ndarray:
    """scikit-learn DBSCAN on a sparse precomputed radius graph.

    Args:
        graph: (N, N) CSR distances holding at least every pair with ``d <= eps``, the diagonal
            included, zeros stored explicitly.
        eps: Neighbourhood radius (``d <= eps`` is a neighbour, as scikit-learn).
        min_samples: Neighbours (self included) that make a core point.

    Returns:
        (N,) int64 labels ``0..K-1``, ``-1`` for outliers.
    """
    graph = sort_rows_by_distance(graph)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    with warnings.catch_warnings():
        # scikit-learn re-sets the (already present) diagonal and may note the sparse edit.
        warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
        labels = model.fit_predict(graph)
    return labels.astype(np.int64)


def dbscan_labels(
    features: Any,
    eps: float,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    k1: int = DEFAULT_K1,
    k2: int = DEFAULT_K2,
    *,
    timings: JaccardTimings | None = None,
    **knn_kwargs: Any,
) -> np.ndarray:
    """Pseudo-labels: DBSCAN on the k-reciprocal Jaccard distance (method.md §7.2-7.3).

    Identical to ``sklearn.cluster.DBSCAN(eps, min_samples=min_samples,
    metric="precomputed").fit_predict(jaccard_distance(features, k1, k2))``, computed through
    the sparse path in memory that grows with N·k.

    Args:
        features: (N, D) torch tensor or numpy array (see
            :func:`~gur_lightning.clustering.jaccard.jaccard_distance`).
        eps: DBSCAN radius in [0, 1) (0.6 / 0.55 / 0.3 in the reference, method.md §7.3).
        min_samples: Neighbours (self included) that make a core point.
        k1: k-reciprocal neighbourhood size.
        k2: Query-expansion size.
        timings: Optional record filled with per-step seconds (``extra["dbscan"]`` included).
        **knn_kwargs: Passed to :func:`~gur_lightning.clustering.jaccard.jaccard_distance`
            (``knn_backend``, ``device``, ``block_size``, ``tie_tolerance``, ...).

    Returns:
        (N,) int64 labels ``0..K-1`` in scikit-learn's order, ``-1`` for outliers. All points
        may be outliers (e.g. early in training); callers must handle ``K = 0``.

    Raises:
        ValueError: On invalid features or options.
    """
    if not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"eps must lie in [0, 1) for the Jaccard distance, got {eps}")
    min_samples = check_positive_int(min_samples, "min_samples")
    timings = timings if timings is not None else JaccardTimings()
    graph = jaccard_distance(features, k1, k2, max_distance=eps, timings=timings, **knn_kwargs)
    start = time.perf_counter()
    labels = dbscan_on_graph(graph, eps, min_samples)
    # A point whose own distance exceeds eps (an empty V_qe row: d(i, i) = 1, and d = 1 to all
    # others) has no neighbour on the dense matrix, not even itself; scikit-learn re-inserts a
    # missing sparse diagonal as 0, which makes it a singleton cluster when min_samples == 1.
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    has_self = np.zeros(graph.shape[0], dtype=bool)
    has_self[rows[graph.indices == rows]] = True
    if not has_self.all():
        labels = _drop_points(labels, np.flatnonzero(~has_self))
    timings.extra["dbscan"] = time.perf_counter() - start
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    log.debug(
        "dbscan_labels: N=%d eps=%.3f -> %d clusters, %d outliers",
        labels.size,
        eps,
        n_clusters,
        int((labels < 0).sum()),
    )
    return labels


def _drop_points(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mark ``points`` as outliers and renumber the surviving clusters in their old order."""
    labels = labels.copy()
    labels[points] = -1
    kept = np.unique(labels[labels >= 0])
    remap = np.full(int(labels.max()) + 2 if labels.size else 1, -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    return np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
