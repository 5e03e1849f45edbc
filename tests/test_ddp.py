"""DDP on two CPU processes (gloo, spawn) and the Hydra multirun guard.

The slow test runs the smoke experiment with ``trainer=ddp_cpu`` and records, on every rank, the
pseudo-labels and memories of every phase, the identities each rank trains on at every step, the
final weights and test metrics computed in-process with sharded feature extraction. It then
runs one process on the same data and compares what can honestly be compared (see the test).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from omegaconf import read_write

from gur_lightning.callbacks.recluster import Reclustering
from gur_lightning.data.datamodule import VIReIDDataModule
from gur_lightning.evaluation import evaluate_splits, protocol_splits
from gur_lightning.train import (
    build_trainer_kwargs,
    guard_multirun_ddp,
    launch_local_rank,
    model_featurizer,
    multirun_ddp_problem,
    prepare_data_once,
    train,
)
from tests.helpers import smoke_config


def _cfg(data_dir: Path, out: Path, *overrides: str, hydra: bool = False):
    return smoke_config(data_dir, out, "~logger", *overrides, return_hydra_config=hydra)


# --------------------------------------------------------------------------- multirun guard


def test_multirun_guard_refuses_subprocess_ddp_only():
    ddp = {"accelerator": "gpu", "devices": 4, "strategy": {"_target_": "DDPStrategy"}}
    problem = multirun_ddp_problem(ddp, mode=RunMode.MULTIRUN, environ={})
    assert problem is not None
    assert "11300" in problem and "ddp_cpu" in problem and "submitit_slurm" in problem
    # The same config is fine for a single run, ...
    assert multirun_ddp_problem(ddp, mode=RunMode.RUN, environ={}) is None
    # ... with spawned workers, ...
    spawn = {**ddp, "strategy": {"_target_": "DDPStrategy", "start_method": "spawn"}}
    assert multirun_ddp_problem(spawn, mode=RunMode.MULTIRUN, environ={}) is None
    assert (
        multirun_ddp_problem({**ddp, "strategy": "ddp_spawn"}, mode=RunMode.MULTIRUN, environ={})
        is None
    )
    # ... with one device per job, ...
    one = {**ddp, "devices": 1}
    assert multirun_ddp_problem(one, mode=RunMode.MULTIRUN, environ={}) is None
    # ... under the SLURM launcher or torchrun, which create the processes themselves.
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert multirun_ddp_problem(ddp, mode=RunMode.MULTIRUN, launcher_target=slurm) is None
    torchrun = {"LOCAL_RANK": "0"}
    assert multirun_ddp_problem(ddp, mode=RunMode.MULTIRUN, environ=torchrun) is None
    # Strategy names and device spellings that Lightning launches as subprocesses.
    for trainer in (
        {"devices": 2, "strategy": "ddp"},
        {"devices": "0,1", "strategy": "ddp_find_unused_parameters_true"},
        {"devices": [0, 1], "strategy": "auto"},
        {"devices": 1, "num_nodes": 2, "strategy": "ddp"},
    ):
        assert multirun_ddp_problem(trainer, mode=RunMode.MULTIRUN, environ={}), trainer


def test_multirun_guard_reads_hydra_mode(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    cfg = _cfg(tmp_path, tmp_path, "trainer=ddp", "trainer.devices=2", hydra=True)
    try:
        for mode, refused in ((RunMode.MULTIRUN, True), (RunMode.RUN, False)):
            with read_write(cfg.hydra):
                cfg.hydra.mode = mode
            HydraConfig.instance().set_config(cfg)
            if refused:
                with pytest.raises(ValueError, match="Lightning issue #11300"):
                    guard_multirun_ddp(cfg)
            else:
                guard_multirun_ddp(cfg)  # a single run is fine
    finally:
        HydraConfig.instance().cfg = None


def test_ddp_trainer_configs_instantiate_their_strategy(tmp_path):
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    for name, spawn in (("ddp", False), ("ddp_cpu", True)):
        kwargs = build_trainer_kwargs(_cfg(tmp_path, tmp_path, f"trainer={name}"))
        strategy = kwargs["strategy"]
        assert isinstance(strategy, DDPStrategy)
        assert strategy._timeout == timedelta(minutes=120)
        ddp_kwargs = strategy._ddp_kwargs
        # Buffers are not re-broadcast at every forward (spelled the way this torch wants).
        assert ddp_kwargs.get("forward_sync_buffers", ddp_kwargs.get("broadcast_buffers")) is False
        assert ddp_kwargs["find_unused_parameters"] is False
        assert (strategy._start_method == "spawn") == spawn
        assert kwargs["sync_batchnorm"] is (not spawn)  # SyncBatchNorm needs an accelerator
        assert kwargs["use_distributed_sampler"] is False


# --------------------------------------------------------------------------- data preparation


def _synvi_module(root: Path) -> VIReIDDataModule:
    synvi = {"layout": "sysu", "seed": 0, "num_ids": 8, "preset": "easy"}
    return VIReIDDataModule("sysu", str(root), seed=1, bn_replicas=1, synvi=synvi)


def _write_marker(dm: VIReIDDataModule, digest: str | None = None) -> None:
    from gur_lightning.synvi import MARKER_NAME, parameter_hash, tree_parameters

    expected = parameter_hash(tree_parameters("sysu", seed=0, num_ids=8, preset="easy"))
    Path(dm.root).mkdir(parents=True, exist_ok=True)
    marker = {"generator": "synvi", "hash": digest or expected}
    (Path(dm.root) / MARKER_NAME).write_text(json.dumps(marker))


def test_other_local_ranks_wait_for_the_tree_of_local_rank_zero(tmp_path, monkeypatch):
    dm = _synvi_module(tmp_path / "tree")
    assert not dm.is_prepared()
    with pytest.raises(TimeoutError, match=str(tmp_path / "tree")):
        dm.wait_until_prepared(timeout_s=0.05, poll_s=0.01)
    _write_marker(dm, digest="0" * 64)  # a tree of other parameters is not ready
    assert not dm.is_prepared()
    # Local rank 1 of a torchrun / SLURM job never generates; it returns once rank 0's marker
    # (written last by the generator) carries the expected parameter hash.
    monkeypatch.setattr(dm, "prepare_data", lambda: pytest.fail("rank 1 generated data"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    timer = threading.Timer(0.2, _write_marker, args=(dm,))
    timer.start()
    try:
        prepare_data_once(dm)
    finally:
        timer.cancel()
    assert dm.is_prepared()


def test_local_rank_comes_from_the_launcher_environment():
    assert launch_local_rank({}) == 0
    assert launch_local_rank({"LOCAL_RANK": "3"}) == 3
    assert launch_local_rank({"SLURM_LOCALID": "2"}) == 2
    real = VIReIDDataModule("sysu", "/nonexistent", seed=1, bn_replicas=1)
    assert real.is_prepared()  # real data: nothing to make


# --------------------------------------------------------------------------- 2-process run


def _digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class RankRecorder(Callback):
    """Record, on each rank, what must agree across ranks; saved as ``rank<r>.pt``.

    Added first (``train(extra_callbacks=...)``), so its ``on_train_epoch_end`` sees the trained
    memories before the Reclustering callback installs the next phase's.
    """

    def __init__(self, out_dir: str, max_trials: int) -> None:
        self.out_dir = out_dir
        self.max_trials = max_trials
        self.phases: list[dict] = []
        self.batches: list[dict[str, list[int]]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        recluster = next(c for c in trainer.callbacks if isinstance(c, Reclustering))
        inst = recluster.installed
        self.phases.append(
            {
                "phase": inst.phase,
                "ok": inst.ok,
                "labels": {m: torch.as_tensor(v) for m, v in inst.labels.items()},
                "initial": {k: v.clone() for k, v in pl_module.memory_tensors().items()},
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(
            {m: sorted(set(batch[m]["label"].tolist())) for m in ("visible", "infrared")}
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.phases[-1]["trained"] = {k: v.clone() for k, v in pl_module.memory_tensors().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        # Every rank takes part: each extracts its shard, the features are gathered.
        metrics = evaluate_splits(
            protocol_splits(dm.dataset, max_trials=self.max_trials),
            model_featurizer(pl_module, dm),
        )
        weights = {k: _digest(v) for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "world_size": trainer.world_size,
                "phases": self.phases,
                "batches": self.batches,
                "weights": weights,
                "metrics": metrics,
            },
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data"
    runs = {}
    # A global batch of 8 visible + 8 infrared images per step, split over 2 processes
    # (P = 2 identities x K = 2 on each rank) ...
    (tmp / "ddp").mkdir()
    runs["ddp"] = train(
        _cfg(
            data,
            tmp / "ddp",
            "trainer=ddp_cpu",
            "data.visible_batch_size=8",
            "data.infrared_batch_size=8",
        ),
        extra_callbacks=[RankRecorder(str(tmp / "ddp"), max_trials=2)],
    )
    # ... and 1 process with the same global batch (8 + 8 images, P = 4).
    (tmp / "single").mkdir()
    runs["single"] = train(
        _cfg(data, tmp / "single", "data.visible_batch_size=8", "data.infrared_batch_size=8"),
        extra_callbacks=[RankRecorder(str(tmp / "single"), max_trials=2)],
    )
    return tmp, runs


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.ddp
def test_ranks_agree_on_labels_memories_weights_and_metrics(ddp_and_single):
    tmp, _ = ddp_and_single
    r0, r1 = _load(tmp / "ddp" / "rank0.pt"), _load(tmp / "ddp" / "rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["phases"]) == len(r1["phases"]) == 11
    for p0, p1 in zip(r0["phases"], r1["phases"], strict=True):
        assert p0["phase"] == p1["phase"] and p0["ok"] == p1["ok"]
        for m in p0["labels"]:
            assert torch.equal(p0["labels"][m], p1["labels"][m]), (p0["phase"], m)
        for key in ("initial", "trained"):
            assert p0[key].keys() == p1[key].keys()
            for name in p0[key]:  # bit-identical memories, at install and after training
                assert torch.equal(p0[key][name], p1[key][name]), (p0["phase"], key, name)
    # Weights and BN buffers identical (DDP all-reduces gradients; buffers averaged per phase).
    assert r0["weights"] == r1["weights"]
    assert r0["metrics"] == r1["metrics"]
    assert any(p["ok"] for p in r0["phases"])


@pytest.mark.slow
@pytest.mark.ddp
def test_ranks_train_on_disjoint_identities(ddp_and_single):
    tmp, _ = ddp_and_single
    r0, r1 = _load(tmp / "ddp" / "rank0.pt"), _load(tmp / "ddp" / "rank1.pt")
    assert len(r0["batches"]) == len(r1["batches"]) > 0
    for b0, b1 in zip(r0["batches"], r1["batches"], strict=True):
        for m in ("visible", "infrared"):
            # data.*_batch_size is global: 8 / 2 ranks / K = 2 -> 2 identities per rank, disjoint.
            assert len(b0[m]) == len(b1[m]) == 2
            assert not set(b0[m]) & set(b1[m])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_run_against_one_process(ddp_and_single):
    tmp, runs = ddp_and_single
    r0 = _load(tmp / "ddp" / "rank0.pt")
    single = _load(tmp / "single" / "rank0.pt")
    # 1. The parent process evaluates rank 0's weights alone (unsharded). Same weights, so the
    #    same metrics as the ranks' sharded evaluation; the features differ only by float
    #    rounding (different batch shapes), hence the tolerance.
    for key, value in r0["metrics"].items():
        assert runs["ddp"][key] == pytest.approx(value, abs=1e-6), key
    history = json.loads((tmp / "ddp" / "clustering_history.json").read_text())
    assert [h["phase"] for h in history] == list(range(11))  # reloaded from last.ckpt

    # 2. Phase 0 is clustered from the same initial weights in both runs: same pseudo-labels,
    #    same centroids (up to float rounding of sharded vs whole-batch extraction).
    p_ddp, p_one = r0["phases"][0], single["phases"][0]
    for m in p_one["labels"]:
        assert torch.equal(p_ddp["labels"][m], p_one["labels"][m]), m
    for name in p_one["initial"]:
        torch.testing.assert_close(p_ddp["initial"][name], p_one["initial"][name])

    # 3. After that the runs diverge by design: the global batch is the same (2 x 4 vs 8 images
    #    per modality, same identities at each step), but each rank draws its own instances and
    #    augmentations and normalises BatchNorm over its own half. Training is therefore only
    #    statistically equivalent; on this tiny benchmark the final test mAP is compared within
    #    MAP_TOLERANCE, just wider than the measured spread between seeds.
    for key in ("test/sysu_all/mAP", "test/sysu_indoor/mAP"):
        assert 0.0 < runs["ddp"][key] <= 1.0
        assert runs["ddp"][key] == pytest.approx(runs["single"][key], abs=MAP_TOLERANCE), key
    assert np.isfinite(list(runs["ddp"].values())).all()


#: |mAP(2 processes) - mAP(1 process)| allowed on the smoke benchmark. Measured spread between
#: seeds (python -m gur_lightning.train +experiment=smoke seed=S, 1 process with batches of 8,
#: S = 1..4; trainer=ddp_cpu, S = 1..3): all-search mAP 0.275-0.390, indoor mAP 0.380-0.505, i.e.
#: ranges of up to 0.125 with no systematic 1-vs-2-process offset (means 0.347 vs 0.327 and
#: 0.450 vs 0.437). The bound is a sanity check (no collapse, no systematic bias beyond seed
#: noise), not an equivalence test: the smoke test sets hold 8-24 queries.
MAP_TOLERANCE = 0.15


#: Seconds rank 0 waits before exiting in the failure test (rank 1 needs milliseconds).
RANK0_EXIT_DELAY_S = 5.0


class FailOnRankZero(Callback):
    """Make rank 0's clustering of one phase raise a non-clustering error (a bug, say).

    The Reclustering callback's stage policy (its public ``policy``) is replaced in every worker
    by one that fails in that phase; only rank 0 runs the policy. Each worker writes the
    exception that leaves the re-clustering hook to ``error_rank<r>.txt`` (Lightning runs
    ``on_exception`` hooks in the spawn parent only, not in the workers).
    """

    def __init__(self, phase: int, out_dir: str) -> None:
        self.phase = phase
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage) -> None:
        import time

        recluster = next(c for c in trainer.callbacks if isinstance(c, Reclustering))
        policy, epoch_end = recluster.policy, recluster.on_train_epoch_end
        phase_index, rank, out = self.phase, trainer.global_rank, Path(self.out_dir)

        def failing_policy(phase, features, identities, prototypes, options):
            if phase.index == phase_index and rank == 0:
                raise KeyError("injected failure")
            return policy(phase, features, identities, prototypes, options)

        def reporting_epoch_end(*args, **kwargs):
            # Phase 1 is clustered at the end of Lightning epoch 0.
            try:
                return epoch_end(*args, **kwargs)
            except Exception as exc:
                (out / f"error_rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
                if rank == 0:
                    # The spawn parent terminates the other worker as soon as one exits with
                    # an error: hold rank 0 back so that rank 1 can report what it received.
                    time.sleep(RANK0_EXIT_DELAY_S)
                raise

        recluster.policy = failing_policy
        recluster.on_train_epoch_end = reporting_epoch_end


@pytest.mark.slow
@pytest.mark.ddp
def test_a_failure_of_rank_zero_clustering_stops_every_rank(tmp_path):
    import time

    cfg = _cfg(
        tmp_path / "data",
        tmp_path / "run",
        "trainer=ddp_cpu",
        # If the error did not reach rank 1, it would wait in the broadcast until this timeout.
        "trainer.strategy.timeout.minutes=5",
        "eval.test_after_fit=false",
    )
    start = time.monotonic()
    with pytest.raises(Exception, match="injected failure"):
        train(cfg, extra_callbacks=[FailOnRankZero(phase=1, out_dir=str(tmp_path))])
    assert time.monotonic() - start < 240  # well before the 5-minute collective timeout
    # Rank 1 received rank 0's error through the broadcast: not a lost peer or a collective
    # timeout (with NCCL, a peer that dies before a collective leaves the others hanging).
    assert (tmp_path / "error_rank1.txt").read_text() == (
        "RemoteError: rank 0 failed to cluster phase 1: KeyError: 'injected failure'"
    )
    # Rank 0 re-raised its own error.
    assert (tmp_path / "error_rank0.txt").read_text() == "KeyError: 'injected failure'"
