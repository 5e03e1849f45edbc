"""The DataModule: unlabelled training images in, pseudo-labelled identity-balanced batches out.

Contract with the re-clustering callback (docs/architecture.md §11.4): the callback asks for
:meth:`VIReIDDataModule.eval_dataloader` over any subset of training samples to extract
features, clusters them, and installs the result with :meth:`set_pseudo_labels` *before* Lightning
builds the phase's train loader (``reload_dataloaders_every_n_epochs=1`` makes Lightning call
:meth:`train_dataloader` at the start of every epoch, after the previous epoch's
``on_train_epoch_end`` hooks have run).

Randomness of a training phase (identity plan, instance draws, augmentations, loader-worker
seeds) is a function of ``(seed, phase index, rank)`` only, never of what ran before: a run
resumed at a phase boundary draws exactly what the uninterrupted run drew, and DDP ranks draw
different augmentations (docs/architecture.md §11.6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from gur_lightning.config import AugmentConfig, paired_visible_views
from gur_lightning.data import options
from gur_lightning.data.samples import MODALITY_INDEX, Modality, Sample
from gur_lightning.utils.distributed import get_rank, get_world_size
from gur_lightning.utils.logging import get_logger

if TYPE_CHECKING:
    from gur_lightning.data.readers import VIReIDDataset

log = get_logger(__name__)

#: Training-augmentation knobs the DataModule passes to ``build_train_transform``: the fields of
#: the ``data.augment`` schema, so that the two cannot drift apart.
_AUGMENT_KEYS = frozenset(f.name for f in dataclasses.fields(AugmentConfig))

#: Seconds a non-zero local rank waits for local rank 0 to generate the SynVI tree (large trees
#: take minutes on two cores).
PREPARE_TIMEOUT_S: float = 3600.0
#: Polling period of that wait.
PREPARE_POLL_S: float = 1.0
#: Salt of the identity samplers' seeds per phase (a large prime keeps phases apart).
_PHASE_SEED_STRIDE: int = 1_000_003


def phase_seed(seed: int, phase_index: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for one random stream of one phase on one rank.

    Args:
        seed: The run's seed (``cfg.seed``), >= 0.
        phase_index: Index of the training phase (the Lightning epoch).
        rank: Global rank of this process.
        stream: Which stream: 0 the main process's global torch generator (augmentations when
            ``num_workers=0``), ``1 + MODALITY_INDEX[m]`` the workers of modality ``m``'s loader.

    Returns:
        A seed in ``[0, 2**63)`` for ``torch.manual_seed`` / ``torch.Generator.manual_seed``.
    """
    state = np.random.SeedSequence([seed, phase_index, rank, stream]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


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
        return cls(tuple(samples[int(i)] for i in keep), tuple(int(labels[i]) for i in keep))


class VIReIDDataModule(L.LightningDataModule):
    """Visible-infrared re-ID data: raw-layout reader, SynVI generation, phase loaders.

    Args:
        name: ``sysu``, ``regdb`` or ``llcm``.
        root: Data set root folder (raw layout).
        seed: Seed of every training draw (combined with the phase index and the rank); >= 0.
            The run's seed (``cfg.seed``), so no default of its own.
        bn_replicas: R, the DataParallel replicas of the BatchNorm layers
            (``model.bn_replicas``): each rank's batch of each stream must split into
            ``R / world_size`` equal chunks, so a shrunk batch is rounded down to keep that.
            The model's value, so no default of its own.
        trial: RegDB split 1..10.
        holdout_val: RegDB: hold out training identities for validation.
        synvi: Optional SynVI parameters (``layout``, ``seed``, ``num_ids``, ``preset``): the
            tree is generated into ``root`` in :meth:`prepare_data` (cached by its parameters).
        height: Input height.
        width: Input width.
        num_instances: K images per identity in a batch.
        visible_batch_size: Visible images per optimiser step over all ranks (the global batch;
            each image yields two views). Each rank takes ``1 / world_size`` of it.
        infrared_batch_size: Infrared images per optimiser step over all ranks.
        num_workers: Loader workers.
        eval_batch_size: Batch size for feature extraction.
        shrink_batch: Lower a phase's batch when its clustering has fewer pseudo-identities
            than a batch needs, instead of skipping the phase.
        min_identities: Fewest identities per batch and rank a shrunk batch may have.
        augment: Keyword arguments of the training pipelines
            (:func:`~gur_lightning.data.transforms.build_train_transform`): ``pad``, ``flip_p``,
            ``erasing_p`` and ``adap_gray_p`` (infrared only); missing keys keep the reference's
            values.

    The other defaults are the constants of :mod:`gur_lightning.data.options`, which the
    ``data`` schema refers to as well.

    Under DDP every rank holds one DataModule. ``visible_batch_size`` and
    ``infrared_batch_size`` are global: one optimiser step sees the same number of images on
    1, 2, 4 or 8 devices, and the identity sampler gives each rank a disjoint slice of the
    step's identities.
    """

    def __init__(
        self,
        name: str,
        root: str,
        *,
        seed: int,
        bn_replicas: int,
        trial: int = options.TRIAL,
        holdout_val: bool = False,
        synvi: dict | None = None,
        height: int = options.HEIGHT,
        width: int = options.WIDTH,
        num_instances: int = options.NUM_INSTANCES,
        visible_batch_size: int = options.VISIBLE_BATCH_SIZE,
        infrared_batch_size: int = options.INFRARED_BATCH_SIZE,
        num_workers: int = options.NUM_WORKERS,
        eval_batch_size: int = options.EVAL_BATCH_SIZE,
        shrink_batch: bool = options.SHRINK_BATCH,
        min_identities: int = options.MIN_IDENTITIES,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if seed < 0:
            raise ValueError(f"VIReIDDataModule: seed must be >= 0, got {seed}")
        if bn_replicas < 1:
            raise ValueError(f"VIReIDDataModule: bn_replicas must be >= 1, got {bn_replicas}")
        self.bn_replicas = bn_replicas
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
        self.shrink_batch = shrink_batch
        self.min_identities = min_identities
        self.augment = dict(augment or {})
        unknown = set(self.augment) - _AUGMENT_KEYS
        if unknown:
            raise ValueError(
                f"VIReIDDataModule: unknown augment keys {sorted(unknown)}; "
                f"expected some of {sorted(_AUGMENT_KEYS)}"
            )
        self._batch_sizes = {"visible": visible_batch_size, "infrared": infrared_batch_size}
        self.seed = seed
        self.dataset: VIReIDDataset | None = None
        self._labelled: dict[Modality, LabelledSet] | None = None
        self._num_batches = 0
        self._phase_index = 0
        self._skipped = False

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Generate the SynVI tree when configured (rank 0 only, cached by its parameters)."""
        if self.synvi is None:
            return
        from gur_lightning.synvi import generate_synvi

        layout, num_ids, params = self._synvi_call()
        generate_synvi(layout, self.root, num_ids=num_ids, **params)

    def _synvi_call(self) -> tuple[str, int | None, dict[str, Any]]:
        """``(layout, num_ids, other parameters)`` of the configured SynVI tree."""
        params = dict(self.synvi or {})
        layout = params.pop("layout", self.name)
        num_ids = params.pop("num_ids", None)
        return layout, num_ids, params

    def is_prepared(self) -> bool:
        """Whether :meth:`prepare_data` has nothing left to do (the SynVI tree is complete).

        A tree counts as complete once its marker, written last and moved into place atomically
        by the generator, carries the hash of the configured parameters.
        """
        if self.synvi is None:
            return True
        from gur_lightning.synvi import parameter_hash, read_marker, tree_parameters

        layout, num_ids, params = self._synvi_call()
        marker = read_marker(Path(self.root).absolute())
        expected = parameter_hash(tree_parameters(layout, num_ids=num_ids, **params))
        return marker is not None and marker.get("hash") == expected

    def wait_until_prepared(
        self, timeout_s: float = PREPARE_TIMEOUT_S, poll_s: float = PREPARE_POLL_S
    ) -> None:
        """Block until another process (local rank 0) has finished :meth:`prepare_data`.

        Used by the non-zero local ranks of an externally launched DDP job (torchrun, SLURM),
        which start before any process group exists.

        Raises:
            TimeoutError: If the data is still not prepared after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while not self.is_prepared():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout_s:.0f} s for local rank 0 to generate the SynVI tree at "
                    f"{self.root}; did rank 0 fail? (its log names the error)"
                )
            time.sleep(poll_s)

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
        # The reader logs the image counts of every split.
        self.dataset = load_dataset(str(self.name), self.root, **kwargs)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the training data, saved in checkpoints to refuse a foreign resume.

        Returns:
            ``name``, ``trial``, per-modality image counts and ``digest``, a hash of every
            training image's path relative to the root, camera and modality in reader order (the
            pseudo-labels saved in a checkpoint are aligned with that order). The root itself is
            left out so that a data set moved to another folder still resumes.
        """
        train = self._require_setup().train
        digest = hashlib.sha256()
        for s in train:
            rel = os.path.relpath(s.path, self.root)
            digest.update(f"{rel}|{s.camid}|{s.modality}\n".encode())
        return {
            "name": self.name,
            "trial": self.trial if self.name == "regdb" else 0,
            "num_visible": sum(s.modality == "visible" for s in train),
            "num_infrared": sum(s.modality == "infrared" for s in train),
            "digest": digest.hexdigest()[:16],
        }

    def require_dataset(self) -> VIReIDDataset:
        """The data set read by :meth:`setup` (raises when setup has not run)."""
        return self._require_setup()

    def _require_setup(self) -> VIReIDDataset:
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

        Used for clustering features (bicubic resize, docs/method.md §4) and for test features
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
        sizes = {
            "visible": self._phase_batch_size(
                visible, "visible", self.visible_batch_size, phase_index
            ),
            "infrared": self._phase_batch_size(
                infrared, "infrared", self.infrared_batch_size, phase_index
            ),
        }
        # Build the samplers now so that an unusable clustering fails here, where the callback
        # can fall back, instead of inside Lightning's loader setup.
        self._make_sampler(visible, "visible", sizes["visible"], num_batches, phase_index)
        self._make_sampler(infrared, "infrared", sizes["infrared"], num_batches, phase_index)
        self._batch_sizes = sizes
        self._labelled = {"visible": visible, "infrared": infrared}
        self._num_batches = num_batches
        self._phase_index = phase_index
        self._skipped = False

    def visible_layout(self, rank: int, world: int) -> tuple[int, int, int | None]:
        """How this rank's visible stream is laid out: ``(shard, shards, view)``.

        Normally every rank holds both views of its own visible identities: ``(rank, world,
        None)``. DataParallel scatters ``cat(view 1, view 2)`` into R chunks, so each replica
        sees ONE view; a rank holding an even number of replicas keeps that (its first half
        gets view 1, its second half view 2). A rank holding an odd number (R = 4 on 4
        devices, say) would mix the views in one replica, so then the ranks are paired: rank
        ``r`` of the first half and rank ``r + world / 2`` draw the same visible images, view 1
        on the first and view 2 on the second: ``(r mod world/2, world / 2, 1 or 2)``. Gathered
        in rank order, the step's visible features are ``cat(view 1, view 2)`` as in the
        reference.
        """
        if paired_visible_views(self.bn_replicas, world):
            half = world // 2
            return rank % half, half, 1 if rank < half else 2
        return rank, world, None

    def _per_rank(self, modality: Modality, batch_size: int, world: int) -> tuple[int, int, int]:
        """This rank's share of a global batch, and the step its identity count must keep.

        Returns:
            ``(images per rank, P step, shards)``: a batch of P identities per rank splits into
            the rank's ``R / world`` replica chunks exactly when P is a multiple of the step (the
            visible stream holds two views of every image, unless paired ranks hold one each);
            the stream's identities are shared out over ``shards`` ranks (``world``, or half of
            it for paired visible views).

        Raises:
            ValueError: When the global batch or R does not divide, naming the numbers.
        """
        key = f"data.{modality}_batch_size"
        k = self.num_instances
        shards, views = world, 1
        if modality == "visible":
            _, shards, view = self.visible_layout(0, world)
            views = 1 if view is not None else 2
        if batch_size % (shards * k):
            raise ValueError(
                f"{key}={batch_size} is the global batch: it must be a multiple of "
                f"{shards} shards x data.num_instances = {shards} x {k} (every rank takes whole "
                "identities of K images)"
            )
        if self.bn_replicas > 1 and self.bn_replicas % world:
            raise ValueError(
                f"model.bn_replicas={self.bn_replicas} is not a multiple of the {world} "
                "training processes"
            )
        # R = 1 is plain BatchNorm (SyncBatchNorm under DDP): no chunks to keep equal.
        local = max(1, self.bn_replicas // world)
        rows_per_identity = k * views
        step = local // math.gcd(local, rows_per_identity)
        per_rank = batch_size // shards
        if (per_rank // k) % step:
            raise ValueError(
                f"{key}={batch_size}: {per_rank} images per rank "
                f"({per_rank * rows_per_identity // k} rows with the views) do not split into "
                f"model.bn_replicas={self.bn_replicas} / {world} processes = {local} equal "
                "replica chunks"
            )
        return per_rank, step, shards

    def _phase_batch_size(
        self, labelled: LabelledSet, modality: Modality, batch_size: int, phase_index: int
    ) -> int:
        """This rank's batch: its share of the global one, or less when clusters are few.

        Early clusterings (random-init features, one camera) can find fewer pseudo-identities
        than P = batch / K. The reference then crashes (docs/method.md §17.24); with
        ``shrink_batch`` the phase trains on every identity it has, P' = clusters // world per
        rank (rounded down to keep the replica chunks equal), as long as
        P' >= ``min_identities``; otherwise the sampler refuses and the phase is skipped.
        """
        world = max(1, get_world_size())
        per_rank, step, shards = self._per_rank(modality, batch_size, world)
        wanted = per_rank // self.num_instances
        available = len(set(labelled.labels)) // shards
        available -= available % step
        if not self.shrink_batch or available >= wanted or available < self.min_identities:
            return per_rank
        log.warning(
            "phase %d: %d %s pseudo-identities for P=%d per batch; batch lowered to %d x %d "
            "(per rank)",
            phase_index,
            len(set(labelled.labels)),
            modality,
            wanted,
            available,
            self.num_instances,
        )
        return available * self.num_instances

    def _make_sampler(
        self,
        labelled: LabelledSet,
        modality: Modality,
        batch_size: int,
        num_batches: int,
        phase_index: int,
    ):
        from gur_lightning.data.samplers import IdentitySampler

        # One seed per (phase, modality): with a shared seed the two streams would draw the same
        # identity positions whenever both hold as many clusters (the reference draws them
        # independently from the global generator).
        rank, world = get_rank(), max(1, get_world_size())
        if modality == "visible":
            rank, world, _ = self.visible_layout(rank, world)
        return IdentitySampler(
            list(labelled.labels),
            [s.camid for s in labelled.samples],
            num_instances=self.num_instances,
            batch_size=batch_size,
            num_batches=num_batches,
            seed=self.seed + _PHASE_SEED_STRIDE * phase_index + MODALITY_INDEX[modality],
            rank=rank,
            world_size=world,
        )

    def _train_loader(self, modality: Modality, rank: int) -> DataLoader:
        from gur_lightning.data.image_datasets import PseudoLabelDataset
        from gur_lightning.data.transforms import build_train_transform

        if self._labelled is None:
            raise RuntimeError("VIReIDDataModule: no pseudo-labels set (see set_pseudo_labels)")
        labelled = self._labelled[modality]
        aug = {key: value for key, value in self.augment.items() if key != "adap_gray_p"}
        view = self.visible_layout(rank, max(1, get_world_size()))[2]
        if modality == "visible" and view is not None:
            # One view per rank (paired ranks hold the two views of the same images).
            dataset = PseudoLabelDataset(
                labelled.samples,
                labelled.labels,
                build_train_transform(self.height, self.width, "visible", view=view, **aug),
            )
        elif modality == "visible":
            dataset = PseudoLabelDataset(
                labelled.samples,
                labelled.labels,
                build_train_transform(self.height, self.width, "visible", view=1, **aug),
                second_transform=build_train_transform(
                    self.height, self.width, "visible", view=2, **aug
                ),
            )
        else:
            dataset = PseudoLabelDataset(
                labelled.samples,
                labelled.labels,
                build_train_transform(self.height, self.width, "infrared", **self.augment),
            )
        batch_size = self._batch_sizes[modality]
        sampler = self._make_sampler(
            labelled, modality, batch_size, self._num_batches, self._phase_index
        )
        # Workers seed torch from this generator (base seed + worker id), so worker-side
        # augmentations follow (seed, phase, rank, modality) whatever ran before.
        generator = torch.Generator().manual_seed(
            phase_seed(self.seed, self._phase_index, rank, 1 + MODALITY_INDEX[modality])
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=_seed_worker,
            generator=generator,
        )

    def train_dataloader(self) -> CombinedLoader | range:
        """The phase's visible and infrared loaders, zipped: ``batch = {"visible", "infrared"}``.

        Lightning calls it on every rank at the start of every epoch (= phase). It also re-seeds
        torch's global generator from ``(seed, phase, rank)``: with ``num_workers=0`` the
        augmentations are drawn from it in this process, and without the re-seed they would
        depend on everything drawn since the start (a resumed run would differ from an
        uninterrupted one) and be identical on every DDP rank (``seed_everything`` gives every
        rank the same state).

        In a skipped phase (:meth:`skip_phase`) it is ``range(num_batches)``: the step indices,
        no images. Not an empty loader, because Lightning ends the whole fit on an epoch without
        batches; the re-clustering callback tells the module that the phase is skipped, so its
        steps return no loss, change no weight, and the schedule goes on.

        Raises:
            RuntimeError: If no pseudo-labels were ever installed (no re-clustering callback).
        """
        if self._labelled is None:
            if self._skipped:
                return range(self._num_batches)
            raise RuntimeError(
                "VIReIDDataModule has no pseudo-labels: is the Reclustering callback configured?"
            )
        rank = get_rank()
        torch.manual_seed(phase_seed(self.seed, self._phase_index, rank))
        return CombinedLoader(
            {m: self._train_loader(m, rank) for m in ("visible", "infrared")},
            mode="min_size",
        )

    def skip_phase(self, num_batches: int = 1) -> None:
        """Install a skipped phase (the callback found no usable clustering).

        Args:
            num_batches: Length of the phase; :meth:`train_dataloader` then yields its step
                indices ``0 .. num_batches - 1`` instead of images.
        """
        self._labelled = None
        self._num_batches = max(1, num_batches)
        self._skipped = True

    def state_dict(self) -> dict:
        """Nothing to save: the re-clustering callback checkpoints and re-installs the labels."""
        return {}


def _seed_worker(worker_id: int) -> None:
    """Derive numpy's seed from torch's per-worker seed (torch seeds workers from the sampler)."""
    np.random.seed(torch.initial_seed() % 2**32)


def fitted_datamodule(trainer: L.Trainer) -> VIReIDDataModule:
    """``trainer.datamodule`` of a run fitted with a :class:`VIReIDDataModule`.

    Lightning sets the attribute at fit time; it is not declared on ``Trainer``, hence the
    ``getattr`` (the re-clustering callback refuses any other data module in its ``setup``).
    """
    return cast(VIReIDDataModule, getattr(trainer, "datamodule", None))
