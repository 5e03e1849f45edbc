"""Pseudo-label engine: exact k-reciprocal Jaccard at scale, DBSCAN, CAE, CMLU, stats.

Pure functions of tensors / arrays, unit-testable without Lightning (docs/architecture.md §11.4):

* :func:`jaccard_distance`, :func:`dbscan_labels`: docs/method.md §7.2-7.3, equal to the
  reference's dense computation, in memory that grows with N·k (:func:`exact_knn` is the kNN
  underneath: torch on CPU or GPU, or faiss when installed). Their options travel as the frozen
  :class:`JaccardOptions` / :class:`KnnOptions`, whose defaults are defined once in
  :mod:`gur_lightning.clustering.options`.
* :func:`cae_embedding`: cross-memory association embeddings (§8).
* :func:`propagate_labels`, :func:`smooth_labels`, :func:`cmlu`: label unification (§9).
* :func:`cluster_centroids`, :func:`relabel_contiguous`: memory initialisation (§7.4).
* :func:`cluster_statistics`: what each re-clustering logs.
"""

from gur_lightning.clustering.cae import cae_embedding, legacy_block_bounds
from gur_lightning.clustering.centroids import cluster_centroids, relabel_contiguous
from gur_lightning.clustering.cmlu import cmlu, propagate_labels, smooth_labels
from gur_lightning.clustering.dbscan import dbscan_labels, dbscan_on_graph
from gur_lightning.clustering.jaccard import JaccardTimings, jaccard_distance
from gur_lightning.clustering.knn import KnnResult, exact_knn
from gur_lightning.clustering.options import JaccardOptions, KnnOptions
from gur_lightning.clustering.stats import cluster_statistics

__all__ = [
    "JaccardOptions",
    "JaccardTimings",
    "KnnOptions",
    "KnnResult",
    "cae_embedding",
    "cluster_centroids",
    "cluster_statistics",
    "cmlu",
    "dbscan_labels",
    "dbscan_on_graph",
    "exact_knn",
    "jaccard_distance",
    "legacy_block_bounds",
    "propagate_labels",
    "relabel_contiguous",
    "smooth_labels",
]
