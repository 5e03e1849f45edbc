"""Bad input and faults: each gives a clear error or a logged recovery.

Runs go through ``train(cfg)`` with the smoke experiment on a small SynVI tree in the SYSU-MM01
layout, broken on purpose in a copy: missing root or list file, a corrupt image, empty cameras,
DBSCAN finding no cluster, fewer clusters than a batch needs, a NaN loss, and config values out
of range. (A checkpoint from another experiment is tested with the resume feature.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gur_lightning import train as train_mod
from gur_lightning.clustering.policy import cluster_phase
from gur_lightning.config import ConfigError
from gur_lightning.data.check import DataCheckError
from gur_lightning.data.readers import DatasetLayoutError, DatasetPathMissingError, ImageReadError
from gur_lightning.models import module as module_mod
from gur_lightning.models.module import NonFiniteLossError
from gur_lightning.train import build_datamodule, train
from tests.helpers import smoke_config

ROOT = Path(__file__).resolve().parents[1]
#: One GUR epoch through the three stages: 4 intra-camera phases, stage 2, stage 3.
SHORT = ("schedule.epochs=1", "eval.max_trials=1")


def _cfg(tmp: Path, *overrides: str):
    return smoke_config(tmp / "data", tmp / "run", *overrides)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The smoke experiment's SynVI tree, generated once for the module."""
    tmp = tmp_path_factory.mktemp("faults_tree")
    cfg = _cfg(tmp)
    build_datamodule(cfg).prepare_data()
    return Path(cfg.data.root)


def _copy(tree: Path, tmp: Path) -> Path:
    root = tmp / "copy"
    shutil.copytree(tree, root)
    return root


def _on(root: Path, tmp: Path, *overrides: str):
    """Config reading an existing (possibly broken) tree, without regenerating it."""
    return _cfg(tmp, "data.synvi=null", f"data.root={root}", *SHORT, *overrides)


def _history(tmp: Path) -> list[dict]:
    return json.loads((tmp / "run" / "clustering_history.json").read_text())


# ------------------------------------------------------------------------- data layout


def test_missing_data_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DatasetPathMissingError, match="SYSU-MM01 root not found") as err:
        train(_on(missing, tmp_path))
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_missing_list_file_names_the_file(tree, tmp_path):
    root = _copy(tree, tmp_path)
    (root / "exp" / "train_id.txt").unlink()
    with pytest.raises(DatasetPathMissingError, match="train_id.txt"):
        train(_on(root, tmp_path))


def test_corrupt_image_names_the_file(tree, tmp_path):
    root = _copy(tree, tmp_path)
    # The first phase clusters visible camera 1: its images are read at fit start.
    train_ids = (root / "exp" / "train_id.txt").read_text().strip().split(",")
    folders = [root / "cam1" / f"{int(pid):04d}" for pid in train_ids]
    folder = next(f for f in folders if f.is_dir())
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(b"this is not a JPEG")
    # The data check names it before training starts...
    with pytest.raises(DataCheckError, match="cannot identify image file") as check_err:
        train(_on(root, tmp_path))
    assert [b.path for b in check_err.value.bad_images] == [str(victim)]
    # ...and without the check, the first read of it does.
    with pytest.raises(ImageReadError, match="cannot identify image file") as err:
        train(_on(root, tmp_path, "data.check=false"))
    assert err.value.path == str(victim)
    assert str(victim) in str(err.value)


def test_empty_identity_folder_names_the_folder(tree, tmp_path):
    root = _copy(tree, tmp_path)
    folder = sorted((root / "cam1").iterdir())[0]
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DatasetLayoutError, match="holds no images") as err:
        train(_on(root, tmp_path))
    assert str(folder) in str(err.value)


@pytest.mark.slow
def test_empty_camera_is_left_out_of_the_schedule(tree, tmp_path):
    root = _copy(tree, tmp_path)
    for folder in (root / "cam2").iterdir():  # visible camera 2 has no image at all
        shutil.rmtree(folder)
    metrics = train(_on(root, tmp_path))
    history = _history(tmp_path)
    intra = [h for h in history if h["stage"] == "intra_camera"]
    # Cycle pairing over the 3 remaining visible cameras (1, 4, 5) and infrared 3, 6.
    assert [h["label"].split()[-1] for h in intra] == ["v1/i3", "v4/i6", "v5/i3"]
    assert not any(h["skipped"] for h in history)
    assert 0.0 <= metrics["test/sysu_all/mAP"] <= 1.0


def test_modality_without_any_camera_is_a_clear_error(tree, tmp_path):
    root = _copy(tree, tmp_path)
    for cam in ("cam3", "cam6"):  # both infrared cameras empty
        for folder in (root / cam).iterdir():
            shutil.rmtree(folder)
    with pytest.raises(DatasetLayoutError, match="sysu: no infrared training image under") as e:
        train(_on(root, tmp_path))
    assert str(root) in str(e.value)


# ------------------------------------------------------------------------- clustering


def test_dbscan_finding_no_cluster_skips_the_phase_with_a_warning(tree, tmp_path, caplog):
    # No point has 10**4 neighbours: DBSCAN marks every sample an outlier. With the check of
    # trained phases off, nothing crashes: the (untrained) model is still evaluated.
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        metrics = train(
            _cfg(tmp_path, *SHORT, "cluster.min_samples=10000", "eval.min_trained_share=0")
        )
    assert "phase 0 (epoch 0 intra_camera v1/i3) skipped: ValueError: DBSCAN found no " in (
        caplog.text
    )
    assert "visible samples" in caplog.text
    history = _history(tmp_path)
    assert history and all(h["skipped"] for h in history)
    assert 0.0 <= metrics["test/sysu_all/mAP"] <= 1.0


def test_fewer_clusters_than_a_batch_needs_skips_with_a_warning(tree, tmp_path, caplog):
    # K = 2 images per identity: 200 infrared images need 100 pseudo-identities per batch, more
    # than the ~50 training identities can give. With shrink_batch off the phase is skipped.
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        metrics = train(
            _cfg(
                tmp_path,
                *SHORT,
                "data.infrared_batch_size=200",
                "data.shrink_batch=false",
                "eval.min_trained_share=0",
            )
        )
    assert "phase 0 (epoch 0 intra_camera v1/i3) skipped: IdentitySampler needs at least" in (
        caplog.text
    )
    assert "world_size * P = 1 * 100 = 100 identities" in caplog.text
    assert _history(tmp_path)[0]["skipped"]
    assert 0.0 <= metrics["test/sysu_all/mAP"] <= 1.0


def test_fewer_clusters_than_a_batch_needs_lowers_the_batch(tree, tmp_path, caplog):
    # The default: the phase trains on every pseudo-identity it has, with a warning.
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        train(_cfg(tmp_path, *SHORT, "data.infrared_batch_size=200"))
    assert "infrared pseudo-identities for P=100 per batch; batch lowered to" in caplog.text
    history = _history(tmp_path)
    assert not history[0]["skipped"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] > 0


def test_a_skipped_phase_does_not_end_training(tree, tmp_path, monkeypatch):
    def no_cluster_in_phase_0(phase, features, identities, prototypes, options):
        # The real DBSCAN with an impossible core size, for the first phase only.
        if phase.index == 0:
            options = dataclasses.replace(options, min_samples=10**4)
        return cluster_phase(phase, features, identities, prototypes, options)

    # The stage policy is the callback's constructor argument.
    build = functools.partial(train_mod.build_reclustering, policy=no_cluster_in_phase_0)
    monkeypatch.setattr(train_mod, "build_reclustering", build)
    train(_cfg(tmp_path, *SHORT))
    history = _history(tmp_path)
    assert [h["skipped"] for h in history] == [True] + [False] * 5
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == len(history) - 1  # the phases after the skipped one trained


# ------------------------------------------------------------------------- training


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    tree, tmp_path, monkeypatch
):
    calls = {"n": 0}
    real = module_mod.adc_loss

    def loss_nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        loss, parts = real(*args, **kwargs)
        return (loss * math.nan if calls["n"] == 3 else loss), parts

    monkeypatch.setattr(module_mod, "adc_loss", loss_nan_at_step_3)
    # Smoke phases 0-3 have one step each: the third step is phase 2's first batch.
    with pytest.raises(NonFiniteLossError) as err:
        train(_cfg(tmp_path, *SHORT))
    message = str(err.value)
    assert "non-finite training loss nan" in message
    assert "phase 2 (GUR epoch 0), batch 0, global step 2" in message
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"Last good checkpoint: {last}" in message
    # last.ckpt is the end of phase 1, written before the bad step, with finite weights.
    ckpt = torch.load(last, weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 2)
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_nan_loss_before_any_checkpoint_says_so(tree, tmp_path, monkeypatch):
    real = module_mod.adc_loss

    def always_inf(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss + math.inf, parts

    monkeypatch.setattr(module_mod, "adc_loss", always_inf)
    with pytest.raises(NonFiniteLossError, match="phase 0 .*Last good checkpoint: none written"):
        train(_cfg(tmp_path, *SHORT))


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cluster.eps=1.5", "cluster.eps=1.5 is invalid: expected a Jaccard radius in (0, 1)"),
        ("model.memory.momentum=1.0", "model.memory.momentum=1.0 is invalid: expected in [0, 1)"),
        (
            "data.infrared_batch_size=5",
            "data.infrared_batch_size=5 is invalid: expected a multiple",
        ),
        ("schedule.epochs=0", "schedule.epochs must be > 0, got 0"),
    ],
)
def test_config_value_out_of_range_names_the_key(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        train(_cfg(tmp_path, override))
    assert expected in str(err.value)
    assert not (tmp_path / "run").exists()  # rejected before anything is built


@pytest.mark.slow
def test_config_error_reaches_the_command_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "gur_lightning.train",
        "+experiment=smoke",
        "cluster.eps=1.5",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config value cluster.eps=1.5 is invalid" in proc.stderr
    assert not (tmp_path / "data").exists()
