"""GUR's stage policy as one pure function: how a phase turns features into pseudo-labels.

:func:`cluster_phase` is the whole per-phase decision of docs/method.md §10 (stages 1-3) with
§7-9: which representation is clustered (raw features ``e``, camera-level CAE vectors on the
trained per-camera memories of stage 1, modality-level CAE vectors on the trained per-modality
memories of stage 2), with which DBSCAN radius, which memories are initialised from the
centroids, which memory each stream trains against, and CMLU in stage 2 from its start epoch.
:func:`prototypes_after` is the other half of the policy: which trained memories a phase leaves
behind as the CAE prototypes of the later stages (docs/method.md §8, §17.7).

Both are functions of tensors, arrays and plain data: no Lightning, no process group, no module
or callback object (docs/architecture.md §11.4). The re-clustering callback decides *when* a
phase is clustered, extracts the features, runs the policy on rank 0, broadcasts the
:class:`PhaseClustering` and installs it; the LightningModule owns the memories and the
:class:`Prototypes` between phases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from gur_lightning.clustering.cae import cae_embedding
from gur_lightning.clustering.centroids import cluster_centroids
from gur_lightning.clustering.cmlu import cmlu
from gur_lightning.clustering.dbscan import dbscan_labels
from gur_lightning.clustering.jaccard import JaccardTimings
from gur_lightning.clustering.options import (
    DEFAULT_CAE_TEMPERATURE,
    DEFAULT_CMLU_TOPK,
    DEFAULT_EPS,
    DEFAULT_EPS_INTRA_CAMERA,
    DEFAULT_K1,
    DEFAULT_K2,
    DEFAULT_KERNELS,
    DEFAULT_KNN_BACKEND,
    DEFAULT_MIN_SAMPLES,
    JaccardOptions,
    KernelChoice,
    KnnBackend,
    KnnOptions,
)
from gur_lightning.clustering.stats import cluster_statistics
from gur_lightning.modalities import MODALITIES
from gur_lightning.schedule import Phase, StageName

__all__ = [
    "ClusterOptions",
    "ClusterPolicy",
    "PhaseClustering",
    "Prototypes",
    "cluster_phase",
    "prototypes_after",
]

#: Name of the one memory both streams train against (stage 3, the oracle).
SHARED_MEMORY = "shared"


@dataclass(frozen=True)
class ClusterOptions:
    """The pseudo-labelling settings of every phase (``cluster`` config group, ``cmlu.topk``).

    Attributes:
        eps: DBSCAN radius of the per-modality clustering of stage 2 (0.6 SYSU, 0.3 RegDB).
        eps_intra_camera: Radius of the per-camera clustering of stage 1.
        eps_inter_modality: Radius of the joint clustering of stage 3; None (the default):
            ``eps``, as the reference (the config schema states the same default as the
            interpolation ``${.eps}``).
        min_samples: DBSCAN core size, the point included.
        k1: k-reciprocal neighbourhood size.
        k2: Query-expansion size.
        knn_backend: kNN backend of the Jaccard distance (``auto``, ``torch``, ``faiss``).
        kernels: ``auto``, ``numba`` or ``numpy`` kernels of the Jaccard distance.
        cae_temperature: Softmax temperature of the CAE embeddings (docs/method.md §8).
        cae_legacy_slicing: Reproduce the reference's camera-CAE slicing bug
            (docs/method.md §17.1).
        cmlu_topk: Neighbours of CMLU's propagation and smoothing (docs/method.md §9).
        oracle: Ground-truth identities instead of clustering, one label space and one shared
            memory for both modalities: the supervised upper bound of a benchmark table, never an
            unsupervised result.
    """

    eps: float = DEFAULT_EPS
    eps_intra_camera: float = DEFAULT_EPS_INTRA_CAMERA
    eps_inter_modality: float | None = None
    min_samples: int = DEFAULT_MIN_SAMPLES
    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    knn_backend: KnnBackend = DEFAULT_KNN_BACKEND
    kernels: KernelChoice = DEFAULT_KERNELS
    cae_temperature: float = DEFAULT_CAE_TEMPERATURE
    cae_legacy_slicing: bool = False
    cmlu_topk: int = DEFAULT_CMLU_TOPK
    oracle: bool = False

    def eps_of(self, stage: StageName) -> float:
        """The DBSCAN radius of a stage."""
        return {
            "intra_camera": self.eps_intra_camera,
            "inter_camera": self.eps,
            "inter_modality": self.eps
            if self.eps_inter_modality is None
            else self.eps_inter_modality,
        }[stage]


@dataclass(frozen=True)
class Prototypes:
    """Trained memories kept across phases as CAE prototypes (docs/method.md §8, §17.7).

    Attributes:
        cameras: ``(modality, camera) -> (K, D)`` fp32 CPU rows: the trained memory of each
            camera's last stage-1 phase (camera-level CAE of stage 2, §8.1).
        modalities: ``modality -> (K, D)`` fp32 CPU rows: the trained memories of the last
            stage-2 phase (modality-level CAE of stage 3, §8.2).
    """

    cameras: Mapping[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    modalities: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class PhaseClustering:
    """The pseudo-labels and initial memories of one phase (what rank 0 broadcasts).

    Attributes:
        labels: Per modality, (N_m,) int64 training labels (-1 outliers), aligned with the
            modality's features.
        centroids: Memory name (``visible``, ``infrared`` or ``shared``) -> (K, D) float32
            L2-normalised centroids of the features ``e`` (docs/method.md §7.4).
        routing: Stream (``visible`` / ``infrared``) -> the memory name it trains against.
        statistics: Flat statistics to log (logged as ``cluster/<stage>/<key>``).
        knn_backend: The kNN engine of the last Jaccard distance (``torch-cpu``,
            ``faiss-gpu``...; empty when nothing was clustered, as with the oracle).
    """

    labels: dict[str, np.ndarray]
    centroids: dict[str, torch.Tensor]
    routing: dict[str, str]
    statistics: dict[str, float]
    knn_backend: str = ""


#: The signature of a stage policy: ``(phase, features, identities, prototypes, options)``; see
#: :func:`cluster_phase`. The re-clustering callback takes one (tests substitute their own).
ClusterPolicy = Callable[
    [
        Phase,
        Mapping[str, torch.Tensor],
        Mapping[str, np.ndarray],
        Prototypes,
        ClusterOptions,
    ],
    PhaseClustering,
]


def cluster_phase(
    phase: Phase,
    features: Mapping[str, torch.Tensor],
    identities: Mapping[str, np.ndarray],
    prototypes: Prototypes,
    options: ClusterOptions,
) -> PhaseClustering:
    """Pseudo-label one phase (docs/method.md §10 stages 1-3, §7-9).

    * Stages 1 and 2 cluster each modality on its own: raw ``e`` (stage 1, and stage 2 without
      camera CAE), or camera-level CAE vectors against the modality's per-camera prototypes
      (§8.1). One memory per modality. From CMLU's start epoch the visible samples take infrared
      cluster ids (§9) and train against the infrared memory; the visible memory is still
      built, as stage 3's prototype (§17.3).
    * Stage 3 clusters both modalities jointly on modality-level CAE vectors against the
      stage-2 prototypes (§8.2), or on raw ``e`` without them; one shared memory.
    * The oracle labels every sample with its identity; one shared memory.

    Memories are the centroids of the extracted features ``e``, also when the clustering ran
    on CAE vectors (§7.4).

    Args:
        phase: The phase to pseudo-label.
        features: ``visible`` and ``infrared`` (N_m, D) fp32 features ``e`` (docs/method.md
            §7.1) of the phase's samples, on one device (the CPU in training).
        identities: ``visible`` and ``infrared`` (N_m,) ground-truth identities of the same
            samples: used for the statistics (ARI, NMI, purity) and by the oracle, never by the
            clustering.
        prototypes: The trained memories earlier phases left behind (:func:`prototypes_after`),
            on the features' device.
        options: The clustering settings.

    Returns:
        The labels, initial centroids, routing and statistics of the phase.

    Raises:
        ValueError: When DBSCAN (or CMLU) finds no cluster in a modality (stages 1-2) or in the
            joint set (stage 3): the phase cannot train; also on malformed inputs or options.
    """
    for m in MODALITIES:
        if m not in features or m not in identities:
            raise ValueError(
                f"cluster_phase: features and identities need both modalities {MODALITIES}, got "
                f"{sorted(features)} and {sorted(identities)}"
            )
        if len(identities[m]) != features[m].shape[0]:
            raise ValueError(
                f"cluster_phase: {features[m].shape[0]} {m} features but "
                f"{len(identities[m])} {m} identities"
            )
    if options.oracle:
        return _oracle(features, identities)
    if phase.stage == "inter_modality":
        return _joint(phase, features, identities, prototypes, options)
    return _per_modality(phase, features, identities, prototypes, options)


def prototypes_after(
    phase: Phase, trained: Mapping[str, torch.Tensor], prototypes: Prototypes
) -> Prototypes:
    """The prototypes once ``phase`` has trained its memories (docs/method.md §8, §17.7).

    A stage-1 phase replaces the prototypes of its visible and its infrared camera (under
    nested pairing the last pairing of each camera wins, as in the reference); a stage-2 phase
    replaces both modality prototypes; stage 3 keeps none. Memories trained with one shared
    label space (the oracle) have no per-domain prototypes to keep.

    Args:
        phase: The phase that trained ``trained``.
        trained: Memory name -> (K, D) trained rows at the phase's end (stored as given).
        prototypes: The prototypes before the phase.

    Returns:
        The updated prototypes (a new object; ``prototypes`` is not modified).
    """
    if not all(m in trained for m in MODALITIES):
        return prototypes
    if phase.stage == "intra_camera":
        if phase.visible_camera is None or phase.infrared_camera is None:
            raise ValueError(f"prototypes_after: stage-1 phase {phase.index} names no cameras")
        cameras = dict(prototypes.cameras)
        cameras[("visible", phase.visible_camera)] = trained["visible"]
        cameras[("infrared", phase.infrared_camera)] = trained["infrared"]
        return replace(prototypes, cameras=cameras)
    if phase.stage == "inter_camera":
        return replace(prototypes, modalities={m: trained[m] for m in MODALITIES})
    return prototypes


# ---------------------------------------------------------------------------- the stages


class _Labeller:
    """DBSCAN on the Jaccard distance with the phase's options; remembers the kNN engine."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.knn_backend = ""

    def __call__(self, features: torch.Tensor, eps: float) -> np.ndarray:
        timings = JaccardTimings()
        o = self.options
        jaccard = JaccardOptions(
            k1=o.k1, k2=o.k2, knn=KnnOptions(backend=o.knn_backend, kernels=o.kernels)
        )
        labels = dbscan_labels(
            features, eps=eps, min_samples=o.min_samples, jaccard=jaccard, timings=timings
        )
        self.knn_backend = timings.knn_backend
        return labels


def _statistics(labels: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict[str, float]:
    stats = cluster_statistics(labels, true_pids=truth)
    return {prefix + k: float(v) for k, v in stats.items()}


def _require_clusters(labels: np.ndarray, what: str) -> None:
    if not np.any(np.asarray(labels) >= 0):
        raise ValueError(f"DBSCAN found no cluster among the {len(labels)} {what} samples")


def _split(joint: np.ndarray, n_visible: int) -> dict[str, np.ndarray]:
    return {"visible": joint[:n_visible], "infrared": joint[n_visible:]}


def _oracle(
    features: Mapping[str, torch.Tensor], identities: Mapping[str, np.ndarray]
) -> PhaseClustering:
    joint = torch.cat([features["visible"], features["infrared"]])
    pids = np.concatenate([identities["visible"], identities["infrared"]])
    _, truth = np.unique(pids, return_inverse=True)
    return PhaseClustering(
        labels=_split(truth, len(identities["visible"])),
        centroids={SHARED_MEMORY: cluster_centroids(joint, torch.as_tensor(truth))},
        routing={m: SHARED_MEMORY for m in MODALITIES},
        statistics=_statistics(truth, pids),
    )


def _joint(
    phase: Phase,
    features: Mapping[str, torch.Tensor],
    identities: Mapping[str, np.ndarray],
    prototypes: Prototypes,
    options: ClusterOptions,
) -> PhaseClustering:
    label = _Labeller(options)
    joint = torch.cat([features["visible"], features["infrared"]])
    pids = np.concatenate([identities["visible"], identities["infrared"]])
    protos = [prototypes.modalities[m] for m in MODALITIES if m in prototypes.modalities]
    # Stage 3 clusters modality-level CAE vectors built on the stage-2 memories (§8.2).
    rep = (
        cae_embedding(joint, protos, temperature=options.cae_temperature)
        if phase.modality_cae and len(protos) == 2
        else joint
    )
    joint_labels = label(rep, options.eps_of(phase.stage))
    _require_clusters(joint_labels, "joint")
    n_visible = len(identities["visible"])
    labels = _split(joint_labels, n_visible)
    stats = _statistics(joint_labels, pids)
    for m in MODALITIES:
        stats.update(_statistics(labels[m], identities[m], f"{m}/"))
    is_visible = np.arange(len(pids)) < n_visible
    stats["cross_modal_cluster_fraction"] = _cross_modal_fraction(joint_labels, is_visible)
    return PhaseClustering(
        labels=labels,
        centroids={SHARED_MEMORY: cluster_centroids(joint, torch.as_tensor(joint_labels))},
        routing={m: SHARED_MEMORY for m in MODALITIES},
        statistics=stats,
        knn_backend=label.knn_backend,
    )


def _per_modality(
    phase: Phase,
    features: Mapping[str, torch.Tensor],
    identities: Mapping[str, np.ndarray],
    prototypes: Prototypes,
    options: ClusterOptions,
) -> PhaseClustering:
    label = _Labeller(options)
    labels: dict[str, np.ndarray] = {}
    stats: dict[str, float] = {}
    for m in MODALITIES:
        rep = features[m]
        if phase.camera_cae:
            # Cameras in ascending order: the block order of the camera-level CAE (§8.1).
            protos = [mem for (mod, _cam), mem in sorted(prototypes.cameras.items()) if mod == m]
            if protos:
                rep = cae_embedding(
                    rep,
                    protos,
                    temperature=options.cae_temperature,
                    legacy_slicing=options.cae_legacy_slicing,
                )
        labels[m] = label(rep, options.eps_of(phase.stage))
        _require_clusters(labels[m], m)
        stats.update(_statistics(labels[m], identities[m], f"{m}/"))
    centroids: dict[str, torch.Tensor] = {
        m: cluster_centroids(features[m], torch.as_tensor(labels[m])) for m in MODALITIES
    }
    routing: dict[str, str] = {m: m for m in MODALITIES}
    if phase.cmlu:
        # CMLU (§9): the visible samples take infrared cluster ids and train against the
        # infrared memory; the visible memory stays for stage 3's CAE prototypes (§17.3).
        vis = cmlu(
            features["visible"],
            features["infrared"],
            torch.as_tensor(labels["infrared"]),
            topk=options.cmlu_topk,
            smooth=phase.smooth,
        )
        labels["visible"] = np.asarray(vis)
        _require_clusters(labels["visible"], "visible after CMLU")
        routing = {m: "infrared" for m in MODALITIES}
        stats.update(_statistics(labels["visible"], identities["visible"], "visible_cmlu/"))
    return PhaseClustering(
        labels=labels,
        centroids=centroids,
        routing=routing,
        statistics=stats,
        knn_backend=label.knn_backend,
    )


def _cross_modal_fraction(labels: np.ndarray, is_visible: np.ndarray) -> float:
    """Fraction of joint clusters holding both modalities (stage-3 modality mixing)."""
    kept = labels >= 0
    if not kept.any():
        return 0.0
    clusters = np.unique(labels[kept])
    has_vis = np.zeros(clusters.max() + 1, dtype=bool)
    has_ir = np.zeros_like(has_vis)
    has_vis[labels[kept & is_visible]] = True
    has_ir[labels[kept & ~is_visible]] = True
    return float((has_vis & has_ir)[clusters].mean())
