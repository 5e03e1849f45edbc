"""Recipes, DataParallel replicas in the config, global batches and the reference's reporting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from gur_lightning.callbacks.validation import SELECTED_ON_TEST_FILE
from gur_lightning.config import ConfigError, validate_config
from gur_lightning.data import datamodule as dm_module
from gur_lightning.data.datamodule import LabelledSet, VIReIDDataModule
from gur_lightning.data.samples import Sample
from gur_lightning.train import train
from tests.helpers import compose_config, smoke_config

REAL = ("sysu", "regdb", "llcm")


def _real(name: str, *overrides: str):
    return compose_config(f"+experiment={name}", "data.root=/data/x", *overrides)


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_real_data_experiments_default_to_the_official_recipe(name, trainer):
    cfg = _real(name, f"trainer={trainer}")
    validate_config(cfg)
    assert cfg.recipe == "official"
    assert cfg.model.bn_replicas == 4
    assert cfg.cluster.cae_legacy_slicing is True
    assert cfg.eval.select_on_test is True
    # fp32 and no SyncBatchNorm whatever the trainer group says (gpu: bf16, ddp: SyncBN).
    assert cfg.trainer.precision == "32-true"
    assert cfg.trainer.sync_batchnorm is False


@pytest.mark.parametrize("name", REAL)
def test_recipe_fixed_is_the_schema_default(name):
    cfg = _real(name, "recipe=fixed", "trainer=ddp")
    validate_config(cfg)
    assert cfg.recipe == "fixed" and cfg.model.bn_replicas == 1
    assert cfg.cluster.cae_legacy_slicing is False and cfg.eval.select_on_test is False
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.sync_batchnorm is True


@pytest.mark.parametrize("name", ["synvi", "synvi_regdb", "smoke"])
def test_synvi_experiments_default_to_fixed(name):
    cfg = compose_config(f"+experiment={name}", "paths.data_dir=/tmp/x")
    assert cfg.recipe == "fixed" and cfg.model.bn_replicas == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.bn_replicas=0"], r"model.bn_replicas=0 is invalid: expected an integer >= 1"),
        (["model.bn_replicas=-2"], r"model.bn_replicas=-2 is invalid"),
        # 256 visible rows (two views of 128) do not split into 3 replicas.
        (["model.bn_replicas=3"], r"data.visible_batch_size=128 is invalid: .*256 rows .*=3"),
        (
            ["model.bn_replicas=4", "data.num_instances=2", "data.infrared_batch_size=258"],
            r"data.infrared_batch_size=258 is invalid: .*258 rows split into .*=4",
        ),
        (
            ["trainer=ddp", "trainer.devices=8", "model.bn_replicas=4"],
            r"model.bn_replicas=4 is invalid: expected a multiple of the 8 training processes",
        ),
        (
            ["trainer=ddp", "trainer.devices=3", "recipe=fixed"],
            r"data.visible_batch_size=128 is invalid: expected a global batch that splits into "
            r"3 shards",
        ),
        (
            ["trainer=ddp", "recipe=fixed", "model.bn_replicas=4"],
            r"trainer.sync_batchnorm=True is invalid: expected false with model.bn_replicas=4",
        ),
        (["recipe=official", "eval.test_after_fit=false"], r"eval.select_on_test=True"),
    ],
)
def test_bad_replica_settings_are_refused_naming_the_key(overrides, message):
    cfg = _real("sysu", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_non_integer_replicas_fail_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        _real("sysu", "model.bn_replicas=2.5")
    assert "bn_replicas" in str(err.value)


def test_unknown_recipe_is_refused():
    with pytest.raises(ConfigCompositionException, match="recipe"):
        _real("sysu", "recipe=paper")


# ------------------------------------------------------------------- global batch per rank


def _labelled(num_ids: int, per_id: int = 4, modality: str = "infrared") -> LabelledSet:
    samples = [
        Sample(path=f"{modality}{i}_{j}.jpg", pid=i, camid=1 + j % 2, modality=modality)
        for i in range(num_ids)
        for j in range(per_id)
    ]
    return LabelledSet.from_labels(samples, np.repeat(np.arange(num_ids), per_id))


def _dm(**kwargs) -> VIReIDDataModule:
    kwargs = {"seed": 1, "bn_replicas": 1, "num_workers": 0, **kwargs}
    return VIReIDDataModule("sysu", "/nowhere", num_instances=2, **kwargs)


def _installed_loaders(
    dm: VIReIDDataModule, visible: LabelledSet, infrared: LabelledSet, num_batches: int = 1
) -> dict:
    """Install a phase's labels as the callback does; this rank's loaders by modality."""
    dm.set_pseudo_labels(visible, infrared, num_batches=num_batches, phase_index=0)
    return dict(dm.train_dataloader().iterables)


def _rank_batches(dm: VIReIDDataModule, visible: LabelledSet, infrared: LabelledSet) -> dict:
    """Images per batch of this rank's visible and infrared loaders."""
    return {
        m: loader.batch_size for m, loader in _installed_loaders(dm, visible, infrared).items()
    }


@pytest.mark.parametrize(("world", "expected"), [(1, 16), (2, 8), (4, 4), (8, 2)])
def test_each_rank_takes_its_share_of_the_global_batch(monkeypatch, world, expected):
    monkeypatch.setattr(dm_module, "get_world_size", lambda: world)
    dm = _dm(visible_batch_size=16, infrared_batch_size=16)
    batches = _rank_batches(dm, _labelled(64, modality="visible"), _labelled(64))
    assert batches["infrared"] == expected


def test_a_global_batch_that_does_not_divide_is_refused(monkeypatch):
    monkeypatch.setattr(dm_module, "get_world_size", lambda: 3)
    # The visible batch divides (3 shards x 2); the infrared one does not.
    dm = _dm(visible_batch_size=12, infrared_batch_size=16)
    with pytest.raises(
        ValueError, match=r"data.infrared_batch_size=16 is the global batch: .*3 x 2"
    ):
        _rank_batches(dm, _labelled(64, modality="visible"), _labelled(64))
    monkeypatch.setattr(dm_module, "get_world_size", lambda: 2)
    dm = _dm(bn_replicas=3, visible_batch_size=16, infrared_batch_size=16)
    with pytest.raises(ValueError, match=r"model.bn_replicas=3 is not a multiple of the 2"):
        _rank_batches(dm, _labelled(64, modality="visible"), _labelled(64))


def test_a_shrunk_batch_keeps_the_replica_chunks_equal(monkeypatch):
    monkeypatch.setattr(dm_module, "get_world_size", lambda: 1)
    visible, infrared = _labelled(7, modality="visible"), _labelled(7)
    # 7 infrared clusters for P = 8: without replicas the batch is 7 x 2 ...
    batches = _rank_batches(_dm(visible_batch_size=16, infrared_batch_size=16), visible, infrared)
    assert batches["infrared"] == 14
    # ... with 4 replicas of 2-image identities P must be even: 6 x 2 (3 rows per replica).
    dm = _dm(bn_replicas=4, visible_batch_size=16, infrared_batch_size=16)
    batches = _rank_batches(dm, visible, infrared)
    assert batches["infrared"] == 12
    # Visible rows hold two views: 7 identities x 2 images x 2 views = 28 rows split into 4.
    assert batches["visible"] == 14


def test_paired_ranks_hold_the_two_views_of_the_same_visible_images(monkeypatch):
    # R = 4 on 4 processes: one replica per rank, so ranks r and r + 2 share visible images.
    dm = _dm(visible_batch_size=8, infrared_batch_size=8, bn_replicas=4)
    monkeypatch.setattr(dm_module, "get_world_size", lambda: 4)
    assert [dm.visible_layout(r, 4) for r in range(4)] == [
        (0, 2, 1),
        (1, 2, 1),
        (0, 2, 2),
        (1, 2, 2),
    ]
    drawn, datasets = {}, {}
    for rank in range(4):
        monkeypatch.setattr(dm_module, "get_rank", lambda rank=rank: rank)
        loaders = _installed_loaders(
            dm, _labelled(16, modality="visible"), _labelled(16), num_batches=3
        )
        # Per rank: 8 visible images over 2 shards (one view each), 8 infrared over 4 ranks.
        assert {m: loader.batch_size for m, loader in loaders.items()} == {
            "visible": 4,
            "infrared": 2,
        }
        drawn[rank] = {m: list(loader.sampler) for m, loader in loaders.items()}
        datasets[rank] = loaders["visible"].dataset
    assert (
        drawn[0]["visible"] == drawn[2]["visible"] and drawn[1]["visible"] == drawn[3]["visible"]
    )
    assert not set(drawn[0]["visible"]) & set(drawn[1]["visible"])
    assert len({tuple(d["infrared"]) for d in drawn.values()}) == 4  # infrared: own identities
    for rank, dataset in datasets.items():
        assert dataset.second_transform is None
        assert ("ChannelExchange" in repr(dataset.transform)) == (rank >= 2)
    # R = 4 on 2 processes: two replicas per rank, each rank holds both views of its images.
    assert [dm.visible_layout(r, 2) for r in range(2)] == [(0, 2, None), (1, 2, None)]


# ---------------------------------------------------------------- training and reporting


@pytest.fixture(scope="module")
def official_smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    run = tmp / "run"
    metrics = train(
        smoke_config(
            tmp / "data",
            run,
            "~logger",
            "recipe=official",
            "eval.select_on_test_from_epoch=0",
            "trainer.enable_progress_bar=false",
        )
    )
    return tmp, run, metrics


def test_official_recipe_reports_the_test_selected_figures_apart(official_smoke):
    tmp, run, metrics = official_smoke
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["bn_replicas"] == 4
    history = ckpt["callbacks"]["TestSetSelection"]["history"]
    assert [h["gur_epoch"] for h in history] == [0.0, 1.0]
    best = max(history, key=lambda h: h["mAP"])
    assert metrics["test_selected_on_test/gur_epoch"] == best["gur_epoch"]
    # The selected weights were scored with the full protocol: its first trial is the mAP the
    # selection saw, so the trial-0 figure of the full run equals that history entry.
    assert (run / "checkpoints" / SELECTED_ON_TEST_FILE).is_file()
    for key in ("sysu_all/mAP", "sysu_all/rank1", "sysu_indoor/mAP"):
        assert f"test_selected_on_test/{key}" in metrics and f"test/{key}" in metrics
    if best["gur_epoch"] == 1.0:  # the last epoch was selected: the same weights
        assert metrics["test_selected_on_test/sysu_all/mAP"] == metrics["test/sysu_all/mAP"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test_selected_on_test/gur_epoch"] == best["gur_epoch"]


def test_selected_weights_give_the_trial_zero_map_the_selection_saw(official_smoke):
    from gur_lightning.evaluation import evaluate_splits, protocol_splits
    from gur_lightning.train import build_datamodule, build_module, model_featurizer

    tmp, run, metrics = official_smoke
    cfg = smoke_config(tmp / "data", tmp / "rescore", "~logger", "recipe=official")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg)
    module.load_state_dict(
        torch.load(run / "checkpoints" / SELECTED_ON_TEST_FILE, weights_only=True)
    )
    splits = protocol_splits(dm.dataset, max_trials=1)
    scored = evaluate_splits({"sysu_all": splits["sysu_all"]}, model_featurizer(module, dm))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = max(ckpt["callbacks"]["TestSetSelection"]["history"], key=lambda h: h["mAP"])
    assert scored["test/sysu_all/mAP"] == pytest.approx(best["mAP"], abs=1e-6)


def test_fixed_recipe_reports_no_test_selected_figures(tmp_path):
    metrics = train(
        smoke_config(
            tmp_path / "data",
            tmp_path / "run",
            "~logger",
            "schedule.epochs=1",
            "trainer.enable_progress_bar=false",
        )
    )
    assert not [k for k in metrics if k.startswith("test_selected_on_test")]
    assert not (tmp_path / "run" / "checkpoints" / SELECTED_ON_TEST_FILE).exists()


def test_a_checkpoint_resumes_only_with_its_own_replica_count(official_smoke, tmp_path: Path):
    tmp, run, _ = official_smoke
    cfg = smoke_config(
        tmp / "data",
        tmp_path / "resumed",
        "~logger",
        "recipe=fixed",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.enable_progress_bar=false",
    )
    with pytest.raises(ValueError, match=r"trained with model.bn_replicas=4, this run has "):
        train(cfg)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("replicas", [2, 4])
def test_two_process_ddp_with_replicas_trains_and_ranks_agree(tmp_path, replicas):
    from tests.test_ddp import RankRecorder

    out = tmp_path / "ddp"
    out.mkdir()
    cfg = smoke_config(
        tmp_path / "data",
        out,
        "~logger",
        "trainer=ddp_cpu",
        f"model.bn_replicas={replicas}",
        "data.visible_batch_size=8",
        "data.infrared_batch_size=8",
    )
    metrics = train(cfg, extra_callbacks=[RankRecorder(str(out), max_trials=2)])
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Rank 0's replica-0 BatchNorm statistics reach rank 1 at every phase end: the weights and
    # buffers are identical, so are the evaluations.
    assert r0["weights"] == r1["weights"]
    assert r0["metrics"] == r1["metrics"]
    assert 0.0 < metrics["test/sysu_all/mAP"] <= 1.0
    for b0, b1 in zip(r0["batches"], r1["batches"], strict=True):
        assert not set(b0["infrared"]) & set(b1["infrared"])
        if replicas == 2:  # one replica per rank: the ranks hold the two views of one batch
            assert b0["visible"] == b1["visible"]
        else:
            assert not set(b0["visible"]) & set(b1["visible"])
