"""Exact k-nearest neighbours by squared Euclidean distance (docs/method.md §7.2, step 1).

The reference ranks every point's neighbours with a faiss ``IndexFlatL2`` search that includes
the point itself. This package returns the same lists, computed so that they are *exact*: the
sets of the first ``b`` neighbours, for each boundary ``b`` the Jaccard distance depends on (k2,
round(k1/2) + 1 and k1), equal those of the float64 order with ties broken by the lower index.

Three engines produce a "pool" of the best ``k + 1 + pool_extra`` candidates per row by float32
key ``2 x_i.x_j - |x_j|^2`` (larger is closer; it equals ``|x_i|^2 - d_ij``, so gaps between keys
are gaps between squared distances):

* CPU torch (default): a symmetric blocked Gram matrix. Each block pair is multiplied once and
  serves both its rows and its columns; the diagonal blocks seed a per-row running threshold (the
  pool's last key), after which a block only costs a comparison against it and a small merge
  (docs/performance.md, techniques 1-2).
* GPU torch: row chunks against all points and ``torch.topk``.
* faiss (optional dependency): ``IndexFlatL2``, on GPU only when ``faiss.get_num_gpus() > 0``.

Then a near-tie guard (docs/performance.md, technique 4): float32 may order a near-tie at a
boundary differently from exact arithmetic, so every row whose key gap at a boundary is below
``tie_tolerance`` is re-ranked with float64 distances ``sum((x_i - x_j)^2)`` (exact duplicates tie
exactly and fall back to index order). Optionally, candidates are first proposed by a low-precision
(bf16 / fp16) product, rescored exactly in float32 and certified by a per-row error bound; rows
that fail the certificate are recomputed exactly (docs/performance.md, technique 3). Both options
keep the neighbour sets equal to the float64 ones.

Modules, by concern: :mod:`.search` (:func:`exact_knn`, the orchestration), :mod:`.engines` (the
three engines and the CPU engine's worker threads), :mod:`.pool` (the candidate pool they fill),
:mod:`.products` (Gram blocks, proposals and their error bound, pair products, the float32 matmul
mode), :mod:`.exact` (certification and the float64 near-tie guard) and :mod:`.backends` (which
engine and kernels run). Options and their defaults: :mod:`gur_lightning.clustering.options`.
"""

from gur_lightning.clustering.knn.backends import (
    faiss_available,
    resolve_kernels,
    resolve_knn_backend,
    resolve_knn_device,
)
from gur_lightning.clustering.knn.products import ieee_float32_matmul, pair_dots
from gur_lightning.clustering.knn.search import KnnResult, exact_knn
from gur_lightning.clustering.options import (
    KERNEL_CHOICES,
    KNN_BACKENDS,
    KernelChoice,
    KnnBackend,
    KnnOptions,
)

__all__ = [
    "KERNEL_CHOICES",
    "KNN_BACKENDS",
    "KernelChoice",
    "KnnBackend",
    "KnnOptions",
    "KnnResult",
    "exact_knn",
    "faiss_available",
    "ieee_float32_matmul",
    "pair_dots",
    "resolve_kernels",
    "resolve_knn_backend",
    "resolve_knn_device",
]
