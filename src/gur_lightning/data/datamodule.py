"""The DataModule: unlabelled training images in, pseudo-labelled identity-balanced batches out.

Contract with the re-clustering callback (architecture.md §11.4): the callback asks for
:meth:`VIReIDDataModule.cluster_dataloader` over any subset of training samples to extract
features, clusters them, and installs the result with :meth:`set_pseudo_labels` *before* Lightning
builds the phase's train loader (``reload_dataloaders_every_n_epochs=1`` makes Lightning call
:meth:`train_dataloader` at the start of every epoch, after the previous epoch's
``on_train_epoch_end`` hooks have run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from gur_lightning.data.samples import Modality, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class LabelledSet:
    """Pseudo-labelled samples of one modality for one phase.

    Attributes:
        samples: The samples kept for training (outliers already removed).
        labels: (len(samples),) cluster ids, all >= 0, indexing the memory the stream trains
            against.
    """

    samples: tuple[Sample, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.samples) != len(self.labels):
            raise ValueError(
                f"LabelledSet: {len(self.samples)} samples but {len(self.labels)} labels"
            )

    @classmethod
    def from_labels(cls, samples: Sequence[Sample], labels: np.ndarray) -> LabelledSet:
        """Keep the samples whose label is not an outlier (-1)."""
        keep = np.flatnonzero(np.asarray(labels) >= 0)
        return cls(tuple(samples[i] for i in keep), tuple(int(labels[i]) for i in keep))


class VIReIDDataModule(L.LightningDataModule):
    """Visible-infrared re-ID data: raw-layout reader, SynVI generation, phase loaders.

    Args:
        name: ``sysu``, ``regdb`` or ``llcm``.
        root: Data set root folder (raw layout).
        trial: RegDB split 1..10.
        holdout_val: RegDB: hold out training identities for validation.
        synvi: Optional SynVI parameters (``layout``, ``seed``, ``num_ids``, ``preset``): the
            tree is generated into ``root`` in :meth:`prepare_data` (cached by its parameters).
        height: Input height.
        width: Input width.
        num_instances: K images per identity in a batch.
        visible_batch_size: Visible images per step and rank (each yields two views).
        infrared_batch_size: Infrared images per step and rank.
        num_workers: Loader workers.
        eval_batch_size: Batch size for feature extraction.
        seed: Seed of the identity samplers (combined with the phase index).
    """

    def __init__(
        self,
        name: str,
        root: str,
        *,
        trial: int = 1,
        holdout_val: bool = False,
        synvi: dict | None = None,
        height: int = 288,
        width: int = 144,
        num_instances: int = 16,
        visible_batch_size: int = 128,
        infrared_batch_size: int = 256,
        num_workers: int = 4,
        eval_batch_size: int = 64,
        seed: int = 1,
    ) -> None:
        super().__init__()
        self.name = name
        self.root = str(root)
        self.trial = trial
        self.holdout_val = holdout_val
        self.synvi = dict(synvi) if synvi else None
        self.height = height
        self.width = width
        self.num_instances = num_instances
        self.visible_batch_size = visible_batch_size
        self.infrared_batch_size = infrared_batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.dataset = None
        self._labelled: dict[Modality, LabelledSet] | None = None
        self._num_batches = 0
        self._phase_index = 0
        self._skipped = False

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Generate the SynVI tree when configured (rank 0 only, cached by its parameters)."""
        if self.synvi is None:
            return
        from gur_lightning.data.synvi import generate_synvi

        params = dict(self.synvi)
        layout = params.pop("layout", self.name)
        num_ids = params.pop("num_ids", None)
        generate_synvi(layout, self.root, num_ids=num_ids, **params)

    def setup(self, stage: str | None = None) -> None:
        """Read the data set's raw layout (every rank)."""
        if self.dataset is not None:
            return
        if self.synvi is not None and not Path(self.root).exists():
            # `prepare_data` is skipped when a caller drives the module by hand.
            self.prepare_data()
        from gur_lightning.data import load_dataset

        kwargs: dict = {}
        if self.name == "regdb":
            kwargs = {"trial": self.trial, "holdout_val": self.holdout_val}
        self.dataset = load_dataset(self.name, self.root, **kwargs)
        train = self.dataset.train
        log.info(
            "%s at %s: %d visible and %d infrared training images",
            self.name,
            self.root,
            sum(s.modality == "visible" for s in train),
            sum(s.modality == "infrared" for s in train),
        )

    def _require_setup(self):
        if self.dataset is None:
            raise RuntimeError("VIReIDDataModule.setup() must run before its data is used")
        return self.dataset

    # ---------------------------------------------------------------- queries
    def train_samples(self, modality: Modality, camera: int | None = None) -> list[Sample]:
        """Training samples of one modality (optionally one camera), in reader order."""
        return [
            s
            for s in self._require_setup().train
            if s.modality == modality and (camera is None or s.camid == camera)
        ]

    def cameras(self, modality: Modality) -> list[int]:
        """Sorted camera numbers of a modality present in the training set."""
        return sorted({s.camid for s in self._require_setup().train if s.modality == modality})

    # ---------------------------------------------------------------- loaders
    def eval_dataloader(
        self, samples: Sequence[Sample], *, resample: str = "bicubic"
    ) -> DataLoader:
        """A loader over ``samples`` with the plain eval transform, sharded across ranks.

        Used for clustering features (bicubic resize, method.md §4) and for test features
        (``resample="lanczos"``, §13.1). Items carry their position in ``samples`` as ``index``
        so that features gathered from several ranks can be put back in order.
        """
        from gur_lightning.data.image_datasets import ImageDataset
        from gur_lightning.data.samplers import ShardSampler
        from gur_lightning.data.transforms import build_eval_transform

        dataset = ImageDataset(
            list(samples), build_eval_transform(self.height, self.width, resample=resample)
        )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(dataset)),
            num_workers=self.num_workers,
            shuffle=False,
            drop_last=False,
        )

    def set_pseudo_labels(
        self,
        visible: LabelledSet,
        infrared: LabelledSet,
        *,
        num_batches: int,
        phase_index: int,
    ) -> None:
        """Install the pseudo-labels of the next phase (called on every rank by the callback).

        Args:
            visible: Labelled visible samples.
            infrared: Labelled infrared samples.
            num_batches: Optimiser steps of the phase; both loaders yield exactly this many.
            phase_index: Index of the phase (seeds the samplers with ``seed`` and it).

        Raises:
            gur_lightning.data.samplers.NotEnoughClustersError: When a modality has fewer
                pseudo-identities than one batch needs; nothing is installed then.
        """
        # Build the samplers now so that an unusable clustering fails here, where the callback
        # can fall back, instead of inside Lightning's loader setup.
        self._make_sampler(visible, self.visible_batch_size, num_batches, phase_index)
        self._make_sampler(infrared, self.infrared_batch_size, num_batches, phase_index)
        self._labelled = {"visible": visible, "infrared": infrared}
        self._num_batches = num_batches
        self._phase_index = phase_index
        self._skipped = False

    def _make_sampler(
        self, labelled: LabelledSet, batch_size: int, num_batches: int, phase_index: int
    ):
        from gur_lightning.data.samplers import IdentitySampler

        return IdentitySampler(
            list(labelled.labels),
            [s.camid for s in labelled.samples],
            num_instances=self.num_instances,
            batch_size=batch_size,
            num_batches=num_batches,
            seed=self.seed + 1_000_003 * phase_index,
        )

    def _train_loader(self, modality: Modality) -> DataLoader:
        from gur_lightning.data.image_datasets import PseudoLabelDataset
        from gur_lightning.data.transforms import build_train_transform

        labelled = self._labelled[modality]
        if modality == "visible":
            dataset = PseudoLabelDataset(
                labelled.samples,
                labelled.labels,
                build_train_transform(self.height, self.width, "visible", view=1),
                second_transform=build_train_transform(self.height, self.width, "visible", view=2),
            )
            batch_size = self.visible_batch_size
        else:
            dataset = PseudoLabelDataset(
                labelled.samples,
                labelled.labels,
                build_train_transform(self.height, self.width, "infrared"),
            )
            batch_size = self.infrared_batch_size
        sampler = self._make_sampler(labelled, batch_size, self._num_batches, self._phase_index)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=_seed_worker,
        )

    def train_dataloader(self) -> CombinedLoader:
        """The phase's visible and infrared loaders, zipped: ``batch = {"visible", "infrared"}``.

        Raises:
            RuntimeError: If no pseudo-labels were ever installed (no re-clustering callback).
        """
        if self._labelled is None:
            if self._skipped:
                return CombinedLoader({"visible": [], "infrared": []}, mode="min_size")
            raise RuntimeError(
                "VIReIDDataModule has no pseudo-labels: is the Reclustering callback configured?"
            )
        return CombinedLoader(
            {"visible": self._train_loader("visible"), "infrared": self._train_loader("infrared")},
            mode="min_size",
        )

    def skip_phase(self) -> None:
        """Install an empty phase (the callback found no usable clustering)."""
        self._labelled = None
        self._num_batches = 0
        self._skipped = True

    def state_dict(self) -> dict:
        """Nothing to save: pseudo-labels are recomputed on resume from the restored weights."""
        return {}


def _seed_worker(worker_id: int) -> None:
    """Derive numpy's seed from torch's per-worker seed (torch seeds workers from the sampler)."""
    np.random.seed(torch.initial_seed() % 2**32)
