"""The re-clustering callback: decides *when* to pseudo-label and orchestrates it.

GUR re-clusters before every phase of every epoch (docs/method.md §10): per camera in stage 1, per
modality on camera-level CAE vectors in stage 2 (plus CMLU from its start epoch), jointly on
modality-level CAE vectors in stage 3. This callback holds no algorithm: the maths lives in
:mod:`gur_lightning.clustering`, the memories in the LightningModule, the loaders in the
DataModule. It runs the clustering for phase ``p`` before Lightning builds phase ``p``'s train
loader: in ``on_fit_start`` for the first phase (fresh start or resume) and in
``on_train_epoch_end`` of phase ``p - 1`` for the others (Lightning requests the train loader at
the start of each epoch, after the previous epoch-end hooks; docs/architecture.md §10.1).

Under DDP every rank extracts features for its shard, rank 0 clusters, and the labels and
centroids are broadcast, so every rank installs bit-identical memories (docs/architecture.md
§11.5). A clustering that fails on rank 0 is broadcast as an error: a usable-clustering failure
skips the phase on every rank, anything else is raised on every rank (no rank waits for a broadcast
that never comes).

Resume (docs/method.md §18.2: one Lightning epoch per phase, checkpoints at phase ends). The
callback's ``state_dict`` holds what the next phases need and cannot recompute: the clustering
history, the trained per-camera memories of stage 1 and per-modality memories of stage 2 (the
CAE prototypes of stages 2 and 3), and the labels and initial memories installed for the next
phase, together with a fingerprint of the schedule and the training data. Lightning restores
callback states *before* ``on_fit_start`` but the loop's epoch counter only *after* it, so
``on_fit_start`` resumes from the restored state, never from ``trainer.current_epoch``, and
re-installs the saved labels and memories instead of re-clustering. Every training draw of a
phase is seeded from ``(seed, phase, rank)`` (:meth:`VIReIDDataModule.train_dataloader`), so a
run resumed from a phase-end checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

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
    KernelChoice,
    KnnBackend,
)
from gur_lightning.data.datamodule import LabelledSet, VIReIDDataModule, fitted_datamodule
from gur_lightning.data.samplers import NotEnoughClustersError
from gur_lightning.data.samples import Sample
from gur_lightning.schedule import Phase
from gur_lightning.utils.distributed import (
    RemoteError,
    average_buffers,
    broadcast_buffers,
    get_world_size,
)
from gur_lightning.utils.logging import get_logger

if TYPE_CHECKING:
    from gur_lightning.models.module import GURLitModule

log = get_logger(__name__)

#: Version of the checkpointed state layout (bump on incompatible changes).
STATE_VERSION: int = 1


@dataclass
class ClusteringResult:
    """What rank 0 computes for one phase and broadcasts to the others.

    Attributes:
        labels: Per modality, (N_m,) int64 training labels (-1 outliers) aligned with the
            modality's phase samples.
        memories: Memory name -> (K, D) float32 L2-normalised centroids.
        routing: Stream ("visible"/"infrared") -> memory name it trains against.
        stats: Flat statistics to log (``cluster/<stage>/...``).
        error: A message when the clustering is unusable (the phase is then skipped).
        fatal: The error is not a clustering outcome but a failure (every rank raises).
        knn_backend: The kNN engine of the Jaccard distances (``torch-cpu``, ``faiss-gpu``...;
            empty when nothing was clustered, as with the oracle).
    """

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    memories: dict[str, torch.Tensor] = field(default_factory=dict)
    routing: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    fatal: bool = False
    knn_backend: str = ""


@dataclass(frozen=True)
class InstalledPhase:
    """The pseudo-labels and initial memories installed for one phase (on every rank).

    Attributes:
        phase: Index of the phase they train.
        ok: False when the phase was skipped (no usable clustering): nothing is installed.
        labels: Per modality, (N_m,) int64 labels (-1 outliers) aligned with the phase samples.
        memories: Memory name -> (K, D) float32 CPU centroids as installed.
        routing: Stream -> memory name.
    """

    phase: int
    ok: bool
    labels: dict[str, np.ndarray]
    memories: dict[str, torch.Tensor]
    routing: dict[str, str]


def _gur(pl_module: L.LightningModule) -> GURLitModule:
    """The module as the GURLitModule this callback drives (a static cast: tests use stand-ins)."""
    return cast("GURLitModule", pl_module)


class ResumeError(ValueError):
    """A checkpoint that cannot resume this run (another experiment, mid-phase, no state)."""


class Reclustering(Callback):
    """Re-cluster before every phase of the GUR schedule and install labels and memories.

    Args:
        phases: The expanded schedule (:func:`gur_lightning.schedule.build_phases`).
        eps: Per-modality DBSCAN radius of stage 2.
        eps_intra_camera: Radius of the per-camera clustering of stage 1.
        eps_inter_modality: Radius of the joint clustering of stage 3 (None: ``eps``).
        min_samples: DBSCAN core size.
        k1: k-reciprocal neighbourhood size.
        k2: Query-expansion size.
        knn_backend: kNN backend of the Jaccard distance.
        kernels: ``auto``, ``numba`` or ``numpy`` kernels of the Jaccard distance.
        cae_temperature: Softmax temperature of the CAE embeddings.
        cae_legacy_slicing: Reproduce the reference's camera-CAE slicing bug (§17.1).
        cmlu_topk: Neighbours of CMLU's propagation and smoothing.
        oracle: Use the ground-truth identities instead of clustering, one label space and one
            shared memory for both modalities: the supervised upper bound of a benchmark table,
            never an unsupervised result.
        experiment: Name of the experiment, saved in checkpoints and quoted when a checkpoint
            from another experiment is refused.

    Attributes:
        history: One record per clustering: ``phase``, ``trainer_epoch`` (the Lightning epoch
            whose end, or fit start, ran it), ``stage``, ``skipped``, ``seconds``,
            ``knn_backend`` (the kNN engine that ran, e.g. ``torch-cpu``) and the stats.
        installed: What is installed for the current or next phase (None before fit).

    Hooks and ranks: ``setup`` checks the trainer; ``on_fit_start`` clusters phase 0 or
    re-installs the checkpointed phase; ``on_train_epoch_end`` averages BatchNorm buffers
    across ranks (or takes rank 0's with DataParallel-exact BatchNorm), keeps the trained
    memories and clusters the next phase. Every hook runs on
    every rank; only the DBSCAN / CAE / CMLU maths runs on rank 0.
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        *,
        eps: float = DEFAULT_EPS,
        eps_intra_camera: float = DEFAULT_EPS_INTRA_CAMERA,
        eps_inter_modality: float | None = None,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        k1: int = DEFAULT_K1,
        k2: int = DEFAULT_K2,
        knn_backend: KnnBackend = DEFAULT_KNN_BACKEND,
        kernels: KernelChoice = DEFAULT_KERNELS,
        cae_temperature: float = DEFAULT_CAE_TEMPERATURE,
        cae_legacy_slicing: bool = False,
        cmlu_topk: int = DEFAULT_CMLU_TOPK,
        oracle: bool = False,
        experiment: str = "none",
    ) -> None:
        super().__init__()
        self.phases = list(phases)
        self.eps = {
            "intra_camera": eps_intra_camera,
            "inter_camera": eps,
            "inter_modality": eps if eps_inter_modality is None else eps_inter_modality,
        }
        self.min_samples = min_samples
        self.k1 = k1
        self.k2 = k2
        self.knn_backend = knn_backend
        self.kernels = kernels
        self.cae_temperature = cae_temperature
        self.cae_legacy_slicing = cae_legacy_slicing
        self.cmlu_topk = cmlu_topk
        self.oracle = oracle
        self.experiment = experiment
        self.history: list[dict[str, Any]] = []
        # Trained per-camera memories of stage 1 (CAE prototypes of stage 2; §8.1, §17.7).
        self._camera_memories: dict[tuple[str, int], torch.Tensor] = {}
        # Trained per-modality memories of stage 2 (CAE prototypes of stage 3; §8.2).
        self._modality_memories: dict[str, torch.Tensor] = {}
        self.installed: InstalledPhase | None = None
        # True between a completed clustering and the next phase's first step: a checkpoint
        # taken then (ModelCheckpoint at epoch end) resumes exactly.
        self._at_boundary = False
        self._restored: dict[str, Any] | None = None
        self._fingerprint: dict[str, Any] | None = None
        self._world_size = 1
        # The kNN engine of the last Jaccard distance computed (rank 0).
        self._knn_backend_used = ""

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail fast on trainer settings that would silently break the phase mapping."""
        if stage != "fit":
            return
        # Set by Lightning's data connector, not a declared attribute of Trainer.
        reload_every = getattr(trainer, "reload_dataloaders_every_n_epochs", None)
        if reload_every != 1:
            raise ValueError(
                "Reclustering needs trainer.reload_dataloaders_every_n_epochs=1 (one phase per "
                f"epoch, new loaders each), got {reload_every}"
            )
        if trainer.max_epochs != len(self.phases):
            raise ValueError(
                f"trainer.max_epochs={trainer.max_epochs} but the schedule has "
                f"{len(self.phases)} phases: they must be equal"
            )
        if not isinstance(getattr(trainer, "datamodule", None), VIReIDDataModule):
            raise TypeError("Reclustering needs the trainer to run with a VIReIDDataModule")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cluster phase 0, or re-install the phase a checkpoint stopped before.

        Raises:
            ResumeError: When resuming from a checkpoint of another experiment (schedule or
                training data differ), one saved mid-phase, or one without this callback's state.
        """
        dm = fitted_datamodule(trainer)
        self._fingerprint = self._make_fingerprint(dm)
        self._world_size = get_world_size()
        restored, self._restored = self._restored, None
        if restored is not None:
            self._resume(trainer, pl_module, restored)
        elif trainer.ckpt_path is not None:
            raise ResumeError(
                f"checkpoint {trainer.ckpt_path} holds no Reclustering state: it was not written "
                "by a gur_lightning training run (use that run's checkpoints/last.ckpt)"
            )
        else:
            self._prepare(trainer, pl_module, 0, trigger_epoch=-1)
        self._at_boundary = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check that the installed labels belong to this phase; set the module's GUR epoch."""
        epoch = trainer.current_epoch
        if self.installed is None or self.installed.phase != epoch:
            have = None if self.installed is None else self.installed.phase
            raise RuntimeError(
                f"Lightning epoch {epoch} starts but the pseudo-labels installed are for phase "
                f"{have}: the loop state and the Reclustering state disagree"
            )
        self._at_boundary = False
        _gur(pl_module).gur_epoch = self.phases[epoch].gur_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the trained memories the next stages need, then cluster for the next phase."""
        # Without SyncBatchNorm each rank tracked BN statistics on its own batches: make the
        # ranks' models identical before they extract features for the clustering. With
        # DataParallel-exact BatchNorm the statistics are virtual replica 0's, on rank 0.
        if getattr(pl_module, "bn_replicas", 1) > 1:
            broadcast_buffers(pl_module)
        else:
            average_buffers(pl_module)
        phase = self.phases[trainer.current_epoch]
        if (
            self.installed is not None
            and self.installed.ok
            and self.installed.phase == phase.index
        ):
            self._snapshot_memories(phase, pl_module)
        nxt = trainer.current_epoch + 1
        if nxt < len(self.phases):
            self._prepare(trainer, pl_module, nxt, trigger_epoch=trainer.current_epoch)
        self._at_boundary = True

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (tensors and plain Python values only: ``weights_only``).

        Returns:
            ``version``, ``experiment``, ``fingerprint`` (schedule and data), ``world_size``,
            ``at_phase_boundary``, ``history``, ``camera_memories`` (``"<modality>/<camera>"``
            -> (K, D)), ``modality_memories`` and ``installed`` (phase, ok, labels as int64
            tensors, memories, routing), or ``{}`` before fit has started.
        """
        if self._fingerprint is None:
            return {}
        inst = self.installed
        return {
            "version": STATE_VERSION,
            "experiment": self.experiment,
            "fingerprint": self._fingerprint,
            "world_size": self._world_size,
            "at_phase_boundary": self._at_boundary,
            "history": [dict(h) for h in self.history],
            "camera_memories": {
                f"{m}/{cam}": t.clone() for (m, cam), t in self._camera_memories.items()
            },
            "modality_memories": {m: t.clone() for m, t in self._modality_memories.items()},
            "installed": None
            if inst is None
            else {
                "phase": inst.phase,
                "ok": inst.ok,
                "labels": {
                    m: torch.as_tensor(v, dtype=torch.int64) for m, v in inst.labels.items()
                },
                "memories": {k: v.clone() for k, v in inst.memories.items()},
                "routing": dict(inst.routing),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the clustering history; :meth:`on_fit_start` validates and installs the rest.

        Raises:
            ResumeError: On a state written by an incompatible version of this callback.
        """
        version = state_dict.get("version")
        if version != STATE_VERSION:
            raise ResumeError(
                f"the checkpoint's Reclustering state has version {version!r}, this code reads "
                f"version {STATE_VERSION}"
            )
        self.history = [dict(h) for h in state_dict["history"]]
        self._restored = state_dict

    def _make_fingerprint(self, dm: VIReIDDataModule) -> dict[str, Any]:
        schedule = hashlib.sha256(repr(self.phases).encode()).hexdigest()[:16]
        return {"num_phases": len(self.phases), "schedule": schedule, "data": dm.fingerprint()}

    def _check_fingerprint(
        self, state: dict[str, Any], ckpt: str | os.PathLike[str] | None
    ) -> None:
        """Refuse a checkpoint whose schedule or training data differ from this run's."""
        saved, current = state["fingerprint"], self._fingerprint
        assert current is not None
        problems = []
        if saved["num_phases"] != current["num_phases"]:
            problems.append(
                f"its schedule has {saved['num_phases']} phases, this run's has "
                f"{current['num_phases']}"
            )
        elif saved["schedule"] != current["schedule"]:
            problems.append("its schedule's phases (stages, cameras, iterations) differ")
        if saved["data"] != current["data"]:
            problems.append(f"its training data {saved['data']} differ from {current['data']}")
        if problems:
            raise ResumeError(
                f"checkpoint {ckpt} comes from another experiment "
                f"({state.get('experiment')!r}; this run: {self.experiment!r}): "
                + "; ".join(problems)
                + ". Resume with the same experiment, schedule and data, or start a new run."
            )

    def _resume(
        self, trainer: L.Trainer, pl_module: L.LightningModule, state: dict[str, Any]
    ) -> None:
        """Re-install the checkpointed phase exactly as the interrupted run had installed it."""
        self._check_fingerprint(state, trainer.ckpt_path)
        inst = state["installed"]
        if not state["at_phase_boundary"] or inst is None:
            raise ResumeError(
                f"checkpoint {trainer.ckpt_path} was saved in the middle of a phase; resuming "
                "is exact only from a checkpoint saved at a phase end, such as the run's "
                "checkpoints/last.ckpt"
            )
        if state["world_size"] != self._world_size:
            log.warning(
                "resuming a %d-process run with %d processes: batches are per rank, so the "
                "continuation differs from the uninterrupted run",
                state["world_size"],
                self._world_size,
            )
        self._camera_memories = {
            (key.split("/")[0], int(key.split("/")[1])): t
            for key, t in state["camera_memories"].items()
        }
        self._modality_memories = dict(state["modality_memories"])
        phase = self.phases[inst["phase"]]
        result = ClusteringResult(
            labels={m: t.numpy() for m, t in inst["labels"].items()},
            memories=dict(inst["memories"]),
            routing=dict(inst["routing"]),
            error=None if inst["ok"] else "skipped in the interrupted run",
        )
        samples = self._phase_samples(fitted_datamodule(trainer), phase)
        for m, labels in result.labels.items():
            if len(labels) != len(samples[m]):
                raise ResumeError(
                    f"checkpoint {trainer.ckpt_path}: phase {phase.index} has {len(labels)} "
                    f"{m} labels but {len(samples[m])} {m} samples"
                )
        ok = self._install(trainer, pl_module, phase, samples, result)
        self._at_boundary = True
        log.info(
            "resumed from %s before phase %d/%d (%s)%s",
            trainer.ckpt_path,
            phase.index + 1,
            len(self.phases),
            phase.label,
            "" if ok else ", skipped",
        )

    # ------------------------------------------------------------- machinery
    def _snapshot_memories(self, phase: Phase, pl_module: L.LightningModule) -> None:
        current = {
            k: v.detach().float().cpu().clone()
            for k, v in _gur(pl_module).memory_tensors().items()
        }
        if "visible" not in current or "infrared" not in current:
            return  # oracle labels train one shared memory: no per-domain prototypes to keep
        if phase.stage == "intra_camera":
            assert phase.visible_camera is not None and phase.infrared_camera is not None
            self._camera_memories[("visible", phase.visible_camera)] = current["visible"]
            self._camera_memories[("infrared", phase.infrared_camera)] = current["infrared"]
        elif phase.stage == "inter_camera":
            self._modality_memories = {m: current[m] for m in ("visible", "infrared")}

    def _phase_samples(self, dm: VIReIDDataModule, phase: Phase) -> dict[str, list[Sample]]:
        if phase.stage == "intra_camera":
            return {
                "visible": dm.train_samples("visible", phase.visible_camera),
                "infrared": dm.train_samples("infrared", phase.infrared_camera),
            }
        return {"visible": dm.train_samples("visible"), "infrared": dm.train_samples("infrared")}

    def _prepare(
        self, trainer: L.Trainer, pl_module: L.LightningModule, index: int, trigger_epoch: int
    ) -> None:
        phase = self.phases[index]
        dm = fitted_datamodule(trainer)
        _gur(pl_module).gur_epoch = phase.gur_epoch
        start = time.perf_counter()
        samples = self._phase_samples(dm, phase)
        features = {m: self._extract(trainer, pl_module, dm, s) for m, s in samples.items()}
        result: ClusteringResult | None = None
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self._knn_backend_used = ""
                result = self._cluster(phase, samples, features)
                result.knn_backend = self._knn_backend_used
            except (ValueError, RuntimeError) as err:
                # An unusable clustering (no cluster found...): every rank skips the phase.
                result = ClusteringResult(error=f"{type(err).__name__}: {err}")
            except Exception as err:  # any other failure: shared with the ranks, re-raised
                failure = err
                result = ClusteringResult(error=f"{type(err).__name__}: {err}", fatal=True)
        # Every rank reaches this broadcast, also when rank 0 failed: no rank is left waiting.
        result = trainer.strategy.broadcast(result, src=0)
        if failure is not None:
            raise failure
        assert result is not None  # rank 0 always sets it
        if result.fatal:
            raise RemoteError(f"rank 0 failed to cluster phase {phase.index}: {result.error}")
        skipped = not self._install(trainer, pl_module, phase, samples, result)
        if not skipped:
            self._snapshot_memories(phase, pl_module)
        seconds = time.perf_counter() - start
        record = {
            "phase": phase.index,
            "gur_epoch": phase.gur_epoch,
            "stage": phase.stage,
            "label": phase.label,
            "trainer_epoch": trigger_epoch,
            "skipped": skipped,
            "seconds": seconds,
            "knn_backend": result.knn_backend,
            **{f"memory_size/{k}": int(v.shape[0]) for k, v in result.memories.items()},
            **result.stats,
        }
        self.history.append(record)
        log.info(
            "phase %d/%d %s: %s (%.1fs)",
            phase.index + 1,
            len(self.phases),
            phase.label,
            ", ".join(
                f"{k}={v:.3g}"
                for k, v in result.stats.items()
                if k.endswith(("num_clusters", "ari", "outlier_fraction"))
            ),
            seconds,
        )
        if trainer.logger is not None and trainer.is_global_zero:
            prefix = f"cluster/{phase.stage}/"
            metrics = {prefix + k: float(v) for k, v in result.stats.items()}
            metrics.update({prefix + "skipped": float(skipped), prefix + "seconds": seconds})
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def _install(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        phase: Phase,
        samples: dict[str, list[Sample]],
        result: ClusteringResult,
    ) -> bool:
        """Install labels and memories for ``phase`` (or an empty phase); True unless skipped."""
        dm = fitted_datamodule(trainer)
        ok = result.error is None
        if ok:
            try:
                labelled = {
                    m: LabelledSet.from_labels(samples[m], result.labels[m]) for m in samples
                }
                dm.set_pseudo_labels(
                    labelled["visible"],
                    labelled["infrared"],
                    num_batches=phase.iterations,
                    phase_index=phase.index,
                )
            except NotEnoughClustersError as err:
                result.error = str(err)
                ok = False
        if ok:
            memories = {k: v.to(pl_module.device) for k, v in result.memories.items()}
            _gur(pl_module).set_memories(memories, result.routing)
        else:
            log.warning("phase %d (%s) skipped: %s", phase.index, phase.label, result.error)
            dm.skip_phase(phase.iterations)
        self.installed = InstalledPhase(
            phase=phase.index,
            ok=ok,
            labels={m: np.asarray(v, dtype=np.int64) for m, v in result.labels.items()},
            memories={k: v.detach().float().cpu() for k, v in result.memories.items()},
            routing=dict(result.routing),
        )
        return ok

    def _extract(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        dm: VIReIDDataModule,
        samples: Sequence[Sample],
    ) -> torch.Tensor:
        """Clustering features ``e`` of ``samples`` (docs/method.md §7.1): (N, D) fp32 on CPU."""
        from gur_lightning.evaluation import extract_features

        return extract_features(
            pl_module, dm.eval_dataloader(samples), len(samples), renormalize=False
        )

    def _cluster_labels(self, features: torch.Tensor, eps: float) -> np.ndarray:
        from gur_lightning.clustering import (
            JaccardOptions,
            JaccardTimings,
            KnnOptions,
            dbscan_labels,
        )

        timings = JaccardTimings()
        jaccard = JaccardOptions(
            k1=self.k1, k2=self.k2, knn=KnnOptions(backend=self.knn_backend, kernels=self.kernels)
        )
        labels = dbscan_labels(
            features, eps=eps, min_samples=self.min_samples, jaccard=jaccard, timings=timings
        )
        self._knn_backend_used = timings.knn_backend
        return labels

    def _statistics(
        self, labels: np.ndarray, samples: Sequence[Sample], prefix: str = ""
    ) -> dict[str, float]:
        from gur_lightning.clustering import cluster_statistics

        stats = cluster_statistics(labels, true_pids=np.array([s.pid for s in samples]))
        return {prefix + k: float(v) for k, v in stats.items()}

    def _cluster(
        self,
        phase: Phase,
        samples: dict[str, list[Sample]],
        features: dict[str, torch.Tensor],
    ) -> ClusteringResult:
        """Rank-0 pseudo-labelling of one phase (docs/method.md §10 stages 1-3, §8, §9)."""
        from gur_lightning.clustering import (
            cae_embedding,
            cluster_centroids,
            cmlu,
        )

        eps = self.eps[phase.stage]
        result = ClusteringResult()
        if self.oracle or phase.stage == "inter_modality":
            joint = torch.cat([features["visible"], features["infrared"]])
            all_samples = samples["visible"] + samples["infrared"]
        if self.oracle:
            _, truth = np.unique([s.pid for s in all_samples], return_inverse=True)
            n_vis = len(samples["visible"])
            result.labels = {"visible": truth[:n_vis], "infrared": truth[n_vis:]}
            result.memories = {"shared": cluster_centroids(joint, torch.as_tensor(truth))}
            result.routing = {"visible": "shared", "infrared": "shared"}
            result.stats = self._statistics(truth, all_samples)
            return result
        if phase.stage == "inter_modality":
            protos = [
                self._modality_memories[m]
                for m in ("visible", "infrared")
                if m in self._modality_memories
            ]
            # Stage 3 clusters modality-level CAE vectors built on the stage-2 memories (§8.2).
            rep = (
                cae_embedding(joint, protos, temperature=self.cae_temperature)
                if phase.modality_cae and len(protos) == 2
                else joint
            )
            joint_labels = self._cluster_labels(rep, eps)
            self._require_clusters(joint_labels, "joint")
            n_vis = len(samples["visible"])
            result.labels = {"visible": joint_labels[:n_vis], "infrared": joint_labels[n_vis:]}
            result.memories = {"shared": cluster_centroids(joint, torch.as_tensor(joint_labels))}
            result.routing = {"visible": "shared", "infrared": "shared"}
            result.stats = self._statistics(joint_labels, all_samples)
            for m in ("visible", "infrared"):
                result.stats.update(self._statistics(result.labels[m], samples[m], f"{m}/"))
            modality = np.array([s.modality == "visible" for s in all_samples])
            result.stats["cross_modal_cluster_fraction"] = _cross_modal_fraction(
                joint_labels, modality
            )
            return result

        labels: dict[str, np.ndarray] = {}
        for m in ("visible", "infrared"):
            rep = features[m]
            if phase.camera_cae:
                protos = [
                    mem for (mod, _cam), mem in sorted(self._camera_memories.items()) if mod == m
                ]
                if protos:
                    rep = cae_embedding(
                        rep,
                        protos,
                        temperature=self.cae_temperature,
                        legacy_slicing=self.cae_legacy_slicing,
                    )
            labels[m] = self._cluster_labels(rep, eps)
            self._require_clusters(labels[m], m)
            result.stats.update(self._statistics(labels[m], samples[m], f"{m}/"))
        result.memories = {
            m: cluster_centroids(features[m], torch.as_tensor(labels[m]))
            for m in ("visible", "infrared")
        }
        result.routing = {"visible": "visible", "infrared": "infrared"}
        if phase.cmlu:
            # CMLU (§9): the visible samples take infrared cluster ids and train against the
            # infrared memory; the visible memory stays for stage 3's CAE prototypes (§17.3).
            vis = cmlu(
                features["visible"],
                features["infrared"],
                torch.as_tensor(labels["infrared"]),
                topk=self.cmlu_topk,
                smooth=phase.smooth,
            )
            labels["visible"] = np.asarray(vis)
            self._require_clusters(labels["visible"], "visible after CMLU")
            result.routing = {"visible": "infrared", "infrared": "infrared"}
            result.stats.update(
                self._statistics(labels["visible"], samples["visible"], "visible_cmlu/")
            )
        result.labels = labels
        return result

    @staticmethod
    def _require_clusters(labels: np.ndarray, what: str) -> None:
        if not np.any(np.asarray(labels) >= 0):
            raise ValueError(f"DBSCAN found no cluster among the {len(labels)} {what} samples")


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
