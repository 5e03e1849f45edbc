"""IdentitySampler (P x K, cross-camera positives, rank sharding) and ShardSampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gur_lightning.data.samplers import IdentitySampler, NotEnoughClustersError, ShardSampler

K = 4


def _dataset() -> tuple[list[int], list[int]]:
    """Non-contiguous labels with every camera situation the sampler distinguishes.

    * 10: 6 on camera 0 and 6 on camera 1 -> always >= K-1 other-camera members (no replacement)
    * 20: 5 on camera 0, 1 on camera 1 -> anchor on cam 0 has a single other-camera member
    * 30: 7 on camera 2 only -> no other camera; >= K-1 other members
    * 40: 2 on camera 3 only -> no other camera; too few others (replacement)
    * 50: a singleton
    * 60..69: 3 each over cameras 0, 1, 2
    """
    labels: list[int] = []
    cams: list[int] = []

    def add(label: int, cameras: list[int]) -> None:
        labels.extend([label] * len(cameras))
        cams.extend(cameras)

    add(10, [0] * 6 + [1] * 6)
    add(20, [0] * 5 + [1])
    add(30, [2] * 7)
    add(40, [3] * 2)
    add(50, [1])
    for label in range(60, 70):
        add(label, [0, 1, 2])
    # Shuffle so that nothing relies on samples being grouped by label.
    order = np.random.default_rng(0).permutation(len(labels))
    return [labels[i] for i in order], [cams[i] for i in order]


LABELS, CAMS = _dataset()
NUM_IDS = len(set(LABELS))  # 15


def _batches(sampler: IdentitySampler) -> list[np.ndarray]:
    idx = np.array(list(sampler))
    return list(idx.reshape(sampler.num_batches, sampler.ids_per_batch, sampler.num_instances))


def _make(**kwargs) -> IdentitySampler:
    args = {"num_instances": K, "batch_size": 3 * K, "num_batches": 20, "seed": 0}
    args.update(kwargs)
    return IdentitySampler(LABELS, CAMS, **args)


def test_len_is_exact_and_every_batch_is_p_identities_times_k() -> None:
    sampler = _make()
    indices = list(sampler)
    assert len(sampler) == len(indices) == 20 * 3 * K
    labels = np.array(LABELS)
    for batch in _batches(sampler):
        row_labels = labels[batch]  # (P, K)
        assert (row_labels == row_labels[:, :1]).all(), "an identity block mixes labels"
        assert len(set(row_labels[:, 0])) == 3, "identities within a batch must be distinct"


def test_cross_camera_preference_per_situation() -> None:
    labels, cams = np.array(LABELS), np.array(CAMS)
    seen = Counter()
    for epoch in range(5):
        sampler = _make(num_batches=30)
        sampler.set_epoch(epoch)
        for batch in _batches(sampler):
            for row in batch:
                anchor, rest = row[0], row[1:]
                label, anchor_cam = labels[anchor], cams[anchor]
                members = np.flatnonzero(labels == label)
                other_cam = members[cams[members] != anchor_cam]
                if label == 50:  # singleton repeats itself
                    assert (row == anchor).all()
                elif other_cam.size >= K - 1:  # enough cross-camera members: distinct, all
                    assert (cams[rest] != anchor_cam).all() and len(set(rest)) == K - 1
                    seen["cross_distinct"] += 1
                elif other_cam.size > 0:  # some: all positives from them, with replacement
                    assert set(rest) <= set(other_cam)
                    seen["cross_replace"] += 1
                else:  # none: other members of the identity, never the anchor itself
                    others = members[members != anchor]
                    assert set(rest) <= set(others)
                    if others.size >= K - 1:
                        assert len(set(rest)) == K - 1
                    seen["same_cam"] += 1
    assert min(seen.values()) > 0 and len(seen) == 3, seen


def test_noncontiguous_labels_and_anchor_is_uniform() -> None:
    labels = [7] * 4 + [100] * 4 + [3] * 4
    cams = [0, 1, 2, 3] * 3
    sampler = IdentitySampler(labels, cams, num_instances=2, batch_size=6, num_batches=400)
    anchors = Counter(int(row[0]) for batch in _batches(sampler) for row in batch)
    assert sorted(anchors) == list(range(12))
    assert all(abs(n / 400 - 0.25) < 0.07 for n in anchors.values())


def test_identity_usage_is_balanced_over_permutation_cycles() -> None:
    # 15 identities, 2 ranks x 4 per step = 8 per step: steps straddle permutations.
    counts = Counter()
    for rank in range(2):
        sampler = _make(batch_size=4 * K, num_batches=17, rank=rank, world_size=2)
        for batch in _batches(sampler):
            counts.update(int(LABELS[row[0]]) for row in batch)
    assert sum(counts.values()) == 17 * 8 and len(counts) == NUM_IDS
    assert max(counts.values()) - min(counts.values()) <= 1


def test_determinism_and_set_epoch() -> None:
    a, b = _make(), _make()
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating twice without set_epoch repeats the plan
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(_make(seed=1)) != list(_make(seed=0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_identities_disjoint_across_ranks_at_every_step(world_size: int) -> None:
    samplers = [_make(batch_size=2 * K, rank=r, world_size=world_size) for r in range(world_size)]
    for s in samplers:
        s.set_epoch(3)
    plans = [s.identity_plan() for s in samplers]
    assert all(np.array_equal(plans[0], p) for p in plans[1:]), "ranks disagree on the plan"
    labels = np.array(LABELS)
    per_rank = [_batches(s) for s in samplers]
    for step in range(20):
        ids = [set(labels[per_rank[r][step][:, 0]]) for r in range(world_size)]
        assert sum(len(x) for x in ids) == len(set().union(*ids)) == 2 * world_size
    assert len(samplers[0]) == 20 * 2 * K


def test_not_enough_clusters_error_gives_counts() -> None:
    # 15 identities, world 2 x P 8 = 16 needed.
    with pytest.raises(NotEnoughClustersError, match=r"16 identities.*got 15") as err:
        _make(batch_size=8 * K, rank=0, world_size=2)
    assert isinstance(err.value, ValueError)
    with pytest.raises(NotEnoughClustersError):
        IdentitySampler([], [], num_instances=K, batch_size=K, num_batches=1)
    _make(batch_size=15 * K)  # exactly enough on one rank


@pytest.mark.parametrize(
    ("labels", "cams", "kwargs", "match"),
    [
        ([0, 1, -1, 2], [0, 0, 0, 0], {}, r"labels\[2\] = -1"),
        ([0, 1], [0], {}, "same length"),
        ([0, 1, 2], [0, 0, 0], {"batch_size": 5}, "multiple of num_instances"),
        ([0, 1, 2], [0, 0, 0], {"num_batches": 0}, "num_batches"),
        ([0, 1, 2], [0, 0, 0], {"rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_bad_arguments(labels: list, cams: list, kwargs: dict, match: str) -> None:
    args = {"num_instances": 2, "batch_size": 2, "num_batches": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        IdentitySampler(labels, cams, **args)


def test_defaults_to_single_process_without_distributed() -> None:
    sampler = _make()
    assert (sampler.rank, sampler.world_size) == (0, 1)
    shard = ShardSampler(5)
    assert (shard.rank, shard.world_size, list(shard)) == (0, 1, [0, 1, 2, 3, 4])


@pytest.mark.parametrize("num_samples", [0, 1, 7, 10, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_sampler_covers_each_index_once(num_samples: int, world_size: int) -> None:
    shards = [
        list(ShardSampler(num_samples, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    flat = [i for shard in shards for i in shard]
    assert flat == list(range(num_samples))  # contiguous, in order, no padding, no loss
    lengths = [
        len(ShardSampler(num_samples, rank=r, world_size=world_size))
        for r in range(4)[:world_size]
    ]
    assert lengths == [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_shard_sampler_uneven_sizes_by_hand() -> None:
    assert [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [
        [0, 1, 2],
        [3, 4],
        [5, 6],
    ]
    with pytest.raises(ValueError, match="num_samples"):
        ShardSampler(-1)
