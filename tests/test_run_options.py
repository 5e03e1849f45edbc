"""Run-level options of ``gur_lightning.train`` on the smoke experiment: fast_dev_run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
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
