"""Training entry point: ``python -m gur_lightning.train +experiment=NAME [overrides]``.

The flow (docs/architecture.md §11.3): compose and validate the config, seed, read the data set,
expand the stage schedule into phases (one Lightning epoch each), build the module, the callbacks
and the trainer, fit, evaluate the last-epoch weights with the data set's official protocols, and
write ``metrics.json`` beside the resolved ``config.yaml`` in the Hydra run folder.

Multi-process training (docs/architecture.md §10-11): ``trainer=ddp`` (GPUs, Lightning re-launches
this script once per extra device) and ``trainer=ddp_cpu`` (two CPU processes spawned by
Lightning). ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes a run at the phase where it
stopped (see :mod:`gur_lightning.callbacks.recluster`).
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gur_lightning.callbacks.pictures import build_picture_callbacks
from gur_lightning.callbacks.recluster import Reclustering
from gur_lightning.callbacks.signals import GracefulStop, TrainingInterrupted, exit_code_for
from gur_lightning.callbacks.validation import (
    SELECTED_ON_TEST_PREFIX,
    PeriodicValidation,
    TestSetSelection,
)
from gur_lightning.clustering.policy import ClusterOptions, ClusterPolicy, cluster_phase
from gur_lightning.config import (
    constructor_kwargs,
    evaluate_only_hint,
    named_device_count,
    register_configs,
    synvi_pretrain_config,
    validate_config,
)
from gur_lightning.data.check import check_dataset
from gur_lightning.data.datamodule import VIReIDDataModule
from gur_lightning.evaluation import (
    evaluate_splits,
    extract_features,
    format_table,
    protocol_splits,
)
from gur_lightning.models.options import SYNVI_PRETRAINED
from gur_lightning.schedule import Phase, ScheduleConfig, build_phases
from gur_lightning.utils.checkpoints import check_resume_checkpoint
from gur_lightning.utils.loggers import (
    continue_csv_record,
    finish_loggers,
    log_run_config,
    wandb_resume_kwargs,
)
from gur_lightning.utils.logging import get_logger
from gur_lightning.utils.run_status import (
    launch_command,
    one_line_error,
    read_status,
    resume_command,
    update_status,
)
from gur_lightning.utils.warnings import quiet_known_noise

log = get_logger(__name__)
#: The packaged Hydra configs (shipped in the wheel as package data).
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
#: Sub-folder of the run folder holding last.ckpt and the selection callbacks' weights.
CHECKPOINT_SUBDIR = "checkpoints"
#: Start methods of Lightning's in-process launcher (no re-execution of the script).
_INPROCESS_START_METHODS: tuple[str, ...] = ("spawn", "fork", "forkserver")
#: Environment variables that say the processes were created by an external launcher
#: (torchrun / torch.distributed.run and SLURM's srun), so Lightning launches nothing.
_EXTERNAL_LAUNCH_ENV: tuple[str, ...] = ("LOCAL_RANK", "SLURM_LOCALID")


class PhaseProgressBar(TQDMProgressBar):
    """Progress bar whose description names the GUR epoch, stage and phase."""

    def __init__(self, phases: list[Phase], refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.phases = phases

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Name the phase in the bar's description."""
        super().on_train_epoch_start(trainer, *args)
        phase = self.phases[trainer.current_epoch]
        self.train_progress_bar.set_description(
            f"phase {phase.index + 1}/{len(self.phases)} {phase.label}"
        )


def plain_dict(node: Any, *, resolve: bool = True) -> dict[str, Any]:
    """A config mapping node as a plain dict (``OmegaConf.to_container`` typed for mappings)."""
    out = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(out, dict):
        raise TypeError(f"expected a mapping config node, got {type(out).__name__}")
    return cast(dict[str, Any], out)


def build_datamodule(cfg: DictConfig) -> VIReIDDataModule:
    """The DataModule from ``cfg.data`` (SynVI generated first when configured).

    Every ``data`` field goes to the parameter of its name (:func:`constructor_kwargs`) but
    ``check``, which ``train`` runs itself; the seed and the replica count are the run's and the
    model's.
    """
    return VIReIDDataModule(
        **constructor_kwargs(cfg.data, VIReIDDataModule, exclude=("check",)),
        seed=cfg.seed,
        bn_replicas=cfg.model.bn_replicas,
    )


def build_module(cfg: DictConfig, *, load_pretrained: bool = True):
    """The GURLitModule with its two-stream backbone from ``cfg.model`` and the LR schedule.

    ``model.backbone`` and ``model.bn_replicas`` make the backbone; the other ``model`` fields go
    to the module by name, ``model.memory``'s as ``temperature``, ``memory_momentum`` and
    ``memory_update``; the learning-rate steps are the schedule's.

    ``model.backbone.pretrained=synvi`` is resolved to the SynVI pretrained start's weights
    file first (:func:`pretrained_weights`), so training and ``evaluate features=untrained``
    start from the same network.

    Args:
        cfg: The composed configuration.
        load_pretrained: False when every weight is loaded from a checkpoint afterwards
            (``evaluate features=model``): the pretrained file is then neither needed nor
            built.
    """
    from gur_lightning.models import DualStreamResNet, GURLitModule

    m = cfg.model
    backbone = DualStreamResNet(
        **constructor_kwargs(
            m.backbone, DualStreamResNet, exclude=("pretrained", "synvi_pretrain")
        ),
        pretrained=pretrained_weights(cfg) if load_pretrained else None,
        bn_replicas=m.bn_replicas,
    )
    return GURLitModule(
        backbone,
        **constructor_kwargs(m, GURLitModule, exclude=("backbone", "memory", "bn_replicas")),
        **constructor_kwargs(m.memory, GURLitModule, rename=_MEMORY_PARAMETERS),
        lr_step_size=cfg.schedule.lr_step_size,
        lr_gamma=cfg.schedule.lr_gamma,
    )


#: ``model.memory`` field -> ``GURLitModule`` parameter.
_MEMORY_PARAMETERS: dict[str, str] = {
    "momentum": "memory_momentum",
    "update_mode": "memory_update",
}


def build_reclustering(
    cfg: DictConfig, phases: list[Phase], policy: ClusterPolicy = cluster_phase
) -> Reclustering:
    """The re-clustering callback: every ``cluster`` field into one frozen :class:`ClusterOptions`.

    The ``cluster`` fields go to the options by name (:func:`constructor_kwargs`), with the
    schedule's CMLU top-k.

    Args:
        cfg: The composed configuration.
        phases: The expanded schedule.
        policy: The stage policy (tests substitute their own; see :class:`Reclustering`).
    """
    options = ClusterOptions(
        **constructor_kwargs(cfg.cluster, ClusterOptions), cmlu_topk=cfg.schedule.cmlu.topk
    )
    return Reclustering(phases, options, policy=policy, experiment=str(cfg.experiment))


def model_featurizer(module, dm: VIReIDDataModule):
    """Test-time features: flip-averaged, re-normalised, Lanczos-resized (docs/method.md §13.1)."""

    def featurize(samples):
        loader = dm.eval_dataloader(samples, resample="lanczos")
        return extract_features(module, loader, len(samples), renormalize=True)

    return featurize


def build_trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``lightning.Trainer`` keyword arguments from ``cfg.trainer``.

    Values are plain Lightning arguments, except ``strategy``, which may be a node with a
    ``_target_`` (``trainer=ddp``: a ``DDPStrategy`` with a ``datetime.timedelta`` timeout); it
    is instantiated here. Without the run's own last checkpoint
    (``callbacks.last_checkpoint=false``) Lightning's default checkpointing is off too, unless
    the trainer config says otherwise.
    """
    kwargs = plain_dict(cfg.trainer)
    strategy = kwargs.get("strategy")
    if isinstance(strategy, dict) and "_target_" in strategy:
        kwargs["strategy"] = instantiate(_modern_ddp_kwargs(strategy))
    if not cfg.callbacks.last_checkpoint:
        kwargs.setdefault("enable_checkpointing", False)
    return kwargs


def _modern_ddp_kwargs(strategy: dict[str, Any]) -> dict[str, Any]:
    """Spell ``broadcast_buffers=False`` as ``forward_sync_buffers=False`` where torch has it.

    torch 2.14 deprecates ``broadcast_buffers``; the new flag also syncs buffers once when DDP
    wraps the model, which changes nothing here (every rank starts from the same weights). Older
    torch versions only know ``broadcast_buffers``, which the configs therefore keep.
    """
    from torch.nn.parallel import DistributedDataParallel

    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    if "broadcast_buffers" in strategy and "forward_sync_buffers" in accepted:
        strategy = dict(strategy)
        strategy["forward_sync_buffers"] = strategy.pop("broadcast_buffers")
    return strategy


def _num_devices(devices: Any, accelerator: Any) -> int:
    """How many devices per node a ``trainer.devices`` value asks for (Lightning's rules)."""
    count = named_device_count(devices)
    if count is not None:
        return count
    gpu = str(accelerator).lower() in ("gpu", "cuda", "auto")
    return torch.cuda.device_count() if gpu else 1


def _launches_subprocesses(strategy: Any) -> bool:
    """Whether a strategy re-executes the script for the other ranks (Lightning's ``popen``)."""
    if isinstance(strategy, Mapping):
        start = str(strategy.get("start_method", "popen"))
        return start not in _INPROCESS_START_METHODS
    name = str(strategy or "auto").lower()
    return not any(method in name for method in _INPROCESS_START_METHODS)


def multirun_ddp_problem(
    trainer_cfg: Mapping[str, Any] | None,
    *,
    mode: RunMode | None,
    launcher_target: str = "",
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Why a Hydra job cannot run with this trainer config, or None if it can.

    Lightning's default DDP launcher re-executes ``sys.argv`` once per extra device. Under a
    Hydra multirun that command is the whole sweep, so every child starts the sweep again
    (docs/architecture.md §10.7). Safe: single runs, one device per job,
    in-process start methods (``spawn``/``fork``: ``trainer=ddp_cpu``), and processes created
    outside Lightning (torchrun, SLURM, Hydra's submitit launcher).

    Args:
        trainer_cfg: ``cfg.trainer`` (a mapping; ``strategy`` a name or a ``_target_`` node).
        mode: Hydra's run mode (None outside Hydra).
        launcher_target: ``hydra.launcher._target_``.
        environ: Environment variables (default ``os.environ``).

    Returns:
        An error message naming the fixes, or None.
    """
    if mode != RunMode.MULTIRUN or "submitit" in launcher_target.lower():
        return None
    environ = os.environ if environ is None else environ
    if any(key in environ for key in _EXTERNAL_LAUNCH_ENV):
        return None
    trainer_cfg = trainer_cfg or {}
    devices = _num_devices(trainer_cfg.get("devices", "auto"), trainer_cfg.get("accelerator"))
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if devices * nodes <= 1 or not _launches_subprocesses(trainer_cfg.get("strategy")):
        return None
    return (
        f"Hydra multirun with a subprocess-launched DDP strategy ({devices} devices x {nodes} "
        "nodes) re-runs the whole sweep in every child process (Lightning issue #11300). "
        "Use an in-process start method (trainer=ddp_cpu, or "
        "trainer.strategy.start_method=spawn), one device per job (trainer.devices=1), or "
        "the SLURM launcher (hydra/launcher=submitit_slurm), which creates the processes itself."
    )


def guard_multirun_ddp(cfg: DictConfig) -> None:
    """Refuse Hydra multirun with subprocess-launched DDP (docs/architecture.md §10.7).

    Reads the run mode and launcher from Hydra's config; outside Hydra (a test calling
    :func:`train` directly) there is nothing to refuse.

    Args:
        cfg: The run config (its ``trainer`` group is checked).

    Raises:
        ValueError: With the message of :func:`multirun_ddp_problem`.
    """
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under Hydra (tests calling train() directly)
        return
    launcher = hydra_cfg.launcher or {}
    problem = multirun_ddp_problem(
        plain_dict(cfg.trainer, resolve=False) if cfg.trainer else {},
        mode=hydra_cfg.mode,
        launcher_target=str(launcher.get("_target_", "")),
    )
    if problem is not None:
        raise ValueError(problem)


def fast_dev_run_steps(cfg: DictConfig) -> int:
    """Steps per phase asked for by ``trainer.fast_dev_run`` (``true``: 1), 0 when it is off."""
    value = (cfg.trainer or {}).get("fast_dev_run", False)
    if isinstance(value, bool) or value is None:
        return int(bool(value))
    if not isinstance(value, int) or value < 0:
        raise ValueError(
            f"trainer.fast_dev_run={value!r} is invalid: expected true/false or a number of "
            "steps per phase >= 0"
        )
    return value


def fast_dev_run_config(cfg: DictConfig) -> DictConfig:
    """What ``trainer.fast_dev_run`` means for a phase schedule: a quick check of the whole run.

    Lightning's own ``fast_dev_run`` runs one epoch, but a GUR run is one Lightning epoch per
    phase, so the flag is translated instead: the phases of the first GUR epoch only (see
    :func:`fast_dev_run_phases`), ``fast_dev_run`` steps each (``true``: 1) after the real
    clustering, no checkpoints (``callbacks.last_checkpoint``), no logger, no validation or
    test-set selection, no pictures (``callbacks.pictures``), and an evaluation on the first
    gallery trial. ``metrics.json`` is still written.

    Returns:
        A copy of ``cfg`` with those settings (``cfg`` itself when the flag is off).
    """
    steps = fast_dev_run_steps(cfg)
    if steps == 0:
        return cfg
    cfg = cfg.copy()
    trainer = {k: v for k, v in cfg.trainer.items() if k != "fast_dev_run"}
    trainer.update(limit_train_batches=steps, enable_checkpointing=False)
    cfg.trainer = trainer
    cfg.logger = None
    cfg.eval.max_trials = 1
    cfg.eval.val_every_n_epochs = 0
    cfg.eval.select_on_test = False
    cfg.callbacks.last_checkpoint = False
    cfg.callbacks.pictures.enabled = False
    log.info(
        "fast_dev_run: the first GUR epoch's phases, %d step(s) each, no checkpoint or logger",
        steps,
    )
    return cfg


def fast_dev_run_phases(phases: list[Phase]) -> list[Phase]:
    """The phases of the first GUR epoch (all of its stages, each clustered for real)."""
    return [p for p in phases if p.gur_epoch == phases[0].gur_epoch] if phases else phases


def launch_local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's local rank as set by a launcher before any process group exists.

    ``LOCAL_RANK`` is set by torchrun and by Lightning for the processes it re-launches,
    ``SLURM_LOCALID`` by srun; a process started by hand is local rank 0.
    """
    environ = os.environ if environ is None else environ
    for key in _EXTERNAL_LAUNCH_ENV:
        if key in environ:
            return int(environ[key])
    return 0


def prepare_data_once(dm: VIReIDDataModule) -> None:
    """Generate the data (SynVI) on local rank 0 only; the other local ranks wait for it.

    ``train`` needs the data set before the trainer exists (the phase count depends on its
    cameras), so this cannot wait for Lightning's own ``prepare_data`` barrier. With Lightning's
    launchers the other ranks only start once rank 0 has passed this point; with torchrun or
    SLURM all ranks start together and the non-zero ones poll for the finished tree.
    """
    if launch_local_rank() == 0:
        dm.prepare_data()
    else:
        dm.wait_until_prepared()


def pretrained_weights(cfg: DictConfig) -> str | None:
    """``model.backbone.pretrained`` as the network loads it; ``synvi`` becomes a weights file.

    The SynVI pretrained start (docs/synthetic.md, "The pretrained start") is built once per
    node, like a SynVI tree: local rank 0 trains it on first use (or finds it cached under
    ``paths.data_dir``) while the other local ranks wait for its entry. With Lightning's
    launchers the other ranks only start after rank 0 has built the module, so they find it.

    Returns:
        The configured value (a path, ``torchvision`` or None), or the SynVI weights path.
    """
    value = cfg.model.backbone.pretrained
    if value != SYNVI_PRETRAINED:
        return value
    from gur_lightning.pretrain import ensure_pretrained_start, wait_for_pretrained_start

    options = synvi_pretrain_config(cfg)
    if launch_local_rank() == 0:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        path = ensure_pretrained_start(options, cfg.paths.data_dir, device=device)
    else:
        path = wait_for_pretrained_start(options, cfg.paths.data_dir)
    return str(path)


def _destroy_process_group() -> None:
    """Destroy this process's default process group, if it still exists (an exit hook)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ProcessGroupAtExit(Callback):
    """Destroy a spawned worker's gloo process group before the interpreter shuts down.

    Lightning registers this exit hook for NCCL only. Without it a gloo process group is torn
    down during interpreter shutdown, and a worker that exits while its peer still holds the
    group can abort with "terminate called without an active exception" after training has
    finished (seen in about one run in three of the 2-process CPU DDP tests).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Register the exit hook once per process."""
        if not getattr(self, "_registered", False):
            atexit.register(_destroy_process_group)
            self._registered = True


class SpawnedWorkerLogging(Callback):
    """Give spawned DDP workers the parent's log level and log files.

    A worker started by ``spawn`` begins with an unconfigured ``logging`` module, so the
    clustering and phase messages of a ``trainer=ddp_cpu`` run would vanish. Rank 0 logs at the
    parent's level to the console and the parent's log files; the other ranks only warnings.
    Processes that already have handlers (the parent, re-launched or torchrun processes that
    ran Hydra themselves) are left alone.
    """

    def __init__(self) -> None:
        root = logging.getLogger()
        self.level = root.level
        self.files = [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Configure logging once in a worker that has none."""
        root = logging.getLogger()
        if root.handlers:
            return
        rank = trainer.global_rank
        fmt = logging.Formatter(
            f"[%(asctime)s][%(name)s][%(levelname)s] - rank {rank}: %(message)s"
        )
        handlers: list[logging.Handler] = [logging.StreamHandler()]
        if rank == 0:
            handlers += [logging.FileHandler(f, mode="a") for f in self.files]
        for handler in handlers:
            handler.setFormatter(fmt)
            root.addHandler(handler)
        root.setLevel(self.level if rank == 0 else max(self.level, logging.WARNING))


def _fit_ran_in_other_processes(trainer: L.Trainer) -> bool:
    """True in the parent of Lightning's spawn/fork launcher after ``fit``.

    The workers trained; this process only got rank 0's weights back, not the callbacks'
    state. (Every process of a re-launched or torchrun job keeps its process group.)
    """
    return trainer.world_size > 1 and not (dist.is_available() and dist.is_initialized())


def _reload_callback_states(callbacks: Sequence[Callback], ckpt_path: Path) -> None:
    """Load the callbacks' states from the checkpoint rank 0 wrote at the end of training."""
    if not ckpt_path.is_file():
        log.warning("no %s: callback states (clustering history) stay empty", ckpt_path)
        return
    states = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("callbacks", {})
    for callback in callbacks:
        state = states.get(callback.state_key)
        if state:
            callback.load_state_dict(state)


def last_cluster_stats(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last successful clustering's statistics of each stage, as ``cluster/<stage>/<key>``."""
    out: dict[str, float] = {}
    for record in history:
        if record["skipped"]:
            continue
        for key, value in record.items():
            if key in ("phase", "gur_epoch", "stage", "label", "trainer_epoch", "skipped"):
                continue
            if isinstance(value, str):  # knn_backend: not a statistic
                continue
            out[f"cluster/{record['stage']}/{key}"] = float(value)
    return out


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The whole resolved config as plain containers, for the loggers (``hydra`` left out)."""
    config = plain_dict(cfg)
    config.pop("hydra", None)
    return config


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train and evaluate one configuration; returns the flat metrics written to metrics.json.

    The run folder's ``status.json`` follows the run (:mod:`gur_lightning.utils.run_status`):
    ``running``, then ``finished``, ``failed`` (the error also logged with its traceback, into
    the Hydra job's log file) or ``interrupted`` (SIGTERM / SIGINT: see
    :mod:`gur_lightning.callbacks.signals`).

    Args:
        cfg: The composed configuration (schema :class:`gur_lightning.config.TrainConfig`).
        extra_callbacks: Further Lightning callbacks (diagnostics, tests). They run before the
            built-in ones in each hook; with ``trainer=ddp_cpu`` they are pickled into the
            worker processes.

    Returns:
        Test metrics (``test/<protocol>/<metric>``) and the last cluster statistics.

    Raises:
        RunInterrupted: After SIGTERM / SIGINT; names the checkpoint and the resume command.
        UntrainedRunError: Fewer phases trained than ``eval.min_trained_share`` asks.
    """
    output_dir = Path(cfg.paths.output_dir)
    stopper = GracefulStop()
    try:
        metrics = _train(cfg, extra_callbacks, stopper)
    except RunInterrupted:
        raise
    except Exception as err:
        _record_failure(output_dir, err)
        raise
    _record_success(output_dir)
    return metrics


class RunInterrupted(Exception):  # noqa: N818 - an outcome, not a programming error
    """Training stopped after SIGTERM / SIGINT (the command line exits with ``exit_code``).

    Attributes:
        signum: The signal.
        exit_code: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
        checkpoint: The phase-end checkpoint to resume from, or None when none was written.
        command: The resume command (or, without a checkpoint, the command to start again).
    """

    def __init__(self, signum: int, checkpoint: Path | None, command: str) -> None:
        self.signum = int(signum)
        self.exit_code = exit_code_for(signum)
        self.checkpoint = checkpoint
        self.command = command
        where = f"resume from {checkpoint}" if checkpoint else "no phase ended: nothing to resume"
        super().__init__(f"training interrupted by signal {self.signum} ({where}): {command}")


class UntrainedRunError(RuntimeError):
    """Too few phases trained (unusable clusterings) for the run's figures to mean anything."""


def _record_start(cfg: DictConfig, output_dir: Path, wandb_run_id: str | None) -> None:
    """Write ``status.json`` = running and say where the run folder is."""
    update_status(
        output_dir,
        "running",
        command=launch_command(),
        folder=str(output_dir.resolve()),
        resumed_from=str(Path(cfg.ckpt_path).resolve()) if cfg.ckpt_path else None,
        wandb_run_id=wandb_run_id,
    )
    log.info("run folder: %s", output_dir.resolve())


def _record_success(output_dir: Path) -> None:
    """Write ``status.json`` = finished and name the checkpoint and the metrics."""
    metrics = output_dir / "metrics.json"
    checkpoint = output_dir / CHECKPOINT_SUBDIR / "last.ckpt"
    update_status(
        output_dir,
        "finished",
        metrics=str(metrics.resolve()),
        checkpoint=str(checkpoint.resolve()) if checkpoint.is_file() else None,
    )
    log.info("finished: checkpoint %s, metrics %s", checkpoint.resolve(), metrics.resolve())


def _record_failure(output_dir: Path, err: BaseException) -> None:
    """Log the traceback (the Hydra job log file gets it) and write ``status.json`` = failed.

    Errors raised before the run folder exists (a bad config outside Hydra) create no folder.
    """
    log.exception("training failed: %s", one_line_error(err))
    if output_dir.is_dir():
        update_status(output_dir, "failed", error=one_line_error(err), command=launch_command())


def _interrupted(cfg: DictConfig, output_dir: Path, signum: int) -> RunInterrupted:
    """Record a stop after a signal; the phase-end checkpoint to resume from and the command.

    The checkpoint is this run's ``checkpoints/last.ckpt`` (the last phase end: nothing is saved
    mid-phase), else the checkpoint this run itself resumed from.
    """
    last = output_dir / CHECKPOINT_SUBDIR / "last.ckpt"
    checkpoint = last if last.is_file() else (Path(cfg.ckpt_path) if cfg.ckpt_path else None)
    if checkpoint is not None:
        checkpoint = checkpoint.resolve()
        command = resume_command(checkpoint)
        log.warning(
            "training interrupted by signal %d; the last phase-end checkpoint is %s (the "
            "interrupted phase is lost). Resume with:\n%s",
            signum,
            checkpoint,
            command,
        )
    else:
        command = launch_command()
        log.warning(
            "training interrupted by signal %d before any phase ended: nothing to resume from. "
            "Start again with:\n%s",
            signum,
            command,
        )
    update_status(
        output_dir,
        "interrupted",
        signal=int(signum),
        checkpoint=str(checkpoint) if checkpoint else None,
        resume_command=command if checkpoint else None,
    )
    return RunInterrupted(signum, checkpoint, command)


def trained_share(history: Sequence[Mapping[str, Any]], num_phases: int) -> float:
    """Share of the first ``num_phases`` phases that trained (their record is not ``skipped``).

    Records of later phases (the one clustered for a phase that never ran) are left out.
    """
    last = {
        int(record["phase"]): bool(record["skipped"])
        for record in history
        if int(record["phase"]) < num_phases
    }
    return sum(not skipped for skipped in last.values()) / max(num_phases, 1)


def check_trained_share(
    history: Sequence[Mapping[str, Any]], num_phases: int, min_share: float
) -> float:
    """Refuse a run in which too few phases trained.

    Args:
        history: The Reclustering callback's history (one record per clustering).
        num_phases: Phases that ran: the schedule's, or fewer when fit was stopped early.
        min_share: ``eval.min_trained_share``.

    Returns:
        The share of phases that trained.

    Raises:
        UntrainedRunError: When the share is below ``min_share``.
    """
    share = trained_share(history, num_phases)
    if share < min_share:
        trained = round(share * num_phases)
        raise UntrainedRunError(
            f"only {trained} of {num_phases} phases trained ({share:.0%}), below "
            f"eval.min_trained_share={min_share:g}: the other phases were skipped because their "
            "clustering was unusable (see the 'skipped' warnings and clustering_history.json; "
            "e.g. cluster.min_samples or cluster.eps too strict for the data). The network is "
            "(nearly) untrained, so no figures are reported."
        )
    return share


@dataclass(frozen=True)
class RunCallbacks:
    """The run's Lightning callbacks, in order, and those whose state ``train`` reads after fit.

    Attributes:
        ordered: Every callback, in the order each hook runs them.
        stopper: The signal handler (consulted after fit even when ``callbacks.graceful_stop``
            is off and it is not among ``ordered``: then it never receives a signal).
        validation: The validation callback, if ``eval.val_every_n_epochs > 0``.
        selection: The test-set selection callback, if ``eval.select_on_test``.
    """

    ordered: tuple[Callback, ...]
    stopper: GracefulStop
    validation: PeriodicValidation | None = None
    selection: TestSetSelection | None = None


def build_callbacks(
    cfg: DictConfig,
    phases: list[Phase],
    recluster: Reclustering,
    stopper: GracefulStop,
    *,
    extra: Sequence[Callback] = (),
) -> RunCallbacks:
    """The run's callbacks from ``cfg.callbacks``, ``cfg.eval`` and the trainer settings.

    The order (documented on :class:`gur_lightning.config.CallbacksConfig`) is what each hook
    runs: ``extra`` first, the signal handler, the re-clustering, the last checkpoint (written
    after the next phase is clustered, so a resume is exact), the spawned workers' helpers, the
    phase progress bar, validation, test-set selection, the pictures.

    Args:
        cfg: The composed configuration (after :func:`fast_dev_run_config`).
        phases: The expanded schedule.
        recluster: The re-clustering callback (:func:`build_reclustering`).
        stopper: The signal handler :func:`train` made (it restores the handlers afterwards).
        extra: Callbacks handed to :func:`train` (diagnostics, tests); they run first.

    Returns:
        The callbacks, with the ones ``train`` reads after fit.
    """
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_SUBDIR
    switches = cfg.callbacks
    ordered: list[Callback] = list(extra)
    if switches.graceful_stop:
        ordered.append(stopper)
    ordered.append(recluster)
    if switches.last_checkpoint:
        # last.ckpt, overwritten at every epoch end, i.e. at every phase end after the next
        # phase is clustered: the points from which a resume is exact. (``save_last=True`` with
        # ``save_top_k=0`` would only write it when fit ends.)
        ordered.append(
            ModelCheckpoint(
                dirpath=str(checkpoint_dir),
                filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                save_top_k=1,
                monitor=None,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            )
        )
    strategy_cfg = cfg.trainer.get("strategy")
    start = strategy_cfg.get("start_method", "") if isinstance(strategy_cfg, DictConfig) else ""
    if "spawn" in str(start or strategy_cfg):
        ordered += [SpawnedWorkerLogging(), ProcessGroupAtExit()]
    if cfg.trainer.get("enable_progress_bar", True):
        ordered.append(PhaseProgressBar(phases))
    validation = None
    if cfg.eval.val_every_n_epochs > 0:
        validation = PeriodicValidation(
            phases,
            cfg.eval.val_every_n_epochs,
            model_featurizer,
            checkpoint_dir=str(checkpoint_dir),
        )
        ordered.append(validation)
    selection = None
    if cfg.eval.select_on_test:
        selection = TestSetSelection(
            phases,
            cfg.eval.select_on_test_from_epoch,
            model_featurizer,
            checkpoint_dir=str(checkpoint_dir),
        )
        ordered.append(selection)
    ordered += build_picture_callbacks(cfg, phases, output_dir, model_featurizer)
    return RunCallbacks(tuple(ordered), stopper, validation, selection)


def _train(
    cfg: DictConfig, extra_callbacks: Sequence[Callback], stopper: GracefulStop
) -> dict[str, float]:
    """The body of :func:`train`."""
    validate_config(cfg)
    guard_multirun_ddp(cfg)
    dev_run = fast_dev_run_steps(cfg) > 0
    cfg = fast_dev_run_config(cfg)
    # A resume file must be one of our checkpoints, loaded as data: refused before anything runs.
    check_resume_checkpoint(cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    dm = build_datamodule(cfg)
    prepare_data_once(dm)
    dm.setup("fit")
    if cfg.data.check:
        # Every image of every split, before the first step (cached by the tree's listing).
        check_dataset(dm.require_dataset())
    schedule = OmegaConf.to_object(cfg.schedule)
    assert isinstance(schedule, ScheduleConfig)  # the schema's type of cfg.schedule
    phases = build_phases(schedule, dm.cameras("visible"), dm.cameras("infrared"))
    log.info(
        "%s: %d GUR epochs expanded into %d phases", schedule.name, schedule.epochs, len(phases)
    )
    if dev_run:
        phases = fast_dev_run_phases(phases)
    module = build_module(cfg)
    recluster = build_reclustering(cfg, phases)
    trainer_kwargs = build_trainer_kwargs(cfg)
    callbacks = build_callbacks(cfg, phases, recluster, stopper, extra=extra_callbacks)
    logger, wandb_run_id = build_logger(cfg)
    _record_start(cfg, output_dir, wandb_run_id)
    log_run_config(logger, run_config(cfg))
    try:
        return _fit_and_test(cfg, dm, module, recluster, callbacks, trainer_kwargs, phases, logger)
    finally:
        # Test metrics logged after fit reach metrics.csv only when the logger is saved again,
        # and an unfinished W&B run would swallow the next multirun job
        # (docs/architecture.md §10.11).
        finish_loggers(logger or None)


def build_logger(cfg: DictConfig) -> tuple[Any, str | None]:
    """The run's logger (``cfg.logger``); a resumed run continues the interrupted run's record.

    CSV: ``metrics.csv`` continues (:func:`gur_lightning.utils.loggers.continue_csv_record`).
    W&B: the interrupted run's id (from its ``status.json``) with ``resume="allow"``.

    Args:
        cfg: The run config; ``ckpt_path`` names the checkpoint of a resumed run.

    Returns:
        ``(logger or False, the W&B run id or None)``.
    """
    if cfg.logger is None:
        return False, None
    previous = read_status(Path(cfg.ckpt_path).resolve().parents[1]) if cfg.ckpt_path else {}
    kwargs, run_id = wandb_resume_kwargs(cfg.logger, previous.get("wandb_run_id"))
    logger = instantiate(cfg.logger, **kwargs)
    continue_csv_record(logger, ckpt_path=cfg.ckpt_path, output_dir=cfg.paths.output_dir)
    return logger, run_id


def _fit_and_test(
    cfg: DictConfig,
    dm: VIReIDDataModule,
    module: L.LightningModule,
    recluster: Reclustering,
    callbacks: RunCallbacks,
    trainer_kwargs: dict[str, Any],
    phases: list[Phase],
    logger: Any,
) -> dict[str, float]:
    """Fit, evaluate the last-epoch weights, write metrics.json (the body of :func:`train`)."""
    validation, selection = callbacks.validation, callbacks.selection
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_SUBDIR
    trainer = L.Trainer(
        **trainer_kwargs,
        max_epochs=len(phases),
        callbacks=list(callbacks.ordered),
        logger=logger,
        default_root_dir=str(output_dir),
    )
    _fit_or_stop(cfg, trainer, module, dm, callbacks.stopper)
    spawned = _fit_ran_in_other_processes(trainer)
    if spawned:
        _reload_callback_states(callbacks.ordered, checkpoint_dir / "last.ckpt")
    # Phases fit ran (fewer than the schedule's when a callback stopped it early); the parent of
    # spawned workers has no loop state: the whole schedule.
    ran = len(phases) if spawned else min(trainer.current_epoch, len(phases))
    _require_trained_phases(cfg, recluster, ran, output_dir, trainer.is_global_zero)
    # Lightning moves the module to the CPU when fit ends; evaluate on the training device.
    module.to(trainer.strategy.root_device)

    metrics: dict[str, float] = {}
    if cfg.eval.test_after_fit:
        splits = protocol_splits(
            dm.require_dataset(),
            max_trials=cfg.eval.max_trials,
            within_modality=cfg.eval.within_modality,
        )
        metrics.update(evaluate_splits(splits, model_featurizer(module, dm), prefix="test"))
        if selection is not None:
            metrics.update(_evaluate_selected_on_test(module, dm, selection, splits))
    metrics.update(last_cluster_stats(recluster.history))
    if validation is not None and validation.history:
        metrics.update({k: v for k, v in validation.history[-1].items() if k != "gur_epoch"})
        metrics["val/holdout/mAP_best"] = validation.best_map
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (output_dir / "clustering_history.json").write_text(
            json.dumps(recluster.history, indent=2)
        )
        if logger and not spawned:
            logger.log_metrics({k: v for k, v in metrics.items() if k.startswith("test/")})
        elif logger:
            # The workers' logger run is closed; a fresh one in this process would start a new
            # run (CSV: truncate the workers' metrics.csv). metrics.json holds the results.
            log.info("test metrics are in %s only (fit ran in spawned workers)", output_dir)
        if cfg.eval.test_after_fit:
            log.info(
                "last-epoch test results (%%, mean ± std over trials):\n%s", format_table(metrics)
            )
        if any(k.startswith(SELECTED_ON_TEST_PREFIX + "/") for k in metrics):
            log.info(
                "the reference's reporting: weights of GUR epoch %d, chosen by their mAP on the "
                "TEST set (optimistic; compare with published tables only):\n%s",
                int(metrics[f"{SELECTED_ON_TEST_PREFIX}/gur_epoch"]),
                format_table(metrics, prefix=SELECTED_ON_TEST_PREFIX),
            )
    return metrics


def _fit_or_stop(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    dm: VIReIDDataModule,
    stopper: GracefulStop,
) -> None:
    """``trainer.fit``; after SIGTERM / SIGINT, raise :class:`RunInterrupted` instead.

    Lightning's own SIGTERM handling ends fit with ``SIGTERMException`` (a ``SystemExit`` with
    status 0); :class:`GracefulStop` with :class:`TrainingInterrupted`; a signal during the last
    phase's end lets fit return. All three are the same outcome.
    """
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path, weights_only=True)
    except (TrainingInterrupted, SIGTERMException) as stop:
        signum = getattr(stop, "signum", None) or stopper.received or 15
        raise _interrupted(cfg, Path(cfg.paths.output_dir), signum) from None
    finally:
        # Lightning's teardown re-installs the handlers it found (ours): put the originals back.
        stopper.restore_handlers()
    if stopper.received is not None:
        raise _interrupted(cfg, Path(cfg.paths.output_dir), stopper.received)


def _require_trained_phases(
    cfg: DictConfig,
    recluster: Reclustering,
    ran: int,
    output_dir: Path,
    is_global_zero: bool,
) -> None:
    """Fail (keeping clustering_history.json) when fewer phases trained than the config asks."""
    try:
        share = check_trained_share(recluster.history, ran, cfg.eval.min_trained_share)
    except UntrainedRunError:
        if is_global_zero:
            (output_dir / "clustering_history.json").write_text(
                json.dumps(recluster.history, indent=2)
            )
        raise
    log.info("%.0f%% of the %d phases trained", 100 * share, ran)


def _evaluate_selected_on_test(
    module: L.LightningModule,
    dm: VIReIDDataModule,
    selection: TestSetSelection,
    splits: dict[str, Any],
) -> dict[str, float]:
    """Full-protocol figures of the weights the test-set selection kept (the reference's).

    The module's last-epoch weights are put back afterwards.

    Returns:
        ``test_selected_on_test/<protocol>/<metric>`` and ``test_selected_on_test/gur_epoch``,
        or nothing when no epoch was scored (a schedule shorter than the selection's start).
    """
    if selection.best_epoch < 0 or not selection.path.is_file():
        log.warning(
            "eval.select_on_test: no GUR epoch >= %d was scored; no %s figures",
            selection.from_epoch,
            SELECTED_ON_TEST_PREFIX,
        )
        return {}
    last = {k: v.detach().clone() for k, v in module.state_dict().items()}
    selected = torch.load(selection.path, map_location="cpu", weights_only=True)
    module.load_state_dict(selected)
    try:
        out = evaluate_splits(splits, model_featurizer(module, dm), prefix=SELECTED_ON_TEST_PREFIX)
    finally:
        module.load_state_dict(last)
    out[f"{SELECTED_ON_TEST_PREFIX}/gur_epoch"] = float(selection.best_epoch)
    return out


def available_experiments(conf_dir: str = CONF_DIR) -> list[str]:
    """Names of the experiment presets (``conf/experiment/*.yaml``), sorted."""
    return sorted(p.stem for p in (Path(conf_dir) / "experiment").glob("*.yaml"))


def missing_experiment_problem(cfg: DictConfig) -> str | None:
    """A one-line error when no experiment was chosen and the data set is unset, else None.

    Without ``+experiment=`` the defaults describe SYSU-MM01 without a ``data.root``; instead of
    the resulting missing-value traceback, the user is told which experiments exist.
    """
    if cfg.experiment != "none" or not OmegaConf.is_missing(cfg.data, "root"):
        return None
    choices = ", ".join(f"+experiment={name}" for name in available_experiments())
    return (
        f"no experiment chosen (and no data.root): add one of {choices} "
        "(the real data sets also need data.root=PATH)"
    )


def evaluate_only_override_problem(overrides: Sequence[str]) -> str | None:
    """A one-line error for an evaluation-only key (``ckpt=``) on the training command line.

    Hydra would only say that the key is not in the config and suggest ``+ckpt=``; this names
    what to use instead. Checked before Hydra composes (see :func:`cli`).
    """
    for override in overrides:
        key = override.split("=", 1)[0]
        hint = evaluate_only_hint(key) if "=" in override else None
        if hint is not None:
            return f"{key.lstrip('+~')}= is not a training setting: {hint}"
    return None


def cli() -> None:
    """Console entry point: refuses evaluation-only overrides, then runs :func:`main`."""
    problem = evaluate_only_override_problem(sys.argv[1:])
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    main()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the validation mAP (else the first test mAP) for sweepers."""
    quiet_known_noise()
    if (problem := missing_experiment_problem(cfg)) is not None:
        raise SystemExit(f"error: {problem}")
    os.environ.setdefault("WANDB_MODE", "offline")
    if launch_local_rank() != 0 or any(
        int(os.environ.get(key, "0")) != 0 for key in ("RANK", "SLURM_PROCID")
    ):
        # Every DDP process runs this script and writes to the same job log: only rank 0
        # reports progress, the others warnings and errors.
        logging.getLogger("gur_lightning").setLevel(logging.WARNING)
    try:
        metrics = train(cfg)
    except RunInterrupted as stop:
        # 130 / 143 as a shell reports a process ended by SIGINT / SIGTERM. A SystemExit is no
        # Exception, so Hydra does not record it as a failed job: a sweep stops here too.
        sys.exit(stop.exit_code)
    # Failures propagate: Hydra marks the job failed (a sweeper, such as Optuna's, records the
    # trial as failed) and the process exits non-zero.
    # Sweepers (Optuna) optimise the returned value: the validation mAP when validation ran,
    # never the test set's unless nothing else exists (then it is only a report).
    if "val/holdout/mAP" in metrics:
        return metrics["val/holdout/mAP"]
    maps = [v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.endswith("/mAP")]
    return maps[0] if maps else None


register_configs()

if __name__ == "__main__":
    cli()
