"""Checkpoints are loaded as data: every bad file is one clear error, and nothing in it runs."""

from __future__ import annotations

import ast
import pickle
import random
from pathlib import Path

import pytest
import torch

from gur_lightning.train import build_datamodule, build_module, train
from gur_lightning.utils import checkpoints as ck
from gur_lightning.utils.checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
)
from tests.helpers import smoke_config


class _WritesAFile:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _crafted(path: Path, marker: Path) -> Path:
    """A checkpoint-looking file whose unpickling would create ``marker``."""
    torch.save(
        {"state_dict": {}, "epoch": 0, "global_step": 0, "loops": {}, "callbacks": {},
         "payload": _WritesAFile(marker)},
        path,
    )  # fmt: skip
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad file with the words its error must contain."""
    text = tmp_path / "notes.ckpt"
    text.write_text("this is a text file, not a checkpoint\n")
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(20_000)}, "epoch": 0}, good)
    truncated = tmp_path / "truncated.ckpt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    listing = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], listing)
    crafted = _crafted(tmp_path / "crafted.ckpt", tmp_path / "MARKER")
    return {
        "text": (text, "it is not a readable torch checkpoint"),
        "noise": (noise, "it is not a readable torch checkpoint"),
        "truncated": (truncated, "it is damaged or truncated"),
        "list": (listing, "it holds a list, not a dictionary"),
        "crafted": (crafted, "it holds Python objects, not only tensors and plain data"),
    }


KINDS = ("text", "noise", "truncated", "list", "crafted")


@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_refuses_each_bad_file_in_one_sentence(tmp_path, kind) -> None:
    path, reason = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, what="a test checkpoint")
    message = str(err.value)
    assert message.startswith(f"{str(path)!r} is not a test checkpoint: {reason}")
    assert "\n" not in message  # one sentence, not torch's multi-paragraph advice
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "MARKER").exists()


def test_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path) -> None:
    # The refusal above is meaningful only if the crafted file does what it claims.
    marker = tmp_path / "MARKER"
    crafted = _crafted(tmp_path / "crafted.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"builtins\.open|io\.open"):
        load_checkpoint(crafted)
    assert not marker.exists()
    torch.load(crafted, weights_only=False)
    assert marker.exists()


def test_missing_file_and_missing_entries(tmp_path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist; expected a test") as err:
        load_checkpoint(tmp_path / "nope.ckpt", what="a test checkpoint")
    assert isinstance(err.value, FileNotFoundError)
    other = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)  # a bare state dict of another program
    with pytest.raises(CheckpointError, match=r"it lacks the entries \['state_dict'\]"):
        load_checkpoint(other)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, good)
    loaded = load_checkpoint(good)
    assert loaded["epoch"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    package = Path(ck.__file__).resolve().parents[1]
    calls = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                flags = [k.value for k in node.keywords if k.arg == "weights_only"]
                calls.append((path.name, node.lineno, flags))
    assert len(calls) >= 3, "the scan found too few torch.load calls to be looking right"
    assert [c for c in calls if not (c[2] and isinstance(c[2][0], ast.Constant))] == []
    assert [c for c in calls if c[2][0].value is not True] == []


# ------------------------------------------------------------------------ evaluate's loading


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke experiment's SynVI tree (data dir)."""
    tmp = tmp_path_factory.mktemp("ckpt_smoke")
    build_datamodule(smoke_config(tmp / "data", tmp / "run")).prepare_data()
    return tmp / "data"


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_loading_refuses_bad_files(smoke, tmp_path, kind) -> None:
    from gur_lightning.evaluate import load_checkpoint_weights

    path, reason = _bad_files(tmp_path)[kind]
    module = build_module(smoke_config(smoke, tmp_path / "run"))
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint_weights(module, str(path))
    assert "a checkpoint written by gur_lightning.train" in str(err.value)
    assert not (tmp_path / "MARKER").exists()


def test_evaluate_refuses_another_backbone_naming_the_shapes(smoke, tmp_path) -> None:
    from gur_lightning.evaluate import load_checkpoint_weights

    resnet50 = build_module(smoke_config(smoke, tmp_path / "run", "model.backbone.depth=50"))
    path = tmp_path / "resnet50.ckpt"
    torch.save({"state_dict": resnet50.state_dict()}, path)
    resnet18 = build_module(smoke_config(smoke, tmp_path / "run"))
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_weights(resnet18, str(path), hint="model.backbone.depth=18")
    message = str(err.value)
    assert "holds the weights of another network than the configured one" in message
    assert "(model.backbone.depth=18)" in message
    # ResNet-50's first bottleneck conv is 1x1 (64 -> 64), ResNet-18's 3x3.
    assert (
        "'backbone.body.layer1.0.conv1.weight' is [64, 64, 1, 1] in the file but "
        "[64, 64, 3, 3] in the model" in message
    ) or "shapes differ" in message
    assert "are unexpected" in message  # conv3 / downsample exist only in ResNet-50
    # Nothing was loaded.
    assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())


def test_evaluate_command_refuses_a_crafted_checkpoint(smoke, tmp_path) -> None:
    from gur_lightning.evaluate import evaluate

    crafted = _crafted(tmp_path / "crafted.ckpt", tmp_path / "MARKER")
    cfg = smoke_config(smoke, tmp_path / "eval", f"ckpt={crafted}", config_name="eval")
    with pytest.raises(CheckpointError, match="refused without running them"):
        evaluate(cfg)
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "eval" / "metrics.json").exists()


# ------------------------------------------------------------------------ the resume path


@pytest.mark.parametrize("kind", ["crafted", "text", "truncated"])
def test_resume_refuses_bad_files_before_anything_runs(smoke, tmp_path, kind) -> None:
    path, reason = _bad_files(tmp_path)[kind]
    cfg = smoke_config(smoke, tmp_path / "run", f"ckpt_path={path}")
    with pytest.raises(CheckpointError, match=reason) as err:
        train(cfg)
    assert "ckpt_path: a checkpoint written by gur_lightning.train" in str(err.value)
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_lightning_itself_loads_the_resume_file_as_data(smoke, tmp_path, monkeypatch) -> None:
    # Even past our own check, Lightning is asked for weights_only=True and runs nothing.
    import lightning.fabric.plugins.io.torch_io as torch_io

    monkeypatch.setattr("gur_lightning.train.check_resume_checkpoint", lambda path: None)
    asked: list[object] = []
    real_load = torch_io.pl_load

    def recording_load(path, map_location=None, weights_only=None):
        asked.append(weights_only)
        return real_load(path, map_location=map_location, weights_only=weights_only)

    monkeypatch.setattr(torch_io, "pl_load", recording_load)
    crafted = _crafted(tmp_path / "crafted.ckpt", tmp_path / "MARKER")
    cfg = smoke_config(smoke, tmp_path / "run", f"ckpt_path={crafted}", "eval.max_trials=1")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(cfg)
    assert asked == [True]
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # no step was taken
