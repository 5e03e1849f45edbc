"""The SynVI pretrained start: own world, visible only, cached, loaded like ImageNet weights."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from gur_lightning import pretrain
from gur_lightning.config import ConfigError, synvi_pretrain_config, validate_config
from gur_lightning.models.backbone import DualStreamResNet
from gur_lightning.synvi import config as synvi_config
from gur_lightning.synvi import pretraining
from gur_lightning.synvi import world as world_module
from gur_lightning.synvi.config import resolve_config
from gur_lightning.synvi.generate import tree_parameters
from gur_lightning.synvi.layouts import build_world
from gur_lightning.synvi.render import render_image
from gur_lightning.synvi.world import MAX_SEED, NAMESPACE_PRETRAIN, World
from gur_lightning.train import build_module
from tests.helpers import smoke_config

#: A pretraining that takes about a second: 16 images of 4 identities at 32 x 16, two steps.
TINY = {
    "height": 32,
    "width": 16,
    "num_ids": 4,
    "num_cameras": 2,
    "images_per_camera": 2,
    "epochs": 1,
    "batch_size": 8,
}
#: The same, as a Hydra override of model.backbone.synvi_pretrain.
TINY_OVERRIDE = (
    "model.backbone.synvi_pretrain="
    "{num_ids:4,num_cameras:2,images_per_camera:2,epochs:1,batch_size:8}"
)


def tiny(**changes) -> pretraining.PretrainConfig:
    return pretraining.pretrain_config({**TINY, **changes})


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- the world


def _identity_records(world: World) -> tuple[set, set]:
    shapes = {person.shape for person in world.identities.values()}
    colours = {person.appearance.colours.tobytes() for person in world.identities.values()}
    return shapes, colours


def test_pretraining_world_shares_no_identity_with_benchmark_trees():
    benchmark_shapes: set = set()
    benchmark_colours: set = set()
    for layout in ("sysu", "regdb", "llcm"):
        for seed, preset in itertools.product((0, 1, 2, 7), ("easy", "default", "hard")):
            config = resolve_config(layout, preset=preset, height=32, width=16)
            world = build_world(layout, config, seed)
            shapes, colours = _identity_records(world)
            benchmark_shapes |= shapes
            benchmark_colours |= colours
    for seed in (0, 1, 2, 7):
        own = pretraining.build_pretrain_world(tiny(num_ids=60, seed=seed))
        shapes, colours = _identity_records(own)
        assert len(shapes) > 50  # shape twins aside, every identity has its own shape
        assert not shapes & benchmark_shapes
        assert not colours & benchmark_colours
        # The same world without its namespace IS a benchmark population (the population
        # stream is keyed by the seed only): the comparison above does detect coincidences.
        bare = build_world(
            pretraining.WORLD_LAYOUT, pretraining.world_config(tiny(num_ids=60)), seed
        )
        assert len(_identity_records(bare)[0] & benchmark_shapes) > 50


def test_namespace_word_is_no_benchmark_stream_tag_and_seeds_are_one_key_word():
    tags = {v for k, v in vars(world_module).items() if k.startswith("TAG_")}
    assert tags and NAMESPACE_PRETRAIN not in tags and NAMESPACE_PRETRAIN > max(tags)
    # Benchmark keys (seed, tag, ...) and pretraining keys (seed, NAMESPACE_PRETRAIN, tag, ...)
    # differ in their second word; a seed past 32 bits would span two words and is refused.
    with pytest.raises(ValueError, match="non-negative integer <= 4294967295"):
        tree_parameters("sysu", seed=MAX_SEED + 1)
    with pytest.raises(ValueError, match="seed"):
        tiny(seed=MAX_SEED + 1)


def test_pretraining_world_has_visible_cameras_only_and_renders_no_infrared(tmp_path, monkeypatch):
    own = pretraining.build_pretrain_world(tiny())
    assert {camera.modalities for camera in own.cameras.values()} == {("visible",)}
    with pytest.raises(ValueError, match="not 'infrared'"):
        render_image(own, 1, 1, "infrared", 0)
    drawn = []

    def recording_render(world, pid, cam, modality, index):
        drawn.append(modality)
        return render_image(world, pid, cam, modality, index)

    monkeypatch.setattr(pretrain, "render_image", recording_render)
    pretrain.ensure_pretrained_start(tiny(), tmp_path)
    assert drawn == ["visible"] * tiny().num_images == ["visible"] * 16


def test_render_set_labels_every_identity_in_every_camera():
    world = pretraining.build_pretrain_world(tiny())
    images, labels = pretrain.render_pretrain_set(world, tiny().cameras_of_identity)
    assert images.shape == (16, 3, 32, 16) and images.dtype == torch.uint8
    # 4 identities x 2 cameras x 2 images, ordered by identity: classes pid - 1.
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def test_one_camera_per_identity_renders_each_person_in_its_own_camera_only():
    cfg = tiny(cameras_per_identity=1, images_per_camera=3)
    world = pretraining.build_pretrain_world(cfg)
    images, labels = pretrain.render_pretrain_set(world, cfg.cameras_of_identity)
    assert cfg.num_images == 4 * 1 * 3 == len(labels)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    # Identity pid in camera (pid - 1) % 2 of the sorted cameras: 1 -> first, 2 -> second...
    first, second = sorted(world.cameras)
    expected_cams = {1: first, 2: second, 3: first, 4: second}
    for row, pid in enumerate(pid for pid in (1, 2, 3, 4) for _ in range(3)):
        k = row % 3
        drawn = render_image(world, pid, expected_cams[pid], "visible", k)
        assert np.array_equal(images[row].permute(1, 2, 0).numpy(), drawn)
    other = render_image(world, 1, second, "visible", 0)
    assert not np.array_equal(images[0].permute(1, 2, 0).numpy(), other)


def test_augment_flips_and_normalises_like_the_benchmark():
    images = torch.randint(0, 256, (3, 3, 8, 4), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = pretrain.augment(images, tiny(pad=0, flip_p=1.0, colour_jitter=0.0), gen)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.flip(-1).float() / 255 - mean) / std)
    # Pad-crop: each image is its padded self shifted by at most `pad` pixels.
    shifted = pretrain.augment(images, tiny(pad=1, flip_p=0.0, colour_jitter=0.0), gen)
    padded = torch.nn.functional.pad(images.float() / 255, (1, 1, 1, 1))
    for i in range(3):
        windows = [
            (padded[i, :, y : y + 8, x : x + 4] - mean[0]) / std[0]
            for y in range(3)
            for x in range(3)
        ]
        assert any(torch.allclose(shifted[i], w) for w in windows)


def test_colour_jitter_scales_a_grey_image_by_at_most_its_strength():
    # A uniform grey image keeps its grey under contrast and saturation changes; only the
    # brightness factor in [1 - j, 1 + j] moves it.
    images = torch.full((64, 3, 8, 4), 100, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(1)
    out = pretrain.augment(images, tiny(pad=0, flip_p=0.0, colour_jitter=0.2), gen)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = out * std + mean
    per_image = pixels.flatten(1)
    torch.testing.assert_close(per_image.min(1).values, per_image.max(1).values)
    factor = per_image[:, 0] / (100 / 255)
    assert factor.min() >= 0.8 - 1e-5 and factor.max() <= 1.2 + 1e-5
    assert factor.max() - factor.min() > 0.2  # it does vary


# --------------------------------------------------------------------------- weights


def test_weights_load_into_both_stems_and_the_body(tmp_path):
    path = pretrain.ensure_pretrained_start(tiny(), tmp_path)
    assert path.name == pretrain.WEIGHTS_NAME
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    net = DualStreamResNet(18, last_stride=2, pretrained=str(path))
    for stem in ("visible", "infrared"):
        assert torch.equal(net.stems[stem].conv1.weight, state["conv1.weight"])
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(net.stems[stem].bn1, name), state[f"bn1.{name}"])
    for key in ("layer1.0.conv1.weight", "layer3.1.bn2.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(net.body.state_dict()[key], state[key])
    # Trained, not torchvision's initialisation: BatchNorm statistics moved away from (0, 1).
    assert not torch.equal(state["bn1.running_mean"], torch.zeros(64))


def test_build_module_resolves_synvi_to_the_run_specific_entry(tmp_path):
    cfg = smoke_config(
        tmp_path / "data", tmp_path / "run", "model.backbone.pretrained=synvi", TINY_OVERRIDE
    )
    options = synvi_pretrain_config(cfg)
    # The run's network depth, input size, preset and pad; the override's sizes.
    assert (options.depth, options.height, options.width) == (18, 32, 16)
    assert (options.preset, options.pad, options.num_ids) == ("easy", 1, 4)
    module = build_module(cfg)
    entries = list((tmp_path / "data").glob(f"{pretrain.CACHE_PREFIX}*"))
    assert len(entries) == 1
    marker = json.loads((entries[0] / pretrain.MARKER_NAME).read_text())
    assert marker["pretrain"] == options.to_dict()
    state = torch.load(entries[0] / pretrain.WEIGHTS_NAME, weights_only=True)
    for stem in ("visible", "infrared"):
        assert torch.equal(module.backbone.stems[stem].conv1.weight, state["conv1.weight"])
    assert torch.equal(module.backbone.body.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_a_module_whose_weights_come_from_a_checkpoint_builds_no_entry(tmp_path):
    cfg = smoke_config(
        tmp_path / "data", tmp_path / "run", "model.backbone.pretrained=synvi", TINY_OVERRIDE
    )
    build_module(cfg, load_pretrained=False)
    assert not (tmp_path / "data").exists()


def test_building_leaves_the_global_random_state_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pretrain.ensure_pretrained_start(tiny(), tmp_path)
    # A run that builds the entry draws what a run that finds it cached draws.
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------- the cache


def test_cache_is_reused_and_keyed_by_every_parameter(tmp_path, monkeypatch):
    first = pretrain.ensure_pretrained_start(tiny(), tmp_path)
    marker = json.loads((first.parent / pretrain.MARKER_NAME).read_text())
    assert marker["pretrain"] == tiny().to_dict()
    assert 0.0 <= marker["train_accuracy"] <= 1.0 and marker["steps"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached entry must not be trained again")

    monkeypatch.setattr(pretrain, "train_pretrained_start", no_training)
    assert pretrain.ensure_pretrained_start(tiny(), tmp_path) == first
    for change in ({"seed": 1}, {"epochs": 2}, {"lr": 1e-3}, {"preset": "hard"}):
        assert pretrain.entry_dir(tiny(**change), tmp_path) != first.parent, change
    monkeypatch.undo()
    second = pretrain.ensure_pretrained_start(tiny(seed=1), tmp_path)
    assert second.parent != first.parent and first.is_file() and second.is_file()


def test_a_preset_recalibration_gives_a_new_entry(monkeypatch, tmp_path):
    before = pretrain.entry_dir(tiny(), tmp_path)
    knobs = synvi_config.PRESET_KNOBS["default"]
    changed = {**knobs, "clutter": knobs["clutter"] + 1}
    monkeypatch.setitem(synvi_config.PRESET_KNOBS, "default", changed)
    assert pretrain.entry_dir(tiny(), tmp_path) != before


def test_a_damaged_entry_is_rebuilt(tmp_path):
    path = pretrain.ensure_pretrained_start(tiny(), tmp_path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    assert pretrain.ensure_pretrained_start(tiny(), tmp_path) == path
    assert path.stat().st_size == size


@pytest.mark.parametrize("where", ["train_pretrained_start", "install_entry"])
def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch, where):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain.ensure_pretrained_start(tiny(), tmp_path)
    assert _everything_under(tmp_path) == []


def test_a_foreign_folder_is_never_replaced(tmp_path):
    out = pretrain.entry_dir(tiny(), tmp_path)
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SynVI pretrained-start entry"):
        pretrain.ensure_pretrained_start(tiny(), tmp_path)
    assert (out / "notes.txt").read_text() == "mine"
    assert _everything_under(tmp_path) == [out.name, f"{out.name}/notes.txt"]


def test_other_ranks_wait_for_the_entry(tmp_path):
    with pytest.raises(TimeoutError, match=pretrain.CACHE_PREFIX):
        pretrain.wait_for_pretrained_start(tiny(), tmp_path, timeout_s=0.05, poll_s=0.01)
    path = pretrain.ensure_pretrained_start(tiny(), tmp_path)
    assert pretrain.wait_for_pretrained_start(tiny(), tmp_path, timeout_s=0.0) == path


# --------------------------------------------------------------------------- bad input


def test_options_out_of_range_or_unknown_are_named():
    with pytest.raises(ValueError, match="unknown SynVI pretraining option.*'bogus'"):
        pretraining.pretrain_config({"bogus": 1})
    with pytest.raises(ValueError, match="num_ids=1 is invalid"):
        tiny(num_ids=1)
    with pytest.raises(ValueError, match="depth=20 is invalid"):
        tiny(depth=20)
    with pytest.raises(ValueError, match="image size must be at least"):
        tiny(height=16)
    with pytest.raises(ValueError, match=r"cameras_per_identity=3 is invalid: expected None"):
        tiny(cameras_per_identity=3)
    with pytest.raises(ValueError, match="cameras_per_identity=0 is invalid"):
        tiny(cameras_per_identity=0)
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        tiny(lr="fast")
    # One setting, one entry: an integer learning rate is the same float.
    assert pretrain.entry_dir(tiny(lr=1), Path("d")) == pretrain.entry_dir(tiny(lr=1.0), Path("d"))


def test_config_errors_name_the_option(tmp_path):
    def cfg(*overrides):
        return smoke_config(
            tmp_path / "data", tmp_path / "run", "model.backbone.pretrained=synvi", *overrides
        )

    with pytest.raises(ConfigError, match="synvi_pretrain.*'bogus'"):
        validate_config(cfg("model.backbone.synvi_pretrain={bogus:1}"))
    with pytest.raises(ConfigError, match="synvi_pretrain.depth cannot be set"):
        validate_config(cfg("model.backbone.synvi_pretrain={depth:50}"))
    with pytest.raises(ConfigError, match="epochs=0 is invalid"):
        validate_config(cfg("model.backbone.synvi_pretrain={epochs:0}"))
    validate_config(cfg(TINY_OVERRIDE))
    ignored = smoke_config(tmp_path / "data", tmp_path / "run", TINY_OVERRIDE)
    with pytest.raises(ConfigError, match="unset unless model.backbone.pretrained=synvi"):
        validate_config(ignored)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="ResNet-18 state dict") as err:
        DualStreamResNet(18, pretrained=str(path))
    assert str(path) in str(err.value) and "shapes differ" in str(err.value)


def test_missing_or_corrupt_weights_files_name_the_path(tmp_path):
    missing = tmp_path / "gone" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="gone/weights.pth"):
        DualStreamResNet(18, pretrained=str(missing))
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="noise.pth.*torchvision ResNet-18 state dict"):
        DualStreamResNet(18, pretrained=str(noise))
    good = pretrain.ensure_pretrained_start(tiny(), tmp_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pth.*damaged or truncated"):
        DualStreamResNet(18, pretrained=str(truncated))


def test_the_reserved_name_is_resolved_by_the_entry_points_only():
    with pytest.raises(ValueError, match="entry points|gur_lightning.train"):
        DualStreamResNet(18, pretrained="synvi")


# --------------------------------------------------------------------------- entry points


def test_evaluate_untrained_with_the_pretrained_start(tmp_path, caplog):
    from gur_lightning.evaluate import evaluate, features_label

    def eval_cfg(*overrides):
        return smoke_config(
            tmp_path / "data",
            tmp_path / "eval",
            "features=untrained",
            "eval.max_trials=1",
            *overrides,
            config_name="eval",
        )

    random_start = evaluate(eval_cfg())
    cfg = eval_cfg("model.backbone.pretrained=synvi", TINY_OVERRIDE)
    assert features_label(cfg) == "pretrained start (synvi), no training"
    with caplog.at_level(logging.INFO, logger="gur_lightning"):
        pretrained_start = evaluate(cfg)
    assert "pretrained start (synvi), no training" in caplog.text
    assert len(list((tmp_path / "data").glob(f"{pretrain.CACHE_PREFIX}*"))) == 1
    assert pretrained_start.keys() == random_start.keys()
    assert pretrained_start["test/sysu_all/mAP"] != random_start["test/sysu_all/mAP"]


def test_command_line_builds_and_reports(tmp_path, caplog):
    argv = ["--out", str(tmp_path), "--height", "32", "--width", "16", "--ids", "4"]
    argv += [
        "--cameras",
        "2",
        "--images-per-camera",
        "2",
        "--epochs",
        "1",
        "--set",
        "batch_size=8",
    ]
    with caplog.at_level(logging.INFO):
        assert pretrain.main(argv) == 0
    assert pretrain.entry_dir(tiny(), tmp_path).is_dir()
    assert "SynVI pretrained start ready" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert pretrain.main([*argv, "--set", "bogus=1"]) == 2
    assert "bogus" in caplog.text
    assert os.listdir(tmp_path) == [pretrain.entry_dir(tiny(), tmp_path).name]
