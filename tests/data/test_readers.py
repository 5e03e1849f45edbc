"""Readers of the raw SYSU-MM01, RegDB and LLCM layouts, against fake trees in tmp_path."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gur_lightning.data import (
    DATASET_NAMES,
    DATASETS,
    DatasetLayoutError,
    DatasetPathMissingError,
    ImageReadError,
    Sample,
    VIReIDDataset,
    load_dataset,
    read_image,
)
from gur_lightning.data.protocols import official_protocols
from gur_lightning.data.readers import LLCMDataset, RegDBDataset, SYSUMM01Dataset
from gur_lightning.synvi import LAYOUTS as SYNVI_LAYOUTS


def _write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (value % 256, 0, 0)).save(path)


# ------------------------------------------------------------------------------------------
# SYSU-MM01
# ------------------------------------------------------------------------------------------

SYSU_TRAIN, SYSU_VAL, SYSU_TEST = [3, 1, 2], [5, 4], [9, 6, 8, 7]
SYSU_IR = {3, 6}


def _sysu_count(pid: int, cam: int) -> int:
    """Images in camC/NNNN of the fake tree (0: no folder). Varied so the draws differ."""
    if (pid, cam) in {(7, 2), (8, 4), (8, 5), (9, 1), (2, 6), (4, 3)}:
        return 0
    return 1 + (pid * 7 + cam * 3) % 5


@pytest.fixture
def sysu_root(tmp_path: Path) -> Path:
    root = tmp_path / "SYSU-MM01"
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True)
        for pid in SYSU_TRAIN + SYSU_VAL + SYSU_TEST:
            for k in range(_sysu_count(pid, cam)):
                # Non-contiguous names, written in reverse, so sorting is really exercised.
                _write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{(5 - k) * 3:04d}.jpg", k)
    # An identity folder of an unlisted id must be ignored.
    _write_image(root / "cam1" / "0099" / "0001.jpg")
    (root / "exp").mkdir()
    (root / "exp" / "train_id.txt").write_text(",".join(map(str, SYSU_TRAIN)) + "\n")
    (root / "exp" / "val_id.txt").write_text(",".join(map(str, SYSU_VAL)))
    (root / "exp" / "test_id.txt").write_text(",".join(map(str, SYSU_TEST)) + "\n")
    return root


def _official_sysu_query(root: Path, ids: list[int]) -> list[str]:
    """The official process_query_sysu loop (docs/method.md §13.2), written out plainly."""
    files = []
    for pid in sorted(f"{i:04d}" for i in ids):
        for cam in ["cam3", "cam6"]:
            d = os.path.join(str(root), cam, pid)
            if os.path.isdir(d):
                files.extend(sorted(d + "/" + f for f in os.listdir(d)))
    return files


def _official_gallery(root: Path, ids: list[int], cams: list[str], trial: int) -> list[str]:
    """The official process_gallery_sysu / _llcm draw with the global random module."""
    random.seed(trial)
    files = []
    for pid in sorted(f"{i:04d}" for i in ids):
        for cam in cams:
            d = os.path.join(str(root), cam, pid)
            if os.path.isdir(d):
                files.append(random.choice(sorted(d + "/" + f for f in os.listdir(d))))
    return files


def _paths(samples: list[Sample]) -> list[str]:
    return [os.path.normpath(s.path) for s in samples]


def _norm(paths: list[str]) -> list[str]:
    return [os.path.normpath(p) for p in paths]


def test_sysu_train_counts_labels_and_order(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    assert isinstance(ds, VIReIDDataset) and ds.name == "sysu"
    assert ds.root == str(sysu_root)
    expected = {
        (pid, cam): _sysu_count(pid, cam) for pid in SYSU_TRAIN + SYSU_VAL for cam in range(1, 7)
    }
    got: dict[tuple[int, int], int] = {}
    for s in ds.train:
        got[(s.pid, s.camid)] = got.get((s.pid, s.camid), 0) + 1
        assert s.modality == ("infrared" if s.camid in SYSU_IR else "visible")
        assert os.path.isabs(s.path) and os.path.isfile(s.path)
        assert Path(s.path).parent.name == f"{s.pid:04d}"
        assert Path(s.path).parent.parent.name == f"cam{s.camid}"
    assert got == {k: v for k, v in expected.items() if v}
    assert [s.path for s in ds.train] == sorted(s.path for s in ds.train)
    n_ir = sum(v for (_p, c), v in expected.items() if c in SYSU_IR)
    assert sum(s.modality == "infrared" for s in ds.train) == n_ir
    assert len(ds.train) == sum(expected.values())
    assert ds.camera_ids("visible") == [1, 2, 4, 5]
    assert ds.camera_ids("infrared") == [3, 6]
    with pytest.raises(ValueError, match="modality"):
        ds.camera_ids("thermal")  # type: ignore[arg-type]


def test_sysu_val_is_inside_train_unless_held_out(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    assert ds.val is not None
    assert {s.pid for s in ds.val} == set(SYSU_VAL)
    assert set(ds.val) <= set(ds.train)
    held = load_dataset("sysu", sysu_root, holdout_val=True)
    assert {s.pid for s in held.train} == set(SYSU_TRAIN)
    assert len(held.train) + len(ds.val) == len(ds.train)


def test_sysu_query_matches_official_loop(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    for mode in ("all", "indoor"):
        query, _ = ds.test_split(mode=mode, trial=0)
        assert _paths(query) == _norm(_official_sysu_query(sysu_root, SYSU_TEST))
        assert {s.camid for s in query} == {3, 6}
        assert all(s.modality == "infrared" and s.pid in SYSU_TEST for s in query)


@pytest.mark.parametrize("mode, cams", [("all", [1, 2, 4, 5]), ("indoor", [1, 2])])
def test_sysu_gallery_reproduces_official_draw(sysu_root: Path, mode: str, cams: list) -> None:
    ds = load_dataset("sysu", sysu_root)
    galleries = []
    for trial in range(10):
        _, gallery = ds.test_split(mode=mode, trial=trial)
        ref = _official_gallery(sysu_root, SYSU_TEST, [f"cam{c}" for c in cams], trial)
        assert _paths(gallery) == _norm(ref)
        n_folders = sum(_sysu_count(p, c) > 0 for p in SYSU_TEST for c in cams)
        assert len(gallery) == n_folders
        for s in gallery:
            assert s.modality == "visible" and s.camid in cams and s.pid in SYSU_TEST
            assert Path(s.path).parent.name == f"{s.pid:04d}"
        galleries.append(_paths(gallery))
    assert len({tuple(g) for g in galleries}) > 1, "trials must draw different galleries"


def test_private_rng_equals_global_seed_and_leaves_global_state(sysu_root: Path) -> None:
    items = [f"f{i}" for i in range(13)]
    for seed in range(10):
        random.seed(seed)
        reference = [random.choice(items) for _ in range(20)]
        rng = random.Random(seed)
        assert [rng.choice(items) for _ in range(20)] == reference
    ds = load_dataset("sysu", sysu_root)
    random.seed(1234)
    expected_next = random.random()
    random.seed(1234)
    ds.test_split(mode="all", trial=3)
    assert random.random() == expected_next


def test_sysu_default_trial_from_load(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root, trial=4)
    assert ds.test_split(mode="all") == ds.test_split(mode="all", trial=4)
    with pytest.raises(ValueError, match="0..9"):
        load_dataset("sysu", sysu_root, trial=10)
    with pytest.raises(ValueError, match="trial"):
        ds.test_split(mode="all", trial=-1)
    with pytest.raises(ValueError, match="mode"):
        ds.test_split(mode="outdoor")


def test_sysu_validation_split(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    for trial in (0, 5):
        query, gallery = ds.validation_split(trial=trial)
        assert _paths(query) == _norm(_official_sysu_query(sysu_root, SYSU_VAL))
        cams = ["cam1", "cam2", "cam4", "cam5"]
        assert _paths(gallery) == _norm(_official_gallery(sysu_root, SYSU_VAL, cams, trial))


def test_sysu_protocols_drive_an_evaluation_loop(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    protos = official_protocols(ds.name)
    assert [p.name for p in protos] == ["sysu_all", "sysu_indoor"]
    for p, mode in zip(protos, ("all", "indoor"), strict=True):
        assert p.trial_values(ds) == list(range(10))
        assert (p.query_modality, p.gallery_modality) == ("infrared", "visible")
        for t in p.trial_values(ds):
            assert p.build(ds, t) == ds.test_split(mode=mode, trial=t)


def test_sysu_listing_does_not_open_images(sysu_root: Path) -> None:
    bad = sysu_root / "cam3" / "0006" / "0000.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ds = load_dataset("sysu", sysu_root)
    query, _ = ds.test_split(mode="all", trial=0)
    assert str(bad) in [s.path for s in query]
    with pytest.raises(ImageReadError, match=str(bad)):
        read_image(str(bad))


def test_sysu_errors_name_the_path(sysu_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="SYSU-MM01 raw layout") as err:
        load_dataset("sysu", missing)
    assert str(missing) in str(err.value)

    shutil.rmtree(sysu_root / "cam5")
    with pytest.raises(DatasetPathMissingError, match="cam5") as err:
        load_dataset("sysu", sysu_root)
    assert str(sysu_root / "cam5") in str(err.value)
    (sysu_root / "cam5").mkdir()

    (sysu_root / "exp" / "test_id.txt").unlink()
    with pytest.raises(DatasetPathMissingError) as err:
        load_dataset("sysu", sysu_root)
    assert str(sysu_root / "exp" / "test_id.txt") in str(err.value)

    (sysu_root / "exp" / "test_id.txt").write_text("6,7\n8,x9\n")
    with pytest.raises(DatasetLayoutError, match=r"test_id.txt:2: 'x9'"):
        load_dataset("sysu", sysu_root)

    (sysu_root / "exp" / "test_id.txt").write_text("\n")
    with pytest.raises(DatasetLayoutError, match="holds no ids"):
        load_dataset("sysu", sysu_root)


def test_sysu_empty_train_and_empty_folder_are_errors(sysu_root: Path) -> None:
    (sysu_root / "exp" / "train_id.txt").write_text("200,201")
    (sysu_root / "exp" / "val_id.txt").write_text("202")
    with pytest.raises(DatasetLayoutError, match="training"):
        load_dataset("sysu", sysu_root)
    (sysu_root / "exp" / "train_id.txt").write_text("1")
    empty = sysu_root / "cam2" / "0001"
    shutil.rmtree(empty)
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="holds no images") as err:
        load_dataset("sysu", sysu_root)
    assert str(empty) in str(err.value)


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'market'.*\['llcm', 'regdb', 'sysu'\]"):
        load_dataset("market", tmp_path)


def test_registry_maps_each_name_to_its_reader() -> None:
    # The three published data sets, in the order the config error lists them.
    assert DATASET_NAMES == ("sysu", "regdb", "llcm")
    assert DATASETS == {"sysu": SYSUMM01Dataset, "regdb": RegDBDataset, "llcm": LLCMDataset}
    assert all(reader.name == name for name, reader in DATASETS.items())
    # SynVI writes only layouts that a reader reads back.
    assert set(SYNVI_LAYOUTS) <= set(DATASET_NAMES)


# ------------------------------------------------------------------------------------------
# RegDB
# ------------------------------------------------------------------------------------------

REGDB_SPLITS = {1: ([0, 1, 2, 3, 4], [5, 6, 7]), 2: ([5, 6, 7, 0, 1], [2, 3, 4])}
REGDB_PER_ID = 3


def _regdb_rel(modality: str, pid: int, k: int) -> str:
    folder, tag = ("Visible", "v") if modality == "visible" else ("Thermal", "t")
    return f"{folder}/{pid}/male_{tag}_{k}_{pid}.bmp"


@pytest.fixture
def regdb_root(tmp_path: Path) -> Path:
    root = tmp_path / "RegDB"
    for pid in range(8):
        for k in range(REGDB_PER_ID):
            for modality in ("visible", "infrared"):
                _write_image(root / _regdb_rel(modality, pid, k), pid)
    (root / "idx").mkdir()
    for trial, (train, test) in REGDB_SPLITS.items():
        for part, ids in (("train", train), ("test", test)):
            for modality, stem in (("visible", "visible"), ("infrared", "thermal")):
                # Labels: training relabelled 0..P-1 in list order, as in the real lists.
                lines = [
                    f"{_regdb_rel(modality, pid, k)} {label}"
                    for label, pid in enumerate(ids)
                    for k in range(REGDB_PER_ID)
                ]
                (root / "idx" / f"{part}_{stem}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("trial", [1, 2])
def test_regdb_train_from_lists(regdb_root: Path, trial: int) -> None:
    ds = load_dataset("regdb", regdb_root, trial=trial)
    train_ids = REGDB_SPLITS[trial][0]
    assert len(ds.train) == 2 * REGDB_PER_ID * len(train_ids)
    assert [s.path for s in ds.train] == sorted(s.path for s in ds.train)
    for s in ds.train:
        assert s.camid == (1 if s.modality == "visible" else 2)
        # pid is the list label; the path's folder is the raw id with that label.
        assert int(Path(s.path).parent.name) == train_ids[s.pid]
        assert Path(s.path).parts[-3] == ("Visible" if s.modality == "visible" else "Thermal")
    assert ds.camera_ids("visible") == [1] and ds.camera_ids("infrared") == [2]


def test_regdb_test_split_directions(regdb_root: Path) -> None:
    ds = load_dataset("regdb", regdb_root, trial=2)
    vis_lines = (regdb_root / "idx" / "test_visible_2.txt").read_text().split()[::2]
    th_lines = (regdb_root / "idx" / "test_thermal_2.txt").read_text().split()[::2]
    q, g = ds.test_split(direction="v2t")
    assert _paths(q) == _norm([str(regdb_root / p) for p in vis_lines])
    assert _paths(g) == _norm([str(regdb_root / p) for p in th_lines])
    assert {s.modality for s in q} == {"visible"} and {s.modality for s in g} == {"infrared"}
    assert {s.pid for s in q} == {0, 1, 2}
    q2, g2 = ds.test_split(direction="t2v", trial=2)
    assert (q2, g2) == (g, q)
    with pytest.raises(ValueError, match="trial 2"):
        ds.test_split(direction="v2t", trial=1)
    with pytest.raises(ValueError, match="direction"):
        ds.test_split(direction="i2v")
    protos = official_protocols(ds.name)
    assert [(p.name, p.trial_values(ds)) for p in protos] == [
        ("regdb_v2t", [2]),
        ("regdb_t2v", [2]),
    ]
    assert [p.build(ds, 2) for p in protos] == [(q, g), (g, q)]


def test_regdb_trial_bounds(regdb_root: Path) -> None:
    for bad in (0, 11, "1", True):
        with pytest.raises(ValueError, match="1..10"):
            load_dataset("regdb", regdb_root, trial=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trial is required"):
        load_dataset("regdb", regdb_root)
    with pytest.raises(DatasetPathMissingError) as err:
        load_dataset("regdb", regdb_root, trial=3)
    assert str(regdb_root / "idx" / "train_visible_3.txt") in str(err.value)


def test_regdb_holdout_validation(regdb_root: Path) -> None:
    ds = load_dataset("regdb", regdb_root, trial=1)
    # 5 training labels -> last max(1, int(5 * 0.2)) = 1 label, i.e. label 4.
    assert ds.val_ids == [4]
    assert ds.val is not None and {s.pid for s in ds.val} == {4}
    assert set(ds.val) <= set(ds.train)
    q, g = ds.validation_split()
    assert len(q) == len(g) == REGDB_PER_ID
    assert {s.modality for s in q} == {"visible"} and {s.modality for s in g} == {"infrared"}
    held = load_dataset("regdb", regdb_root, trial=1, holdout_val=True)
    assert {s.pid for s in held.train} == {0, 1, 2, 3}
    assert held.validation_split() == (q, g)


def test_regdb_bad_lists_name_file_and_line(regdb_root: Path) -> None:
    lst = regdb_root / "idx" / "train_thermal_1.txt"
    lines = lst.read_text().splitlines()
    good = "\n".join(lines)
    lst.write_text("\n".join(lines[:3] + ["Thermal/0/only_a_path.bmp"] + lines[4:]))
    with pytest.raises(DatasetLayoutError, match=r"train_thermal_1.txt:4: expected"):
        load_dataset("regdb", regdb_root, trial=1)
    lst.write_text("\n".join(lines[:1] + [lines[1].rsplit(" ", 1)[0] + " two"] + lines[2:]))
    with pytest.raises(DatasetLayoutError, match=r"train_thermal_1.txt:2: label 'two'"):
        load_dataset("regdb", regdb_root, trial=1)
    lst.write_text(good + "\nThermal/0/missing.bmp 0\n")
    with pytest.raises(DatasetPathMissingError, match="train_thermal_1.txt:16") as err:
        load_dataset("regdb", regdb_root, trial=1)
    assert str(regdb_root / "Thermal" / "0" / "missing.bmp") in str(err.value)
    lst.write_text("\n\n")
    with pytest.raises(DatasetLayoutError, match="lists no images"):
        load_dataset("regdb", regdb_root, trial=1)
    lst.write_text(good)
    shutil.rmtree(regdb_root / "Visible")
    with pytest.raises(DatasetPathMissingError, match="image folder") as err:
        load_dataset("regdb", regdb_root, trial=1)
    assert str(regdb_root / "Visible" / "0") in str(err.value)
    assert "RegDB raw layout" in str(err.value)


# ------------------------------------------------------------------------------------------
# LLCM
# ------------------------------------------------------------------------------------------

LLCM_TRAIN_IDS, LLCM_TEST_IDS = [1, 2, 3, 4, 5], [12, 10, 11, 13]
LLCM_CAMS = {"vis": [1, 2, 3], "nir": [1, 2, 4]}


def _llcm_count(pid: int, cam: int, mod: str) -> int:
    if (pid, cam, mod) in {(10, 2, "vis"), (11, 4, "nir"), (13, 1, "nir"), (2, 3, "vis")}:
        return 0
    return 1 + (pid * 5 + cam + (mod == "nir")) % 4


def _llcm_name(pid: int, cam: int, k: int, mod: str) -> str:
    return f"{pid:04d}_c{cam:02d}_s{170100 + 7 * (3 - k)}_f{3120 + k}_{mod}.jpg"


@pytest.fixture
def llcm_root(tmp_path: Path) -> Path:
    root = tmp_path / "LLCM"
    lists: dict[str, list[str]] = {"vis": [], "nir": []}
    for part, ids in (("train", LLCM_TRAIN_IDS), ("test", LLCM_TEST_IDS)):
        for mod, cams in LLCM_CAMS.items():
            for cam in cams:
                (root / f"{part}_{mod}" / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                for label, pid in enumerate(ids):
                    for k in range(_llcm_count(pid, cam, mod)):
                        rel = f"{part}_{mod}/cam{cam}/{pid:04d}/{_llcm_name(pid, cam, k, mod)}"
                        _write_image(root / rel, k)
                        if part == "train":
                            lists[mod].append(f"{rel} {label}")
    (root / "idx").mkdir()
    for mod, lines in lists.items():
        (root / "idx" / f"train_{mod}.txt").write_text("\n".join(lines) + "\n")
    (root / "idx" / "test_id.txt").write_text(",".join(map(str, LLCM_TEST_IDS)) + "\n")
    return root


def test_llcm_train_pid_and_cam_from_file_name(llcm_root: Path) -> None:
    ds = load_dataset("llcm", llcm_root)
    expected = {
        (pid, cam, mod): _llcm_count(pid, cam, mod)
        for mod, cams in LLCM_CAMS.items()
        for cam in cams
        for pid in LLCM_TRAIN_IDS
    }
    got: dict[tuple[int, int, str], int] = {}
    for s in ds.train:
        mod = "vis" if s.modality == "visible" else "nir"
        got[(s.pid, s.camid, mod)] = got.get((s.pid, s.camid, mod), 0) + 1
        assert Path(s.path).parts[-4] == f"train_{mod}"
        assert Path(s.path).parent.name == f"{s.pid:04d}"  # not the 0-based list label
    assert got == {k: v for k, v in expected.items() if v}
    assert [s.path for s in ds.train] == sorted(s.path for s in ds.train)
    assert ds.camera_ids("visible") == [1, 2, 3]
    assert ds.camera_ids("infrared") == [1, 2, 4]


@pytest.mark.parametrize("direction, q_mod, g_mod", [("v2i", "vis", "nir"), ("i2v", "nir", "vis")])
def test_llcm_test_split_matches_official_loops(
    llcm_root: Path, direction: str, q_mod: str, g_mod: str
) -> None:
    ds = load_dataset("llcm", llcm_root)
    q_cams = [f"test_{q_mod}/cam{c}" for c in LLCM_CAMS[q_mod]]
    g_cams = [f"test_{g_mod}/cam{c}" for c in LLCM_CAMS[g_mod]]
    ref_query = []
    for pid in sorted(f"{i:04d}" for i in LLCM_TEST_IDS):
        for cam in q_cams:
            d = os.path.join(str(llcm_root), cam, pid)
            if os.path.isdir(d):
                ref_query.extend(sorted(d + "/" + f for f in os.listdir(d)))
    for trial in range(10):
        query, gallery = ds.test_split(direction=direction, trial=trial)
        assert _paths(query) == _norm(ref_query)
        assert _paths(gallery) == _norm(_official_gallery(llcm_root, LLCM_TEST_IDS, g_cams, trial))
        for s in query + gallery:
            assert s.pid in LLCM_TEST_IDS
            assert Path(s.path).name.startswith(f"{s.pid:04d}_c{s.camid:02d}_")
        assert {s.modality for s in query} == {"visible" if q_mod == "vis" else "infrared"}
        assert {s.modality for s in gallery} == {"visible" if g_mod == "vis" else "infrared"}
    protos = {p.name: p for p in official_protocols(ds.name)}
    assert protos[f"llcm_{direction}"].build(ds, 3) == ds.test_split(direction=direction, trial=3)
    assert protos[f"llcm_{direction}"].trial_values(ds) == list(range(10))


def test_llcm_validation_split(llcm_root: Path) -> None:
    ds = load_dataset("llcm", llcm_root)
    assert ds.val_ids == [5]  # last max(1, int(5 * 0.2)) of the sorted training ids
    query, gallery = ds.validation_split(trial=2)
    ref_query = []
    for cam in LLCM_CAMS["nir"]:
        d = llcm_root / "train_nir" / f"cam{cam}" / "0005"
        ref_query.extend(str(d / f) for f in sorted(os.listdir(d)))
    assert _paths(query) == _norm(ref_query)
    vis_cams = [f"train_vis/cam{c}" for c in LLCM_CAMS["vis"]]
    assert _paths(gallery) == _norm(_official_gallery(llcm_root, [5], vis_cams, 2))
    held = load_dataset("llcm", llcm_root, holdout_val=True)
    assert 5 not in {s.pid for s in held.train}
    assert held.validation_split(trial=2) == (query, gallery)


def test_llcm_layout_errors(llcm_root: Path) -> None:
    bad = llcm_root / "train_vis" / "cam1" / "0001" / "img_001.jpg"
    _write_image(bad)
    lst = llcm_root / "idx" / "train_vis.txt"
    good = lst.read_text()
    lst.write_text(good + f"{bad.relative_to(llcm_root)} 0\n")
    n_lines = len(good.splitlines()) + 1
    with pytest.raises(DatasetLayoutError, match=rf"train_vis.txt:{n_lines}: file name"):
        load_dataset("llcm", llcm_root)
    lst.write_text(good)
    shutil.rmtree(llcm_root / "test_nir")
    with pytest.raises(DatasetPathMissingError, match="LLCM raw layout") as err:
        load_dataset("llcm", llcm_root)
    assert str(llcm_root / "test_nir") in str(err.value)
    (llcm_root / "idx" / "train_nir.txt").unlink()
    with pytest.raises(DatasetPathMissingError) as err:
        load_dataset("llcm", llcm_root)
    assert str(llcm_root / "idx" / "train_nir.txt") in str(err.value)


# ------------------------------------------------------------------------------------------
# read_image
# ------------------------------------------------------------------------------------------


def test_read_image_converts_to_rgb(tmp_path: Path) -> None:
    gray = tmp_path / "ir.png"
    Image.new("L", (5, 7), 200).save(gray)
    img = read_image(gray)
    assert img.mode == "RGB" and img.size == (5, 7)
    assert img.getpixel((2, 3)) == (200, 200, 200)


def test_read_image_errors_name_the_path(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x01 definitely not an image")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (garbage, truncated, tmp_path / "absent.jpg"):
        with pytest.raises(ImageReadError) as err:
            read_image(str(path))
        assert str(path) in str(err.value) and err.value.path == str(path)
    copy = pickle.loads(pickle.dumps(err.value))
    assert isinstance(copy, ImageReadError) and str(copy) == str(err.value)


# ------------------------------------------------------------- within-modality test images


def test_sysu_test_samples_are_every_test_image_of_the_modality(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    for modality, cams in (("visible", (1, 2, 4, 5)), ("infrared", (3, 6))):
        on_disk = sorted(
            str(p)
            for cam in cams
            for pid in SYSU_TEST
            for p in (sysu_root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg")
        )
        got = ds.test_samples(modality)
        assert _paths(got) == _norm(on_disk)
        assert {s.modality for s in got} == {modality} and {s.pid for s in got} <= set(SYSU_TEST)
    with pytest.raises(ValueError, match="modality"):
        ds.test_samples("thermal")


def test_regdb_test_samples_are_the_trial_lists(regdb_root: Path) -> None:
    ds = load_dataset("regdb", regdb_root, trial=2)
    q, g = ds.test_split(direction="v2t")
    assert ds.test_samples("visible") == q and ds.test_samples("infrared") == g


def test_llcm_test_samples_cover_every_camera(llcm_root: Path) -> None:
    ds = load_dataset("llcm", llcm_root)
    for modality, mod in (("visible", "vis"), ("infrared", "nir")):
        on_disk = {
            os.path.normpath(str(p))
            for p in (llcm_root / f"test_{mod}").rglob("*.jpg")
            if int(p.parent.name) in LLCM_TEST_IDS
        }
        got = ds.test_samples(modality)
        assert set(_paths(got)) == on_disk and len(got) == len(on_disk)
        assert {s.modality for s in got} == {modality}
