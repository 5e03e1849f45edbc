"""Writing a SynVI tree: cached by a hash of its parameters, atomic, optionally parallel.

A tree is generated into a temporary sibling folder and renamed into place only when complete;
its marker ``synvi.json`` (parameters, their hash and the file count) is written last. A second
call with equal parameters finds the marker and returns at once; a folder holding anything that
is not a SynVI tree is never overwritten (docs/synthetic.md, "Properties it must have").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from gur_lightning.synvi.config import (
    DEFAULT_PRESET,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    resolve_config,
)
from gur_lightning.synvi.layouts import ImageJob, build_world, plan_tree
from gur_lightning.synvi.render import render_image
from gur_lightning.synvi.world import MAX_SEED, World
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: Name of the marker file that identifies a complete SynVI tree and its parameters.
MARKER_NAME = "synvi.json"
#: Below this many images a worker pool costs more (process start-up) than it saves.
POOL_MIN_IMAGES = 1500
#: Default pool size: the target machines have two cores (docs/synthetic.md, "Fast").
DEFAULT_WORKERS = 2
#: JPEG chroma subsampling, fixed (4:2:0) so that output bytes never depend on Pillow defaults.
JPEG_SUBSAMPLING = 2


def tree_parameters(
    layout: str,
    *,
    seed: int = DEFAULT_SEED,
    num_ids: int | None = None,
    preset: str = DEFAULT_PRESET,
    height: int = 128,
    width: int = 64,
    **overrides: Any,
) -> dict[str, Any]:
    """Return the canonical parameters of a tree (what its cache hash is computed from).

    Args:
        layout: One of ``sysu``, ``regdb``, ``llcm``.
        seed: Tree seed (an integer in ``[0, MAX_SEED]``, one random-stream key word).
        num_ids: Identity count (``None``: the layout's default).
        preset: Difficulty preset.
        height: Image height in pixels.
        width: Image width in pixels.
        **overrides: Other :class:`~gur_lightning.synvi.config.SynVIConfig` fields.

    Returns:
        A JSON-serialisable dictionary that includes the fully resolved configuration.

    Raises:
        ValueError: On an invalid option.
    """
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(
            f"SynVI seed must be a non-negative integer <= {MAX_SEED} (one key word of the "
            f"random streams), got {seed!r}"
        )
    seed = int(seed)
    cfg = resolve_config(
        layout, preset=preset, num_ids=num_ids, height=height, width=width, overrides=overrides
    )
    return {
        "generator": "synvi",
        "version": GENERATOR_VERSION,
        "layout": layout,
        "seed": seed,
        "preset": preset,
        "config": cfg.to_dict(),
    }


def parameter_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``params``."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def read_json_marker(path: Path, key: str, value: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` if it reads and its ``key`` is ``value``, else ``None``.

    The one reader of cache markers: SynVI trees (``generator: synvi``) and pretrained-start
    entries (``kind: synvi_pretrain``) record their parameters, hash and size this way.
    """
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get(key) != value:
        return None
    return marker


def write_json_marker(path: Path, marker: Mapping[str, Any]) -> None:
    """Write a cache marker as :func:`read_json_marker` reads it (sorted keys, one per line)."""
    path.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A new, empty temporary sibling of ``out`` to build a cache entry in.

    Build inside it, then :func:`install_atomically` it to ``out`` before the block ends. If
    the block raises (Ctrl-C included) the folder is deleted, so an interrupted build leaves
    nothing half-written.

    Args:
        out: Where the finished entry will go; its parent is created if missing.

    Yields:
        The temporary folder (hidden, on the same file system as ``out``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_marker(root: Path) -> dict[str, Any] | None:
    """Return the marker of a SynVI tree at ``root``, or ``None`` if it is not one."""
    return read_json_marker(root / MARKER_NAME, "generator", "synvi")


def _count_files(root: Path) -> int:
    """Number of files under ``root``, the marker and hidden files excluded.

    SynVI writes no hidden file; hidden files are other tools' (the data check's cache
    ``.gur_lightning_check.json``, desktop thumbnails) and must not make the tree look
    incomplete, which would regenerate it.
    """
    total = sum(sum(not name.startswith(".") for name in files) for _, _, files in os.walk(root))
    return total - int((root / MARKER_NAME).exists())


def _is_complete(root: Path, digest: str) -> bool:
    """Whether ``root`` is a complete SynVI tree with parameter hash ``digest``."""
    marker = read_marker(root)
    return (
        marker is not None
        and marker.get("hash") == digest
        and marker.get("num_files") == _count_files(root)
    )


def _save(image: Image.Image, path: Path, quality: int) -> None:
    """Write ``image`` with fixed encoder settings (no timestamps, no metadata)."""
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    else:
        image.save(path, format="BMP")


def _render_jobs(world: World, root: Path, jobs: list[ImageJob]) -> None:
    """Render and write ``jobs`` under ``root`` (parent folders must exist)."""
    quality = world.config.jpeg_quality
    for job in jobs:
        pixels = render_image(world, job.pid, job.cam, job.modality, job.index)
        _save(Image.fromarray(pixels, "RGB"), root / job.relpath, quality)


_WORKER_STATE: dict[str, Any] = {}


def _worker_init(world: World, root: str) -> None:
    """Pool initialiser: receive the world once per worker instead of once per task."""
    _WORKER_STATE["world"] = world
    _WORKER_STATE["root"] = Path(root)


def _worker_run(jobs: list[ImageJob]) -> int:
    """Pool task: render a chunk of jobs; returns how many were written."""
    _render_jobs(_WORKER_STATE["world"], _WORKER_STATE["root"], jobs)
    return len(jobs)


def _render_all(world: World, root: Path, jobs: list[ImageJob], workers: int) -> None:
    """Render every job, in a pool of ``workers`` processes when the tree is large enough.

    Each image depends only on its own keyed random stream, so the pool's scheduling cannot
    change any output byte.
    """
    if workers <= 1 or len(jobs) < POOL_MIN_IMAGES:
        _render_jobs(world, root, jobs)
        return
    n_chunks = workers * 8
    chunks = [jobs[k::n_chunks] for k in range(n_chunks)]
    # "spawn": the caller may hold threads (torch, loggers) that make fork unsafe.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(world, str(root))) as pool:
        written = sum(pool.map(_worker_run, chunks))
    if written != len(jobs):
        raise RuntimeError(f"SynVI pool wrote {written} of {len(jobs)} images")


def _check_target(out: Path, digest: str) -> bool:
    """Return ``True`` if ``out`` already holds the requested tree; refuse foreign folders.

    Raises:
        FileExistsError: ``out`` is a file, or a non-empty folder that is not a SynVI tree.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"SynVI output {out} exists and is not a directory")
    if _is_complete(out, digest):
        return True
    if read_marker(out) is None and any(out.iterdir()):
        raise FileExistsError(
            f"SynVI output {out} is a non-empty directory without a {MARKER_NAME} marker; "
            "refusing to overwrite it. Choose an empty or new directory, or a previous SynVI "
            "tree."
        )
    return False


def install_atomically(tmp: Path, out: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move the finished folder ``tmp`` to ``out``; a complete ``out`` already there wins.

    Several processes (DDP ranks, nodes) may build the same cache entry at once: when ``out``
    already holds a complete one, it is kept and ``tmp`` is deleted, so no reader sees files
    move. Anything else at ``out`` (an empty folder, a damaged or older entry) is moved aside
    and deleted; callers refuse folders that are not theirs before calling.

    Args:
        tmp: The finished folder, a sibling of ``out`` (same file system: the rename is atomic).
        out: Where it belongs.
        is_complete: Whether a folder holds the complete entry wanted.
    """
    old: Path | None = None
    if is_complete(out):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "entry")
    try:
        os.rename(tmp, out)
    except OSError:
        # Another process installed it meanwhile: keep theirs if it is the one wanted.
        if not is_complete(out):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def install_tree(tmp: Path, out: Path, digest: str) -> None:
    """Move the finished tree ``tmp`` to ``out``, replacing an empty folder or old SynVI tree.

    Args:
        tmp: The finished tree (marker included), a sibling folder of ``out``.
        out: The data set root.
        digest: The tree's parameter hash (:func:`parameter_hash`), as its marker records it.
    """
    install_atomically(tmp, out, lambda folder: _is_complete(folder, digest))


def generate_synvi(
    layout: str,
    out: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    num_ids: int | None = None,
    preset: str = DEFAULT_PRESET,
    height: int = 128,
    width: int = 64,
    workers: int | None = None,
    **overrides: Any,
) -> Path:
    """Write (or reuse) a SynVI tree in the raw layout of SYSU-MM01, RegDB or LLCM.

    Args:
        layout: ``"sysu"``, ``"regdb"`` or ``"llcm"``.
        out: The data set root a reader is pointed at.
        seed: Tree seed; equal parameters give byte-identical files.
        num_ids: Identity count (``None``: 210 for SYSU, 100 for RegDB, 150 for LLCM), split
            like the real data set.
        preset: ``"easy"``, ``"default"`` or ``"hard"``.
        height: Written image height in pixels.
        width: Written image width in pixels.
        workers: Processes used for large trees (``None``: 2; outputs do not depend on it).
        **overrides: Other :class:`~gur_lightning.synvi.config.SynVIConfig` fields, e.g.
            ``images_per_camera=2`` or ``clutter=0``.

    Returns:
        ``out`` as an absolute path.

    Raises:
        ValueError: On an invalid option.
        FileExistsError: ``out`` is a non-empty folder that is not a SynVI tree.
    """
    params = tree_parameters(
        layout,
        seed=seed,
        num_ids=num_ids,
        preset=preset,
        height=height,
        width=width,
        **overrides,
    )
    digest = parameter_hash(params)
    out = Path(out).absolute()
    if _check_target(out, digest):
        log.debug("SynVI tree %s is up to date (hash %s)", out, digest[:12])
        return out
    start = time.perf_counter()
    cfg = resolve_config(
        layout, preset=preset, num_ids=num_ids, height=height, width=width, overrides=overrides
    )
    plan = plan_tree(layout, cfg, seed)
    world = build_world(layout, cfg, seed)
    with staging_folder(out) as tmp:
        for folder in sorted({str(Path(j.relpath).parent) for j in plan.jobs} | {"."}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        for relpath, text in plan.texts.items():
            (tmp / relpath).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relpath).write_text(text)
        _render_all(world, tmp, plan.jobs, DEFAULT_WORKERS if workers is None else workers)
        marker = {**params, "hash": digest, "num_files": len(plan.jobs) + len(plan.texts)}
        write_json_marker(tmp / MARKER_NAME, marker)
        install_tree(tmp, out, digest)
    log.info(
        "SynVI %s tree: %d images, %d identities, preset %s, seed %d -> %s (%.1f s)",
        layout,
        len(plan.jobs),
        cfg.num_ids,
        preset,
        seed,
        out,
        time.perf_counter() - start,
    )
    return out
