"""Rank-aware samplers: P x K identity batches for training, exact shards for inference.

``IdentitySampler`` re-implements the reference's ``RandomMultipleGallerySampler`` (docs/method.md
§5.1) for DDP, following docs/architecture.md §10.2 and §11.6: every rank derives the same global
plan from ``(seed, epoch)`` alone and takes a disjoint slice of identities at every step, so
Lightning must be run with ``use_distributed_sampler=False``. ``ShardSampler`` splits inference
sets into contiguous unpadded shards so that no query or gallery image is counted twice
(docs/architecture.md §10.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["IdentitySampler", "NotEnoughClustersError", "ShardSampler"]


class NotEnoughClustersError(ValueError):
    """Fewer pseudo-identities than one global P x K batch needs (docs/method.md §5.2, §17.24).

    The re-clustering callback catches it and skips the training phase instead of failing, which
    the reference cannot do (its ``IterLoader`` raises on an empty loader).
    """


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill unset ``rank`` / ``world_size`` from ``torch.distributed`` (else 0 of 1) and check."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    return rank, world_size


class IdentitySampler(Sampler[int]):
    """P x K identity sampler with cross-camera positives, sharded by rank (docs/method.md §5.1).

    Each batch of ``batch_size`` indices holds ``P = batch_size // num_instances`` distinct
    identities with ``K = num_instances`` consecutive indices each. For every identity one anchor
    is drawn uniformly, emitted first, and followed by ``K - 1`` further members:

    * from ``S``, the identity's members whose camera differs from the anchor's, when ``S`` is
      not empty: without replacement if ``|S| >= K - 1``, otherwise with replacement;
    * otherwise from all other members of the identity, with the same replacement rule;
    * a singleton identity repeats its only member ``K`` times.

    Identities come from a stream of fresh permutations of all identities drawn from
    ``numpy.random.default_rng([seed, epoch])``. Each global step takes the next
    ``world_size * P`` distinct identities from the stream (when a permutation runs out mid-step,
    the step is completed with the first identities of the next permutation that it does not
    already hold; the skipped ones stay at the front of the stream), and rank ``r`` takes the
    ``r``-th slice of ``P``. Every rank therefore computes the same identity plan, and identities
    are disjoint across ranks at every step. The instance draws use a per-rank generator seeded
    with ``[seed, epoch, rank]``; only rank ``r`` needs its own instances.

    Deviations from the reference, deliberate:

    * **Fixed K per identity.** The reference emits only the anchor for a singleton cluster, so
      its batches are not P x K aligned; here the singleton is repeated.
    * **Off-by-one fixed.** The reference draws ``K - 1`` members but tests ``|S| >= K`` before
      drawing without replacement; here the test is ``|S| >= K - 1``.
    * **Fixed length.** ``len(self) == num_batches * batch_size`` (one training phase of
      ``num_batches`` iterations, §5.2) instead of one pass over the clusters wrapped in an
      infinite ``IterLoader``; identities cycle through as many permutations as needed.
    * **Seeded, rank-aware order** from ``(seed, epoch)`` rather than the global RNG.

    Args:
        labels: Pseudo-label of every sample, all ``>= 0`` (outliers removed beforehand); need
            not be contiguous.
        camids: Camera of every sample, same length as ``labels``.
        num_instances: K, instances per identity in a batch.
        batch_size: Batch size per rank, a multiple of ``num_instances``.
        num_batches: Batches this sampler yields per epoch on each rank.
        seed: Seed shared by all ranks.
        rank: This process's rank; from ``torch.distributed`` when initialised, else 0.
        world_size: Number of ranks; from ``torch.distributed`` when initialised, else 1.

    Raises:
        ValueError: On a negative label, mismatched lengths or inconsistent sizes.
        NotEnoughClustersError: When there are fewer identities than ``world_size * P``.
    """

    def __init__(
        self,
        labels: Sequence[int],
        camids: Sequence[int],
        *,
        num_instances: int,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        cams_arr = np.asarray(camids, dtype=np.int64).reshape(-1)
        if labels_arr.shape != cams_arr.shape:
            raise ValueError(
                f"labels and camids must have the same length, got {labels_arr.size} labels "
                f"and {cams_arr.size} camids"
            )
        if labels_arr.size and labels_arr.min() < 0:
            first = int(np.flatnonzero(labels_arr < 0)[0])
            raise ValueError(
                f"labels must be >= 0 (drop outliers before sampling), got labels[{first}] = "
                f"{int(labels_arr[first])}"
            )
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if batch_size < 1 or batch_size % num_instances:
            raise ValueError(
                f"batch_size (per rank) must be a positive multiple of num_instances="
                f"{num_instances}, got {batch_size}"
            )
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.ids_per_batch = batch_size // num_instances
        self.seed = seed
        self.epoch = 0

        # Group sample indices by identity, sorted by label (a stable, input-order-free layout).
        order = np.argsort(labels_arr, kind="stable")
        identities, starts = np.unique(labels_arr[order], return_index=True)
        self._members: list[np.ndarray] = np.split(order, starts[1:]) if order.size else []
        self._member_cams: list[np.ndarray] = [cams_arr[m] for m in self._members]
        self.num_identities = int(identities.size)
        needed = self.world_size * self.ids_per_batch
        if self.num_identities < needed:
            raise NotEnoughClustersError(
                f"IdentitySampler needs at least world_size * P = {self.world_size} * "
                f"{self.ids_per_batch} = {needed} identities for one batch, got "
                f"{self.num_identities} (from {labels_arr.size} labelled samples)"
            )
        # (identity position, anchor camera) -> members on other cameras, filled lazily.
        self._other_cam: dict[tuple[int, int], np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan ``__iter__`` yields (Lightning calls this every epoch).

        Args:
            epoch: Epoch number, combined with ``seed`` into the generators' seeds.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def identity_plan(self) -> np.ndarray:
        """The global identity plan of the current epoch, the same on every rank.

        Returns:
            Identity positions (``0 .. num_identities - 1`` in sorted-label order), shape
            ``(num_batches, world_size, P)``; row ``[s, r]`` is what rank ``r`` uses at step ``s``.
        """
        rng = np.random.default_rng([self.seed, self.epoch])
        per_step = self.world_size * self.ids_per_batch
        plan = np.empty((self.num_batches, per_step), dtype=np.int64)
        stream = rng.permutation(self.num_identities)
        for step in range(self.num_batches):
            if stream.size >= per_step:
                plan[step], stream = stream[:per_step], stream[per_step:]
                continue
            # Finish the step from a fresh permutation without repeating an identity within it.
            fresh = rng.permutation(self.num_identities)
            taken = np.isin(fresh, stream)
            candidates = np.flatnonzero(~taken)[: per_step - stream.size]
            plan[step] = np.concatenate([stream, fresh[candidates]])
            keep = np.ones(fresh.size, dtype=bool)
            keep[candidates] = False
            stream = fresh[keep]
        return plan.reshape(self.num_batches, self.world_size, self.ids_per_batch)

    def _instances(self, identity: int, rng: np.random.Generator) -> np.ndarray:
        """Anchor first, then ``K - 1`` preferably cross-camera members, shape ``(K,)``."""
        members = self._members[identity]
        k = self.num_instances
        if members.size == 1:
            return np.repeat(members, k)
        anchor_pos = int(rng.integers(members.size))
        anchor_cam = int(self._member_cams[identity][anchor_pos])
        key = (identity, anchor_cam)
        pool = self._other_cam.get(key)
        if pool is None:
            pool = members[self._member_cams[identity] != anchor_cam]
            self._other_cam[key] = pool
        if pool.size == 0:
            pool = np.delete(members, anchor_pos)
        rest = rng.choice(pool, size=k - 1, replace=pool.size < k - 1)
        return np.concatenate([members[anchor_pos : anchor_pos + 1], rest])

    def __iter__(self) -> Iterator[int]:
        plan = self.identity_plan()[:, self.rank]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        out = np.empty((self.num_batches, self.ids_per_batch, self.num_instances), dtype=np.int64)
        for step in range(self.num_batches):
            for slot, identity in enumerate(plan[step]):
                out[step, slot] = self._instances(int(identity), rng)
        return iter(out.reshape(-1).tolist())


class ShardSampler(Sampler[int]):
    """Contiguous, unpadded inference shards: every index exactly once across ranks.

    Rank ``r`` of ``W`` gets ``range(start_r, start_r + n_r)`` where the first ``N mod W`` ranks
    hold ``ceil(N / W)`` indices and the rest ``floor(N / W)`` (fast-reid's ``InferenceSampler``
    idea, docs/architecture.md §10.3, §11.6). Shards may differ in length by one, so gathered
    results must be padded and scattered by sample index (§10.4).

    Args:
        num_samples: Size N of the data set.
        rank: This process's rank; from ``torch.distributed`` when initialised, else 0.
        world_size: Number of ranks; from ``torch.distributed`` when initialised, else 1.
    """

    def __init__(
        self, num_samples: int, *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.num_samples = num_samples
        base, extra = divmod(num_samples, self.world_size)
        self.start = self.rank * base + min(self.rank, extra)
        self.stop = self.start + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
