"""Validation on held-out identities at GUR-epoch ends, and model selection without the test set.

The official code picks its "best" checkpoint by mAP on the *test* set (method.md §17.12). We never
do that by default: the reported numbers are the last epoch's, and this callback, when enabled,
scores a validation split (SYSU-MM01: the val identities; RegDB/LLCM: a held-out part of the
training identities, ``data.holdout_val=true``) and keeps the best-scoring weights as
``best_val.ckpt``. Note that SYSU-MM01's official training set includes its val identities; use
``data.holdout_val=true`` for a selection on identities never trained on.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from gur_lightning.evaluation import evaluate_splits
from gur_lightning.schedule import Phase
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


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
        dm = trainer.datamodule
        split = dm.dataset.validation_split()
        metrics = evaluate_splits(
            {"holdout": [split]}, self.featurize_factory(pl_module, dm), prefix="val"
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
                trainer.save_checkpoint(str(Path(self.checkpoint_dir) / "best_val.ckpt"))
