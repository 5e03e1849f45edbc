"""Tests for ReIDMetric: one distance matrix, de-duplication by index, flags, trials and DDP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gur_lightning.metrics import ReIDMetric, evaluate_rank, evaluate_trials

NUM_SAMPLES = 40
NUM_QUERY = 16


def make_data(seed: int = 0):
    """Queries (cams 3/6) first, then gallery (cams 1/2/4/5); identity-clustered features."""
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, 5, (NUM_SAMPLES,), generator=gen)
    centres = torch.randn(5, 8, generator=gen)
    feats = centres[pids] + 0.8 * torch.randn(NUM_SAMPLES, 8, generator=gen)
    is_query = torch.arange(NUM_SAMPLES) < NUM_QUERY
    camids = torch.where(
        is_query,
        torch.tensor([3, 6])[torch.randint(0, 2, (NUM_SAMPLES,), generator=gen)],
        torch.tensor([1, 2, 4, 5])[torch.randint(0, 4, (NUM_SAMPLES,), generator=gen)],
    )
    # Dataset indices deliberately not equal to positions.
    index = torch.arange(NUM_SAMPLES) * 3 + 7
    return feats, pids, camids, is_query, index


def expected_numbers(feats, pids, camids, is_query, protocol="sysu", max_rank=20):
    """Independent path: explicit normalisation, -q.g^T, then the functional engine."""
    q, g = feats[is_query], feats[~is_query]
    q = q / q.norm(dim=1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True)
    distmat = -(q @ g.T)
    return evaluate_rank(
        distmat.numpy(),
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
        protocol,
        max_rank,
    )


def check_against(result, expected):
    for k in (1, 5, 10, 20):
        assert result[f"rank{k}"].item() == pytest.approx(expected["cmc"][k - 1], abs=1e-6)
    assert result["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mINP"].item() == pytest.approx(expected["mINP"], abs=1e-6)


def feed(metric, rows, data):
    feats, pids, camids, is_query, index = data
    for chunk in torch.split(torch.as_tensor(rows), 7):
        metric.update(feats[chunk], pids[chunk], camids[chunk], is_query[chunk], index[chunk])


def test_metric_equals_functional_on_explicit_cosine_distance():
    data = make_data()
    metric = ReIDMetric("sysu")
    feed(metric, torch.arange(NUM_SAMPLES), data)
    result = metric.compute()
    assert set(result) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in result.values())
    check_against(result, expected_numbers(*data[:4]))


def test_shuffled_interleaved_order_and_duplicates_do_not_change_numbers():
    data = make_data(1)
    reference = ReIDMetric("sysu")
    feed(reference, torch.arange(NUM_SAMPLES), data)
    shuffled = ReIDMetric("sysu")
    perm = torch.randperm(NUM_SAMPLES, generator=torch.Generator().manual_seed(0))
    # Padded sampler: a few samples seen twice, queries and gallery interleaved.
    feed(shuffled, torch.cat([perm, perm[:3], perm[-2:]]), data)
    a, b = reference.compute(), shuffled.compute()
    for key in a:
        assert a[key].item() == b[key].item()


def test_duplicate_changes_numbers_without_deduplication():
    # Guard that the duplicate above matters: feeding the duplicated features under fresh
    # indices (i.e. as extra gallery samples) does change mAP.
    feats, pids, camids, is_query, index = make_data(1)
    gallery_rows = torch.nonzero(~is_query).flatten()[:6]
    extra = (feats[gallery_rows], pids[gallery_rows], camids[gallery_rows])
    metric = ReIDMetric("sysu")
    metric.update(feats, pids, camids, is_query, index)
    metric.update(*extra, is_query[gallery_rows], index[gallery_rows] + 1000)
    deduped = ReIDMetric("sysu")
    deduped.update(feats, pids, camids, is_query, index)
    deduped.update(*extra, is_query[gallery_rows], index[gallery_rows])
    assert metric.compute()["mAP"].item() != deduped.compute()["mAP"].item()


def test_regdb_protocol_and_short_max_rank_keys():
    data = make_data(2)
    metric = ReIDMetric("regdb", max_rank=5)
    feed(metric, torch.arange(NUM_SAMPLES), data)
    result = metric.compute()
    assert set(result) == {"rank1", "rank5", "mAP", "mINP"}
    expected = expected_numbers(*data[:4], protocol="regdb", max_rank=5)
    assert result["rank5"].item() == pytest.approx(expected["cmc"][4], abs=1e-6)
    assert result["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-6)


def test_gallery_trials_average_over_index_masks():
    feats, pids, camids, is_query, index = make_data(3)
    max_index = int(index.max()) + 1
    trials = np.zeros((2, max_index), dtype=bool)
    g_index = index[~is_query].numpy()
    trials[0, g_index[:14]] = True
    trials[1, g_index[10:]] = True
    metric = ReIDMetric("sysu", gallery_trials=torch.from_numpy(trials))
    metric.update(feats, pids, camids, is_query, index)
    result = metric.compute()
    q = torch.nn.functional.normalize(feats[is_query], dim=1)
    g = torch.nn.functional.normalize(feats[~is_query], dim=1)
    masks = np.stack([np.isin(g_index, g_index[:14]), np.isin(g_index, g_index[10:])])
    expected = evaluate_trials(
        (-(q @ g.T)).numpy(),
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
        masks,
    )
    assert result["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mAP_std"].item() == pytest.approx(expected["mAP_std"], abs=1e-6)
    assert result["rank1_std"].item() == pytest.approx(expected["cmc_std"][0], abs=1e-6)
    metric.set_gallery_trials(trials[:, :10])
    with pytest.raises(ValueError, match="masks cover indices < 10"):
        metric.compute()
    with pytest.raises(ValueError, match="boolean array"):
        metric.set_gallery_trials(np.ones((2, 5)))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric ReIDMetric was called")
def test_errors_are_clear():
    feats, pids, camids, is_query, index = make_data()
    metric = ReIDMetric("sysu")
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="camids: expected shape"):
        metric.update(feats, pids, camids[:3], is_query, index)
    metric.update(feats[~is_query], pids[~is_query], camids[~is_query], is_query[~is_query],
                  index[~is_query])  # fmt: skip
    with pytest.raises(ValueError, match="need both query and gallery"):
        metric.compute()
    metric.reset()
    metric.update(feats, pids, camids, is_query, index)
    metric.update(feats[:1], pids[:1] + 1, camids[:1], is_query[:1], index[:1])
    with pytest.raises(ValueError, match=r"sample index 7 was given with different pids"):
        metric.compute()
    with pytest.raises(ValueError, match="unknown 'cuhk'"):
        ReIDMetric("cuhk")


# --------------------------------------------------------------------------------------------
# DDP: two gloo processes on CPU, each with its shard plus one sample duplicated from the other
# shard (as DistributedSampler padding does), must give the single-process numbers.
# --------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, store_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.join(store_dir, 'store')}",
        rank=rank,
        world_size=world_size,
    )
    try:
        data = make_data(4)
        rows = torch.arange(rank, NUM_SAMPLES, world_size)  # interleaved, like the sampler
        # Uneven shards plus a duplicate of the other rank's first sample.
        rows = torch.cat([rows, torch.tensor([1 - rank])]) if rank == 1 else rows
        metric = ReIDMetric("sysu")
        feed(metric, rows, data)
        result = metric.compute()
        torch.save(result, os.path.join(store_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_gloo_equals_single_process(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = ReIDMetric("sysu")
    feed(single, torch.arange(NUM_SAMPLES), make_data(4))
    expected = single.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key].item() == pytest.approx(value.item(), abs=1e-6), (rank, key)
