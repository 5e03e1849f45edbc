"""Run-level behaviour of ``gur_lightning.train`` on the smoke experiment: fast_dev_run, quiet."""

from __future__ import annotations

import importlib.abc
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from gur_lightning.train import train
from tests.helpers import smoke_config


class _Steps(Callback):
    """Records the optimiser steps of every Lightning epoch and the trainer's settings."""

    def __init__(self) -> None:
        self.steps_per_epoch: list[int] = []
        self._start = 0
        self.info: dict[str, Any] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps_per_epoch.append(trainer.global_step - self._start)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.info = {
            "loggers": list(trainer.loggers),
            "checkpoint_callbacks": list(trainer.checkpoint_callbacks),
        }


def test_fast_dev_run_runs_one_step_per_phase_of_the_first_gur_epoch(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path / "data", tmp_path / "run", "+trainer.fast_dev_run=true")
    # The smoke schedule: 2 GUR epochs; the first has 4 intra-camera phases (2 visible x 2
    # infrared cameras paired by cycle), 1 inter-camera and 1 inter-modality phase.
    steps = _Steps()
    metrics = train(cfg, extra_callbacks=[steps])
    assert steps.steps_per_epoch == [1] * 6
    assert steps.info["loggers"] == []
    assert steps.info["checkpoint_callbacks"] == []
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "csv").exists()
    # The real clustering ran for every phase, over all three stages of GUR epoch 0.
    stages = [k.split("/")[1] for k in metrics if k.startswith("cluster/")]
    assert {"intra_camera", "inter_camera", "inter_modality"} <= set(stages)
    # One gallery trial: the spread over trials is zero.
    assert metrics["test/sysu_all/mAP_std"] == 0.0
    assert (run / "metrics.json").is_file()


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Records attempts to import faiss (and lets the normal finders answer)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "faiss":
            self.attempts.append(name)


def test_a_run_is_quiet_but_unrelated_warnings_still_show(
    tmp_path: Path,
    recwarn: pytest.WarningsRecorder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gur_lightning.train import main

    handler = _ListHandler()
    loggers = [logging.getLogger(name) for name in ("lightning", "gur_lightning")]
    for logger in loggers:
        logger.addHandler(handler)
    caplog.set_level(logging.INFO, logger="gur_lightning")
    imports = _ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [imports, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    cfg = smoke_config(
        tmp_path / "data",
        tmp_path / "run",
        "schedule.epochs=1",
        "eval.val_every_n_epochs=1",  # saves best_val.ckpt through trainer.save_checkpoint
        "eval.max_trials=1",
        "cluster.knn_backend=torch",
    )
    try:
        main(cfg)  # the Hydra entry point, given a composed config
        warnings.warn("an unrelated deprecation", FutureWarning, stacklevel=1)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if "LeafSpec" in m], shown
    assert "an unrelated deprecation" in shown
    logged = "\n".join(handler.messages)
    assert "litlogger" not in logged and "weights_only" not in logged
    assert sum("training images" in m for m in handler.messages) == 1, logged
    assert "phase 1/" in logged  # our own INFO messages still reach the handler
    assert imports.attempts == []
    assert "faiss" not in sys.modules
    history = json.loads((tmp_path / "run" / "clustering_history.json").read_text())
    assert history and {h["knn_backend"] for h in history} == {"torch-cpu"}


def test_known_noise_filter_is_by_exact_message() -> None:
    from gur_lightning.utils.warnings import quiet_known_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(...)` instead."
        pytree = "lightning.pytorch.utilities._pytree"
        # The known message from Lightning's pytree module is dropped...
        warnings.warn_explicit(leaf, FutureWarning, "_pytree.py", 21, module=pytree)
        # ...the same text from elsewhere, and other messages from that module, are not.
        warnings.warn_explicit(leaf, FutureWarning, "x.py", 1, module="somewhere.else")
        warnings.warn_explicit("another", FutureWarning, "_pytree.py", 21, module=pytree)
    assert [str(w.message) for w in caught] == [leaf, "another"]


def test_torch_knn_backend_never_imports_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from gur_lightning.clustering.knn import resolve_knn_backend

    imports = _ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [imports, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    assert resolve_knn_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_knn_backend("auto", torch.device("cpu")) == "torch"  # no faiss GPU build here
    assert imports.attempts == []
