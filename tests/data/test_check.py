"""The data check: every image decoded, one error for all bad files, the cache, the counts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from PIL import Image

from gur_lightning.data import check as check_mod
from gur_lightning.data import load_dataset
from gur_lightning.data.check import (
    CACHE_NAME,
    PUBLISHED,
    DataCheckError,
    Published,
    check_dataset,
    default_cache_path,
)
from gur_lightning.synvi import MARKER_NAME, generate_synvi
from gur_lightning.synvi import generate as gen

TINY = {
    "sysu": {"num_ids": 12, "images_per_camera": 2},
    "regdb": {"num_ids": 6, "images_per_camera": 3},
    "llcm": {"num_ids": 8, "images_per_camera": 2, "num_cameras": 4},
}
TRIAL = {"sysu": None, "regdb": 1, "llcm": None}
IMAGE_SUFFIXES = (".jpg", ".bmp")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("check_trees")
    return {name: generate_synvi(name, base / name, **kw) for name, kw in TINY.items()}


def _copy(trees: dict[str, Path], name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(trees[name], root)
    return root


def _load(name: str, root: Path):
    return load_dataset(name, root, trial=TRIAL[name])


def _images_on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES}


def _id_file(root: Path, name: str) -> list[int]:
    return [int(x) for x in (root / name).read_text().strip().split(",")]


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every path the check decodes (from any of its threads)."""
    decoded: list[str] = []
    lock = threading.Lock()
    real = check_mod.verify_image

    def counting(path: str) -> str | None:
        with lock:
            decoded.append(path)
        return real(path)

    monkeypatch.setattr(check_mod, "verify_image", counting)
    return decoded


# ------------------------------------------------------------------------ every layout passes


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_good_synvi_tree_passes_without_warning(
    trees, name, tmp_path, count_decodes, caplog
) -> None:
    root = _copy(trees, name, tmp_path)
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        report = check_dataset(_load(name, root), workers=2, progress=False)
    # SynVI writes only images the readers list (RegDB: trial 1's lists cover every identity).
    assert sorted(count_decodes) == sorted(_images_on_disk(root))
    assert report.num_images == report.decoded == len(_images_on_disk(root))
    assert report.synvi and report.differences == ()
    assert caplog.records == []
    assert report.cache_path == str(root / CACHE_NAME)


# ------------------------------------------------------------------------ bad images


@pytest.mark.parametrize("name", sorted(TINY))
def test_corrupt_test_image_and_truncated_train_image_are_named_in_one_error(
    trees, name, tmp_path
) -> None:
    root = _copy(trees, name, tmp_path)
    ds = _load(name, root)
    corrupt = ds.test_samples("infrared")[0].path
    truncated = next(s.path for s in ds.train if s.modality == "visible")
    Path(corrupt).write_bytes(b"not an image at all")
    data = Path(truncated).read_bytes()
    Path(truncated).write_bytes(data[: len(data) // 2])
    # The header is intact: Image.verify alone does not see that pixel data are missing.
    with Image.open(truncated) as img:
        img.verify()

    with pytest.raises(DataCheckError) as err:
        check_dataset(_load(name, root), workers=2, progress=False)
    bad = {b.path: b for b in err.value.bad_images}
    assert set(bad) == {corrupt, truncated}
    assert bad[corrupt].splits == ("test/infrared",)
    assert bad[truncated].splits == ("train/visible",)
    assert "cannot identify image file" in bad[corrupt].reason
    assert "truncated" in bad[truncated].reason
    message = str(err.value)
    assert "2 image file(s) cannot be decoded" in message
    assert f"{corrupt} [test/infrared]: UnidentifiedImageError" in message
    assert f"{truncated} [train/visible]: OSError: image file is truncated" in message
    assert err.value.errors == ()
    # A failed check is not recorded as passed.
    assert not (root / CACHE_NAME).exists()


def test_image_deleted_after_listing_is_reported(trees, tmp_path) -> None:
    root = _copy(trees, "sysu", tmp_path)
    ds = _load("sysu", root)
    gone = ds.test_samples("visible")[0].path
    os.unlink(gone)
    with pytest.raises(DataCheckError, match="FileNotFoundError") as err:
        check_dataset(ds, workers=1, progress=False)
    assert [b.path for b in err.value.bad_images] == [gone]


# ------------------------------------------------------------------------ cache


def test_cache_skips_decoding_and_a_changed_file_invalidates_it(
    trees, tmp_path, count_decodes
) -> None:
    root = _copy(trees, "sysu", tmp_path)
    n = len(_images_on_disk(root))
    first = check_dataset(_load("sysu", root), workers=2, progress=False)
    assert len(count_decodes) == first.decoded == n
    cache = json.loads((root / CACHE_NAME).read_text())
    assert cache["format"] == "gur_lightning data check"
    assert cache["ok"][first.key]["images"] == n

    count_decodes.clear()
    second = check_dataset(_load("sysu", root), workers=2, progress=False)
    assert count_decodes == [] and second.decoded == 0 and second.key == first.key

    # Same bytes, one modification time changed: the listing differs, everything is decoded.
    victim = Path(_load("sysu", root).train[0].path)
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = check_dataset(_load("sysu", root), workers=2, progress=False)
    assert third.key != first.key and len(count_decodes) == third.decoded == n


def test_a_failed_check_is_never_cached(trees, tmp_path, count_decodes) -> None:
    root = _copy(trees, "regdb", tmp_path)
    victim = Path(_load("regdb", root).test_samples("visible")[0].path)
    victim.write_bytes(b"BM garbage")
    for _ in range(2):
        with pytest.raises(DataCheckError, match=str(victim)):
            check_dataset(_load("regdb", root), workers=1, progress=False)
    n = len(_images_on_disk(root))
    assert len(count_decodes) == 2 * n  # the second call decoded everything again
    assert not (root / CACHE_NAME).exists()


def test_cache_location_and_disabling(trees, tmp_path, monkeypatch, count_decodes) -> None:
    root = _copy(trees, "llcm", tmp_path)
    elsewhere = tmp_path / "cache_dir"
    report = check_dataset(_load("llcm", root), cache_dir=elsewhere, progress=False)
    (cache_file,) = elsewhere.glob("check-*.json")
    assert report.cache_path == str(cache_file)
    assert not (root / CACHE_NAME).exists()
    # A read-only root caches under $XDG_CACHE_HOME/gur_lightning.
    monkeypatch.setattr(check_mod.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path(root, None).parent == tmp_path / "xdg" / "gur_lightning"
    count_decodes.clear()
    off = check_dataset(_load("llcm", root), cache=False, progress=False)
    assert off.cache_path is None and len(count_decodes) == off.decoded > 0


def test_cache_file_in_a_synvi_tree_does_not_trigger_regeneration(
    trees, tmp_path, monkeypatch
) -> None:
    root = tmp_path / "SYSU"
    generate_synvi("sysu", root, **TINY["sysu"])
    check_dataset(_load("sysu", root), progress=False)
    assert (root / CACHE_NAME).is_file()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged tree must not be rendered again")

    monkeypatch.setattr(gen, "render_image", boom)
    assert generate_synvi("sysu", root, **TINY["sysu"]) == root
    assert (root / CACHE_NAME).is_file()


# ------------------------------------------------------------------------ counts


def test_count_difference_is_a_warning_naming_expected_and_found(trees, tmp_path, caplog) -> None:
    root = _copy(trees, "sysu", tmp_path)
    ids = set(_id_file(root, "exp/train_id.txt")) | set(_id_file(root, "exp/val_id.txt"))
    visible = [
        p for p in root.glob("cam[1245]/*/*.jpg") if int(p.parent.name) in ids
    ]  # training images of the visible cameras, counted on disk
    test_ids = _id_file(root, "exp/test_id.txt")
    published = {
        "train/visible/images": Published(len(visible) + 7, "a made-up figure"),
        "test/identities": Published(len(test_ids), "a matching figure"),
    }
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        report = check_dataset(_load("sysu", root), published=published, progress=False)
    (diff,) = report.differences
    assert (diff.figure, diff.expected, diff.found) == (
        "train/visible/images",
        len(visible) + 7,
        len(visible),
    )
    assert "differs from the published figures in 1 count(s)" in caplog.text
    line = next(x for x in caplog.text.splitlines() if x.startswith("train/visible/images"))
    assert line.split()[1:4] == [str(len(visible) + 7), str(len(visible)), "warning"]
    assert "test/identities" not in caplog.text


def test_real_tree_is_compared_with_the_published_figures(trees, tmp_path, caplog) -> None:
    root = _copy(trees, "regdb", tmp_path)
    (root / MARKER_NAME).unlink()  # no longer recognisable as SynVI
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        report = check_dataset(_load("regdb", root), progress=False)
    assert not report.synvi
    lines = (root / "idx" / "train_visible_1.txt").read_text().splitlines()
    found = {d.figure: (d.expected, d.found) for d in report.differences}
    # RegDB: 206 identities of 10 + 10 images per trial; the tiny tree has 3 of 3 + 3.
    assert found["train/identities"] == (206, len({line.split()[1] for line in lines}))
    assert found["train/visible/images"] == (2060, len(lines))
    assert all(d.severity == "warning" for d in report.differences)
    assert "2,060" in caplog.text


def test_llcm_tree_is_compared_with_its_published_identity_count(trees, tmp_path) -> None:
    root = _copy(trees, "llcm", tmp_path)
    (root / MARKER_NAME).unlink()
    ds = _load("llcm", root)
    report = check_dataset(ds, progress=False)
    found = {d.figure: (d.expected, d.found) for d in report.differences}
    # LLCM: 1,064 identities over training and test; the tiny tree has its own few.
    ids = {s.pid for s in ds.train} | {
        s.pid for m in ("visible", "infrared") for s in ds.test_samples(m)
    }
    assert found["identities"] == (1064, len(ids))


def test_missing_protocol_camera_is_an_error(trees, tmp_path) -> None:
    root = _copy(trees, "sysu", tmp_path)
    (root / MARKER_NAME).unlink()
    for pid in _id_file(root, "exp/test_id.txt"):
        shutil.rmtree(root / "cam6" / f"{pid:04d}", ignore_errors=True)
    cameras = {k: v for k, v in PUBLISHED["sysu"].items() if k == "test/infrared/cameras"}
    with pytest.raises(DataCheckError) as err:
        check_dataset(_load("sysu", root), published=cameras, progress=False)
    (error,) = err.value.errors
    assert (error.figure, error.expected, error.found) == ("test/infrared/cameras", (3, 6), (3,))
    assert "test/infrared/cameras: expected cameras 3, 6, found cameras 3" in str(err.value)
    assert err.value.bad_images == ()
    assert not (root / CACHE_NAME).exists()


def test_no_match_between_query_and_gallery_is_an_error_even_on_synvi(trees, tmp_path) -> None:
    root = _copy(trees, "regdb", tmp_path)
    thermal = root / "idx" / "test_thermal_1.txt"
    lines = [line.rsplit(" ", 1) for line in thermal.read_text().splitlines()]
    thermal.write_text("".join(f"{rel} {int(label) + 1000}\n" for rel, label in lines))
    with pytest.raises(DataCheckError) as err:
        check_dataset(_load("regdb", root), progress=False)
    assert {e.figure for e in err.value.errors} == {
        "regdb_v2t/matched_identities",
        "regdb_t2v/matched_identities",
    }
    assert "no visible query identity has an image in the infrared gallery" in str(err.value)


def test_no_test_identity_is_an_error(trees, tmp_path) -> None:
    root = _copy(trees, "sysu", tmp_path)
    (root / "exp" / "test_id.txt").write_text("999\n")  # an id without any image folder
    with pytest.raises(DataCheckError) as err:
        check_dataset(_load("sysu", root), progress=False)
    figures = {e.figure for e in err.value.errors}
    assert figures == {"test/identities", "sysu_all/query+gallery", "sysu_indoor/query+gallery"}
    assert "no test identity has an image" in str(err.value)


# ------------------------------------------------------------------------ command line


def test_command_line_exits_non_zero_with_the_message(trees, tmp_path, capsys) -> None:
    root = _copy(trees, "llcm", tmp_path)
    victim = _load("llcm", root).test_samples("visible")[0].path
    Path(victim).write_bytes(b"\xff\xd8 broken")
    with pytest.raises(SystemExit) as exit_:
        check_mod.main(["llcm", str(root), "--workers", "2", "--no-progress"])
    assert exit_.value.code == 1
    assert f"{victim} [test/visible]" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "gur_lightning.data.check", "llcm", str(root), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "data check of" in proc.stderr and victim in proc.stderr
    Path(victim).unlink()
    shutil.copy(trees["llcm"] / Path(victim).relative_to(root), victim)
    assert check_mod.main(["llcm", str(root), "--no-progress"]) == 0


# ------------------------------------------------------------------------ at the start of train()


class _Stop(Exception):
    """Raised by :class:`_Recorder` to end a run once the trainer has started."""


class _Recorder(Callback):
    """Records the trainer hooks reached; optionally stops the run at the trainer's setup."""

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop
        self.hooks: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.hooks.append("setup")
        if self.stop:
            raise _Stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.hooks.append("train_batch")


@pytest.fixture(scope="module")
def smoke_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gur_lightning.train import build_datamodule
    from tests.helpers import smoke_config

    tmp = tmp_path_factory.mktemp("check_smoke")
    cfg = smoke_config(tmp / "data", tmp / "run")
    build_datamodule(cfg).prepare_data()
    return Path(cfg.data.root)


def _smoke_on(root: Path, tmp_path: Path, *overrides: str):
    from tests.helpers import smoke_config

    return smoke_config(
        tmp_path / "data", tmp_path / "run", "data.synvi=null", f"data.root={root}", *overrides
    )


def test_corrupt_test_image_fails_training_before_the_first_step(smoke_tree, tmp_path) -> None:
    from gur_lightning.train import train

    root = tmp_path / "copy"
    shutil.copytree(smoke_tree, root)
    pid = _id_file(root, "exp/test_id.txt")[0]
    victim = sorted((root / "cam3" / f"{pid:04d}").iterdir())[0]  # a test query image
    victim.write_bytes(b"this is not a JPEG")
    recorder = _Recorder()
    with pytest.raises(DataCheckError) as err:
        train(_smoke_on(root, tmp_path), extra_callbacks=[recorder])
    assert [b.path for b in err.value.bad_images] == [str(victim)]
    assert "[test/infrared]" in str(err.value)
    assert recorder.hooks == []  # the trainer was never started
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_second_training_run_does_not_decode_again(
    smoke_tree, tmp_path, count_decodes, monkeypatch
) -> None:
    from gur_lightning.train import train

    root = tmp_path / "copy"
    shutil.copytree(smoke_tree, root)
    for run in range(2):
        recorder = _Recorder(stop=True)
        with pytest.raises(_Stop):
            train(_smoke_on(root, tmp_path / f"run{run}"), extra_callbacks=[recorder])
        assert recorder.hooks == ["setup"]  # the check ran before the trainer started
        if run == 0:
            assert sorted(count_decodes) == sorted(_images_on_disk(root))
            count_decodes.clear()
    assert count_decodes == []
    # data.check=false skips the check entirely (no decode even with the cache gone).
    (root / CACHE_NAME).unlink()

    def not_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("data.check=false must not run the check")

    monkeypatch.setattr("gur_lightning.train.check_dataset", not_called)
    with pytest.raises(_Stop):
        train(_smoke_on(root, tmp_path / "run2", "data.check=false"), [_Recorder(stop=True)])
    assert count_decodes == [] and not (root / CACHE_NAME).exists()


def test_images_per_identity_and_camera_counts_each_pair_present() -> None:
    from gur_lightning.data.check import images_per_identity_camera
    from gur_lightning.data.samples import Sample

    def images(pid: int, cam: int, modality: str, n: int) -> list[Sample]:
        return [Sample(f"/{pid}/{cam}/{k}.jpg", pid, cam, modality) for k in range(n)]  # type: ignore[arg-type]

    # Visible pairs hold 1, 2 and 6 images (mean 3, median 2); infrared one pair of 5.
    samples = [
        *images(1, 1, "visible", 1),
        *images(1, 2, "visible", 2),
        *images(2, 1, "visible", 6),
        *images(2, 3, "infrared", 5),
    ]
    assert images_per_identity_camera(samples) == {"visible": (3.0, 2.0), "infrared": (5.0, 5.0)}
    assert images_per_identity_camera(images(1, 3, "infrared", 2)) == {"infrared": (2.0, 2.0)}
