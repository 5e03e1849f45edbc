"""The re-clustering callback: decides *when* to pseudo-label and orchestrates it.

GUR re-clusters before every phase of every epoch (docs/method.md §10): per camera in stage 1, per
modality on camera-level CAE vectors in stage 2 (plus CMLU from its start epoch), jointly on
modality-level CAE vectors in stage 3. This callback holds no algorithm and no memory: the stage
policy is the pure function :func:`gur_lightning.clustering.policy.cluster_phase` (or the
``policy`` a test substitutes), the memories and the CAE prototypes belong to the LightningModule
(:class:`PhaseTrainee`, the part of it this callback uses), the loaders to the DataModule. It
runs the clustering for phase ``p`` before Lightning builds phase ``p``'s train loader: in
``on_fit_start`` for the first phase (fresh start or resume) and in ``on_train_epoch_end`` of
phase ``p - 1`` for the others (Lightning requests the train loader at the start of each epoch,
after the previous epoch-end hooks; docs/architecture.md §10.1).

Under DDP every rank extracts features for its shard, rank 0 runs the policy, and the labels and
centroids are broadcast, so every rank installs bit-identical memories (docs/architecture.md
§11.5). A clustering that fails on rank 0 is broadcast as an error: a usable-clustering failure
skips the phase on every rank, anything else is raised on every rank (no rank waits for a broadcast
that never comes).

Resume (docs/method.md §18.2: one Lightning epoch per phase, checkpoints at phase ends). The
callback's ``state_dict`` holds the clustering history and the labels installed for the next
phase, together with a fingerprint of the schedule and the training data; the module checkpoints
the memories installed for that phase and the prototypes. Lightning restores module and callback
states *before* ``on_fit_start`` but the loop's epoch counter only *after* it, so
``on_fit_start`` resumes from the restored state, never from ``trainer.current_epoch``, and
re-installs the saved labels instead of re-clustering. Every training draw of a phase is seeded
from ``(seed, phase, rank)`` (:meth:`VIReIDDataModule.train_dataloader`), so a run resumed from a
phase-end checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from gur_lightning.clustering.policy import (
    ClusterOptions,
    ClusterPolicy,
    PhaseClustering,
    Prototypes,
    cluster_phase,
    prototypes_after,
)
from gur_lightning.data.datamodule import LabelledSet, VIReIDDataModule, fitted_datamodule
from gur_lightning.data.samplers import NotEnoughClustersError
from gur_lightning.data.samples import Sample
from gur_lightning.schedule import Phase
from gur_lightning.utils.distributed import RemoteError, get_world_size
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: Version of the checkpointed state layout (bump on incompatible changes). Version 2: the
#: memories and prototypes moved to the module's checkpoint entry.
STATE_VERSION: int = 2


@runtime_checkable
class PhaseTrainee(Protocol):
    """What the re-clustering callback needs from the LightningModule, and nothing more.

    :class:`gur_lightning.models.GURLitModule` implements it (checked by mypy below). The module
    owns every piece of memory state; the callback reads and installs it through these members.
    """

    @property
    def device(self) -> torch.device:
        """Where the memories live."""
        ...

    @property
    def feature_dim(self) -> int:
        """D of the features ``embed`` returns (feature extraction)."""
        ...

    def embed(
        self, images: torch.Tensor, modality: torch.Tensor, *, renormalize: bool
    ) -> torch.Tensor:
        """(B, D) flip-averaged features of (B, 3, H, W) images (feature extraction)."""
        ...

    def sync_buffers(self) -> None:
        """Make the BatchNorm buffers equal on every rank (every rank, at every phase end)."""
        ...

    def set_memories(
        self, memories: Mapping[str, torch.Tensor], routing: Mapping[str, str]
    ) -> None:
        """Install the next phase's memories (name -> (K, D)) and stream -> memory routing."""
        ...

    def memory_tensors(self) -> dict[str, torch.Tensor]:
        """Copies of the current memory rows, name -> (K, D)."""
        ...

    @property
    def prototypes(self) -> Prototypes:
        """The trained memories kept as CAE prototypes."""
        ...

    def keep_prototypes(self, prototypes: Prototypes) -> None:
        """Replace the kept prototypes."""
        ...

    def begin_phase(self, gur_epoch: int, *, trains: bool) -> None:
        """Start a phase: its GUR epoch (learning rate) and whether it trains."""
        ...


if TYPE_CHECKING:
    from gur_lightning.models.module import GURLitModule

    # Static check that the package's module is what this callback drives.
    _MODULE_IS_A_TRAINEE: type[PhaseTrainee] = GURLitModule


#: The members of :class:`PhaseTrainee`, named when a module lacks some.
_TRAINEE_MEMBERS: tuple[str, ...] = tuple(n for n in vars(PhaseTrainee) if not n.startswith("_"))


def _trainee(pl_module: L.LightningModule) -> PhaseTrainee:
    """``pl_module`` as a :class:`PhaseTrainee`, or a TypeError naming what it lacks."""
    if not isinstance(pl_module, PhaseTrainee):
        missing = [name for name in _TRAINEE_MEMBERS if not hasattr(pl_module, name)]
        raise TypeError(
            f"Reclustering drives a module like GURLitModule; {type(pl_module).__name__} lacks "
            f"{missing}"
        )
    return pl_module


@dataclass
class ClusteringOutcome:
    """What rank 0 broadcasts for one phase: the clustering, or why there is none.

    Attributes:
        clustering: The policy's result (None when it failed).
        error: Why the phase cannot train (then it is skipped), or the failure's message.
        fatal: The error is not a clustering outcome but a failure (every rank raises).
    """

    clustering: PhaseClustering | None = None
    error: str | None = None
    fatal: bool = False


@dataclass(frozen=True)
class InstalledPhase:
    """The pseudo-labels installed for one phase (on every rank).

    Attributes:
        phase: Index of the phase they train.
        ok: False when the phase was skipped (no usable clustering): nothing is installed.
        labels: Per modality, (N_m,) int64 labels (-1 outliers) aligned with the phase samples.
    """

    phase: int
    ok: bool
    labels: dict[str, np.ndarray]


class ResumeError(ValueError):
    """A checkpoint that cannot resume this run (another experiment, mid-phase, no state)."""


def check_fingerprint(
    state: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    *,
    experiment: str,
    ckpt: str | os.PathLike[str] | None,
) -> None:
    """Refuse a checkpoint whose schedule or training data differ from this run's.

    Args:
        state: The checkpointed :class:`Reclustering` state; its ``fingerprint`` and
            ``experiment`` are read.
        fingerprint: This run's fingerprint: ``num_phases``, ``schedule`` (a hash of the
            expanded phases) and ``data`` (:meth:`VIReIDDataModule.fingerprint`).
        experiment: This run's experiment name, quoted in the error.
        ckpt: The checkpoint's path, quoted in the error.

    Raises:
        ResumeError: Naming every difference (phase count or phases, training data) and the
            experiment the checkpoint came from.
    """
    saved = state["fingerprint"]
    problems = []
    if saved["num_phases"] != fingerprint["num_phases"]:
        problems.append(
            f"its schedule has {saved['num_phases']} phases, this run's has "
            f"{fingerprint['num_phases']}"
        )
    elif saved["schedule"] != fingerprint["schedule"]:
        problems.append("its schedule's phases (stages, cameras, iterations) differ")
    if saved["data"] != fingerprint["data"]:
        problems.append(f"its training data {saved['data']} differ from {fingerprint['data']}")
    if problems:
        raise ResumeError(
            f"checkpoint {ckpt} comes from another experiment "
            f"({state.get('experiment')!r}; this run: {experiment!r}): "
            + "; ".join(problems)
            + ". Resume with the same experiment, schedule and data, or start a new run."
        )


class Reclustering(Callback):
    """Re-cluster before every phase of the GUR schedule and install labels and memories.

    Args:
        phases: The expanded schedule (:func:`gur_lightning.schedule.build_phases`).
        options: The pseudo-labelling settings (defaults: :class:`ClusterOptions`).
        policy: The stage policy run on rank 0 for every phase: ``(phase, features,
            identities, prototypes, options) -> PhaseClustering`` (default
            :func:`~gur_lightning.clustering.policy.cluster_phase`). Tests substitute their own;
            under spawned DDP it is pickled into the workers.
        experiment: Name of the experiment, saved in checkpoints and quoted when a checkpoint
            from another experiment is refused.

    Attributes:
        history: One record per clustering: ``phase``, ``trainer_epoch`` (the Lightning epoch
            whose end, or fit start, ran it), ``stage``, ``skipped``, ``seconds``,
            ``knn_backend`` (the kNN engine that ran, e.g. ``torch-cpu``) and the stats.
        installed: What is installed for the current or next phase (None before fit).

    Hooks and ranks: ``setup`` checks the trainer and the module; ``on_fit_start`` clusters
    phase 0 or re-installs the checkpointed phase; ``on_train_epoch_start`` starts the phase on
    the module; ``on_train_epoch_end`` makes the module's BatchNorm buffers equal across ranks,
    has the module keep the trained memories the later stages need, and clusters the next
    phase. Every hook runs on every rank; only the policy runs on rank 0.
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        options: ClusterOptions | None = None,
        *,
        policy: ClusterPolicy = cluster_phase,
        experiment: str = "none",
    ) -> None:
        super().__init__()
        self.phases = list(phases)
        self.options = options if options is not None else ClusterOptions()
        self.policy = policy
        self.experiment = experiment
        self.history: list[dict[str, Any]] = []
        self.installed: InstalledPhase | None = None
        # True between a completed clustering and the next phase's first step: a checkpoint
        # taken then (ModelCheckpoint at epoch end) resumes exactly.
        self._at_boundary = False
        self._restored: dict[str, Any] | None = None
        self._fingerprint: dict[str, Any] | None = None
        self._world_size = 1

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
        _trainee(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cluster phase 0, or re-install the phase a checkpoint stopped before.

        Raises:
            ResumeError: When resuming from a checkpoint of another experiment (schedule or
                training data differ), one saved mid-phase, or one without this callback's state.
        """
        trainee = _trainee(pl_module)
        dm = fitted_datamodule(trainer)
        self._fingerprint = self._make_fingerprint(dm)
        self._world_size = get_world_size()
        restored, self._restored = self._restored, None
        if restored is not None:
            self._resume(trainer, restored)
        elif trainer.ckpt_path is not None:
            raise ResumeError(
                f"checkpoint {trainer.ckpt_path} holds no Reclustering state: it was not written "
                "by a gur_lightning training run (use that run's checkpoints/last.ckpt)"
            )
        else:
            self._prepare(trainer, trainee, 0, trigger_epoch=-1)
        self._at_boundary = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check that the installed labels belong to this phase; start the phase on the module.

        Lightning runs this before the module's own ``on_train_epoch_start``, which derives the
        learning rate from the GUR epoch given here.
        """
        epoch = trainer.current_epoch
        if self.installed is None or self.installed.phase != epoch:
            have = None if self.installed is None else self.installed.phase
            raise RuntimeError(
                f"Lightning epoch {epoch} starts but the pseudo-labels installed are for phase "
                f"{have}: the loop state and the Reclustering state disagree"
            )
        self._at_boundary = False
        _trainee(pl_module).begin_phase(self.phases[epoch].gur_epoch, trains=self.installed.ok)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Have the module keep the trained memories later stages need; cluster the next phase."""
        trainee = _trainee(pl_module)
        # Make the ranks' models identical before they extract features for the clustering.
        trainee.sync_buffers()
        phase = self.phases[trainer.current_epoch]
        if (
            self.installed is not None
            and self.installed.ok
            and self.installed.phase == phase.index
        ):
            # Only a phase that trained: a skipped one left the previous phase's memories in
            # the module, which must not become this phase's prototypes.
            trainee.keep_prototypes(
                prototypes_after(phase, trainee.memory_tensors(), trainee.prototypes)
            )
        nxt = trainer.current_epoch + 1
        if nxt < len(self.phases):
            self._prepare(trainer, trainee, nxt, trigger_epoch=trainer.current_epoch)
        self._at_boundary = True

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (tensors and plain Python values only: ``weights_only``).

        The memories and prototypes are not here: the module checkpoints them.

        Returns:
            ``version``, ``experiment``, ``fingerprint`` (schedule and data), ``world_size``,
            ``at_phase_boundary``, ``history`` and ``installed`` (phase, ok, labels as int64
            tensors), or ``{}`` before fit has started.
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
            "installed": None
            if inst is None
            else {
                "phase": inst.phase,
                "ok": inst.ok,
                "labels": {
                    m: torch.as_tensor(v, dtype=torch.int64) for m, v in inst.labels.items()
                },
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

    def _resume(self, trainer: L.Trainer, state: dict[str, Any]) -> None:
        """Re-install the checkpointed phase's labels exactly as the interrupted run had.

        Its memories and the prototypes were restored with the module's own checkpoint state.
        """
        assert self._fingerprint is not None  # made by on_fit_start before it resumes
        check_fingerprint(
            state, self._fingerprint, experiment=self.experiment, ckpt=trainer.ckpt_path
        )
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
        phase = self.phases[inst["phase"]]
        labels = {m: t.numpy() for m, t in inst["labels"].items()}
        dm = fitted_datamodule(trainer)
        samples = self._phase_samples(dm, phase)
        for m, modality_labels in labels.items():
            if len(modality_labels) != len(samples[m]):
                raise ResumeError(
                    f"checkpoint {trainer.ckpt_path}: phase {phase.index} has "
                    f"{len(modality_labels)} {m} labels but {len(samples[m])} {m} samples"
                )
        error = None if inst["ok"] else "skipped in the interrupted run"
        if error is None:
            error = self._install_labels(dm, phase, samples, labels)
        self._finish_install(dm, phase, labels, error)
        self._at_boundary = True
        log.info(
            "resumed from %s before phase %d/%d (%s)%s",
            trainer.ckpt_path,
            phase.index + 1,
            len(self.phases),
            phase.label,
            "" if error is None else ", skipped",
        )

    # ------------------------------------------------------------- machinery
    def _phase_samples(self, dm: VIReIDDataModule, phase: Phase) -> dict[str, list[Sample]]:
        if phase.stage == "intra_camera":
            return {
                "visible": dm.train_samples("visible", phase.visible_camera),
                "infrared": dm.train_samples("infrared", phase.infrared_camera),
            }
        return {"visible": dm.train_samples("visible"), "infrared": dm.train_samples("infrared")}

    def _prepare(
        self, trainer: L.Trainer, trainee: PhaseTrainee, index: int, trigger_epoch: int
    ) -> None:
        """Cluster phase ``index`` (policy on rank 0), broadcast, install; record the history."""
        phase = self.phases[index]
        dm = fitted_datamodule(trainer)
        start = time.perf_counter()
        samples = self._phase_samples(dm, phase)
        features = {m: self._extract(trainee, dm, s) for m, s in samples.items()}
        outcome: ClusteringOutcome | None = None
        failure: BaseException | None = None
        if trainer.is_global_zero:
            identities = {
                m: np.array([s.pid for s in s_m], dtype=np.int64) for m, s_m in samples.items()
            }
            try:
                outcome = ClusteringOutcome(
                    clustering=self.policy(
                        phase, features, identities, trainee.prototypes, self.options
                    )
                )
            except (ValueError, RuntimeError) as err:
                # An unusable clustering (no cluster found...): every rank skips the phase.
                outcome = ClusteringOutcome(error=f"{type(err).__name__}: {err}")
            except Exception as err:  # any other failure: shared with the ranks, re-raised
                failure = err
                outcome = ClusteringOutcome(error=f"{type(err).__name__}: {err}", fatal=True)
        # Every rank reaches this broadcast, also when rank 0 failed: no rank is left waiting.
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if failure is not None:
            raise failure
        assert outcome is not None  # rank 0 always sets it
        if outcome.fatal:
            raise RemoteError(f"rank 0 failed to cluster phase {phase.index}: {outcome.error}")
        clustering = outcome.clustering
        error = outcome.error
        if clustering is not None:
            error = self._install_labels(dm, phase, samples, clustering.labels)
            if error is None:
                trainee.set_memories(
                    {k: v.to(trainee.device) for k, v in clustering.centroids.items()},
                    clustering.routing,
                )
        self._finish_install(dm, phase, {} if clustering is None else clustering.labels, error)
        skipped = error is not None
        stats = {} if clustering is None else clustering.statistics
        seconds = time.perf_counter() - start
        record = {
            "phase": phase.index,
            "gur_epoch": phase.gur_epoch,
            "stage": phase.stage,
            "label": phase.label,
            "trainer_epoch": trigger_epoch,
            "skipped": skipped,
            "seconds": seconds,
            "knn_backend": "" if clustering is None else clustering.knn_backend,
            **{
                f"memory_size/{k}": int(v.shape[0])
                for k, v in ({} if clustering is None else clustering.centroids).items()
            },
            **stats,
        }
        self.history.append(record)
        log.info(
            "phase %d/%d %s: %s (%.1fs)",
            phase.index + 1,
            len(self.phases),
            phase.label,
            ", ".join(
                f"{k}={v:.3g}"
                for k, v in stats.items()
                if k.endswith(("num_clusters", "ari", "outlier_fraction"))
            ),
            seconds,
        )
        if trainer.logger is not None and trainer.is_global_zero:
            prefix = f"cluster/{phase.stage}/"
            metrics = {prefix + k: float(v) for k, v in stats.items()}
            metrics.update({prefix + "skipped": float(skipped), prefix + "seconds": seconds})
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def _install_labels(
        self,
        dm: VIReIDDataModule,
        phase: Phase,
        samples: dict[str, list[Sample]],
        labels: Mapping[str, np.ndarray],
    ) -> str | None:
        """Install ``phase``'s labels in the DataModule; why the phase cannot train, if so."""
        try:
            labelled = {m: LabelledSet.from_labels(samples[m], labels[m]) for m in samples}
            dm.set_pseudo_labels(
                labelled["visible"],
                labelled["infrared"],
                num_batches=phase.iterations,
                phase_index=phase.index,
            )
        except NotEnoughClustersError as err:
            return str(err)
        return None

    def _finish_install(
        self,
        dm: VIReIDDataModule,
        phase: Phase,
        labels: Mapping[str, np.ndarray],
        error: str | None,
    ) -> None:
        """Record what is installed for ``phase``; a skipped phase gets its no-op steps."""
        if error is not None:
            log.warning("phase %d (%s) skipped: %s", phase.index, phase.label, error)
            dm.skip_phase(phase.iterations)
        self.installed = InstalledPhase(
            phase=phase.index,
            ok=error is None,
            labels={m: np.asarray(v, dtype=np.int64) for m, v in labels.items()},
        )

    def _extract(
        self, trainee: PhaseTrainee, dm: VIReIDDataModule, samples: Sequence[Sample]
    ) -> torch.Tensor:
        """Clustering features ``e`` of ``samples`` (docs/method.md §7.1): (N, D) fp32 on CPU."""
        from gur_lightning.evaluation import extract_features

        return extract_features(
            trainee, dm.eval_dataloader(samples), len(samples), renormalize=False
        )
