"""Experiment loggers: an offline-first W&B factory, image logging, and clean shutdown.

``conf/logger/wandb.yaml`` instantiates :func:`build_wandb_logger` instead of Lightning's
``WandbLogger`` directly, so that

* a missing ``wandb`` package fails with the command that installs it (the ``wandb`` extra),
  or, with ``on_missing=csv``, falls back to the CSV logger with a warning;
* the run is offline unless ``WANDB_MODE`` (or ``mode``) says otherwise: no account and no
  network are needed, and ``wandb sync <save_dir>/wandb/offline-run-*`` uploads it later;
* a job of a Hydra multirun gets a readable run name (its overrides) by default.

:func:`log_images` sends PIL images to every logger that can show them (W&B, TensorBoard); the
CSV logger cannot, and the PNG files in the run folder are the record then.
:func:`log_run_config` records the whole resolved run config with every logger (nested for W&B,
flat ``section.key`` names elsewhere, e.g. the CSV logger's ``hparams.yaml``).
:func:`finish_loggers` flushes the loggers (metrics logged after ``fit``) and closes the W&B run;
in a Hydra multirun it must run after every job, otherwise the next job's logger attaches to the
still-open run (docs/architecture.md §10 gotcha 11).

Resumed runs keep one record: :func:`continue_csv_record` makes the CSV logger continue the
interrupted run's ``metrics.csv`` (appended in the same folder, copied into a new one) and
:func:`wandb_resume_kwargs` gives W&B the interrupted run's id with ``resume="allow"``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from gur_lightning.utils.logging import get_logger
from gur_lightning.utils.run_status import is_global_rank_zero

log = get_logger(__name__)

__all__ = [
    "WANDB_INSTALL_HINT",
    "WANDB_MODES",
    "AppendingExperimentWriter",
    "build_wandb_logger",
    "continue_csv_record",
    "finish_loggers",
    "flatten_config",
    "log_images",
    "log_run_config",
    "multirun_job_name",
    "rows_before_checkpoint",
    "wandb_resume_kwargs",
]

#: What to install when ``logger=wandb`` is chosen without the package.
WANDB_INSTALL_HINT: str = (
    "logger=wandb needs the optional 'wandb' package: pip install 'gur-lightning[wandb]' "
    "(or pip install wandb), or choose logger=csv"
)
#: Values W&B accepts for its mode (``WANDB_MODE``).
WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled", "shared", "dryrun", "run")
#: Default W&B mode when neither ``mode`` nor ``WANDB_MODE`` is set: nothing leaves the machine.
DEFAULT_WANDB_MODE: str = "offline"


def _wandb_available() -> bool:
    """Whether ``import wandb`` can succeed, without importing it (it is slow to import)."""
    if "wandb" in sys.modules:
        # None marks a module that must not be imported (also how tests hide a package).
        return sys.modules["wandb"] is not None
    try:
        return importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):
        return False


def multirun_job_name() -> str | None:
    """The default W&B run name of a Hydra multirun job.

    Returns:
        The job's overrides as ``key=value,...`` (Hydra's ``override_dirname``), ``job<N>``
        for a job without overrides, or None outside a Hydra multirun (a single run, or no
        Hydra at all), where W&B picks its own random name.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return hc.job.override_dirname or f"job{hc.job.num}"


def build_wandb_logger(
    *,
    save_dir: str,
    project: str = "gur-lightning",
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str | None = None,
    log_model: bool = False,
    on_missing: Literal["error", "csv"] = "error",
    **kwargs: Any,
) -> Logger:
    """A Lightning ``WandbLogger`` that is offline by default, or a CSV fallback.

    Args:
        save_dir: Folder of the run (``wandb/`` is created inside; the run folder of Hydra).
        project: W&B project.
        name: Run name; None: the overrides of a Hydra multirun job, else W&B's random name.
        group: W&B group (the experiment name in ``conf/logger/wandb.yaml``).
        job_type: W&B job type.
        tags: W&B tags.
        mode: ``offline``, ``online``, ``disabled``...; None: ``WANDB_MODE`` when set, else
            ``offline``.
        log_model: Upload checkpoints as W&B artifacts.
        on_missing: Without the ``wandb`` package: ``error`` raises, ``csv`` logs a warning and
            returns a CSV logger writing to ``save_dir/csv``.
        **kwargs: Passed on to ``WandbLogger`` (and from there to ``wandb.init``).

    Returns:
        The logger.

    Raises:
        ModuleNotFoundError: ``wandb`` is not installed and ``on_missing="error"``; the message
            names the extra to install.
        ValueError: An unknown ``mode`` or ``on_missing``.
    """
    if on_missing not in ("error", "csv"):
        raise ValueError(f"logger.on_missing must be 'error' or 'csv', got {on_missing!r}")
    mode = mode if mode is not None else os.environ.get("WANDB_MODE") or DEFAULT_WANDB_MODE
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode (or WANDB_MODE) must be one of {WANDB_MODES}, got {mode!r}")
    if not _wandb_available():
        if on_missing == "error":
            raise ModuleNotFoundError(WANDB_INSTALL_HINT, name="wandb")
        log.warning("%s; falling back to the CSV logger in %s/csv", WANDB_INSTALL_HINT, save_dir)
        return CSVLogger(save_dir=save_dir, name="csv", version="")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name if name is not None else multirun_job_name(),
        group=group,
        job_type=job_type,
        tags=list(tags) if tags is not None else None,
        mode=mode,
        log_model=log_model,
        **kwargs,
    )


def _as_list(loggers: Logger | Iterable[Logger] | None | bool) -> list[Logger]:
    if loggers is None or isinstance(loggers, bool):
        return []
    if isinstance(loggers, Logger):
        return [loggers]
    return [lg for lg in loggers if isinstance(lg, Logger)]


def log_images(
    loggers: Logger | Iterable[Logger] | None,
    images: Mapping[str, Image.Image],
    *,
    step: int | None = None,
) -> list[str]:
    """Send pictures to every logger that can show them.

    Loggers with a ``log_image(key, images, step)`` method (W&B) get PIL images; TensorBoard
    gets ``(H, W, 3)`` uint8 arrays; others (CSV) are left out.

    Args:
        loggers: A logger, a list of them (``trainer.loggers``) or None.
        images: Key (``cluster_quality/inter_camera``...) -> RGB image.
        step: Global step to attach to the pictures.

    Returns:
        The class names of the loggers that received the pictures.
    """
    import numpy as np

    received: list[str] = []
    for logger in _as_list(loggers):
        if hasattr(logger, "log_image"):
            for key, image in images.items():
                logger.log_image(key=key, images=[image], step=step)
        elif isinstance(logger, TensorBoardLogger):
            for key, image in images.items():
                logger.experiment.add_image(
                    key, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC"
                )
        else:
            continue
        received.append(type(logger).__name__)
    return received


def flatten_config(config: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """``{"cluster": {"eps": 0.6}}`` -> ``{"cluster.eps": 0.6}`` (lists and scalars are leaves).

    An empty mapping stays a leaf (``{}``), so that ``trainer: {}`` is still recorded.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            for sub, leaf in flatten_config(value, sep).items():
                flat[f"{key}{sep}{sub}"] = leaf
        else:
            flat[str(key)] = value
    return flat


def log_run_config(
    loggers: Logger | Iterable[Logger] | None | bool, config: Mapping[str, Any]
) -> list[str]:
    """Record the whole resolved run config as every logger's hyper-parameters.

    The module's own ``save_hyperparameters`` only covers its constructor arguments; this adds
    the data set, the clustering, the schedule, the seed... W&B gets the nested dict (its config
    panel groups by section); the others (CSV's ``hparams.yaml``, TensorBoard) flat
    ``section.key`` names. Loggers merge it with the module's hyper-parameters.

    Args:
        loggers: A logger, a list of them, or None/False.
        config: The resolved config as plain containers (``OmegaConf.to_container``).

    Returns:
        The class names of the loggers that received it.
    """
    from lightning.pytorch.loggers import WandbLogger

    received: list[str] = []
    for logger in _as_list(loggers):
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams(dict(config))
        else:
            logger.log_hyperparams(flatten_config(config))
        received.append(type(logger).__name__)
    return received


def finish_loggers(loggers: Logger | Iterable[Logger] | None | bool) -> None:
    """Flush every logger and close its W&B run, if any.

    Call it in a ``finally`` at the end of a job: metrics logged after ``fit`` (the test
    results) reach ``metrics.csv`` only when the CSV logger is saved again, and in a Hydra
    multirun an unfinished W&B run would swallow the next job's metrics (docs/architecture.md §10
    gotcha 11, §11.11). Safe to call twice.
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in _as_list(loggers):
        logger.save()
        if not isinstance(logger, WandbLogger):
            continue
        # Only a started run holds resources; touching `experiment` would start one.
        run = getattr(logger, "_experiment", None)
        if run is not None:
            run.finish()
            logger._experiment = None


# ------------------------------------------------------------------ resumed runs
#: Name of the CSV logger's metrics file (Lightning's ``ExperimentWriter.NAME_METRICS_FILE``).
METRICS_CSV: str = "metrics.csv"


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that continues an existing ``metrics.csv``.

    Lightning's writer deletes ``metrics.csv`` when it is created (a new run in a used folder);
    this one keeps the file and its header, appends the new rows, and rewrites the file with a
    wider header when new keys appear (as Lightning does).
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)

    def _check_log_dir_exists(self) -> None:
        """Keep the existing files (Lightning's writer deletes ``metrics.csv`` here)."""


def _checkpoint_position(ckpt_path: str | Path) -> tuple[int, int]:
    """``(epoch, global_step)`` saved in a Lightning checkpoint (memory-mapped, weights only)."""
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def rows_before_checkpoint(
    rows: Iterable[Mapping[str, str]], epoch: int, global_step: int
) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` logged before a phase-end checkpoint was written.

    Training rows carry ``epoch`` (the phase) and the step of their batch; the clustering of the
    next phase is logged at the checkpoint's ``global_step`` without an epoch, before the
    checkpoint. Rows of later phases and test results (logged after fit, logged again by the
    resumed run) are left out.

    Args:
        rows: The CSV rows (``csv.DictReader``).
        epoch: The checkpoint's ``epoch`` (the last phase it completed).
        global_step: The checkpoint's ``global_step``.

    Returns:
        The kept rows, in order.
    """
    kept: list[dict[str, str]] = []
    for row in rows:
        step = row.get("step") or ""
        row_epoch = row.get("epoch") or ""
        if any(k.startswith("test/") and v not in ("", None) for k, v in row.items()):
            continue
        if step and int(float(step)) > global_step:
            continue
        if row_epoch and int(float(row_epoch)) > epoch:
            continue
        kept.append(dict(row))
    return kept


def continue_csv_record(
    logger: Logger | None | bool, *, ckpt_path: str | Path | None, output_dir: str | Path
) -> Path | None:
    """Make a resumed run's CSV logger continue the interrupted run's ``metrics.csv``.

    Resuming into the SAME run folder, the earlier rows stay and the new ones are appended.
    Resuming into a NEW folder (Hydra's default: a new timestamped folder), the earlier rows are
    copied there first, so the new folder holds the whole record. In both cases the rows the
    interrupted run logged after the checkpoint (the phase it did not finish) are dropped: the
    resumed run logs them again, so no step appears twice.

    Args:
        logger: The run's logger (anything but a ``CSVLogger`` is left alone).
        ckpt_path: The checkpoint the run resumes from (None: a fresh run, nothing to do).
        output_dir: This run's folder. The interrupted run's folder is the checkpoint's
            grandparent (``<run>/checkpoints/last.ckpt``); its CSV file is at the same place
            relative to it as this logger's.

    Returns:
        This run's ``metrics.csv`` path when it continues a record, else None.
    """
    if not isinstance(logger, CSVLogger) or ckpt_path is None:
        return None
    target = Path(logger.log_dir) / METRICS_CSV
    if getattr(rank_zero_only, "rank", 0) == 0 and is_global_rank_zero():
        try:
            relative = target.resolve().relative_to(Path(output_dir).resolve())
        except ValueError:
            log.warning("%s is outside the run folder: its record is not continued", target)
            return None
        source = Path(ckpt_path).resolve().parents[1] / relative
        if not source.is_file():
            log.warning("no %s to continue: the metrics record starts at the resume", source)
        else:
            epoch, step = _checkpoint_position(ckpt_path)
            with source.open(newline="") as file:
                reader = csv.DictReader(file)
                fields = list(reader.fieldnames or [])
                rows = rows_before_checkpoint(reader, epoch, step)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            with tmp.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, target)
            log.info(
                "metrics record continued from %s: %d rows up to step %d (phase %d)%s",
                source,
                len(rows),
                step,
                epoch,
                "" if source == target.resolve() else f", copied to {target}",
            )
    logger._experiment = AppendingExperimentWriter(logger.log_dir)
    return target


def is_wandb_target(target: str) -> bool:
    """Whether a logger config's ``_target_`` builds a W&B logger."""
    return target.rsplit(".", 1)[-1] in ("build_wandb_logger", "WandbLogger")


def new_wandb_run_id() -> str:
    """A fresh W&B run id (8 lowercase hex characters, valid for ``wandb.init(id=...)``)."""
    return secrets.token_hex(4)


def wandb_resume_kwargs(
    logger_cfg: Mapping[str, Any] | None, previous_run_id: str | None
) -> tuple[dict[str, Any], str | None]:
    """Arguments that give a W&B logger the run id, continuing an interrupted run's.

    A resumed run passes ``id=<the interrupted run's id>`` and ``resume="allow"``, so W&B
    appends to the same run; a fresh run gets a new id chosen here (so it is known, and written
    to ``status.json``, before W&B starts). An ``id`` set in the logger config wins.

    Args:
        logger_cfg: ``cfg.logger`` (None: no logger).
        previous_run_id: The W&B run id of the run being resumed, if any.

    Returns:
        ``(extra keyword arguments for the logger, the run id)``; ``({}, None)`` for loggers
        other than W&B.
    """
    if not logger_cfg or not is_wandb_target(str(logger_cfg.get("_target_", ""))):
        return {}, None
    if logger_cfg.get("id"):
        return {"resume": "allow"}, str(logger_cfg["id"])
    run_id = previous_run_id or new_wandb_run_id()
    return {"id": run_id, "resume": "allow"}, run_id
