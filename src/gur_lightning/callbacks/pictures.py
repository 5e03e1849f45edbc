"""Callbacks that draw the dashboard pictures into the run folder and the logger.

* :class:`ClusterQualityPictures` redraws the pseudo-label quality curves (ARI / NMI and the
  number of clusters per stage against the phase index, from ``Reclustering.history``) after
  every GUR epoch and at the end of fit.
* :class:`RankingPictures` draws, after fit, the top-k gallery lists of a few queries of each
  test protocol (first gallery trial) with correct / incorrect matches marked.

Both write PNGs under ``<run>/pictures/`` on rank 0 and hand them to loggers that display
images (:func:`gur_lightning.utils.loggers.log_images`). The ranking callback extracts features
on every rank (the extractor is collective under DDP) and draws on rank 0.

Wiring (``train.py``)::

    callbacks += build_picture_callbacks(cfg, phases, output_dir, model_featurizer)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from gur_lightning.config import constructor_kwargs
from gur_lightning.data.samples import Sample
from gur_lightning.schedule import Phase
from gur_lightning.utils.loggers import log_images
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "PICTURES_SUBDIR",
    "ClusterQualityPictures",
    "RankingPictures",
    "build_picture_callbacks",
]

#: Sub-folder of the run folder holding the PNGs.
PICTURES_SUBDIR: str = "pictures"

#: ``f(pl_module, datamodule) -> featurize(samples) -> (N, D)`` L2-normalised test features.
FeaturizeFactory = Callable[[Any, Any], Callable[[Sequence[Sample]], torch.Tensor]]


def _file_name(key: str) -> str:
    """``cluster_quality/inter_camera`` -> ``cluster_quality_inter_camera.png``."""
    return key.replace("/", "_") + ".png"


class ClusterQualityPictures(Callback):
    """Pseudo-label quality curves across phases (docs/method.md §10), redrawn as training goes.

    Args:
        output_dir: Folder receiving the PNGs (``<run>/pictures``).
        phases: The expanded schedule; when given, the curves are redrawn after the last phase
            of every GUR epoch, else only at the end of fit.
        history: The records to draw; None reads ``history`` from the trainer's
            :class:`~gur_lightning.callbacks.recluster.Reclustering` callback.

    Attributes:
        written: Paths of the PNGs written by the last drawing.
    """

    def __init__(
        self,
        output_dir: str | Path,
        phases: Sequence[Phase] | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.phases = list(phases) if phases is not None else None
        self._history = history
        self._drawn_records = -1
        self.written: list[Path] = []

    def _records(self, trainer: L.Trainer) -> list[dict[str, Any]] | None:
        if self._history is not None:
            return self._history
        from gur_lightning.callbacks.recluster import Reclustering

        # Set by Lightning's callback connector, not a declared attribute of Trainer.
        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, Reclustering):
                return callback.history
        return None

    def draw(self, trainer: L.Trainer) -> list[Path]:
        """Draw and save the curves now (rank 0); returns the PNG paths (empty on other ranks)."""
        from gur_lightning.visualize import cluster_quality_figures, save_png

        if not trainer.is_global_zero:
            return []
        records = self._records(trainer)
        if records is None:
            log.warning("cluster-quality pictures: no Reclustering callback, nothing to draw")
            return []
        if len(records) == self._drawn_records:
            return self.written
        figures = cluster_quality_figures(records)
        self.written = [
            save_png(img, self.output_dir / _file_name(k)) for k, img in figures.items()
        ]
        self._drawn_records = len(records)
        log_images(trainer.loggers, figures, step=trainer.global_step)
        return self.written

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Redraw after the last phase of a GUR epoch."""
        if self.phases is None or trainer.current_epoch >= len(self.phases):
            return
        if self.phases[trainer.current_epoch].last_of_epoch:
            self.draw(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the final curves."""
        self.draw(trainer)


class RankingPictures(Callback):
    """Ranking lists of a few test queries after fit (docs/method.md §13).

    For each protocol of the data set (its first gallery trial), ``num_queries`` queries
    spread over the identities (:func:`gur_lightning.visualize.select_queries`) are ranked
    against the gallery with the test features and the protocol's removal rule, and drawn
    with their top ``topk`` gallery images framed green (same identity) or red.

    Args:
        output_dir: Folder receiving ``ranking_<protocol>.png``.
        featurize_factory: ``f(pl_module, datamodule) -> featurize(samples)`` returning
            (N, D) L2-normalised test features (``train.model_featurizer``).
        num_queries: Queries per protocol.
        topk: Gallery items per query.

    ``num_queries`` and ``topk`` have no defaults here: a run takes them from the schema
    (``callbacks.pictures``, :class:`gur_lightning.config.PicturesConfig`).

    Attributes:
        written: Paths of the PNGs written.
        rankings: Protocol -> the drawn :class:`~gur_lightning.visualize.Ranking` rows.
    """

    def __init__(
        self,
        output_dir: str | Path,
        featurize_factory: FeaturizeFactory,
        *,
        num_queries: int,
        topk: int,
    ) -> None:
        super().__init__()
        if num_queries < 1 or topk < 1:
            raise ValueError(
                f"RankingPictures: num_queries and topk must be >= 1, got {num_queries}, {topk}"
            )
        self.output_dir = Path(output_dir)
        self.featurize_factory = featurize_factory
        self.num_queries = num_queries
        self.topk = topk
        self.written: list[Path] = []
        self.rankings: dict[str, list[Any]] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Extract the needed features (every rank), then rank and draw (rank 0)."""
        self.draw(trainer, pl_module, getattr(trainer, "datamodule", None))

    def draw(
        self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: Any
    ) -> list[Path]:
        """Rank and draw now; returns the PNG paths (empty on ranks other than 0).

        Args:
            trainer: Supplies ``is_global_zero``, ``loggers`` and ``global_step``.
            pl_module: The model whose test features are drawn.
            datamodule: A set-up :class:`~gur_lightning.data.datamodule.VIReIDDataModule`.
        """
        from gur_lightning.evaluation import featurize_once, protocol_splits
        from gur_lightning.visualize import draw_ranking, rank_gallery, save_png, select_queries

        dataset = getattr(datamodule, "dataset", None)
        if dataset is None:
            log.warning("ranking pictures: the data module is not set up, nothing to draw")
            return []
        chosen: dict[str, tuple[list[Sample], list[Sample]]] = {}
        for name, trials in protocol_splits(dataset, max_trials=1).items():
            query, gallery = trials[0]
            queries = [query[i] for i in select_queries(query, self.num_queries)]
            if queries and gallery:
                chosen[name] = (queries, list(gallery))
        if not chosen:
            return []
        # One collective extraction for every protocol (all ranks take part under DDP).
        feats, row = featurize_once(
            self.featurize_factory(pl_module, datamodule),
            (side for pair in chosen.values() for side in pair),
        )
        if not trainer.is_global_zero:
            return []
        pictures = {}
        self.written = []
        for name, (queries, gallery) in chosen.items():
            rows = rank_gallery(
                feats[[row[s.path] for s in queries]],
                feats[[row[s.path] for s in gallery]],
                queries,
                gallery,
                protocol=name,
                topk=self.topk,
            )
            self.rankings[name] = rows
            key = f"ranking/{name}"
            pictures[key] = draw_ranking(
                rows, title=f"{name}: query (blue) and top-{self.topk} (green = same identity)"
            )
            self.written.append(save_png(pictures[key], self.output_dir / _file_name(key)))
        log_images(trainer.loggers, pictures, step=trainer.global_step)
        log.info("ranking pictures written: %s", ", ".join(str(p) for p in self.written))
        return self.written


def build_picture_callbacks(
    cfg: DictConfig,
    phases: Sequence[Phase],
    output_dir: str | Path,
    featurize_factory: FeaturizeFactory,
) -> list[Callback]:
    """The picture callbacks of a training run.

    ``cfg.callbacks.pictures`` (:class:`gur_lightning.config.PicturesConfig`) switches them and
    sets the ranking lists' options. Ranking pictures show test queries, so they are drawn only
    when ``cfg.eval.test_after_fit`` is true.

    Args:
        cfg: The composed training configuration.
        phases: The expanded schedule.
        output_dir: The run folder; pictures go to ``output_dir/pictures``.
        featurize_factory: The test-time feature extractor factory (``train.model_featurizer``).

    Returns:
        The callbacks to append to the trainer's list.
    """
    options = cfg.callbacks.pictures
    if not options.enabled:
        return []
    folder = Path(output_dir) / PICTURES_SUBDIR
    callbacks: list[Callback] = [ClusterQualityPictures(folder, phases)]
    if cfg.eval.test_after_fit:
        ranking = constructor_kwargs(options, RankingPictures, exclude=("enabled",))
        callbacks.append(RankingPictures(folder, featurize_factory, **ranking))
    return callbacks
