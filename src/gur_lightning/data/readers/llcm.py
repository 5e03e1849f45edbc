"""LLCM from its raw tree (docs/synthetic.md "Layouts it writes"; official LLCM protocol)."""

from __future__ import annotations

import os
import re

from gur_lightning.data.readers.base import VIReIDDataset
from gur_lightning.data.readers.common import (
    NUM_GALLERY_TRIALS,
    DatasetLayoutError,
    all_shots,
    check_choice,
    check_trial,
    group_by_pid_cam,
    holdout_ids,
    image_names,
    non_empty,
    read_id_file,
    read_list_file,
    require_dir,
    resolve_listed,
    single_shot,
    subfolders,
)
from gur_lightning.data.samples import MODALITIES, Modality, Sample

#: LLCM folders per modality and the direction codes of its protocol.
LLCM_TEST_FOLDER: dict[str, str] = {"visible": "test_vis", "infrared": "test_nir"}
LLCM_TRAIN_LIST: dict[str, str] = {"visible": "train_vis.txt", "infrared": "train_nir.txt"}

LLCM_LAYOUT = (
    "expected LLCM raw layout: ROOT/{train,test}_{vis,nir}/camK/NNNN/NNNN_cKK_*.jpg, "
    "ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt (lines 'relative/path label') and "
    "ROOT/idx/test_id.txt (one line of comma-separated ids)"
)

# LLCM file names start with the identity and the camera: ``0001_c01_s170100_f3120_nir.jpg``.
_LLCM_NAME = re.compile(r"^(\d+)_c(\d+)_")
_CAMERA_FOLDER = re.compile(r"^cam(\d+)$")


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
        require_dir(root, "LLCM root", LLCM_LAYOUT)
        idx = os.path.join(root, "idx")
        require_dir(idx, "LLCM list folder idx", LLCM_LAYOUT)
        self.default_trial = (
            0 if trial is None else check_trial(trial, range(NUM_GALLERY_TRIALS), "llcm")
        )
        train: list[Sample] = []
        for modality in MODALITIES:
            list_path = os.path.join(idx, LLCM_TRAIN_LIST[modality])
            entries = read_list_file(list_path, LLCM_LAYOUT)
            paths = resolve_listed(root, entries, list_path, LLCM_LAYOUT)
            for path, (_rel, _label, line_no) in zip(paths, entries, strict=True):
                pid, cam = self._parse_name(path, f"{list_path}:{line_no}")
                train.append(Sample(path, pid, cam, modality))
        train.sort(key=lambda s: s.path)

        self.test_ids = read_id_file(os.path.join(idx, "test_id.txt"), LLCM_LAYOUT)
        self._test_groups: dict[str, dict[tuple[int, int], list[Sample]]] = {}
        self._test_cameras: dict[str, list[int]] = {}
        for modality in MODALITIES:
            self._list_test(root, modality)

        self.val_ids = holdout_ids(train)
        held = set(self.val_ids)
        val = [s for s in train if s.pid in held]
        # Visible and infrared cameras may share numbers on LLCM: group each modality apart.
        self._val_groups = {
            m: group_by_pid_cam(s for s in val if s.modality == m) for m in MODALITIES
        }
        if holdout_val:
            train = [s for s in train if s.pid not in held]
        super().__init__(root, non_empty(train, "llcm training set", root, LLCM_LAYOUT), val)

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
        require_dir(base, f"LLCM test folder {LLCM_TEST_FOLDER[modality]}", LLCM_LAYOUT)
        cameras: dict[int, str] = {}
        for name, path in subfolders(base).items():
            match = _CAMERA_FOLDER.match(name)
            if match is not None:
                cameras[int(match.group(1))] = path
        if not cameras:
            raise DatasetLayoutError(f"no camK folder in {base!r}; {LLCM_LAYOUT}")
        groups: dict[tuple[int, int], list[Sample]] = {}
        for cam, cam_path in sorted(cameras.items()):
            subs = subfolders(cam_path)
            for pid in self.test_ids:
                folder = subs.get(f"{pid:04d}")  # "%04d" folder names, as the official code
                if folder is None:
                    continue
                names = image_names(folder)
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
        return check_trial(trial, range(NUM_GALLERY_TRIALS), "llcm")

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
        check_choice(direction, ("v2i", "i2v"), "llcm test_split direction")
        trial = self._trial(trial)
        q_mod, g_mod = ("visible", "infrared") if direction == "v2i" else ("infrared", "visible")
        query = all_shots(self.test_ids, self._test_cameras[q_mod], self._test_groups[q_mod])
        gallery = single_shot(
            self.test_ids, self._test_cameras[g_mod], self._test_groups[g_mod], trial
        )
        non_empty(query, f"llcm {direction} test query", self.root, LLCM_LAYOUT)
        non_empty(gallery, f"llcm {direction} test gallery", self.root, LLCM_LAYOUT)
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
        query = all_shots(self.val_ids, sorted({c for _p, c in ir}), ir)
        gallery = single_shot(self.val_ids, sorted({c for _p, c in vis}), vis, trial)
        non_empty(query, "llcm validation query", self.root, LLCM_LAYOUT)
        non_empty(gallery, "llcm validation gallery", self.root, LLCM_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """Every test-identity image of one modality (ids sorted, cameras in numeric order).

        Args:
            modality: ``"visible"`` or ``"infrared"``.

        Returns:
            The images, for the within-modality diagnostic.
        """
        check_choice(modality, MODALITIES, "modality")
        return all_shots(self.test_ids, self._test_cameras[modality], self._test_groups[modality])
