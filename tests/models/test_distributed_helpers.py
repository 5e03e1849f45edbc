"""Collective helpers (world = 1 and 2-process gloo) and DDP-consistent memory updates."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gur_lightning.models import DualStreamResNet, GURLitModule
from gur_lightning.utils.distributed import (
    RemoteError,
    broadcast_object,
    broadcast_result,
    gather_by_index,
    gather_tensors,
    get_rank,
    get_world_size,
    is_rank_zero,
)


def test_single_process_paths():
    assert get_world_size() == 1 and get_rank() == 0 and is_rank_zero()
    t = torch.arange(6.0).reshape(3, 2)
    assert gather_tensors(t) is t
    assert broadcast_object({"a": 1}) == {"a": 1}
    assert broadcast_result(lambda: 42) == 42
    with pytest.raises(KeyError):
        broadcast_result(lambda: {}["missing"])


def test_gather_by_index_scatters_rows_by_sample_index():
    index = torch.tensor([3, 0, 2, 1])
    feats = index.float()[:, None].repeat(1, 2)
    out = gather_by_index(feats, index, 4)
    assert torch.equal(out, torch.arange(4.0)[:, None].repeat(1, 2))
    assert out.dtype == feats.dtype


def test_gather_by_index_errors():
    feats = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"first missing indices: \[1, 3\]"):
        gather_by_index(feats, torch.tensor([0, 2]), 4)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        gather_by_index(feats, torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match="expected features"):
        gather_by_index(feats, torch.tensor([0]), 2)


def _collectives_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        # Uneven row counts, concatenated in rank order.
        local = torch.full((rank + 2, 3), float(rank))
        out = gather_tensors(local)
        assert out[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0], out
        # Interleaved shards of 7 samples (rank 0: 4 rows, rank 1: 3 rows).
        index = torch.arange(rank, 7, world)
        feats = torch.stack([index.float(), -index.float()], dim=1)
        full = gather_by_index(feats, index, 7)
        assert torch.equal(full[:, 0], torch.arange(7.0)), full
        assert broadcast_object({"rank": rank}) == {"rank": 0}
        assert broadcast_result(lambda: [rank, "ok"]) == [0, "ok"]

        def failing() -> None:
            raise ValueError("clustering exploded")

        try:
            broadcast_result(failing)
        except ValueError as err:
            assert rank == 0 and "exploded" in str(err)
        except RemoteError as err:
            assert rank == 1 and "ValueError: clustering exploded" in str(err)
        else:
            raise AssertionError("broadcast_result did not raise")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_collectives_on_two_gloo_ranks(tmp_path):
    mp.spawn(_collectives_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


# ---------------------------------------------------------------- DDP memory consistency

H, W = 32, 16


class _RankBatches(torch.utils.data.IterableDataset):
    """Different data on every rank (the identity sampler shards identities)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        g = torch.Generator().manual_seed(100 + rank)
        for _ in range(self.n):
            yield {
                "visible": {
                    "img": torch.randn(2, 3, H, W, generator=g),
                    "img2": torch.randn(2, 3, H, W, generator=g),
                    "label": torch.randint(0, 3, (2,), generator=g),
                },
                "infrared": {
                    "img": torch.randn(4, 3, H, W, generator=g),
                    "label": torch.randint(0, 3, (4,), generator=g),
                },
            }


class _SyncCheck(L.Callback):
    """Asserts at the end of training that every rank holds the same, updated memory."""

    def on_train_start(self, trainer, pl_module):
        self.before = pl_module.memory_tensors()["shared"].clone()

    def on_train_end(self, trainer, pl_module):
        rows = pl_module.memory_tensors()["shared"]
        gathered = gather_tensors(rows.unsqueeze(0))
        assert gathered.shape[0] == 2
        assert torch.equal(gathered[0], gathered[1]), "memories differ across ranks"
        assert not torch.equal(rows, self.before), "memories were not updated"


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_memories_stay_bit_identical_across_ranks():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    module = GURLitModule(DualStreamResNet(18))
    module.set_memories(
        {"shared": torch.randn(3, 512, generator=torch.Generator().manual_seed(1))},
        {"visible": "shared", "infrared": "shared"},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=3,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_SyncCheck()],
    )
    trainer.fit(module, torch.utils.data.DataLoader(_RankBatches(3), batch_size=None))
