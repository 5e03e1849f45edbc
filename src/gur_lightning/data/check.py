"""Check a data set before training: every image decoded once, its counts against the published.

Training reads the test images only after the last phase, so a corrupt test file used to end a
run of hours at its very end; a missing camera silently changed the evaluation protocol. This
module opens **every** image a reader lists (training and test, visible and infrared, query and
gallery), in parallel, and compares the data set's counts with the figures its authors published:

* every undecodable file (not an image, truncated, unreadable, deleted) is named with its reason
  in **one** :class:`DataCheckError`;
* a count that differs from the published figure is a logged warning (expected vs found), unless
  it changes the evaluation protocol itself (a missing camera, no test identity, an empty query or
  gallery, no query with a match in its gallery): then it is part of the error;
* SynVI trees (recognised by their ``synvi.json`` marker) are smaller by design and are not
  compared with the published figures; the protocol checks still apply.

Decoding the 34,000 images of SYSU-MM01 takes minutes, so a successful check is cached: the key
is a hash of the listing (relative path, size and modification time of every image used), stored
as JSON in ``ROOT/.gur_lightning_check.json`` (or under ``~/.cache/gur_lightning`` when the root
is read-only). A later check with the same key decodes nothing; a failed check is never cached.

Command line::

    python -m gur_lightning.data.check sysu /data/SYSU-MM01 --workers 8
    python -m gur_lightning.data.check regdb /data/RegDB --trial 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import PIL
from PIL import Image

from gur_lightning.data.protocols import official_protocols
from gur_lightning.data.readers import (
    DATASET_NAMES,
    DatasetLayoutError,
    VIReIDDataset,
    load_dataset,
)
from gur_lightning.data.samples import MODALITIES, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: File name of the cache when it is kept in the data set's root (hidden: readers skip it).
CACHE_NAME = ".gur_lightning_check.json"
#: ``format`` field of a cache file; anything else is ignored (and overwritten when saved).
CACHE_FORMAT = "gur_lightning data check"
#: Bumped whenever what a check verifies changes, so older "ok" entries stop counting.
CHECK_VERSION = 1
#: Listing keys kept per cache file (e.g. RegDB trials or a tree edited back and forth).
MAX_CACHED_KEYS = 16
#: Default decode threads: Pillow releases the GIL while decoding, so threads scale.
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

Severity = Literal["warning", "error"]
#: A count (images, identities) or a sorted tuple of camera numbers.
Figure = int | tuple[int, ...]


@dataclass(frozen=True)
class Published:
    """One figure published for a data set.

    Attributes:
        value: The published count or camera numbers.
        source: Where the figure comes from.
        protocol: Whether a different value changes the evaluation protocol (an error) rather
            than only the data (a warning).
    """

    value: Figure
    source: str
    protocol: bool = False


_SYSU_PAPER = "SYSU-MM01 paper (Wu et al., ICCV 2017) and its exp/*_id.txt lists"
_SYSU_CODE = "GUR/ADCA official code (faiss_rerank.py comment [22258, 11909])"
_SYSU_PROTOCOL = "SYSU-MM01 evaluation protocol (Wu et al., ICCV 2017; official eval code)"
_REGDB_PAPER = "RegDB paper (Nguyen et al., Sensors 2017) and the ten idx/ splits"

#: Published figures per data set, keyed like :func:`dataset_counts`. ``train`` is the training
#: set with its validation identities (SYSU-MM01: train + val ids, as the official code trains);
#: ``<protocol>/query`` and ``<protocol>/gallery`` are sizes of gallery trial 0 (a single-shot
#: gallery has the same size in every trial).
PUBLISHED: dict[str, dict[str, Published]] = {
    "sysu": {
        # 296 train + 99 val + 96 test ids.
        "identities": Published(491, _SYSU_PAPER),
        "train/identities": Published(395, _SYSU_PAPER),
        "train/visible/images": Published(22_258, _SYSU_CODE),
        "train/infrared/images": Published(11_909, _SYSU_CODE),
        # RGB cameras 1, 2 (indoor), 4, 5 (outdoor); IR cameras 3 (indoor), 6 (outdoor).
        "train/visible/cameras": Published((1, 2, 4, 5), _SYSU_PAPER, protocol=True),
        "train/infrared/cameras": Published((3, 6), _SYSU_PAPER, protocol=True),
        "test/identities": Published(96, _SYSU_PAPER),
        "test/infrared/images": Published(3_803, _SYSU_PROTOCOL),
        "test/visible/cameras": Published((1, 2, 4, 5), _SYSU_PROTOCOL, protocol=True),
        "test/infrared/cameras": Published((3, 6), _SYSU_PROTOCOL, protocol=True),
        # Query: every IR image of the test ids; gallery: one RGB image per id and camera.
        "sysu_all/query": Published(3_803, _SYSU_PROTOCOL),
        "sysu_all/gallery": Published(301, _SYSU_PROTOCOL),
        "sysu_indoor/query": Published(3_803, _SYSU_PROTOCOL),
        "sysu_indoor/gallery": Published(112, _SYSU_PROTOCOL),
    },
    "regdb": {
        # 412 identities with 10 visible and 10 thermal images each, split 206 / 206 per trial.
        "train/identities": Published(206, _REGDB_PAPER),
        "train/visible/images": Published(2_060, _REGDB_PAPER),
        "train/infrared/images": Published(2_060, _REGDB_PAPER),
        "test/identities": Published(206, _REGDB_PAPER),
        "test/visible/images": Published(2_060, _REGDB_PAPER),
        "test/infrared/images": Published(2_060, _REGDB_PAPER),
    },
    # The LLCM paper's abstract gives 46,767 images of 1,064 identities from 9 cameras; its
    # per-split figures are not listed here (no source in this project to check them against),
    # so LLCM trees get this total and the protocol checks.
    "llcm": {
        "identities": Published(1_064, "LLCM paper (Zhang and Wang, CVPR 2023), abstract"),
    },
}


@dataclass(frozen=True)
class BadImage:
    """An image file that cannot be decoded.

    Attributes:
        path: The file.
        splits: Where the readers use it, e.g. ``("test/infrared",)``.
        reason: What failed (Pillow's or the OS's message).
    """

    path: str
    splits: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Difference:
    """A figure of the data set that is not what it should be.

    Attributes:
        figure: Its name, e.g. ``"train/visible/images"`` or ``"sysu_all/query"``.
        expected: The published value (or a description of what the protocol needs).
        found: The value read.
        severity: ``"warning"`` (the data differ) or ``"error"`` (the protocol cannot be run as
            published).
        note: The figure's source, or why the difference breaks the protocol.
    """

    figure: str
    expected: Figure | str
    found: Figure | str
    severity: Severity
    note: str

    def describe(self) -> str:
        """One line: figure, expected vs found, note."""
        return (
            f"{self.figure}: expected {_show(self.expected)}, found {_show(self.found)} "
            f"({self.note})"
        )


@dataclass(frozen=True)
class CheckReport:
    """The outcome of a successful :func:`check_dataset`.

    Attributes:
        dataset: Registry name of the data set.
        root: Its root folder.
        num_images: Distinct image files checked.
        decoded: How many were decoded now (0 when the cache already vouched for the listing).
        key: The listing's hash.
        cache_path: The cache file used, or ``None`` when caching was off.
        synvi: Whether the tree is a SynVI tree (no published-figure comparison).
        differences: Warnings against the published figures (errors raise instead).
    """

    dataset: str
    root: str
    num_images: int
    decoded: int
    key: str
    cache_path: str | None
    synvi: bool
    differences: tuple[Difference, ...]


class DataCheckError(ValueError):
    """The data set has undecodable images or breaks its evaluation protocol.

    Attributes:
        root: The data set's root.
        bad_images: Every undecodable file found.
        errors: Every protocol-breaking difference found.
    """

    def __init__(
        self, root: str, bad_images: Sequence[BadImage], errors: Sequence[Difference]
    ) -> None:
        self.root = root
        self.bad_images = tuple(bad_images)
        self.errors = tuple(errors)
        lines = [f"data check of {root!r} failed:"]
        if self.bad_images:
            lines.append(f"{len(self.bad_images)} image file(s) cannot be decoded:")
            lines += [f"  {b.path} [{', '.join(b.splits)}]: {b.reason}" for b in self.bad_images]
        if self.errors:
            lines.append(f"{len(self.errors)} problem(s) break the evaluation protocol:")
            lines += [f"  {d.describe()}" for d in self.errors]
        lines.append(
            "Replace or re-extract the files named above (the check runs again on the next start)."
        )
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.root, self.bad_images, self.errors))


# --------------------------------------------------------------------------------------------
# Inventory and decoding
# --------------------------------------------------------------------------------------------


def _show(value: Figure | str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, tuple):
        return "cameras " + (", ".join(map(str, value)) if value else "none")
    return str(value)


def _test_samples(ds: VIReIDDataset) -> dict[str, list[Sample]]:
    return {m: ds.test_samples(m) for m in MODALITIES}


def image_inventory(ds: VIReIDDataset) -> dict[str, tuple[str, ...]]:
    """Every image file a data set's splits use, with the splits that use it.

    Training (with the validation identities) and test images of both modalities: the query
    and gallery of every protocol are drawn from the test images.

    Args:
        ds: A loaded data set.

    Returns:
        ``{path: ("train/visible", ...)}``, paths sorted.
    """
    uses: dict[str, set[str]] = {}
    for s in [*ds.train, *(ds.val or ())]:
        uses.setdefault(s.path, set()).add(f"train/{s.modality}")
    for modality, samples in _test_samples(ds).items():
        for s in samples:
            uses.setdefault(s.path, set()).add(f"test/{modality}")
    return {path: tuple(sorted(uses[path])) for path in sorted(uses)}


def verify_image(path: str) -> str | None:
    """Decode one image cheaply; return why it failed, or ``None`` when it is fine.

    ``Image.verify`` checks the header and (for PNG) the checksums but reads no JPEG or BMP
    pixel data, so a truncated JPEG passes it. The file is therefore also decoded for real, at
    the smallest scale the format allows (JPEG: 1/8 with ``draft``), which reads the whole
    compressed stream and fails on a truncated one.

    Args:
        path: The image file.

    Returns:
        ``None``, or ``"<exception type>: <message>"``.
    """
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports undecodable data as OSError (UnidentifiedImageError, "truncated"),
        # and some plugins as SyntaxError or ValueError.
        return f"{type(exc).__name__}: {exc}"
    return None


def _decode_all(paths: Sequence[str], workers: int, progress: bool) -> dict[str, str]:
    """Decode ``paths`` in ``workers`` threads; return ``{path: reason}`` of the failures."""
    from tqdm.auto import tqdm

    failures: dict[str, str] = {}
    bar = tqdm(total=len(paths), desc="checking images", unit="img", disable=not progress)

    def results() -> Iterator[tuple[str, str | None]]:
        if workers <= 1:
            for path in paths:
                yield path, verify_image(path)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from zip(paths, pool.map(verify_image, paths), strict=True)

    with bar:
        for path, reason in results():
            if reason is not None:
                failures[path] = reason
            bar.update(1)
    return failures


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def listing_key(ds: VIReIDDataset, paths: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Hash the listing of the images: relative path, size and ``mtime_ns`` of each.

    Args:
        ds: The data set (its name and root enter the hash's context).
        paths: The image files.

    Returns:
        ``(key, missing)``: the hex SHA-256 of the listing, and ``{path: reason}`` of the files
        that cannot be stat-ed (they are reported as bad images).
    """
    digest = hashlib.sha256(
        f"{CACHE_FORMAT} v{CHECK_VERSION} Pillow {PIL.__version__} {ds.name}\n".encode()
    )
    missing: dict[str, str] = {}
    for path in sorted(paths):
        try:
            st = os.stat(path)
        except OSError as exc:
            missing[path] = f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        rel = os.path.relpath(path, ds.root)
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest(), missing


def default_cache_path(
    root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None
) -> Path:
    """Where the check of ``root`` is cached.

    Args:
        root: The data set's root.
        cache_dir: A folder chosen by the caller, or ``None``: the root itself when it is
            writable, else ``$XDG_CACHE_HOME/gur_lightning`` (``~/.cache/gur_lightning``).

    Returns:
        ``ROOT/.gur_lightning_check.json``, or ``<folder>/check-<hash of the root>.json``.
    """
    root = Path(root).absolute()
    if cache_dir is None:
        if os.access(root, os.W_OK):
            return root / CACHE_NAME
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        cache_dir = Path(base) / "gur_lightning"
    name = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"check-{name}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's ``ok`` entries, or none when the file is missing, foreign or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    ok = data.get("ok")
    return ok if isinstance(ok, dict) else {}


def _write_cache(path: Path, ok: Mapping[str, Any]) -> None:
    """Write the cache atomically (temporary file in the same folder, then ``os.replace``).

    A cache that cannot be written only costs a decode next time: the failure is logged.
    """
    data = {"format": CACHE_FORMAT, "version": CHECK_VERSION, "ok": dict(ok)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data root may be shared
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning(
            "data check: cannot write the cache %s (%s); next run decodes again", path, exc
        )


# --------------------------------------------------------------------------------------------
# Counts and protocol
# --------------------------------------------------------------------------------------------


def _split_counts(prefix: str, samples: Iterable[Sample]) -> dict[str, Figure]:
    samples = list(samples)
    counts: dict[str, Figure] = {f"{prefix}/identities": len({s.pid for s in samples})}
    for modality in MODALITIES:
        of_modality = [s for s in samples if s.modality == modality]
        counts[f"{prefix}/{modality}/images"] = len(of_modality)
        counts[f"{prefix}/{modality}/cameras"] = tuple(sorted({s.camid for s in of_modality}))
    return counts


def dataset_counts(ds: VIReIDDataset) -> dict[str, Figure]:
    """The figures of a loaded data set that :data:`PUBLISHED` lists.

    Args:
        ds: A loaded data set.

    Returns:
        ``identities`` (training and test), ``train/...`` and ``test/...`` (``identities``,
        ``<modality>/images``, ``<modality>/cameras``), and for every protocol whose test split
        can be drawn ``<protocol>/query`` and ``<protocol>/gallery`` (gallery trial 0 or the
        protocol's first trial).
    """
    train = {s.path: s for s in [*ds.train, *(ds.val or ())]}.values()
    test = [s for samples in _test_samples(ds).values() for s in samples]
    counts: dict[str, Figure] = {"identities": len({s.pid for s in [*train, *test]})}
    counts.update(_split_counts("train", train))
    counts.update(_split_counts("test", test))
    for protocol in official_protocols(ds.name):
        try:
            query, gallery = protocol.build(ds, protocol.trial_values(ds)[0])
        except DatasetLayoutError:
            continue  # reported by protocol_problems
        counts[f"{protocol.name}/query"] = len(query)
        counts[f"{protocol.name}/gallery"] = len(gallery)
    return counts


def images_per_identity_camera(samples: Iterable[Sample]) -> dict[str, tuple[float, float]]:
    """How many images one identity has in one camera it appears in, per modality.

    A property clustering depends on (a neighbourhood of ``k1`` images must fit inside one
    person's images): SYSU-MM01's training split has about 14 visible and 15 infrared images
    per identity and camera, SynVI's default tree fewer (docs/synthetic.md, "Calibration
    against the real data").

    Args:
        samples: Images of one split.

    Returns:
        ``{modality: (mean, median)}`` over the (identity, camera) pairs that have an image,
        for each modality present.
    """
    counts: dict[str, dict[tuple[int, int], int]] = {}
    for s in samples:
        per_pair = counts.setdefault(s.modality, {})
        per_pair[(s.pid, s.camid)] = per_pair.get((s.pid, s.camid), 0) + 1
    return {
        m: (statistics.fmean(c.values()), float(statistics.median(c.values())))
        for m in MODALITIES
        if (c := counts.get(m))
    }


def protocol_problems(ds: VIReIDDataset) -> list[Difference]:
    """Problems that make an evaluation protocol impossible, on any tree (SynVI included).

    No test identity; a protocol whose query or gallery is empty; a protocol where no query
    identity has an image in the gallery.

    Args:
        ds: A loaded data set.

    Returns:
        One error per problem (empty when the protocols can run).
    """
    problems: list[Difference] = []
    test_ids = {s.pid for samples in _test_samples(ds).values() for s in samples}
    if not test_ids:
        problems.append(
            Difference(
                "test/identities",
                "at least 1",
                0,
                "error",
                "no test identity has an image: nothing can be evaluated",
            )
        )
    for protocol in official_protocols(ds.name):
        name = protocol.name
        try:
            query, gallery = protocol.build(ds, protocol.trial_values(ds)[0])
        except DatasetLayoutError as exc:
            problems.append(
                Difference(
                    f"{name}/query+gallery",
                    "non-empty query and gallery",
                    "an empty one",
                    "error",
                    str(exc).split(";")[0],
                )
            )
            continue
        shared = {s.pid for s in query} & {s.pid for s in gallery}
        if not shared:
            problems.append(
                Difference(
                    f"{name}/matched_identities",
                    "at least 1",
                    0,
                    "error",
                    f"no {protocol.query_modality} query identity has an image in the "
                    f"{protocol.gallery_modality} gallery",
                )
            )
    return problems


def compare_counts(
    counts: Mapping[str, Figure], published: Mapping[str, Published]
) -> list[Difference]:
    """The figures that differ from the published ones.

    Args:
        counts: The data set's figures (:func:`dataset_counts`).
        published: The published figures (a row of :data:`PUBLISHED`).

    Returns:
        One :class:`Difference` per differing (or missing) figure, in the table's order: an
        error for a figure that defines the protocol (cameras), else a warning.
    """
    differences = []
    for figure, pub in published.items():
        found: Figure | str = counts.get(figure, "not computable")
        if found == pub.value:
            continue
        severity: Severity = "error" if pub.protocol else "warning"
        note = pub.source if not pub.protocol else f"changes the protocol; {pub.source}"
        differences.append(Difference(figure, pub.value, found, severity, note))
    return differences


def is_synvi_tree(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds a SynVI tree (its generator's marker file names it so)."""
    from gur_lightning.synvi import read_marker

    return read_marker(Path(root)) is not None


def format_differences(differences: Sequence[Difference]) -> str:
    """A plain-text table: figure, expected, found, severity, note (one row per difference)."""
    rows = [("figure", "expected", "found", "severity", "source / note")]
    rows += [
        (d.figure, _show(d.expected), _show(d.found), d.severity, d.note) for d in differences
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row))
        for row in rows
    )


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def check_dataset(
    ds: VIReIDDataset,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    synvi: bool | None = None,
    published: Mapping[str, Published] | None = None,
) -> CheckReport:
    """Decode every image of a data set and compare its counts with the published figures.

    Args:
        ds: A loaded data set (:func:`~gur_lightning.data.readers.load_dataset`).
        cache: Skip decoding when a previous successful check saw the same listing, and record a
            successful check.
        cache_dir: Folder of the cache file (default: see :func:`default_cache_path`).
        workers: Decode threads (default :data:`DEFAULT_WORKERS`; 1 decodes in this thread).
        progress: Show a progress bar (default: when stderr is a terminal).
        synvi: Whether the tree is a SynVI tree, which is not compared with the published
            figures (default: detected from its marker file).
        published: Figures to compare with (default: the data set's row of :data:`PUBLISHED`).

    Returns:
        The report; warnings (differences from the published figures) are also logged.

    Raises:
        DataCheckError: Listing every undecodable image (path, splits, reason) and every
            protocol-breaking problem at once. Nothing is cached then.
    """
    start = time.perf_counter()
    inventory = image_inventory(ds)
    key, missing = listing_key(ds, inventory)
    synvi = is_synvi_tree(ds.root) if synvi is None else synvi
    if published is None:
        published = {} if synvi else PUBLISHED.get(ds.name, {})
    differences = protocol_problems(ds) + compare_counts(dataset_counts(ds), published)
    errors = [d for d in differences if d.severity == "error"]
    warnings = tuple(d for d in differences if d.severity == "warning")
    if warnings:
        log.warning(
            "%s at %s differs from the published figures in %d count(s):\n%s",
            ds.name,
            ds.root,
            len(warnings),
            format_differences(warnings),
        )

    log.info(
        "%s images per identity and camera in training (mean / median): %s",
        ds.name,
        ", ".join(
            f"{m} {mean:.1f} / {median:g}"
            for m, (mean, median) in images_per_identity_camera(
                {s.path: s for s in [*ds.train, *(ds.val or ())]}.values()
            ).items()
        ),
    )

    cache_path = default_cache_path(ds.root, cache_dir) if cache else None
    entries = _read_cache(cache_path) if cache_path is not None else {}
    if key in entries and not missing and not errors:
        log.info(
            "data check: %d images of %s at %s unchanged since the check of %s (%s)",
            len(inventory),
            ds.name,
            ds.root,
            entries[key].get("checked_at", "?"),
            cache_path,
        )
        return CheckReport(
            ds.name, ds.root, len(inventory), 0, key, str(cache_path), synvi, warnings
        )

    to_decode = [p for p in inventory if p not in missing]
    if progress is None:
        progress = sys.stderr.isatty()
    failures = _decode_all(to_decode, DEFAULT_WORKERS if workers is None else workers, progress)
    failures.update(missing)
    if failures or errors:
        bad = [BadImage(p, inventory[p], failures[p]) for p in sorted(failures)]
        raise DataCheckError(ds.root, bad, errors)

    if cache_path is not None:
        entries = {k: v for k, v in entries.items() if k != key}
        entries[key] = {
            "dataset": ds.name,
            "images": len(inventory),
            "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Keep the most recent keys: JSON objects keep their insertion order.
        _write_cache(cache_path, dict(list(entries.items())[-MAX_CACHED_KEYS:]))
    log.info(
        "data check: %d images of %s at %s decoded in %.1f s, all readable",
        len(to_decode),
        ds.name,
        ds.root,
        time.perf_counter() - start,
    )
    return CheckReport(
        ds.name,
        ds.root,
        len(inventory),
        len(to_decode),
        key,
        None if cache_path is None else str(cache_path),
        synvi,
        warnings,
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gur_lightning.data.check",
        description="Decode every image of a data set and compare its counts with the "
        "published figures; exit 1 listing every bad file.",
    )
    parser.add_argument("dataset", choices=sorted(DATASET_NAMES), help="raw layout to read")
    parser.add_argument("root", help="the data set's root folder")
    parser.add_argument(
        "--trial", type=int, default=None, help="RegDB identity split 1..10 (default 1)"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="decode threads (default %(default)s)"
    )
    parser.add_argument("--cache-dir", default=None, help="folder of the cache file")
    parser.add_argument("--no-cache", action="store_true", help="decode even if cached")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check from the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        0 when the data set passed, 1 when it did not (the message is written to stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trial = args.trial
    if args.dataset == "regdb" and trial is None:
        trial = 1
    try:
        ds = load_dataset(args.dataset, args.root, trial=trial)
        check_dataset(
            ds,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
            workers=args.workers,
            progress=False if args.no_progress else None,
        )
    except (DataCheckError, DatasetLayoutError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
