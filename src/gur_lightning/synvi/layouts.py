"""What a SynVI tree contains: cameras, identity splits, coverage, file names and list files.

Each layout is written exactly as the real data set's raw tree (docs/synthetic.md, "Layouts it
writes"; docs/method.md §2.1 and §2.3), so that the real readers load it with no special case:

* ``sysu``: ``cam1 … cam6/NNNN/MMMM.jpg`` (visible cameras 1, 2, 4, 5; infrared 3, 6; cameras
  1-3 indoor, 4-6 outdoor) and ``exp/{train,val,test}_id.txt`` (one line of comma-separated
  ids), identities split like SYSU-MM01's 296 / 99 / 96.
* ``regdb``: ``Visible/<id>/*.bmp``, ``Thermal/<id>/*.bmp`` and
  ``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (lines ``relative/path.bmp label``), ten
  random half/half identity splits.
* ``llcm``: ``{train,test}_{vis,nir}/camK/NNNN/NNNN_cKK_sSSSSSS_fFFFF_{vis,nir}.jpg``,
  ``idx/train_{vis,nir}.txt`` (lines ``relative/path label``) and ``idx/test_id.txt``.

The label written in list files is the identity number, the same as the ``<id>`` / ``NNNN``
folder of the image, so that ground truth is in the paths and lists as in real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gur_lightning.data.samples import MODALITIES, Modality
from gur_lightning.synvi.config import LLCM_SPLIT, SYSU_SPLIT, SynVIConfig
from gur_lightning.synvi.world import (
    LAYOUT_CODE,
    MODALITY_CODE,
    TAG_COVERAGE,
    TAG_NAMES,
    TAG_SPLIT,
    StreamRoot,
    World,
    build_camera,
    build_identities,
    build_scene,
    rng_for,
)

#: Number of RegDB identity splits (trials), as in the real ``idx/`` folder (docs/method.md §2.3).
REGDB_TRIALS = 10
#: SYSU-MM01 camera table: number -> (modality, indoor, scene key). Cameras 2 and 3 watch the
#: same room, which is why the SYSU protocol drops camera-2 gallery images for camera-3 queries
#: (docs/method.md §13.2); they share a scene here for the same reason.
SYSU_CAMERAS: dict[int, tuple[Modality, bool, int]] = {
    1: ("visible", True, 1),
    2: ("visible", True, 2),
    3: ("infrared", True, 2),
    4: ("visible", False, 4),
    5: ("visible", False, 5),
    6: ("infrared", False, 6),
}
#: LLCM folder / file-name tag of each modality.
LLCM_TAG: dict[Modality, str] = {"visible": "vis", "infrared": "nir"}
#: RegDB folder and file prefix of each modality.
REGDB_DIR: dict[Modality, str] = {"visible": "Visible", "infrared": "Thermal"}
REGDB_LIST: dict[Modality, str] = {"visible": "visible", "infrared": "thermal"}


@dataclass(frozen=True)
class ImageJob:
    """One image file to render.

    Attributes:
        relpath: Path relative to the tree root, with ``/`` separators.
        pid: Identity.
        cam: Camera number.
        modality: ``"visible"`` or ``"infrared"``.
        index: Image number within ``(pid, cam, modality)``, from 0.
    """

    relpath: str
    pid: int
    cam: int
    modality: Modality
    index: int


@dataclass(frozen=True)
class Plan:
    """Everything a tree contains, before any pixel is drawn.

    Attributes:
        jobs: Image files, sorted by path.
        texts: List / split files: relative path -> content.
        splits: Identity split name -> sorted identities (``train``/``val``/``test`` or, for
            RegDB, ``train_1``/``test_1``...).
    """

    jobs: list[ImageJob]
    texts: dict[str, str]
    splits: dict[str, list[int]]


def camera_table(
    layout: str, cfg: SynVIConfig, seed: StreamRoot
) -> list[tuple[int, tuple[Modality, ...], bool, int]]:
    """List the layout's cameras as ``(number, modalities, indoor, scene_key)``.

    Args:
        layout: Layout name.
        cfg: Resolved parameters.
        seed: Tree seed or namespaced stream root (LLCM cameras are indoor or outdoor at
            random).

    Returns:
        One tuple per camera, by camera number.
    """
    if layout == "sysu":
        return [(c, (m,), indoor, key) for c, (m, indoor, key) in SYSU_CAMERAS.items()]
    if layout == "regdb":
        # One co-located visible/thermal camera pair watching one place.
        return [(1, ("visible", "infrared"), False, 1)]
    rng = rng_for(seed, TAG_SPLIT, LAYOUT_CODE[layout], 0)
    indoor = rng.random(cfg.num_cameras) < 0.5
    return [
        (c, ("visible", "infrared"), bool(indoor[c - 1]), c) for c in range(1, cfg.num_cameras + 1)
    ]


def build_world(layout: str, cfg: SynVIConfig, seed: StreamRoot, supersample: int = 2) -> World:
    """Draw the identities, cameras and scenes of a tree.

    Args:
        layout: Layout name.
        cfg: Resolved parameters.
        seed: Tree seed, or a namespaced root (:data:`~gur_lightning.synvi.world.StreamRoot`).
        supersample: Render resolution factor.

    Returns:
        The :class:`World`.
    """
    code = LAYOUT_CODE[layout]
    pids = list(range(1, cfg.num_ids + 1))
    cameras = {}
    scenes = {}
    for cam, modalities, indoor, key in camera_table(layout, cfg, seed):
        cameras[cam] = build_camera(seed, code, cam, modalities, indoor, key, cfg)
        if key not in scenes:
            scenes[key] = build_scene(seed, code, key, indoor, cfg, supersample)
    return World(
        layout=layout,
        seed=seed,
        config=cfg,
        identities=build_identities(seed, pids, cfg),
        cameras=cameras,
        scenes=scenes,
        supersample=supersample,
    )


def split_counts(total: int, proportions: tuple[int, ...]) -> list[int]:
    """Split ``total`` identities in the given proportions, each part at least one.

    The last part takes the remainder, so the counts always sum to ``total``.

    Args:
        total: Number of identities.
        proportions: Relative sizes (e.g. SYSU's 296 / 99 / 96).

    Returns:
        Counts in the order of ``proportions``.
    """
    whole = sum(proportions)
    counts = [max(1, int(round(total * p / whole))) for p in proportions[1:]]
    first = total - sum(counts)
    if first < 1:
        raise ValueError(f"cannot split {total} identities in proportions {proportions}")
    return [first, *counts]


def _coverage(
    seed: int,
    layout: str,
    pid: int,
    cams: dict[Modality, list[int]],
    cfg: SynVIConfig,
    training: bool,
) -> dict[Modality, list[int]]:
    """Cameras in which ``pid`` appears, per modality (uneven coverage, docs/synthetic.md).

    Every identity appears in at least one camera of each modality, except training identities
    drawn to miss a whole modality (``cfg.missing_modality_fraction``), as in SYSU-MM01.
    """
    rng = rng_for(seed, TAG_COVERAGE, LAYOUT_CODE[layout], pid)
    presence = {"visible": cfg.visible_presence, "infrared": cfg.infrared_presence}
    chosen: dict[Modality, list[int]] = {}
    for modality in ("visible", "infrared"):
        pool = cams[modality]
        keep = rng.random(len(pool)) < presence[modality]
        picked = [c for c, k in zip(pool, keep, strict=True) if k]
        if not picked:
            picked = [pool[int(rng.integers(len(pool)))]]
        chosen[modality] = picked
    drop = rng.random() < cfg.missing_modality_fraction
    missing: Modality = "visible" if rng.random() < 0.5 else "infrared"
    if training and drop:
        chosen[missing] = []
    return chosen


def _sysu_plan(cfg: SynVIConfig, seed: int) -> Plan:
    """SYSU-MM01 raw tree (docs/method.md §2.1)."""
    rng = rng_for(seed, TAG_SPLIT, LAYOUT_CODE["sysu"], 1)
    order = [int(p) for p in rng.permutation(np.arange(1, cfg.num_ids + 1))]
    n_train, n_val, n_test = split_counts(cfg.num_ids, SYSU_SPLIT)
    splits = {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }
    cams: dict[Modality, list[int]] = {"visible": [], "infrared": []}
    for cam, (modality, _, _) in SYSU_CAMERAS.items():
        cams[modality].append(cam)
    test = set(splits["test"])
    jobs = []
    for pid in range(1, cfg.num_ids + 1):
        coverage = _coverage(seed, "sysu", pid, cams, cfg, training=pid not in test)
        for modality, picked in coverage.items():
            for cam in picked:
                for k in range(cfg.images_per_camera):
                    path = f"cam{cam}/{pid:04d}/{k + 1:04d}.jpg"
                    jobs.append(ImageJob(path, pid, cam, modality, k))
    texts = {f"exp/{name}_id.txt": ",".join(map(str, ids)) + "\n" for name, ids in splits.items()}
    return Plan(sorted(jobs, key=lambda j: j.relpath), texts, splits)


def _regdb_plan(cfg: SynVIConfig, seed: int) -> Plan:
    """RegDB raw tree (docs/method.md §2.3): every identity in both modalities, ten splits."""
    jobs = []
    files: dict[tuple[int, Modality], list[str]] = {}
    for pid in range(1, cfg.num_ids + 1):
        for modality in ("visible", "infrared"):
            prefix = "v" if modality == "visible" else "t"
            paths = [
                f"{REGDB_DIR[modality]}/{pid}/{prefix}{pid:04d}_{k + 1:02d}.bmp"
                for k in range(cfg.images_per_camera)
            ]
            files[pid, modality] = paths
            jobs += [ImageJob(p, pid, 1, modality, k) for k, p in enumerate(paths)]
    texts: dict[str, str] = {}
    splits: dict[str, list[int]] = {}
    n_train = cfg.num_ids // 2
    for trial in range(1, REGDB_TRIALS + 1):
        rng = rng_for(seed, TAG_SPLIT, LAYOUT_CODE["regdb"], trial)
        order = [int(p) for p in rng.permutation(np.arange(1, cfg.num_ids + 1))]
        splits[f"train_{trial}"] = sorted(order[:n_train])
        splits[f"test_{trial}"] = sorted(order[n_train:])
        for part in ("train", "test"):
            for modality in MODALITIES:
                lines = [
                    f"{path} {pid}"
                    for pid in splits[f"{part}_{trial}"]
                    for path in files[pid, modality]
                ]
                texts[f"idx/{part}_{REGDB_LIST[modality]}_{trial}.txt"] = "\n".join(lines) + "\n"
    return Plan(sorted(jobs, key=lambda j: j.relpath), texts, splits)


def _llcm_plan(cfg: SynVIConfig, seed: int) -> Plan:
    """LLCM raw tree: dual-modality cameras, ``_cNN_`` camera tags in file names."""
    rng = rng_for(seed, TAG_SPLIT, LAYOUT_CODE["llcm"], 1)
    order = [int(p) for p in rng.permutation(np.arange(1, cfg.num_ids + 1))]
    n_train, n_test = split_counts(cfg.num_ids, LLCM_SPLIT)
    splits = {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}
    test = set(splits["test"])
    cam_list = list(range(1, cfg.num_cameras + 1))
    cams: dict[Modality, list[int]] = {"visible": cam_list, "infrared": cam_list}
    jobs = []
    lists: dict[Modality, list[str]] = {"visible": [], "infrared": []}
    for pid in range(1, cfg.num_ids + 1):
        part = "test" if pid in test else "train"
        coverage = _coverage(seed, "llcm", pid, cams, cfg, training=part == "train")
        for modality, picked in coverage.items():
            tag = LLCM_TAG[modality]
            for cam in picked:
                names = rng_for(
                    seed, TAG_NAMES, LAYOUT_CODE["llcm"], pid, cam, MODALITY_CODE[modality]
                )
                sequence = 170100 + int(names.integers(0, 900))
                frame = int(names.integers(100, 5000))
                for k in range(cfg.images_per_camera):
                    frame += int(names.integers(10, 90))
                    path = (
                        f"{part}_{tag}/cam{cam}/{pid:04d}/"
                        f"{pid:04d}_c{cam:02d}_s{sequence:06d}_f{frame:04d}_{tag}.jpg"
                    )
                    jobs.append(ImageJob(path, pid, cam, modality, k))
                    if part == "train":
                        lists[modality].append(f"{path} {pid}")
    texts = {
        "idx/train_vis.txt": "\n".join(sorted(lists["visible"])) + "\n",
        "idx/train_nir.txt": "\n".join(sorted(lists["infrared"])) + "\n",
        "idx/test_id.txt": ",".join(map(str, splits["test"])) + "\n",
    }
    return Plan(sorted(jobs, key=lambda j: j.relpath), texts, splits)


def plan_tree(layout: str, cfg: SynVIConfig, seed: int) -> Plan:
    """Decide every file of a tree: image jobs and list files.

    Args:
        layout: Layout name.
        cfg: Resolved parameters.
        seed: Tree seed.

    Returns:
        The :class:`Plan`.
    """
    builders = {"sysu": _sysu_plan, "regdb": _regdb_plan, "llcm": _llcm_plan}
    return builders[layout](cfg, seed)
