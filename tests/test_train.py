"""End to end: the smoke experiment through every stage with the real readers and clustering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gur_lightning.train import train
from tests.helpers import smoke_config

ROOT = Path(__file__).resolve().parents[1]


def _smoke_cfg(tmp_path: Path, *overrides: str):
    return smoke_config(tmp_path / "data", tmp_path / "run", *overrides)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    metrics = train(_smoke_cfg(tmp, "eval.val_every_n_epochs=1"))
    return tmp, metrics


def test_smoke_run_goes_through_every_stage(smoke_run):
    tmp, metrics = smoke_run
    history = json.loads((tmp / "run" / "clustering_history.json").read_text())
    # Phase p is clustered at fit start (p = 0) or at the end of Lightning epoch p - 1: always
    # before the phase that uses it, never one phase late.
    assert [h["phase"] for h in history] == list(range(len(history)))
    assert [h["trainer_epoch"] for h in history] == list(range(-1, len(history) - 1))
    stages = [h["stage"] for h in history]
    assert set(stages) == {"intra_camera", "inter_camera", "inter_modality"}
    # Epoch 0: 4 intra-camera phases (cycle pairing over 4 visible cameras), stage 2, stage 3;
    # epoch 1 (>= inter_modality.end_epoch): intra, then stage 2 with CMLU.
    assert stages == ["intra_camera"] * 4 + ["inter_camera", "inter_modality"] + [
        "intra_camera"
    ] * 4 + ["inter_camera"]
    for h in history:
        if h["skipped"]:
            continue
        if h["stage"] == "inter_modality":
            assert h["memory_size/shared"] == h["num_clusters"]
        else:
            assert h["memory_size/visible"] == h["visible/num_clusters"]
            assert h["memory_size/infrared"] == h["infrared/num_clusters"]
    last_stage2 = [h for h in history if h["stage"] == "inter_camera"][-1]
    assert "visible_cmlu/num_clusters" in last_stage2 or last_stage2["skipped"]


def test_smoke_run_writes_metrics(smoke_run):
    tmp, metrics = smoke_run
    saved = json.loads((tmp / "run" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("test/sysu_all/mAP", "test/sysu_all/rank1", "test/sysu_indoor/mINP"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["test/sysu_all/trials"] == 2
    assert "cluster/inter_modality/num_clusters" in saved
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()


def test_validation_never_uses_the_test_set(smoke_run):
    tmp, metrics = smoke_run
    # Validation scores the val identities (disjoint from the test ids) after each GUR epoch and
    # keeps the best weights; the reported test numbers are the last epoch's.
    assert 0.0 <= metrics["val/holdout/mAP"] <= 1.0
    assert metrics["val/holdout/mAP_best"] >= metrics["val/holdout/mAP"]
    assert (tmp / "run" / "checkpoints" / "best_val.ckpt").is_file()


@pytest.mark.slow
def test_sweep_of_two_jobs_through_subprocess(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "gur_lightning.train",
        "-m",
        "+experiment=smoke",
        "cluster.eps=0.5,0.6",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "eval.max_trials=1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert "test/sysu_all/mAP" in metrics
        assert (tmp_path / "sweep" / job / ".hydra" / "config.yaml").is_file()


def _eval_cfg(tmp_path: Path, *overrides: str):
    return smoke_config(tmp_path / "data", tmp_path / "eval", *overrides, config_name="eval")


def test_evaluate_command_reproduces_the_training_run_metrics(smoke_run):
    from gur_lightning.evaluate import evaluate

    tmp, metrics = smoke_run
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    evaluated = evaluate(_eval_cfg(tmp, f"ckpt={ckpt}"))
    # The checkpoint holds the last phase's weights: the same numbers as the run's own test.
    for key in ("test/sysu_all/mAP", "test/sysu_all/rank1", "test/sysu_indoor/mINP"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6)
    saved = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert saved["test/sysu_all/trials"] == 2


def test_evaluate_baselines_and_errors(smoke_run):
    from gur_lightning.config import ConfigError
    from gur_lightning.evaluate import evaluate

    tmp, _ = smoke_run
    raw = evaluate(_eval_cfg(tmp, "features=raw_pixels"))
    assert 0.0 <= raw["test/sysu_all/mAP"] <= 1.0
    with pytest.raises(ConfigError, match="features=model needs ckpt"):
        evaluate(_eval_cfg(tmp))
    with pytest.raises(FileNotFoundError, match="no-such.ckpt"):
        evaluate(_eval_cfg(tmp, f"ckpt={tmp / 'no-such.ckpt'}"))
    with pytest.raises(ConfigError, match="features='pixels'"):
        evaluate(_eval_cfg(tmp, "features=pixels"))


def test_validation_state_survives_a_checkpoint(smoke_run):
    import torch

    from gur_lightning.callbacks.validation import PeriodicValidation

    tmp, metrics = smoke_run
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "PeriodicValidation" in k]
    restored = PeriodicValidation([], 1, None)
    restored.load_state_dict(state)
    assert restored.best_map == pytest.approx(metrics["val/holdout/mAP_best"])
    assert len(restored.history) >= 1
