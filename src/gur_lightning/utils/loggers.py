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
still-open run (architecture.md §10 gotcha 11).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image

from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "WANDB_INSTALL_HINT",
    "WANDB_MODES",
    "build_wandb_logger",
    "finish_loggers",
    "flatten_config",
    "log_images",
    "log_run_config",
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


def _multirun_name() -> str | None:
    """``key=value,...`` of a multirun job's overrides, or None outside a Hydra multirun."""
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
        name=name if name is not None else _multirun_name(),
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
    multirun an unfinished W&B run would swallow the next job's metrics (architecture.md §10
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
