"""SynVI: determinism, caching, atomicity, the three raw layouts and the modality gap."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gur_lightning.synvi import (
    MARKER_NAME,
    build_world,
    generate_synvi,
    plan_tree,
    render_image,
    resolve_config,
)
from gur_lightning.synvi import __main__ as cli
from gur_lightning.synvi import generate as gen
from gur_lightning.synvi.grid import GAP, HEADER_H, LABEL_W, render_grid
from gur_lightning.synvi.render import Body, pattern_mask, visible_light
from gur_lightning.synvi.world import (
    GARMENT_THERMAL_MEAN,
    GARMENT_THERMAL_RANGE,
    OUTFIT_JITTER,
    OUTFIT_ROWS,
    PATTERN_HSTRIPES,
    VIEW_FRONT,
    Appearance,
    sample_appearance,
)

TINY_SYSU = {"num_ids": 12, "images_per_camera": 2}
TINY_REGDB = {"num_ids": 6, "images_per_camera": 3}
TINY_LLCM = {"num_ids": 8, "images_per_camera": 2, "num_cameras": 4}


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _equal_channels(path: Path) -> bool:
    a = _pixels(path)
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all())


@pytest.fixture(scope="module")
def sysu_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synvi("sysu", tmp_path_factory.mktemp("sysu") / "SYSU-MM01", **TINY_SYSU)


@pytest.fixture(scope="module")
def regdb_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synvi("regdb", tmp_path_factory.mktemp("regdb") / "RegDB", **TINY_REGDB)


@pytest.fixture(scope="module")
def llcm_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synvi("llcm", tmp_path_factory.mktemp("llcm") / "LLCM", **TINY_LLCM)


# ----------------------------------------------------------------------------- determinism


def test_same_parameters_give_byte_identical_trees(tmp_path: Path, sysu_tree: Path) -> None:
    again = generate_synvi("sysu", tmp_path / "again", **TINY_SYSU)
    first, second = _files(sysu_tree), _files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    assert len(first) > 50


def test_different_seed_gives_different_images(tmp_path: Path, sysu_tree: Path) -> None:
    other = _files(generate_synvi("sysu", tmp_path / "s1", seed=1, **TINY_SYSU))
    base = _files(sysu_tree)
    shared = [k for k in base.keys() & other.keys() if k.endswith(".jpg")]
    assert shared, "two seeds should share at least some camera/id/image paths"
    assert sum(base[k] != other[k] for k in shared) == len(shared)


def test_image_does_not_depend_on_render_order() -> None:
    cfg = resolve_config("llcm", num_ids=4, overrides={"num_cameras": 2})
    jobs = plan_tree("llcm", cfg, seed=3).jobs
    world = build_world("llcm", cfg, 3)
    forward = {j.relpath: render_image(world, j.pid, j.cam, j.modality, j.index) for j in jobs}
    world = build_world("llcm", cfg, 3)
    for job in reversed(jobs):
        again = render_image(world, job.pid, job.cam, job.modality, job.index)
        np.testing.assert_array_equal(again, forward[job.relpath])


def test_pool_output_equals_serial_output(
    tmp_path: Path, sysu_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gen, "POOL_MIN_IMAGES", 0)
    pooled = generate_synvi("sysu", tmp_path / "pooled", workers=2, **TINY_SYSU)
    assert _files(pooled) == _files(sysu_tree)


# ----------------------------------------------------------------------------- cache, atomicity


def test_second_call_reuses_tree_without_rendering(
    sysu_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p: p.stat().st_mtime_ns for p in sysu_tree.rglob("*")}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached tree must not be rendered again")

    monkeypatch.setattr(gen, "render_image", boom)
    assert generate_synvi("sysu", sysu_tree, **TINY_SYSU) == sysu_tree
    # Spelling a default explicitly is the same tree.
    assert generate_synvi("sysu", sysu_tree, preset="default", height=128, **TINY_SYSU)
    assert {p: p.stat().st_mtime_ns for p in sysu_tree.rglob("*")} == before


def test_marker_records_parameters_and_count(sysu_tree: Path) -> None:
    marker = json.loads((sysu_tree / MARKER_NAME).read_text())
    assert marker["layout"] == "sysu" and marker["seed"] == 0
    assert marker["config"]["num_ids"] == 12 and marker["config"]["images_per_camera"] == 2
    n_files = sum(1 for p in sysu_tree.rglob("*") if p.is_file()) - 1
    assert marker["num_files"] == n_files
    params = {k: v for k, v in marker.items() if k not in ("hash", "num_files")}
    assert marker["hash"] == gen.parameter_hash(params)


def test_other_parameters_regenerate_a_synvi_tree(tmp_path: Path) -> None:
    out = tmp_path / "tree"
    generate_synvi("sysu", out, **TINY_SYSU)
    generate_synvi("sysu", out, seed=5, **TINY_SYSU)
    assert json.loads((out / MARKER_NAME).read_text())["seed"] == 5
    generate_synvi("regdb", out, **TINY_REGDB)
    assert not (out / "cam1").exists() and (out / "Visible").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no temporary leftovers


def test_tree_installed_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    out = generate_synvi("regdb", tmp_path / "shared", **TINY_REGDB)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    # As if this process had rendered the same tree while another rank installed its own.
    rendered = tmp_path / ".shared.synvi-tmp-mine"
    shutil.copytree(out, rendered)
    (rendered / "rendered_here.txt").write_text("would show up in a replaced tree")
    digest = json.loads((out / MARKER_NAME).read_text())["hash"]
    gen.install_tree(rendered, out, digest)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="mydata.*refusing to overwrite"):
        generate_synvi("sysu", out, **TINY_SYSU)
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        generate_synvi("sysu", a_file, **TINY_SYSU)


def test_empty_directory_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate_synvi("regdb", out, **TINY_REGDB)
    assert (out / MARKER_NAME).is_file()


def test_failure_leaves_no_partial_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = gen.render_image

    def flaky(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("render failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "render_image", flaky)
    with pytest.raises(RuntimeError, match="render failed"):
        generate_synvi("sysu", tmp_path / "new", **TINY_SYSU)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(gen, "render_image", real)
    old = generate_synvi("regdb", tmp_path / "old", **TINY_REGDB)
    before = _files(old)
    calls["n"] = 0
    monkeypatch.setattr(gen, "render_image", flaky)
    with pytest.raises(RuntimeError, match="render failed"):
        generate_synvi("sysu", old, **TINY_SYSU)
    assert _files(old) == before  # the previous tree is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# ----------------------------------------------------------------------------- SYSU layout

SYSU_IMAGE = re.compile(r"cam([1-6])/(\d{4})/(\d{4})\.jpg")


def _read_ids(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    return [int(x) for x in lines[0].split(",")]


def test_sysu_layout(sysu_tree: Path) -> None:
    files = sorted(_files(sysu_tree))
    assert {f for f in files if not SYSU_IMAGE.fullmatch(f)} == {
        "exp/train_id.txt",
        "exp/val_id.txt",
        "exp/test_id.txt",
        MARKER_NAME,
    }
    train, val, test = (_read_ids(sysu_tree / f"exp/{s}_id.txt") for s in ("train", "val", "test"))
    # 12 ids split like 296/99/96: round(12*99/491) = 2 val, round(12*96/491) = 2 test.
    assert (len(train), len(val), len(test)) == (8, 2, 2)
    assert sorted(train + val + test) == list(range(1, 13))
    per_dir: dict[tuple[int, int], list[int]] = {}
    for f in files:
        m = SYSU_IMAGE.fullmatch(f)
        if m:
            per_dir.setdefault((int(m[1]), int(m[2])), []).append(int(m[3]))
    assert all(sorted(v) == [1, 2] for v in per_dir.values())  # images_per_camera = 2
    for pid in test:
        assert {3, 6} & {c for c, p in per_dir if p == pid}, f"test id {pid} has no IR query"
        assert {1, 2, 4, 5} & {c for c, p in per_dir if p == pid}
    # The reference protocol parses camera and id by fixed offsets from the path's end.
    for cam, pid in list(per_dir)[:5]:
        path = str(sysu_tree / f"cam{cam}/{pid:04d}/0001.jpg")
        assert (int(path[-15]), int(path[-13:-9])) == (cam, pid)


def test_sysu_infrared_cameras_are_grey_visible_are_not(sysu_tree: Path) -> None:
    ir = sorted(sysu_tree.glob("cam[36]/*/*.jpg"))
    vis = sorted(sysu_tree.glob("cam[1245]/*/*.jpg"))
    assert ir and vis
    assert all(_equal_channels(p) for p in ir)
    assert not any(_equal_channels(p) for p in vis)
    assert Image.open(ir[0]).size == (64, 128)


def test_sysu_default_plan_has_uneven_coverage() -> None:
    cfg = resolve_config("sysu")
    plan = plan_tree("sysu", cfg, seed=0)
    cams: dict[int, set[int]] = {}
    for job in plan.jobs:
        cams.setdefault(job.pid, set()).add(job.cam)
    assert len(cams) == cfg.num_ids
    assert sum(len(c) < 6 for c in cams.values()) > cfg.num_ids / 2
    training = set(plan.splits["train"]) | set(plan.splits["val"])
    no_ir = [p for p in training if not cams[p] & {3, 6}]
    no_vis = [p for p in training if not cams[p] & {1, 2, 4, 5}]
    assert no_ir and no_vis  # some training ids miss a whole modality
    assert all(cams[p] & {3, 6} and cams[p] & {1, 2, 4, 5} for p in plan.splits["test"])
    assert 3000 <= len(plan.jobs) <= 5000
    assert [len(plan.splits[s]) for s in ("train", "val", "test")] == [127, 42, 41]


# ----------------------------------------------------------------------------- RegDB layout

REGDB_IMAGE = re.compile(r"(Visible|Thermal)/(\d+)/[vt]\d{4}_\d{2}\.bmp")


def test_regdb_layout(regdb_tree: Path) -> None:
    files = _files(regdb_tree)
    images = [f for f in files if f.endswith(".bmp")]
    assert all(REGDB_IMAGE.fullmatch(f) for f in images)
    counts: dict[tuple[str, int], int] = {}
    for f in images:
        m = REGDB_IMAGE.fullmatch(f)
        counts[m[1], int(m[2])] = counts.get((m[1], int(m[2])), 0) + 1
    assert counts == {(d, p): 3 for d in ("Visible", "Thermal") for p in range(1, 7)}
    splits = set()
    for t in range(1, 11):
        ids = {}
        for part in ("train", "test"):
            for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = (regdb_tree / f"idx/{part}_{mod}_{t}.txt").read_text().splitlines()
                pids = set()
                for line in lines:
                    rel, label = line.split(" ")
                    assert rel in files and rel.startswith(folder + "/")
                    assert int(label) == int(rel.split("/")[1])
                    pids.add(int(label))
                assert len(lines) == 3 * len(pids)
                ids.setdefault(part, pids)
                assert ids[part] == pids  # both modalities list the same identities
        assert ids["train"].isdisjoint(ids["test"])
        assert ids["train"] | ids["test"] == set(range(1, 7)) and len(ids["train"]) == 3
        splits.add(frozenset(ids["train"]))
    assert len(splits) > 1  # ten random splits, not one repeated
    thermal = [regdb_tree / f for f in images if f.startswith("Thermal")]
    assert all(_equal_channels(p) for p in thermal)
    assert resolve_config("regdb").images_per_camera == 10


# ----------------------------------------------------------------------------- LLCM layout

LLCM_IMAGE = re.compile(
    r"(train|test)_(vis|nir)/cam(\d)/(\d{4})/(\d{4})_c(\d{2})_s\d{6}_f\d{4,}_(vis|nir)\.jpg"
)


def test_llcm_layout(llcm_tree: Path) -> None:
    files = _files(llcm_tree)
    images = [f for f in files if f.endswith(".jpg")]
    seen: dict[str, dict[str, set[int]]] = {"train": {}, "test": {}}
    for f in images:
        m = LLCM_IMAGE.fullmatch(f)
        assert m, f
        part, tag, cam, pid, pid2, cam2, tag2 = m.groups()
        assert pid == pid2 and int(cam) == int(cam2) and tag == tag2 and 1 <= int(cam) <= 4
        seen[part].setdefault(tag, set()).add(int(pid))
    test_ids = _read_ids(llcm_tree / "idx/test_id.txt")
    assert set(test_ids) == seen["test"]["vis"] == seen["test"]["nir"]
    train_ids = seen["train"].get("vis", set()) | seen["train"].get("nir", set())
    assert train_ids.isdisjoint(test_ids) and train_ids | set(test_ids) == set(range(1, 9))
    for tag in ("vis", "nir"):
        listed = (llcm_tree / f"idx/train_{tag}.txt").read_text().splitlines()
        paths = [line.split(" ")[0] for line in listed]
        assert sorted(paths) == sorted(f for f in images if f.startswith(f"train_{tag}/"))
        assert all(int(line.split(" ")[1]) == int(line.split("/")[2]) for line in listed)
    assert all(_equal_channels(llcm_tree / f) for f in images if "_nir/" in f)


# ----------------------------------------------------------------------------- the modality gap


def test_infrared_ignores_colour_and_visible_ignores_thermal() -> None:
    cfg = resolve_config("llcm", num_ids=3, overrides={"num_cameras": 1})
    world = build_world("llcm", cfg, seed=0)
    ir = render_image(world, 1, 1, "infrared", 0)
    vis = render_image(world, 1, 1, "visible", 0)
    person = world.identities[1]
    rng = np.random.default_rng(0)
    recoloured = Appearance(
        colours=rng.random(person.appearance.colours.shape), thermal=person.appearance.thermal
    )
    world.identities[1] = dataclasses.replace(person, appearance=recoloured)
    np.testing.assert_array_equal(render_image(world, 1, 1, "infrared", 0), ir)
    assert not np.array_equal(render_image(world, 1, 1, "visible", 0), vis)
    reheated = Appearance(colours=person.appearance.colours, thermal=rng.random(12))
    world.identities[1] = dataclasses.replace(person, appearance=reheated)
    np.testing.assert_array_equal(render_image(world, 1, 1, "visible", 0), vis)
    assert not np.array_equal(render_image(world, 1, 1, "infrared", 0), ir)


def test_visible_light_changes_visible_images_only() -> None:
    plain = build_world(
        "sysu", resolve_config("sysu", num_ids=6, overrides={"illumination": 0.0}), seed=0
    )
    lit = build_world(
        "sysu", resolve_config("sysu", num_ids=6, overrides={"illumination": 1.0}), seed=0
    )
    assert visible_light(plain, 1, 1, 0) == (1.0, pytest.approx(np.ones(3)))
    for pid in (1, 2):
        # Infrared cameras light the scene themselves: not one pixel changes.
        for cam in (3, 6):
            np.testing.assert_array_equal(
                render_image(lit, pid, cam, "infrared", 0),
                render_image(plain, pid, cam, "infrared", 0),
            )
        assert not np.array_equal(
            render_image(lit, pid, 1, "visible", 0), render_image(plain, pid, 1, "visible", 0)
        )


def test_indoor_visible_light_is_dimmer_and_warmer_than_outdoor() -> None:
    world = build_world(
        "sysu", resolve_config("sysu", num_ids=30, overrides={"illumination": 1.0}), seed=0
    )

    # SYSU cameras 1 and 2 are indoor, 4 and 5 outdoor. The camera's own log-exposure lies in
    # INDOOR_LIGHT[0] = [-1.0, -0.35] or OUTDOOR_LIGHT[0] = [-0.25, 0.35]; per image it varies
    # with sd 0.4, so the median over 40 images per camera keeps the ranges apart (the
    # median's sd is about 0.4 * 1.25 / sqrt(40) = 0.08).
    def light(cam: int) -> tuple[float, float]:
        draws = [visible_light(world, pid, cam, k) for pid in range(1, 21) for k in range(2)]
        exposure = float(np.median([np.log(e) for e, _ in draws]))
        warmth = float(np.median([t[0] - t[2] for _, t in draws]))
        return exposure, warmth

    indoor = [light(c) for c in (1, 2)]
    outdoor = [light(c) for c in (4, 5)]
    assert all(-1.25 < e < -0.1 for e, _ in indoor)
    assert all(-0.5 < e < 0.6 for e, _ in outdoor)
    # Temperature 2 t with t in [0.08, 0.28] indoor and [-0.22, 0] outdoor.
    assert min(w for _, w in indoor) > max(w for _, w in outdoor)


def test_thermal_outfit_pool_sets_the_number_of_thermal_outfits_alone() -> None:
    base = {"outfit_pool": 3, "twin_fraction": 0}
    cfg = resolve_config("sysu", num_ids=150, overrides={**base, "thermal_outfit_pool": 9})
    people = build_world("sysu", cfg, seed=0).identities.values()
    assert {p.outfit[0] for p in people} == set(range(3))
    assert {p.outfit[1] for p in people} == set(range(9))
    # Unset (null), the thermal pool is as large as the colour pool.
    cfg = resolve_config("sysu", num_ids=150, overrides={**base, "thermal_outfit_pool": None})
    assert {p.outfit[1] for p in build_world("sysu", cfg, seed=0).identities.values()} == {
        0,
        1,
        2,
    }


def test_twins_share_exactly_one_cue() -> None:
    cfg = resolve_config("sysu", num_ids=100)
    people = build_world("sysu", cfg, seed=0).identities
    colour = [p for p in people.values() if p.twin_kind == "colour"]
    shape = [p for p in people.values() if p.twin_kind == "shape"]
    assert len(colour) + len(shape) == round(cfg.twin_fraction * 100 / 2) and colour and shape
    for p in colour:
        other = people[p.twin_of]
        np.testing.assert_array_equal(p.appearance.colours, other.appearance.colours)
        assert p.shape != other.shape
    for p in shape:
        other = people[p.twin_of]
        assert p.shape == other.shape
        assert not np.allclose(p.appearance.colours, other.appearance.colours)


@pytest.mark.parametrize(("table", "which"), [("colours", 0), ("thermal", 1)])
def test_outfit_pool_dresses_identities_in_shared_outfits(table: str, which: int) -> None:
    pool = 5
    overrides = {"outfit_pool": pool, "thermal_outfit_pool": None, "twin_fraction": 0}
    cfg = resolve_config("sysu", num_ids=120, overrides=overrides)
    people = list(build_world("sysu", cfg, seed=0).identities.values())
    outfit = np.array([p.outfit[which] for p in people])
    assert set(outfit.tolist()) == set(range(pool))
    garments = np.stack([getattr(p.appearance, table)[OUTFIT_ROWS].ravel() for p in people])
    dist = np.abs(garments[:, None, :] - garments[None, :, :]).mean(axis=2)
    same = outfit[:, None] == outfit[None, :]
    off_diagonal = ~np.eye(len(people), dtype=bool)
    # Wearers of one outfit differ only by the jitter (mean |N(0, 2 s^2)| = 1.13 s over 10-36
    # values, clipping only shrinks it); wearers of different outfits by the outfits themselves.
    assert dist[same & off_diagonal].max() < 2.5 * OUTFIT_JITTER
    assert dist[~same].mean() > 3 * OUTFIT_JITTER
    # The body stays each identity's own: skin intensity is drawn per person.
    assert len({float(p.appearance.thermal[0]) for p in people}) == len(people)


def test_outfit_colours_and_intensities_are_drawn_independently() -> None:
    overrides = {"outfit_pool": 4, "thermal_outfit_pool": None, "twin_fraction": 0}
    cfg = resolve_config("sysu", num_ids=200, overrides=overrides)
    people = build_world("sysu", cfg, seed=0).identities.values()
    pairs = {p.outfit for p in people}
    # 200 independent draws of (colour, thermal) from 4 x 4: every combination occurs, so a
    # colour outfit does not tell its wearer's intensities.
    assert pairs == {(a, b) for a in range(4) for b in range(4)}


def test_thermal_spread_stretches_garment_intensities_about_their_mean() -> None:
    def garments(spread: float) -> np.ndarray:
        rng = np.random.default_rng(3)
        return sample_appearance(rng, 0.6, spread).thermal

    plain, stretched = garments(1.0), garments(1.5)
    # Body rows (skin, hair) are not garments; the other garment rows (not prints) follow the
    # stretch unless clipped to the garment range.
    np.testing.assert_allclose(stretched[:2], plain[:2])
    for row in (2, 3, 5, 7, 9, 10, 11):
        expected = np.clip(
            GARMENT_THERMAL_MEAN + 1.5 * (plain[row] - GARMENT_THERMAL_MEAN),
            *GARMENT_THERMAL_RANGE,
        )
        assert stretched[row] == pytest.approx(expected)


def test_horizontal_stripes_follow_frequency_and_duty() -> None:
    cfg = resolve_config("sysu", num_ids=3)
    shape = build_world("sysu", cfg, seed=0).identities[1].shape
    shape = dataclasses.replace(
        shape, pattern=PATTERN_HSTRIPES, pattern_freq=4, pattern_duty=0.5, pattern_phase=0.0
    )
    body = Body(shape)
    span = body.hy - body.sy
    # Period span/4: offsets 0.1 and 0.35 of the span are 0.4 and 0.4 periods in (printed);
    # 0.15 and 0.45 are 0.6 and 0.8 periods in (plain).
    v = body.sy + span * np.array([0.1, 0.35, 0.15, 0.45])
    mask = pattern_mask(body, VIEW_FRONT, np.zeros(4), v)
    assert mask.tolist() == [True, True, False, False]


# ----------------------------------------------------------------------------- options, CLI, grid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "market"}, "layout must be one of"),
        ({"preset": "medium"}, "preset must be one of"),
        ({"colour_noise": 1.0}, "unknown SynVI option 'colour_noise'"),
        ({"num_cameras": 4}, "num_cameras=4 can only be changed for 'llcm'"),
        ({"num_ids": 2}, "num_ids must be >= 3"),
        ({"occlusion": 1.5}, "occlusion must be a number in \\[0, 1\\]"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"height": 16}, "at least 32x16"),
        ({"illumination": 2.0}, "illumination must be a number in \\[0, 1\\]"),
        ({"thermal_outfit_pool": 0}, "thermal_outfit_pool must be null or an integer >= 1"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    layout = kwargs.pop("layout", "sysu")
    with pytest.raises(ValueError, match=message):
        generate_synvi(layout, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_writes_tree_and_reports_errors(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["--layout", "regdb", "--out", str(out), "--ids", "4", "--images-per-camera", "2"]
    assert cli.main([*argv, "--set", "clutter=2"]) == 0
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["config"]["clutter"] == 2 and marker["config"]["num_ids"] == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    assert cli.main(["--layout", "sysu", "--out", str(foreign)]) == 2


def test_grid_has_one_row_per_identity(tmp_path: Path) -> None:
    path = render_grid(tmp_path / "g.png", num_identities=2, height=64, width=32)
    width, height = Image.open(path).size
    assert (width, height) == (LABEL_W + 6 * (32 + GAP) + GAP, HEADER_H + 2 * (64 + GAP))
