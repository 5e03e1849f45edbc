"""Validation on held-out identities at GUR-epoch ends, and model selection without the test set.

:class:`TestSetSelection` is the exception, kept apart: the reference's selection on the test set,
for comparison with published tables only (``recipe=official``).

The official code picks its "best" checkpoint by mAP on the *test* set (docs/method.md §17.12). We
never do that by default: the reported numbers are the last epoch's, and this callback, when
enabled, scores a validation split (SYSU-MM01: the val identities; RegDB/LLCM: a held-out part of
the training identities, ``data.holdout_val=true``) and keeps the best-scoring weights as
``best_val.ckpt``. Note that SYSU-MM01's official training set includes its val identities; use
``data.holdout_val=true`` for a selection on identities never trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from gur_lightning.data.datamodule import fitted_datamodule
from gur_lightning.data.protocols import official_protocols
from gur_lightning.evaluation import evaluate_splits, protocol_splits
from gur_lightning.schedule import Phase
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: The protocol table's validation setting (``val/holdout/...``).
HOLDOUT_PROTOCOL = "holdout"


class PeriodicValidation(Callback):
    """Score the validation split every ``every_n_epochs`` GUR epochs (all ranks take part).

    Args:
        phases: The expanded schedule; validation runs after a GUR epoch's last phase.
        every_n_epochs: Period in GUR epochs (> 0).
        featurize_factory: ``f(pl_module, datamodule) -> featurize(samples) -> (N, D)``
            (the test-time feature extractor).
        checkpoint_dir: Where ``best_val.ckpt`` is written (None: no checkpoint).

    Attributes:
        history: ``{"gur_epoch", "val/<split>/<metric>"...}`` per validation.
        best_map: Best validation mAP so far.
    """

    def __init__(
        self,
        phases: list[Phase],
        every_n_epochs: int,
        featurize_factory,
        checkpoint_dir: str | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs <= 0:
            raise ValueError(f"eval.val_every_n_epochs must be > 0, got {every_n_epochs}")
        self.phases = phases
        self.every_n_epochs = every_n_epochs
        self.featurize_factory = featurize_factory
        self.checkpoint_dir = checkpoint_dir
        self.history: list[dict[str, float]] = []
        self.best_map = float("-inf")

    def state_dict(self) -> dict:
        """History and best mAP travel in checkpoints, so a resumed run keeps its selection."""
        return {"history": list(self.history), "best_map": self.best_map}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.history = list(state_dict.get("history", []))
        self.best_map = float(state_dict.get("best_map", float("-inf")))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validate after the last phase of every ``every_n_epochs``-th GUR epoch."""
        phase = self.phases[trainer.current_epoch]
        if not phase.last_of_epoch or (phase.gur_epoch + 1) % self.every_n_epochs:
            return
        dm = fitted_datamodule(trainer)
        metrics = evaluate_splits(
            protocol_splits(dm.require_dataset(), [HOLDOUT_PROTOCOL]),
            self.featurize_factory(pl_module, dm),
            prefix="val",
        )
        metrics = {k: v for k, v in metrics.items() if not k.endswith(("_std", "/trials"))}
        pl_module.log_dict(metrics)
        self.history.append({"gur_epoch": float(phase.gur_epoch), **metrics})
        current = metrics["val/holdout/mAP"]
        log.info(
            "GUR epoch %d validation: mAP %.4f, rank-1 %.4f",
            phase.gur_epoch,
            current,
            metrics["val/holdout/rank1"],
        )
        if current > self.best_map:
            self.best_map = current
            if self.checkpoint_dir is not None:
                trainer.save_checkpoint(
                    str(Path(self.checkpoint_dir) / "best_val.ckpt"), weights_only=False
                )


#: File (in the run's checkpoint folder) holding the weights the test-set selection kept.
SELECTED_ON_TEST_FILE = "selected_on_test.pt"
#: Metric prefix of the figures of those weights (never confused with the honest ``test/``).
SELECTED_ON_TEST_PREFIX = "test_selected_on_test"


class TestSetSelection(Callback):
    """The reference's model selection on the test set, reported apart from the honest figures.

    The official code scores the test set after every epoch from epoch 6 on (SYSU-MM01:
    all-search, gallery draw 0; RegDB: visible-to-thermal on the trial's split) and publishes
    the full protocol of the weights with the best mAP. This callback does the same with the
    data set's first protocol and its first trial, keeps those weights in
    ``checkpoint_dir/selected_on_test.pt`` (a plain state dict), and ``train`` reports them as
    ``test_selected_on_test/...`` next to the last epoch's ``test/...``. The figure is
    optimistic: the test set chose the model. It exists only to compare with published tables
    (``recipe=official``), and nothing else ever reads these weights.

    Args:
        phases: The expanded schedule; scoring runs after a GUR epoch's last phase.
        from_epoch: First GUR epoch scored (the reference: 6).
        featurize_factory: ``f(pl_module, datamodule) -> featurize(samples) -> (N, D)``.
        checkpoint_dir: Where the selected weights are written (by rank 0).

    Attributes:
        history: ``{"gur_epoch", "mAP"}`` per scored epoch.
        best_map: Best first-trial mAP so far (-inf before any).
        best_epoch: Its GUR epoch (-1 before any).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        phases: list[Phase],
        from_epoch: int,
        featurize_factory,
        checkpoint_dir: str,
    ) -> None:
        super().__init__()
        if from_epoch < 0:
            raise ValueError(f"eval.select_on_test_from_epoch must be >= 0, got {from_epoch}")
        self.phases = phases
        self.from_epoch = from_epoch
        self.featurize_factory = featurize_factory
        self.path = Path(checkpoint_dir) / SELECTED_ON_TEST_FILE
        self.history: list[dict[str, float]] = []
        self.best_map = float("-inf")
        self.best_epoch = -1

    def state_dict(self) -> dict:
        """History and the best so far travel in checkpoints (a resumed run keeps them)."""
        return {
            "history": list(self.history),
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.history = list(state_dict.get("history", []))
        self.best_map = float(state_dict.get("best_map", float("-inf")))
        self.best_epoch = int(state_dict.get("best_epoch", -1))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score the first trial of the first protocol after every GUR epoch from the start."""
        phase = self.phases[trainer.current_epoch]
        if not phase.last_of_epoch or phase.gur_epoch < self.from_epoch:
            return
        dm = fitted_datamodule(trainer)
        dataset = dm.require_dataset()
        name = official_protocols(dataset.name)[0].name
        metrics = evaluate_splits(
            protocol_splits(dataset, [name], max_trials=1),
            self.featurize_factory(pl_module, dm),
            prefix="select",
        )
        current = metrics[f"select/{name}/mAP"]
        self.history.append({"gur_epoch": float(phase.gur_epoch), "mAP": current})
        log.info(
            "GUR epoch %d: %s trial-0 mAP %.4f on the TEST set (selection for the reference's "
            "reporting only)",
            phase.gur_epoch,
            name,
            current,
        )
        if current > self.best_map:
            self.best_map = current
            self.best_epoch = phase.gur_epoch
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                torch.save(pl_module.state_dict(), tmp)
                os.replace(tmp, self.path)  # never a half-written file under the final name
