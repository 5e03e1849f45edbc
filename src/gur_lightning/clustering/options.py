"""Options of the pseudo-label path and their defaults, defined once (docs/method.md §7).

The options travel as two frozen records: :class:`JaccardOptions` (k1, k2 and the engine
options) from the caller through :func:`~gur_lightning.clustering.dbscan.dbscan_labels` to
:func:`~gur_lightning.clustering.jaccard.jaccard_distance`, and its :class:`KnnOptions` on to
:func:`~gur_lightning.clustering.knn.exact_knn`. Every default is a constant here; the config
schema (``cluster`` group), the re-clustering callback and the benchmarks take theirs from these
constants. The remaining defaults of a re-clustering (the DBSCAN radii, the CAE temperature, the
CMLU neighbourhood, which is the schedule's) are named here too, for the same reason: the schema,
the stage policy's options and the functions that use them (:mod:`.cae`, :mod:`.cmlu`) all refer
to them. Values are checked where they are used, with errors naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from gur_lightning.schedule import CMLU_TOPK

if TYPE_CHECKING:
    import torch

KnnBackend = Literal["auto", "torch", "faiss"]
#: kNN engines by name (:func:`~gur_lightning.clustering.knn.resolve_knn_backend`).
KNN_BACKENDS: tuple[str, ...] = get_args(KnnBackend)
KernelChoice = Literal["auto", "numba", "numpy"]
#: Pseudo-label kernels by name (:func:`~gur_lightning.clustering.knn.resolve_kernels`).
KERNEL_CHOICES: tuple[str, ...] = get_args(KernelChoice)

DEFAULT_K1 = 30
"""k-reciprocal neighbourhood size (docs/method.md §7.2, argparse ``--k1 30``)."""
DEFAULT_K2 = 6
"""Query-expansion neighbourhood size (docs/method.md §7.2, argparse ``--k2 6``)."""
DEFAULT_MIN_SAMPLES = 4
"""DBSCAN ``min_samples`` (docs/method.md §7.3; counts the point itself)."""
DEFAULT_EPS = 0.6
"""DBSCAN radius of the per-modality clustering of stage 2 on SYSU-MM01 (RegDB: 0.3;
docs/method.md §7.3). Stage 3's radius defaults to it (``cluster.eps_inter_modality``)."""
DEFAULT_EPS_INTRA_CAMERA = 0.55
"""DBSCAN radius of the per-camera clustering of stage 1 (docs/method.md §7.3)."""
DEFAULT_CAE_TEMPERATURE = 0.05
"""Softmax temperature τ of the CAE blocks (docs/method.md §8: the code multiplies by 20)."""
DEFAULT_CMLU_TOPK = CMLU_TOPK
"""Top-k of both CMLU steps: the schedule's (``schedule.cmlu.topk``, the layer below)."""
DEFAULT_KNN_BACKEND: KnnBackend = "auto"
"""The torch engine, or faiss-GPU on a machine whose faiss has GPUs (same neighbours)."""
DEFAULT_KERNELS: KernelChoice = "auto"
"""The numba kernels when they can be built, else numpy (same labels)."""
DEFAULT_BLOCK_SIZE = 2048
"""Rows per block of the CPU Gram matrix: a 2048 x 2048 float32 block is 16 MB."""
DEFAULT_TIE_TOLERANCE = 1e-5
"""Key gap (squared-distance units) under which a boundary is re-ranked in float64.

float32 Gram entries of d = 2048 unit vectors carry errors of order 1e-7 to 1e-6, so 1e-5 leaves
an order of magnitude of margin (docs/performance.md, technique 4: ~1 % of rows are re-ranked)."""
DEFAULT_POOL_EXTRA = 8
"""Candidates kept beyond k + 1, so that a re-ranked row rarely needs a full float64 recompute."""
DEFAULT_PROPOSAL_MARGIN = 24
"""Extra low-precision candidates per row before exact rescoring (docs/performance.md: k1 + 20)."""


@dataclass(frozen=True)
class KnnOptions:
    """How :func:`~gur_lightning.clustering.knn.exact_knn` runs; none changes its neighbour sets.

    Attributes:
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``
            (:func:`~gur_lightning.clustering.knn.resolve_knn_backend`).
        device: Device of the torch engine (default: the features' device).
        block_size: Rows per block of the CPU engine.
        tie_tolerance: Key gap below which a boundary is re-ranked in float64; 0 disables the
            guard (raw float32 order, like the reference's faiss search).
        pool_extra: Candidates kept beyond ``k + 1`` for the float64 re-ranking.
        proposal_dtype: ``torch.bfloat16`` / ``torch.float16`` (fast on AMX CPUs and GPUs) or
            ``torch.int8`` (CPU, VNNI) to propose candidates with a cheaper product, then rescore
            them exactly and certify them (rows that fail are recomputed exactly). ``None``
            computes the product in float32.
        proposal_margin: Extra proposed candidates per row before certification.
        kernels: ``"numba"`` (compiled), ``"numpy"`` or ``"auto"`` (numba when installed): the
            CPU engine's block scan and the Jaccard distance's reciprocal sets and sums.
    """

    backend: KnnBackend = DEFAULT_KNN_BACKEND
    device: Any | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    pool_extra: int = DEFAULT_POOL_EXTRA
    proposal_dtype: torch.dtype | None = None
    proposal_margin: int = DEFAULT_PROPOSAL_MARGIN
    kernels: KernelChoice = DEFAULT_KERNELS


@dataclass(frozen=True)
class JaccardOptions:
    """Parameters of the k-reciprocal Jaccard distance (docs/method.md §7.2) and its engine.

    Attributes:
        k1: k-reciprocal neighbourhood size.
        k2: Query-expansion size (``1`` disables the expansion).
        knn: How the kNN underneath runs (and which kernels the Jaccard steps use).
    """

    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    knn: KnnOptions = field(default_factory=KnnOptions)
