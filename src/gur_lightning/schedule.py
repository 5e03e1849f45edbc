"""GUR's bottom-up stage schedule: every GUR epoch expanded into re-clustered training phases.

GUR (ICCV 2023, "bottom-up domain learning"; docs/method.md §10-11) re-clusters several times
inside each epoch: per camera (stage 1, intra-camera), per modality on camera-level cross-memory
association embeddings (stage 2, inter-camera, with cross-modality label unification from a set
epoch), then jointly on modality-level embeddings (stage 3, inter-modality, until a set epoch).
ADCA (docs/method.md §14) is the special case with only per-modality clustering on raw features.

The schedule is pure data: :func:`build_phases` turns a :class:`ScheduleConfig` and the camera
numbers of a data set into the flat list of :class:`Phase` objects that the trainer walks, one
Lightning epoch per phase. The list is a deterministic function of its inputs, which is what makes
resuming at any phase exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

#: Neighbours of both CMLU steps on SYSU-MM01 (RegDB: 10; docs/method.md §9, §18.3): the
#: schedule's ``cmlu.topk`` and the default of the pseudo-label functions that take it
#: (:mod:`gur_lightning.clustering.options` refers to it).
CMLU_TOPK = 20
#: StepLR of the reference: the learning rate decays every 20 GUR epochs by 0.1 (docs/method.md
#: §12); :class:`~gur_lightning.models.module.GURLitModule` takes its defaults from here too.
LR_STEP_SIZE = 20
LR_GAMMA = 0.1

StageName = Literal["intra_camera", "inter_camera", "inter_modality"]
STAGES: tuple[StageName, ...] = ("intra_camera", "inter_camera", "inter_modality")


@dataclass
class IntraCameraConfig:
    """Stage 1, intra-camera ADC (docs/method.md §10, stage 1).

    Attributes:
        enabled: Run the stage (SYSU-MM01: yes; RegDB has one camera per modality: no).
        iterations: Optimiser steps per (visible camera, infrared camera) pair (reference: 50).
        pairing: ``"nested"`` reproduces the reference's loop (every visible camera paired with
            every infrared camera, both re-clustered for each pair: 4 x 2 = 8 phases on SYSU);
            ``"cycle"`` pairs each camera once, cycling the shorter list (max(V, I) phases), the
            cheaper variant the supplementary's wording suggests (docs/method.md §17.6).
    """

    enabled: bool = True
    iterations: int = 50
    pairing: str = "nested"


@dataclass
class InterCameraConfig:
    """Stage 2, inter-camera: per-modality clustering (docs/method.md §10, stage 2).

    Attributes:
        enabled: Run the stage.
        iterations: Optimiser steps of the phase (reference: 200 SYSU, 100 RegDB).
        camera_cae: Cluster on camera-level CAE vectors built from the per-camera memories of
            stage 1 (SYSU) instead of the raw features (RegDB, ADCA).
    """

    enabled: bool = True
    iterations: int = 200
    camera_cae: bool = True


@dataclass
class InterModalityConfig:
    """Stage 3, inter-modality: joint clustering on modality-level CAE (docs/method.md §10).

    Attributes:
        enabled: Run the stage at all.
        iterations: Optimiser steps of the phase (reference: 200 SYSU, 100 RegDB).
        end_epoch: The stage runs while ``gur_epoch < end_epoch`` (reference: 40 SYSU, 25 RegDB).
        modality_cae: Cluster modality-level CAE vectors built on the stage-2 memories (the
            reference) instead of the raw features (the "without CAE" ablation).
    """

    enabled: bool = True
    iterations: int = 200
    end_epoch: int = 40
    modality_cae: bool = True


@dataclass
class CMLUConfig:
    """Cross-modality label unification inside stage 2 (docs/method.md §9).

    Attributes:
        enabled: Use CMLU at all (``method=adca`` and ``method=supervised`` switch it off).
        start_epoch: Label propagation infrared -> visible from this GUR epoch (30 SYSU, 20 RegDB).
        smooth_start_epoch: Homogeneous smoothing from this epoch (40 SYSU, 20 RegDB).
        topk: Neighbours of the heterogeneous and homogeneous affinities (20 SYSU, 10 RegDB).
    """

    enabled: bool = True
    start_epoch: int = 30
    smooth_start_epoch: int = 40
    topk: int = CMLU_TOPK


@dataclass
class ScheduleConfig:
    """The whole stage schedule (Hydra group ``schedule``).

    Attributes:
        name: Label shown in logs and recorded with the run. The configs derive it from the
            top-level ``method`` (``${method}_sysu``: ``gur_sysu``, ``adca_synvi``...), so it
            names what was trained.
        epochs: Number of GUR epochs (SYSU 50, RegDB 30).
        intra_camera: Stage-1 settings.
        inter_camera: Stage-2 settings.
        inter_modality: Stage-3 settings.
        cmlu: CMLU settings.
        lr_step_size: GUR epochs between learning-rate decays (StepLR per GUR epoch; §12).
        lr_gamma: Decay factor of each step.
    """

    name: str = "gur_sysu"
    epochs: int = 50
    intra_camera: IntraCameraConfig = field(default_factory=IntraCameraConfig)
    inter_camera: InterCameraConfig = field(default_factory=InterCameraConfig)
    inter_modality: InterModalityConfig = field(default_factory=InterModalityConfig)
    cmlu: CMLUConfig = field(default_factory=CMLUConfig)
    lr_step_size: int = LR_STEP_SIZE
    lr_gamma: float = LR_GAMMA


@dataclass(frozen=True)
class Phase:
    """One training phase: a clustering followed by ``iterations`` optimiser steps.

    Attributes:
        index: Position in the flat phase list; equals the Lightning epoch that trains it.
        gur_epoch: The GUR epoch the phase belongs to (drives the LR schedule and CMLU).
        stage: ``intra_camera``, ``inter_camera`` or ``inter_modality``.
        iterations: Optimiser steps in the phase.
        visible_camera: Stage 1 only: the data set's number of the visible camera clustered.
        infrared_camera: Stage 1 only: the infrared camera clustered.
        camera_cae: Stage 2: cluster camera-level CAE vectors instead of raw features.
        modality_cae: Stage 3: cluster modality-level CAE vectors instead of raw features.
        cmlu: Stage 2: propagate infrared labels to visible samples, which then train against
            the infrared memory (docs/method.md §9.3, §17.3).
        smooth: Stage 2: smooth the propagated labels over the visible kNN graph.
        last_of_epoch: The final phase of its GUR epoch (evaluation and LR hooks key on it).
    """

    index: int
    gur_epoch: int
    stage: StageName
    iterations: int
    visible_camera: int | None = None
    infrared_camera: int | None = None
    camera_cae: bool = False
    modality_cae: bool = False
    cmlu: bool = False
    smooth: bool = False
    last_of_epoch: bool = False

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``epoch 3 intra_camera v1/i3`` (used by the progress bar)."""
        name = f"epoch {self.gur_epoch} {self.stage}"
        if self.stage == "intra_camera":
            name += f" v{self.visible_camera}/i{self.infrared_camera}"
        if self.cmlu:
            name += " +cmlu" + ("+smooth" if self.smooth else "")
        return name


class ScheduleError(ValueError):
    """A schedule configuration that cannot be expanded into phases."""


def _camera_pairs(
    visible: Sequence[int], infrared: Sequence[int], pairing: str
) -> list[tuple[int, int]]:
    if pairing == "nested":
        # Reference order: outer loop over visible cameras, inner over infrared (§10 stage 1).
        return [(v, i) for v in visible for i in infrared]
    if pairing == "cycle":
        n = max(len(visible), len(infrared))
        return [(visible[j % len(visible)], infrared[j % len(infrared)]) for j in range(n)]
    raise ScheduleError(
        f"schedule.intra_camera.pairing must be 'nested' or 'cycle', got {pairing!r}"
    )


def validate_schedule(cfg: ScheduleConfig) -> None:
    """Check a schedule's values, naming the offending key.

    Args:
        cfg: The schedule configuration.

    Raises:
        ScheduleError: For a non-positive epoch count or iteration count of an enabled stage, a
            non-positive LR step, no enabled stage, or an unknown pairing.
    """
    if cfg.epochs <= 0:
        raise ScheduleError(f"schedule.epochs must be > 0, got {cfg.epochs}")
    if cfg.lr_step_size <= 0:
        raise ScheduleError(f"schedule.lr_step_size must be > 0, got {cfg.lr_step_size}")
    if not 0 < cfg.lr_gamma <= 1:
        raise ScheduleError(f"schedule.lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    if cfg.cmlu.topk <= 0:
        raise ScheduleError(f"schedule.cmlu.topk must be > 0, got {cfg.cmlu.topk}")
    enabled = False
    for stage in STAGES:
        stage_cfg = getattr(cfg, stage)
        if stage_cfg.enabled:
            enabled = True
            if stage_cfg.iterations <= 0:
                raise ScheduleError(
                    f"schedule.{stage}.iterations must be > 0, got {stage_cfg.iterations}"
                )
    if not enabled:
        raise ScheduleError("schedule: at least one of " + ", ".join(STAGES) + " must be enabled")
    _camera_pairs([1], [1], cfg.intra_camera.pairing)


def build_phases(
    cfg: ScheduleConfig, visible_cameras: Sequence[int], infrared_cameras: Sequence[int]
) -> list[Phase]:
    """Expand a schedule into the flat list of phases (docs/method.md §10.1, §11 tables).

    Args:
        cfg: The schedule configuration.
        visible_cameras: The data set's visible camera numbers present in the training set.
        infrared_cameras: The infrared camera numbers present in the training set.

    Returns:
        Phases in training order; ``phases[i].index == i``.

    Raises:
        ScheduleError: For invalid values, or stage 1 with a modality that has no camera.
    """
    validate_schedule(cfg)
    if cfg.intra_camera.enabled and (not visible_cameras or not infrared_cameras):
        raise ScheduleError(
            "schedule.intra_camera is enabled but the training set has no "
            + ("visible" if not visible_cameras else "infrared")
            + " camera"
        )
    pairs = (
        _camera_pairs(sorted(visible_cameras), sorted(infrared_cameras), cfg.intra_camera.pairing)
        if cfg.intra_camera.enabled
        else []
    )
    phases: list[Phase] = []
    for epoch in range(cfg.epochs):
        epoch_phases: list[dict] = []
        for v, i in pairs:
            epoch_phases.append(
                dict(
                    stage="intra_camera",
                    iterations=cfg.intra_camera.iterations,
                    visible_camera=v,
                    infrared_camera=i,
                )
            )
        if cfg.inter_camera.enabled:
            cmlu = cfg.cmlu.enabled and epoch >= cfg.cmlu.start_epoch
            epoch_phases.append(
                dict(
                    stage="inter_camera",
                    iterations=cfg.inter_camera.iterations,
                    # Camera-level CAE needs the per-camera memories that stage 1 trains.
                    camera_cae=cfg.inter_camera.camera_cae and bool(pairs),
                    cmlu=cmlu,
                    smooth=cmlu and epoch >= cfg.cmlu.smooth_start_epoch,
                )
            )
        if cfg.inter_modality.enabled and epoch < cfg.inter_modality.end_epoch:
            epoch_phases.append(
                dict(
                    stage="inter_modality",
                    iterations=cfg.inter_modality.iterations,
                    modality_cae=cfg.inter_modality.modality_cae,
                )
            )
        for j, kwargs in enumerate(epoch_phases):
            phases.append(
                Phase(
                    index=len(phases),
                    gur_epoch=epoch,
                    last_of_epoch=j == len(epoch_phases) - 1,
                    **kwargs,
                )
            )
    return phases
