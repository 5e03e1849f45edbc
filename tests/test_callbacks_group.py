"""The ``callbacks`` config group: which of the run's callbacks exist, in which order."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from gur_lightning.callbacks.pictures import ClusterQualityPictures, RankingPictures
from gur_lightning.callbacks.recluster import Reclustering
from gur_lightning.callbacks.signals import GracefulStop
from gur_lightning.callbacks.validation import PeriodicValidation, TestSetSelection
from gur_lightning.config import ConfigError, validate_config
from gur_lightning.train import (
    PhaseProgressBar,
    ProcessGroupAtExit,
    SpawnedWorkerLogging,
    build_callbacks,
    build_trainer_kwargs,
    fast_dev_run_config,
)
from tests.helpers import smoke_config


class _Extra(Callback):
    """A callback handed to ``train`` by its caller."""


def _types(tmp_path: Path, *overrides: str) -> list[type]:
    cfg = fast_dev_run_config(smoke_config(tmp_path / "data", tmp_path / "run", *overrides))
    built = build_callbacks(cfg, [], Reclustering([]), GracefulStop(), extra=[_Extra()])
    return [type(c) for c in built.ordered]


#: The smoke experiment's callbacks (it turns the progress bar off).
SMOKE = [_Extra, GracefulStop, Reclustering, ModelCheckpoint]
PICTURES = [ClusterQualityPictures, RankingPictures]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), [*SMOKE, *PICTURES]),
        (("trainer.enable_progress_bar=true",), [*SMOKE, PhaseProgressBar, *PICTURES]),
        (("eval.val_every_n_epochs=1",), [*SMOKE, PeriodicValidation, *PICTURES]),
        (("recipe=official",), [*SMOKE, TestSetSelection, *PICTURES]),
        (
            (
                "recipe=official",
                "eval.val_every_n_epochs=2",
                "trainer=ddp_cpu",
                "trainer.enable_progress_bar=true",
            ),
            [
                *SMOKE,
                SpawnedWorkerLogging,
                ProcessGroupAtExit,
                PhaseProgressBar,
                PeriodicValidation,
                TestSetSelection,
                *PICTURES,
            ],
        ),
        (("eval.test_after_fit=false",), [*SMOKE, ClusterQualityPictures]),
        (("callbacks=minimal",), SMOKE),
        (("callbacks.pictures.enabled=false",), SMOKE),
        (("callbacks.graceful_stop=false",), [_Extra, Reclustering, ModelCheckpoint, *PICTURES]),
        (("callbacks.last_checkpoint=false",), [_Extra, GracefulStop, Reclustering, *PICTURES]),
        (("+trainer.fast_dev_run=true", "recipe=official"), [_Extra, GracefulStop, Reclustering]),
    ],
)
def test_callbacks_follow_their_switches_in_a_fixed_order(tmp_path, overrides, expected):
    assert _types(tmp_path, *overrides) == expected


def test_run_callbacks_name_the_callbacks_train_reads_after_fit(tmp_path):
    cfg = smoke_config(
        tmp_path / "d", tmp_path / "r", "recipe=official", "eval.val_every_n_epochs=1"
    )
    stopper = GracefulStop()
    built = build_callbacks(cfg, [], Reclustering([]), stopper)
    assert built.stopper is stopper
    assert isinstance(built.validation, PeriodicValidation) and built.validation in built.ordered
    assert isinstance(built.selection, TestSetSelection) and built.selection.from_epoch == 6
    assert built.selection.path == tmp_path / "r" / "checkpoints" / "selected_on_test.pt"
    plain = build_callbacks(
        smoke_config(tmp_path / "d", tmp_path / "r"), [], Reclustering([]), stopper
    )
    assert (plain.validation, plain.selection) == (None, None)


def test_picture_options_reach_the_ranking_callback(tmp_path):
    cfg = smoke_config(
        tmp_path / "d",
        tmp_path / "r",
        "callbacks.pictures.topk=5",
        "callbacks.pictures.num_queries=2",
    )
    ranking = build_callbacks(cfg, [], Reclustering([]), GracefulStop()).ordered[-1]
    assert isinstance(ranking, RankingPictures)
    assert (ranking.topk, ranking.num_queries) == (5, 2)
    with pytest.raises(ConfigError, match=r"callbacks\.pictures\.topk"):
        validate_config(smoke_config(tmp_path / "d", tmp_path / "r", "callbacks.pictures.topk=0"))


def test_without_the_last_checkpoint_lightning_writes_none_either(tmp_path):
    cfg = smoke_config(tmp_path / "d", tmp_path / "r")
    assert "enable_checkpointing" not in build_trainer_kwargs(cfg)
    off = smoke_config(tmp_path / "d", tmp_path / "r", "callbacks.last_checkpoint=false")
    assert build_trainer_kwargs(off)["enable_checkpointing"] is False
    kept = smoke_config(
        tmp_path / "d",
        tmp_path / "r",
        "callbacks.last_checkpoint=false",
        "+trainer.enable_checkpointing=true",
    )
    assert build_trainer_kwargs(kept)["enable_checkpointing"] is True
