"""DBSCAN on the k-reciprocal Jaccard distance through a sparse radius graph (docs/method.md §7.3).

The reference runs ``sklearn.cluster.DBSCAN(eps, min_samples=4, metric="precomputed")`` on the
dense N x N matrix. DBSCAN only needs each point's neighbours within ``eps``, so the labels are
computed here from the sparse graph of the pairs with ``d <= eps`` (docs/performance.md, technique
8), with scikit-learn's exact semantics:

* ``j`` is a neighbour of ``i`` iff ``d(i, j) <= eps``, the point itself included only if its own
  distance is (scikit-learn's sparse input path would always re-insert the diagonal, which
  differs from the dense path in the corner case ``d(i, i) > eps``: an empty ``V_qe`` row, or
  ``eps`` below float32 rounding; hence the labelling is done here rather than by scikit-learn);
* core points have at least ``min_samples`` neighbours;
* clusters are the connected components of core points linked by a neighbour relation,
  numbered in the order of their smallest core index (the order of scikit-learn's scan);
* a non-core point with a core neighbour joins the lowest-numbered such cluster (the first
  expansion to reach it in scikit-learn's scan); the others are outliers (``-1``).

This equals ``DBSCAN(...).fit_predict(dense)`` for a symmetric distance matrix, which the
Jaccard distance is; the tests compare both on random graphs and on Jaccard matrices.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from gur_lightning.clustering._validation import check_positive_int
from gur_lightning.clustering.jaccard import JaccardTimings, jaccard_distance
from gur_lightning.clustering.options import DEFAULT_MIN_SAMPLES, JaccardOptions
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


def dbscan_on_graph(
    graph: sp.spmatrix, eps: float, min_samples: int = DEFAULT_MIN_SAMPLES
) -> np.ndarray:
    """DBSCAN labels from a sparse symmetric precomputed-distance graph.

    Args:
        graph: (N, N) sparse distances holding at least every pair with ``d <= eps``; entries
            above ``eps`` are ignored, a missing entry is "not a neighbour" (store zeros
            explicitly). Must be symmetric in its ``<= eps`` pattern.
        eps: Neighbourhood radius (``d <= eps`` is a neighbour, as scikit-learn).
        min_samples: Neighbours (self included when ``d(i, i) <= eps``) of a core point.

    Returns:
        (N,) int64 labels ``0..K-1`` in scikit-learn's order, ``-1`` for outliers.

    Raises:
        ValueError: If the graph is not square or ``min_samples`` is not a positive integer.
    """
    min_samples = check_positive_int(min_samples, "min_samples")
    if graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
        raise ValueError(f"graph must be a square (N, N) matrix, got shape {graph.shape}")
    n = graph.shape[0]
    g = sp.csr_matrix(graph)
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    near = g.data <= eps
    rows, cols = rows[near], g.indices[near]
    core = np.bincount(rows, minlength=n) >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not core.any():
        return labels
    link = core[rows] & core[cols]
    adjacency = sp.csr_matrix(
        (np.ones(int(link.sum()), dtype=np.int8), (rows[link], cols[link])), shape=(n, n)
    )
    _, comp = connected_components(adjacency, directed=False)
    core_idx = np.flatnonzero(core)
    # Number clusters by their smallest core index: np.unique on the components in index order.
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp[core_idx], core_idx)
    used = np.flatnonzero(first < n)
    rank = np.full(comp.max() + 1, -1, dtype=np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(used.size)
    labels[core_idx] = rank[comp[core_idx]]
    # Border points: the lowest cluster id among their core neighbours.
    border = ~core[rows] & core[cols]
    if border.any():
        best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, rows[border], labels[cols[border]])
        hit = best < np.iinfo(np.int64).max
        labels[hit] = best[hit]
    return labels


def dbscan_labels(
    features: Any,
    eps: float,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    *,
    jaccard: JaccardOptions | None = None,
    timings: JaccardTimings | None = None,
) -> np.ndarray:
    """Pseudo-labels: DBSCAN on the k-reciprocal Jaccard distance (docs/method.md §7.2-7.3).

    Identical to ``sklearn.cluster.DBSCAN(eps, min_samples=min_samples,
    metric="precomputed").fit_predict(jaccard_distance(features, jaccard))``, computed through
    the sparse path in memory that grows with N·k.

    Args:
        features: (N, D) torch tensor or numpy array (see
            :func:`~gur_lightning.clustering.jaccard.jaccard_distance`).
        eps: DBSCAN radius in (0, 1) (0.6 / 0.55 / 0.3 in the reference, docs/method.md §7.3).
        min_samples: Neighbours (self included) that make a core point.
        jaccard: ``k1``, ``k2`` and the kNN engine options of the Jaccard distance (default
            :class:`~gur_lightning.clustering.options.JaccardOptions`).
        timings: Optional record filled with per-step seconds (``extra["dbscan"]`` included).

    Returns:
        (N,) int64 labels ``0..K-1`` in scikit-learn's order, ``-1`` for outliers. All points
        may be outliers (e.g. early in training); callers must handle ``K = 0``.

    Raises:
        ValueError: On invalid features or options.
    """
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(
            f"eps must lie in (0, 1) for the Jaccard distance (scikit-learn needs eps > 0; "
            f"d = 1 is the distance of unrelated points), got {eps}"
        )
    min_samples = check_positive_int(min_samples, "min_samples")
    timings = timings if timings is not None else JaccardTimings()
    graph = jaccard_distance(features, jaccard, max_distance=eps, timings=timings)
    start = time.perf_counter()
    labels = dbscan_on_graph(graph, eps, min_samples)
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
