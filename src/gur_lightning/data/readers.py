"""Readers for the raw SYSU-MM01, RegDB and LLCM layouts and their evaluation splits.

Implements docs/method.md §2.1 / §2.3 (raw layouts) and §13.2 / §13.3 (evaluation protocols), and
the LLCM layout of docs/synthetic.md "Layouts it writes". The readers read the data sets as
distributed (and SynVI trees, which use the same layouts) directly: nothing is converted or copied,
the Market-style ``prepare_*.py`` trees of the official code (docs/method.md §2.2, §2.4) are not
used.

Listing a split never opens an image; a corrupt file is reported by :func:`read_image` when the
input pipeline reads it. Every listing goes through :func:`os.scandir` and each folder is listed
and sorted once, when the data set is loaded.

Which split builder (:meth:`VIReIDDataset.test_split`, ``test_samples``, ``validation_split``)
serves which evaluation setting, and with which trials, is the protocol table's business
(:mod:`gur_lightning.data.protocols`)::

    ds = load_dataset("sysu", root)
    for protocol in official_protocols(ds.name):
        for trial in protocol.trial_values(ds):
            query, gallery = protocol.build(ds, trial)
"""

from __future__ import annotations

import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from PIL import Image

from gur_lightning.data.samples import MODALITIES, Modality, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: File name endings counted as images when a folder is listed (case-insensitive). The real data
#: sets hold only ``.jpg`` (SYSU-MM01, LLCM) or ``.bmp`` (RegDB) files in their image folders, so
#: this filter changes nothing there; it keeps stray files (``Thumbs.db``) out of the draws.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

#: Gallery trials of the single-shot SYSU-MM01 / LLCM protocols: seeds 0..9 (docs/method.md §13.2).
NUM_GALLERY_TRIALS = 10
#: RegDB ships ten identity splits, ``idx/*_{1..10}.txt`` (docs/method.md §2.3).
REGDB_TRIALS = range(1, 11)
#: Share of the training identities (the last ones in sorted order) held out for model selection
#: on RegDB and LLCM, which have no official validation identities. Not from the official code:
#: GUR selects its RegDB model on the test split (docs/method.md §13.3), which we do not repeat.
VAL_HOLDOUT_FRACTION = 0.2

#: SYSU-MM01 cameras (docs/method.md §2.1): visible 1, 2 (indoor), 4, 5 (outdoor); infrared 3
#: (indoor), 6 (outdoor).
SYSU_CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
SYSU_INFRARED_CAMERAS: tuple[int, ...] = (3, 6)
#: Query cameras of both SYSU-MM01 settings and gallery cameras per setting (docs/method.md §13.2).
SYSU_QUERY_CAMERAS: tuple[int, ...] = (3, 6)
SYSU_GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
#: RegDB has one camera per modality (a co-located visible/thermal pair); we number them 1
#: and 2, as the official evaluation does (docs/method.md §13.3), so no camera filter ever
#: removes a match.
REGDB_CAMERA: dict[str, int] = {"visible": 1, "infrared": 2}
#: LLCM folders per modality and the direction codes of its protocol.
LLCM_TEST_FOLDER: dict[str, str] = {"visible": "test_vis", "infrared": "test_nir"}
LLCM_TRAIN_LIST: dict[str, str] = {"visible": "train_vis.txt", "infrared": "train_nir.txt"}

SYSU_LAYOUT = (
    "expected SYSU-MM01 raw layout: ROOT/cam1..cam6/NNNN/*.jpg and "
    "ROOT/exp/{train,val,test}_id.txt (one line of comma-separated ids)"
)
REGDB_LAYOUT = (
    "expected RegDB raw layout: ROOT/Visible/.../*.bmp, ROOT/Thermal/.../*.bmp and "
    "ROOT/idx/{train,test}_{visible,thermal}_{1..10}.txt (lines 'relative/path.bmp label')"
)
LLCM_LAYOUT = (
    "expected LLCM raw layout: ROOT/{train,test}_{vis,nir}/camK/NNNN/NNNN_cKK_*.jpg, "
    "ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt (lines 'relative/path label') and "
    "ROOT/idx/test_id.txt (one line of comma-separated ids)"
)

# LLCM file names start with the identity and the camera: ``0001_c01_s170100_f3120_nir.jpg``.
_LLCM_NAME = re.compile(r"^(\d+)_c(\d+)_")
_CAMERA_FOLDER = re.compile(r"^cam(\d+)$")


class DatasetLayoutError(ValueError):
    """A data set tree or list file does not match the raw layout its reader expects."""


class DatasetPathMissingError(DatasetLayoutError, FileNotFoundError):
    """A root, folder, list file or image that the layout requires does not exist."""


class ImageReadError(OSError):
    """An image file cannot be opened or decoded.

    Attributes:
        path: The file at fault.
        reason: What PIL (or the OS) reported.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        # DataLoader workers may pickle the exception; rebuild it from its two fields.
        return (type(self), (self.path, self.reason))


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as 3-channel RGB, as the official loaders do (docs/method.md §2.2).

    Infrared / thermal images are therefore returned with three near-identical channels.

    Args:
        path: Image file.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"`` (H × W × 3 when converted to an array),
        detached from the file.

    Raises:
        ImageReadError: The file is missing, unreadable, not an image or truncated; the message
            names the path.
    """
    spath = os.fspath(path)
    try:
        with Image.open(spath) as img:
            # convert() loads the pixels, so truncated files fail here, inside the try.
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL reports undecodable data as OSError (UnidentifiedImageError, "truncated"),
        # and some plugins as SyntaxError or ValueError.
        raise ImageReadError(spath, f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Listing and parsing helpers
# --------------------------------------------------------------------------------------------


def _require_dir(path: str, what: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise DatasetPathMissingError(f"{what} not found: {path!r} is not a folder; {layout}")


def _require_file(path: str, what: str, layout: str) -> None:
    if not os.path.isfile(path):
        raise DatasetPathMissingError(f"{what} not found: {path!r}; {layout}")


def _subfolders(path: str) -> dict[str, str]:
    """Map each sub-folder name of ``path`` to its full path (one scandir, no stat calls)."""
    with os.scandir(path) as entries:
        return {e.name: e.path for e in entries if e.is_dir()}


def _image_names(path: str) -> list[str]:
    """Sorted names of the image files in ``path`` (hidden files skipped).

    Sorting names is the official ``sorted([img_dir + '/' + f for f in os.listdir(img_dir)])``
    (docs/method.md §13.2): all paths share the prefix, so the orders are the same.
    """
    with os.scandir(path) as entries:
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and e.is_file()
        ]
    names.sort()
    return names


def _read_text(path: str, what: str, layout: str) -> str:
    _require_file(path, what, layout)
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _read_id_file(path: str, layout: str) -> list[int]:
    """Parse an id file: comma-separated integers (docs/method.md §2.1), sorted and de-duplicated.

    Raises:
        DatasetPathMissingError: The file does not exist.
        DatasetLayoutError: A token is not an integer (file and line named) or no id is given.
    """
    text = _read_text(path, "id list", layout)
    ids: set[int] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        for token in line.split(","):
            token = token.strip()
            if not token:
                continue
            try:
                ids.add(int(token))
            except ValueError:
                raise DatasetLayoutError(
                    f"{path}:{line_no}: {token!r} is not an integer id; {layout}"
                ) from None
    if not ids:
        raise DatasetLayoutError(f"{path} holds no ids; {layout}")
    return sorted(ids)


def _read_list_file(path: str, layout: str) -> list[tuple[str, int, int]]:
    """Parse a list file of ``relative/path label`` lines (docs/method.md §2.3).

    Returns:
        ``(relative_path, label, line_number)`` per non-blank line, in file order.

    Raises:
        DatasetPathMissingError: The file does not exist.
        DatasetLayoutError: A line is malformed (file and line number named) or none is given.
    """
    text = _read_text(path, "list file", layout)
    entries: list[tuple[str, int, int]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # rsplit: the label is the last token, so a path with a space still parses.
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetLayoutError(
                f"{path}:{line_no}: expected 'relative/path label', got {line!r}; {layout}"
            )
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetLayoutError(
                f"{path}:{line_no}: label {label_text!r} is not an integer; {layout}"
            ) from None
        if os.path.isabs(rel):
            raise DatasetLayoutError(
                f"{path}:{line_no}: path {rel!r} must be relative to the data set root; {layout}"
            )
        entries.append((rel, label, line_no))
    if not entries:
        raise DatasetLayoutError(f"{path} lists no images; {layout}")
    return entries


def _resolve_listed(
    root: str, entries: Sequence[tuple[str, int, int]], list_path: str, layout: str
) -> list[str]:
    """Absolute paths of listed images, checking that each exists without opening it.

    Each parent folder is listed once (one scandir per folder instead of a stat per image).

    Raises:
        DatasetPathMissingError: A folder or an image named in the list does not exist; the
            message names the list file, its line and the missing path.
    """
    listings: dict[str, frozenset[str]] = {}
    paths: list[str] = []
    for rel, _label, line_no in entries:
        path = os.path.normpath(os.path.join(root, rel))
        folder, name = os.path.split(path)
        names = listings.get(folder)
        if names is None:
            if not os.path.isdir(folder):
                raise DatasetPathMissingError(
                    f"{list_path}:{line_no}: image folder {folder!r} not found; {layout}"
                )
            with os.scandir(folder) as it:
                names = frozenset(e.name for e in it)
            listings[folder] = names
        if name not in names:
            raise DatasetPathMissingError(
                f"{list_path}:{line_no}: image {path!r} not found; {layout}"
            )
        paths.append(path)
    return paths


def _check_trial(trial: int, valid: range, what: str) -> int:
    if isinstance(trial, bool) or not isinstance(trial, int) or trial not in valid:
        raise ValueError(
            f"{what}: trial must be an integer in {valid.start}..{valid.stop - 1}, got {trial!r}"
        )
    return trial


def _check_choice(value: str, allowed: Iterable[str], what: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def _group_by_pid_cam(samples: Iterable[Sample]) -> dict[tuple[int, int], list[Sample]]:
    """Group samples by ``(pid, camid)``, each group sorted by path."""
    groups: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.pid, s.camid), []).append(s)
    for group in groups.values():
        group.sort(key=lambda s: s.path)
    return groups


def _all_shots(
    pids: Iterable[int], cameras: Sequence[int], groups: Mapping[tuple[int, int], list[Sample]]
) -> list[Sample]:
    """Every image of ``pids`` in ``cameras``, in the official query order (docs/method.md §13.2).

    Identities sorted, cameras in the given order, files sorted within each folder.
    """
    return [s for pid in sorted(pids) for cam in cameras for s in groups.get((pid, cam), ())]


def _single_shot(
    pids: Iterable[int],
    cameras: Sequence[int],
    groups: Mapping[tuple[int, int], list[Sample]],
    trial: int,
) -> list[Sample]:
    """One random image per identity and camera, the official single-shot gallery draw.

    docs/method.md §13.2: after ``random.seed(trial)``, for each identity in sorted order and each
    camera in the given order, if the folder exists, ``random.choice`` over its sorted files.
    A private ``random.Random(trial)`` yields the same draws without touching the global state.

    Args:
        pids: Identities to draw for.
        cameras: Gallery cameras, in draw order.
        groups: Sorted images per ``(pid, camid)``; a key exists only for a non-empty folder.
        trial: The seed.

    Returns:
        The gallery, in draw order.
    """
    rng = random.Random(trial)
    gallery: list[Sample] = []
    for pid in sorted(pids):
        for cam in cameras:
            group = groups.get((pid, cam))
            if group:
                gallery.append(rng.choice(group))
    return gallery


def _holdout_ids(samples: Iterable[Sample], fraction: float = VAL_HOLDOUT_FRACTION) -> list[int]:
    """The last ``fraction`` of the sorted identities (at least one) of ``samples``."""
    pids = sorted({s.pid for s in samples})
    count = max(1, int(len(pids) * fraction))
    return pids[-count:]


def _non_empty(samples: list[Sample], what: str, root: str, layout: str) -> list[Sample]:
    if not samples:
        raise DatasetLayoutError(f"{what} is empty for data set root {root!r}; {layout}")
    return samples


# --------------------------------------------------------------------------------------------
# Data set classes
# --------------------------------------------------------------------------------------------


class VIReIDDataset(ABC):
    """A visible-infrared re-ID data set read from its raw layout.

    Attributes:
        name: Registry name (``"sysu"``, ``"regdb"``, ``"llcm"``).
        root: Absolute data set root.
        train: Training images of both modalities, sorted by path.
        val: Images of the validation identities (both modalities, sorted by path), or ``None``.
    """

    name: str = ""
    layout: str = ""

    def __init__(self, root: str, train: list[Sample], val: list[Sample] | None) -> None:
        self.root = root
        for modality in MODALITIES:
            if not any(s.modality == modality for s in train):
                raise DatasetLayoutError(
                    f"{self.name}: no {modality} training image under {root!r}; {self.layout}"
                )
        self.train = train
        self.val = val
        log.info(
            "%s at %s: %d visible + %d infrared training images, %d validation images",
            self.name,
            root,
            sum(s.modality == "visible" for s in train),
            sum(s.modality == "infrared" for s in train),
            len(val) if val is not None else 0,
        )

    def camera_ids(self, modality: Modality) -> list[int]:
        """Sorted camera ids of the training images of one modality.

        Args:
            modality: ``"visible"`` or ``"infrared"``.

        Returns:
            The data set's own camera numbers, e.g. SYSU-MM01 ``[1, 2, 4, 5]`` / ``[3, 6]``.
        """
        _check_choice(modality, MODALITIES, "modality")
        return sorted({s.camid for s in self.train if s.modality == modality})

    @abstractmethod
    def test_split(self, *args: Any, **kwargs: Any) -> tuple[list[Sample], list[Sample]]:
        """Return ``(query, gallery)`` of one official test setting (see :meth:`protocols`)."""

    @abstractmethod
    def validation_split(self, trial: int | None = None) -> tuple[list[Sample], list[Sample]]:
        """Return ``(query, gallery)`` on validation identities, for model selection."""

    @abstractmethod
    def test_samples(self, modality: Modality) -> list[Sample]:
        """Every test image of one modality (within-modality diagnostic, docs/method.md §13.4)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, train={len(self.train)}, "
            f"val={None if self.val is None else len(self.val)})"
        )


class SYSUMM01Dataset(VIReIDDataset):
    """SYSU-MM01 from its raw tree (docs/method.md §2.1, protocol §13.2).

    Training uses train ∪ val identities as the official code does (395 ids, 22,258 visible +
    11,909 infrared images on the real data); ``holdout_val=True`` leaves the val ids out.
    ``pid`` is the ``NNNN`` folder, ``camid`` the ``camC`` folder (1..6).

    Args:
        root: Folder holding ``cam1`` .. ``cam6`` and ``exp``.
        trial: Default gallery trial (0..9) of :meth:`test_split` / :meth:`validation_split`.
        holdout_val: Exclude the val identities from :attr:`train`.
    """

    name = "sysu"
    layout = SYSU_LAYOUT

    def __init__(self, root: str, *, trial: int | None = None, holdout_val: bool = False) -> None:
        root = os.path.abspath(root)
        _require_dir(root, "SYSU-MM01 root", SYSU_LAYOUT)
        exp = os.path.join(root, "exp")
        train_ids = _read_id_file(os.path.join(exp, "train_id.txt"), SYSU_LAYOUT)
        self.val_ids = _read_id_file(os.path.join(exp, "val_id.txt"), SYSU_LAYOUT)
        self.test_ids = _read_id_file(os.path.join(exp, "test_id.txt"), SYSU_LAYOUT)
        self.default_trial = (
            0 if trial is None else _check_trial(trial, range(NUM_GALLERY_TRIALS), "sysu")
        )
        overlap = set(self.test_ids) & (set(train_ids) | set(self.val_ids))
        if overlap:
            log.warning(
                "sysu: %d test ids are also training ids: %s", len(overlap), sorted(overlap)[:10]
            )

        camera_folders: dict[int, dict[str, str]] = {}
        for cam in SYSU_CAMERAS:
            folder = os.path.join(root, f"cam{cam}")
            _require_dir(folder, f"camera folder cam{cam}", SYSU_LAYOUT)
            camera_folders[cam] = _subfolders(folder)

        # List every folder the splits can touch once; the test/val draws reuse these lists.
        self._groups: dict[tuple[int, int], list[Sample]] = {}
        for pid in sorted(set(train_ids) | set(self.val_ids) | set(self.test_ids)):
            key = f"{pid:04d}"  # the official code builds folder names with "%04d"
            for cam in SYSU_CAMERAS:
                id_folder = camera_folders[cam].get(key)
                if id_folder is None:
                    continue
                names = _image_names(id_folder)
                if not names:
                    raise DatasetLayoutError(
                        f"identity folder {id_folder!r} holds no images; {SYSU_LAYOUT}"
                    )
                modality: Modality = "infrared" if cam in SYSU_INFRARED_CAMERAS else "visible"
                self._groups[(pid, cam)] = [
                    Sample(os.path.join(id_folder, n), pid, cam, modality) for n in names
                ]
        present = {pid for pid, _cam in self._groups}
        absent = sorted((set(train_ids) | set(self.val_ids) | set(self.test_ids)) - present)
        if absent:
            log.warning("sysu: %d listed ids have no image folder: %s", len(absent), absent[:10])

        train_pids = set(train_ids) if holdout_val else set(train_ids) | set(self.val_ids)
        train = self._images_of(train_pids)
        val = self._images_of(set(self.val_ids))
        super().__init__(root, _non_empty(train, "sysu training set", root, SYSU_LAYOUT), val)

    def _images_of(self, pids: set[int]) -> list[Sample]:
        samples = [s for (pid, _c), group in self._groups.items() if pid in pids for s in group]
        samples.sort(key=lambda s: s.path)
        return samples

    def _trial(self, trial: int | None) -> int:
        if trial is None:
            return self.default_trial
        return _check_trial(trial, range(NUM_GALLERY_TRIALS), "sysu")

    def test_split(
        self, mode: str = "all", trial: int | None = None
    ) -> tuple[list[Sample], list[Sample]]:
        """SYSU-MM01 test query and single-shot gallery (docs/method.md §13.2).

        Args:
            mode: ``"all"`` (gallery cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2).
            trial: Gallery seed 0..9 (default: the data set's ``trial``).

        Returns:
            ``(query, gallery)``: every infrared image of the test ids in cameras 3 and 6
            (ids sorted, camera 3 then 6, files sorted); one visible image per test id and
            gallery camera, drawn as the official code does.
        """
        _check_choice(mode, SYSU_GALLERY_CAMERAS, "sysu test_split mode")
        trial = self._trial(trial)
        query = _all_shots(self.test_ids, SYSU_QUERY_CAMERAS, self._groups)
        gallery = _single_shot(self.test_ids, SYSU_GALLERY_CAMERAS[mode], self._groups, trial)
        _non_empty(query, "sysu test query", self.root, SYSU_LAYOUT)
        _non_empty(gallery, f"sysu {mode} test gallery", self.root, SYSU_LAYOUT)
        return query, gallery

    def validation_split(self, trial: int | None = None) -> tuple[list[Sample], list[Sample]]:
        """The test protocol (all-search) applied to the val identities.

        Args:
            trial: Gallery seed 0..9 (default: the data set's ``trial``).

        Returns:
            ``(query, gallery)``: infrared images of the val ids in cameras 3 and 6; one visible
            image per val id and camera 1, 2, 4, 5, drawn like the test gallery.
        """
        trial = self._trial(trial)
        query = _all_shots(self.val_ids, SYSU_QUERY_CAMERAS, self._groups)
        gallery = _single_shot(self.val_ids, SYSU_GALLERY_CAMERAS["all"], self._groups, trial)
        _non_empty(query, "sysu validation query", self.root, SYSU_LAYOUT)
        _non_empty(gallery, "sysu validation gallery", self.root, SYSU_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """Every test-identity image of one modality, sorted by path.

        Args:
            modality: ``"visible"`` (cameras 1, 2, 4, 5) or ``"infrared"`` (3, 6).

        Returns:
            The images, for the within-modality diagnostic.
        """
        _check_choice(modality, MODALITIES, "modality")
        return [s for s in self._images_of(set(self.test_ids)) if s.modality == modality]


class RegDBDataset(VIReIDDataset):
    """RegDB from its raw tree and ``idx`` lists (docs/method.md §2.3, protocol §13.3).

    ``pid`` is the label of the list file; RegDB has one camera per modality, so every visible
    image gets ``camid`` 1 and every thermal image ``camid`` 2.

    Validation identities: the last ``VAL_HOLDOUT_FRACTION`` (20 %, at least one) of the sorted
    training labels of this trial; :attr:`val` holds their images. They stay in :attr:`train`
    unless ``holdout_val=True``.

    Args:
        root: Folder holding ``Visible``, ``Thermal`` and ``idx``.
        trial: Identity split 1..10 (required).
        holdout_val: Exclude the validation identities from :attr:`train`.
    """

    name = "regdb"
    layout = REGDB_LAYOUT

    def __init__(self, root: str, *, trial: int | None = None, holdout_val: bool = False) -> None:
        if trial is None:
            raise ValueError("regdb: trial is required, an integer in 1..10 (idx/*_{trial}.txt)")
        self.trial = _check_trial(trial, REGDB_TRIALS, "regdb")
        root = os.path.abspath(root)
        _require_dir(root, "RegDB root", REGDB_LAYOUT)
        _require_dir(os.path.join(root, "idx"), "RegDB list folder idx", REGDB_LAYOUT)
        self._root = root
        train = self._read_list("train", "visible") + self._read_list("train", "infrared")
        train.sort(key=lambda s: s.path)
        # The test lists are read (and their images checked) once, at load time.
        self._test = {m: self._read_list("test", m) for m in MODALITIES}
        self.val_ids = _holdout_ids(train)
        held = set(self.val_ids)
        val = [s for s in train if s.pid in held]
        if holdout_val:
            train = [s for s in train if s.pid not in held]
        super().__init__(root, _non_empty(train, "regdb training set", root, REGDB_LAYOUT), val)

    def _read_list(self, part: str, modality: Modality) -> list[Sample]:
        """Samples of ``idx/{part}_{visible|thermal}_{trial}.txt``, in file order."""
        stem = "visible" if modality == "visible" else "thermal"
        list_path = os.path.join(self._root, "idx", f"{part}_{stem}_{self.trial}.txt")
        entries = _read_list_file(list_path, REGDB_LAYOUT)
        paths = _resolve_listed(self._root, entries, list_path, REGDB_LAYOUT)
        cam = REGDB_CAMERA[modality]
        return [
            Sample(p, label, cam, modality)
            for p, (_r, label, _n) in zip(paths, entries, strict=True)
        ]

    def _check_own_trial(self, trial: int | None) -> None:
        if trial is not None and trial != self.trial:
            raise ValueError(
                f"regdb: this data set was loaded for trial {self.trial}; its test split belongs "
                f"to that trial's model, got trial={trial!r} (load the data set with that trial)"
            )

    def test_split(
        self, direction: str = "v2t", trial: int | None = None
    ) -> tuple[list[Sample], list[Sample]]:
        """RegDB test lists of the loaded trial (docs/method.md §13.3).

        Args:
            direction: ``"v2t"`` (visible query, thermal gallery) or ``"t2v"``.
            trial: ``None`` or the loaded trial (accepted so protocol loops are uniform).

        Returns:
            ``(query, gallery)``: the full ``idx/test_{visible,thermal}_{trial}.txt`` lists in
            file order.
        """
        _check_choice(direction, ("v2t", "t2v"), "regdb test_split direction")
        self._check_own_trial(trial)
        visible, thermal = list(self._test["visible"]), list(self._test["infrared"])
        return (visible, thermal) if direction == "v2t" else (thermal, visible)

    def validation_split(self, trial: int | None = None) -> tuple[list[Sample], list[Sample]]:
        """Visible-to-thermal on the held-out validation identities.

        Args:
            trial: ``None`` or the loaded trial.

        Returns:
            ``(query, gallery)``: visible and thermal images of :attr:`val_ids`, sorted by path.
        """
        self._check_own_trial(trial)
        assert self.val is not None  # set in __init__; narrows the type
        query = [s for s in self.val if s.modality == "visible"]
        gallery = [s for s in self.val if s.modality == "infrared"]
        _non_empty(query, "regdb validation query", self.root, REGDB_LAYOUT)
        _non_empty(gallery, "regdb validation gallery", self.root, REGDB_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """The loaded trial's test list of one modality, in file order.

        Args:
            modality: ``"visible"`` or ``"infrared"`` (thermal).

        Returns:
            The images, for the within-modality diagnostic.
        """
        _check_choice(modality, MODALITIES, "modality")
        return list(self._test[modality])


class LLCMDataset(VIReIDDataset):
    """LLCM from its raw tree (docs/synthetic.md "Layouts it writes"; official LLCM protocol).

    Training images come from ``idx/train_vis.txt`` / ``idx/train_nir.txt``. Their labels are
    training labels only: ``pid`` and ``camid`` are parsed from the file name
    (``NNNN_cKK_...``) so that they agree with the test images. ``_vis`` folders are visible,
    ``_nir`` folders infrared.

    Test: ids from ``idx/test_id.txt``; query = every image of the test ids in the query
    modality; gallery = per trial one random image per identity and camera of the other
    modality, drawn as for SYSU-MM01. Camera folders ``camK`` are discovered and taken in
    numeric order (the official code lists test_vis cam1..9 and test_nir cam1, 2, 4..9).

    Validation identities: the last 20 % of the sorted training ids, as for RegDB.

    Args:
        root: Folder holding ``train_vis``, ``train_nir``, ``test_vis``, ``test_nir``, ``idx``.
        trial: Default gallery trial (0..9) of :meth:`test_split` / :meth:`validation_split`.
        holdout_val: Exclude the validation identities from :attr:`train`.
    """

    name = "llcm"
    layout = LLCM_LAYOUT

    def __init__(self, root: str, *, trial: int | None = None, holdout_val: bool = False) -> None:
        root = os.path.abspath(root)
        _require_dir(root, "LLCM root", LLCM_LAYOUT)
        idx = os.path.join(root, "idx")
        _require_dir(idx, "LLCM list folder idx", LLCM_LAYOUT)
        self.default_trial = (
            0 if trial is None else _check_trial(trial, range(NUM_GALLERY_TRIALS), "llcm")
        )
        train: list[Sample] = []
        for modality in MODALITIES:
            list_path = os.path.join(idx, LLCM_TRAIN_LIST[modality])
            entries = _read_list_file(list_path, LLCM_LAYOUT)
            paths = _resolve_listed(root, entries, list_path, LLCM_LAYOUT)
            for path, (_rel, _label, line_no) in zip(paths, entries, strict=True):
                pid, cam = self._parse_name(path, f"{list_path}:{line_no}")
                train.append(Sample(path, pid, cam, modality))
        train.sort(key=lambda s: s.path)

        self.test_ids = _read_id_file(os.path.join(idx, "test_id.txt"), LLCM_LAYOUT)
        self._test_groups: dict[str, dict[tuple[int, int], list[Sample]]] = {}
        self._test_cameras: dict[str, list[int]] = {}
        for modality in MODALITIES:
            self._list_test(root, modality)

        self.val_ids = _holdout_ids(train)
        held = set(self.val_ids)
        val = [s for s in train if s.pid in held]
        # Visible and infrared cameras may share numbers on LLCM: group each modality apart.
        self._val_groups = {
            m: _group_by_pid_cam(s for s in val if s.modality == m) for m in MODALITIES
        }
        if holdout_val:
            train = [s for s in train if s.pid not in held]
        super().__init__(root, _non_empty(train, "llcm training set", root, LLCM_LAYOUT), val)

    @staticmethod
    def _parse_name(path: str, where: str) -> tuple[int, int]:
        """``(pid, camid)`` from an LLCM file name ``NNNN_cKK_...``."""
        match = _LLCM_NAME.match(os.path.basename(path))
        if match is None:
            raise DatasetLayoutError(
                f"{where}: file name of {path!r} does not start with 'NNNN_cKK_' "
                f"(identity, camera); {LLCM_LAYOUT}"
            )
        return int(match.group(1)), int(match.group(2))

    def _list_test(self, root: str, modality: Modality) -> None:
        """List the test folder of one modality once: cameras, then test-id folders."""
        base = os.path.join(root, LLCM_TEST_FOLDER[modality])
        _require_dir(base, f"LLCM test folder {LLCM_TEST_FOLDER[modality]}", LLCM_LAYOUT)
        cameras: dict[int, str] = {}
        for name, path in _subfolders(base).items():
            match = _CAMERA_FOLDER.match(name)
            if match is not None:
                cameras[int(match.group(1))] = path
        if not cameras:
            raise DatasetLayoutError(f"no camK folder in {base!r}; {LLCM_LAYOUT}")
        groups: dict[tuple[int, int], list[Sample]] = {}
        for cam, cam_path in sorted(cameras.items()):
            subs = _subfolders(cam_path)
            for pid in self.test_ids:
                folder = subs.get(f"{pid:04d}")  # "%04d" folder names, as the official code
                if folder is None:
                    continue
                names = _image_names(folder)
                if not names:
                    raise DatasetLayoutError(
                        f"identity folder {folder!r} holds no images; {LLCM_LAYOUT}"
                    )
                samples = []
                for n in names:
                    path = os.path.join(folder, n)
                    file_pid, file_cam = self._parse_name(path, folder)
                    samples.append(Sample(path, file_pid, file_cam, modality))
                # Keyed by the folders, which drive the draw order (official code).
                groups[(pid, cam)] = samples
        self._test_groups[modality] = groups
        self._test_cameras[modality] = sorted(cameras)

    def _trial(self, trial: int | None) -> int:
        if trial is None:
            return self.default_trial
        return _check_trial(trial, range(NUM_GALLERY_TRIALS), "llcm")

    def test_split(
        self, direction: str = "v2i", trial: int | None = None
    ) -> tuple[list[Sample], list[Sample]]:
        """LLCM test query and single-shot gallery.

        Args:
            direction: ``"v2i"`` (visible query, infrared gallery) or ``"i2v"``.
            trial: Gallery seed 0..9 (default: the data set's ``trial``).

        Returns:
            ``(query, gallery)``: every query-modality image of the test ids (ids sorted,
            cameras in numeric order, files sorted); one other-modality image per test id and
            camera folder, drawn after seeding with ``trial``.
        """
        _check_choice(direction, ("v2i", "i2v"), "llcm test_split direction")
        trial = self._trial(trial)
        q_mod, g_mod = ("visible", "infrared") if direction == "v2i" else ("infrared", "visible")
        query = _all_shots(self.test_ids, self._test_cameras[q_mod], self._test_groups[q_mod])
        gallery = _single_shot(
            self.test_ids, self._test_cameras[g_mod], self._test_groups[g_mod], trial
        )
        _non_empty(query, f"llcm {direction} test query", self.root, LLCM_LAYOUT)
        _non_empty(gallery, f"llcm {direction} test gallery", self.root, LLCM_LAYOUT)
        return query, gallery

    def validation_split(self, trial: int | None = None) -> tuple[list[Sample], list[Sample]]:
        """Infrared-to-visible on the held-out identities, gallery drawn like the test one.

        Args:
            trial: Gallery seed 0..9 (default: the data set's ``trial``).

        Returns:
            ``(query, gallery)``: every infrared training image of :attr:`val_ids` (ids sorted,
            cameras ascending, paths sorted); one visible image per id and camera.
        """
        trial = self._trial(trial)
        ir, vis = self._val_groups["infrared"], self._val_groups["visible"]
        query = _all_shots(self.val_ids, sorted({c for _p, c in ir}), ir)
        gallery = _single_shot(self.val_ids, sorted({c for _p, c in vis}), vis, trial)
        _non_empty(query, "llcm validation query", self.root, LLCM_LAYOUT)
        _non_empty(gallery, "llcm validation gallery", self.root, LLCM_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """Every test-identity image of one modality (ids sorted, cameras in numeric order).

        Args:
            modality: ``"visible"`` or ``"infrared"``.

        Returns:
            The images, for the within-modality diagnostic.
        """
        _check_choice(modality, MODALITIES, "modality")
        return _all_shots(self.test_ids, self._test_cameras[modality], self._test_groups[modality])


#: Reader per registry name.
#: Reader class of each layout (their constructors take ``trial``/``holdout_val`` keywords).
DATASETS: dict[str, Callable[..., VIReIDDataset]] = {
    "sysu": SYSUMM01Dataset,
    "regdb": RegDBDataset,
    "llcm": LLCMDataset,
}


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    trial: int | None = None,
    holdout_val: bool = False,
) -> VIReIDDataset:
    """Read a data set from its raw layout.

    Args:
        name: ``"sysu"``, ``"regdb"`` or ``"llcm"``.
        root: The data set's root folder.
        trial: RegDB: the identity split 1..10 (required). SYSU-MM01 / LLCM: default gallery
            trial 0..9 of ``test_split`` / ``validation_split`` (0 when omitted).
        holdout_val: Exclude the validation identities from ``train``.

    Returns:
        The data set.

    Raises:
        ValueError: Unknown ``name`` or bad ``trial``.
        DatasetLayoutError: The tree does not match the layout (a missing path raises the
            subclass :class:`DatasetPathMissingError`, also a ``FileNotFoundError``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](os.fspath(root), trial=trial, holdout_val=holdout_val)
