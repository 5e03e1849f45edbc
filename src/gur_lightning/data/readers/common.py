"""Parts every reader shares: errors, image decoding, list parsing and the protocol draws.

Listing a split never opens an image; a corrupt file is reported by :func:`read_image` when the
input pipeline reads it. Every listing goes through :func:`os.scandir` and each folder is listed
and sorted once, when the data set is loaded (docs/method.md §2). The helpers are the package's
own: they are public to the reader modules, not re-exported by :mod:`gur_lightning.data.readers`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image

from gur_lightning.data.samples import Sample

#: File name endings counted as images when a folder is listed (case-insensitive). The real data
#: sets hold only ``.jpg`` (SYSU-MM01, LLCM) or ``.bmp`` (RegDB) files in their image folders, so
#: this filter changes nothing there; it keeps stray files (``Thumbs.db``) out of the draws.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

#: Gallery trials of the single-shot SYSU-MM01 / LLCM protocols: seeds 0..9 (docs/method.md §13.2).
NUM_GALLERY_TRIALS = 10
#: Share of the training identities (the last ones in sorted order) held out for model selection
#: on RegDB and LLCM, which have no official validation identities. Not from the official code:
#: GUR selects its RegDB model on the test split (docs/method.md §13.3), which we do not repeat.
VAL_HOLDOUT_FRACTION = 0.2


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


def require_dir(path: str, what: str, layout: str) -> None:
    """Raise :class:`DatasetPathMissingError` (naming ``what``) unless ``path`` is a folder."""
    if not os.path.isdir(path):
        raise DatasetPathMissingError(f"{what} not found: {path!r} is not a folder; {layout}")


def require_file(path: str, what: str, layout: str) -> None:
    """Raise :class:`DatasetPathMissingError` (naming ``what``) unless ``path`` is a file."""
    if not os.path.isfile(path):
        raise DatasetPathMissingError(f"{what} not found: {path!r}; {layout}")


def subfolders(path: str) -> dict[str, str]:
    """Map each sub-folder name of ``path`` to its full path (one scandir, no stat calls)."""
    with os.scandir(path) as entries:
        return {e.name: e.path for e in entries if e.is_dir()}


def image_names(path: str) -> list[str]:
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


def read_text(path: str, what: str, layout: str) -> str:
    """The UTF-8 text of a required file (a missing one names ``what`` and ``layout``)."""
    require_file(path, what, layout)
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def read_id_file(path: str, layout: str) -> list[int]:
    """Parse an id file: comma-separated integers (docs/method.md §2.1), sorted and de-duplicated.

    Raises:
        DatasetPathMissingError: The file does not exist.
        DatasetLayoutError: A token is not an integer (file and line named) or no id is given.
    """
    text = read_text(path, "id list", layout)
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


def read_list_file(path: str, layout: str) -> list[tuple[str, int, int]]:
    """Parse a list file of ``relative/path label`` lines (docs/method.md §2.3).

    Returns:
        ``(relative_path, label, line_number)`` per non-blank line, in file order.

    Raises:
        DatasetPathMissingError: The file does not exist.
        DatasetLayoutError: A line is malformed (file and line number named) or none is given.
    """
    text = read_text(path, "list file", layout)
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


def resolve_listed(
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


def check_trial(trial: int, valid: range, what: str) -> int:
    """Return ``trial`` if it is an integer in ``valid``, else raise ``ValueError``."""
    if isinstance(trial, bool) or not isinstance(trial, int) or trial not in valid:
        raise ValueError(
            f"{what}: trial must be an integer in {valid.start}..{valid.stop - 1}, got {trial!r}"
        )
    return trial


def check_choice(value: str, allowed: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` naming ``what``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def group_by_pid_cam(samples: Iterable[Sample]) -> dict[tuple[int, int], list[Sample]]:
    """Group samples by ``(pid, camid)``, each group sorted by path."""
    groups: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.pid, s.camid), []).append(s)
    for group in groups.values():
        group.sort(key=lambda s: s.path)
    return groups


def all_shots(
    pids: Iterable[int], cameras: Sequence[int], groups: Mapping[tuple[int, int], list[Sample]]
) -> list[Sample]:
    """Every image of ``pids`` in ``cameras``, in the official query order (docs/method.md §13.2).

    Identities sorted, cameras in the given order, files sorted within each folder.
    """
    return [s for pid in sorted(pids) for cam in cameras for s in groups.get((pid, cam), ())]


def single_shot(
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


def holdout_ids(samples: Iterable[Sample], fraction: float = VAL_HOLDOUT_FRACTION) -> list[int]:
    """The last ``fraction`` of the sorted identities (at least one) of ``samples``."""
    pids = sorted({s.pid for s in samples})
    count = max(1, int(len(pids) * fraction))
    return pids[-count:]


def non_empty(samples: list[Sample], what: str, root: str, layout: str) -> list[Sample]:
    """Return ``samples``, or raise :class:`DatasetLayoutError` naming ``what`` if it is empty."""
    if not samples:
        raise DatasetLayoutError(f"{what} is empty for data set root {root!r}; {layout}")
    return samples
