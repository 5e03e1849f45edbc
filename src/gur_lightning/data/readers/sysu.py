"""SYSU-MM01 from its raw tree (docs/method.md §2.1, protocol §13.2)."""

from __future__ import annotations

import os

from gur_lightning.data.readers.base import VIReIDDataset
from gur_lightning.data.readers.common import (
    NUM_GALLERY_TRIALS,
    DatasetLayoutError,
    all_shots,
    check_choice,
    check_trial,
    image_names,
    non_empty,
    read_id_file,
    require_dir,
    single_shot,
    subfolders,
)
from gur_lightning.data.samples import MODALITIES, Modality, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: SYSU-MM01 cameras (docs/method.md §2.1): visible 1, 2 (indoor), 4, 5 (outdoor); infrared 3
#: (indoor), 6 (outdoor).
SYSU_CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
SYSU_INFRARED_CAMERAS: tuple[int, ...] = (3, 6)
#: Query cameras of both SYSU-MM01 settings and gallery cameras per setting (docs/method.md §13.2).
SYSU_QUERY_CAMERAS: tuple[int, ...] = (3, 6)
SYSU_GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}

SYSU_LAYOUT = (
    "expected SYSU-MM01 raw layout: ROOT/cam1..cam6/NNNN/*.jpg and "
    "ROOT/exp/{train,val,test}_id.txt (one line of comma-separated ids)"
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
        require_dir(root, "SYSU-MM01 root", SYSU_LAYOUT)
        exp = os.path.join(root, "exp")
        train_ids = read_id_file(os.path.join(exp, "train_id.txt"), SYSU_LAYOUT)
        self.val_ids = read_id_file(os.path.join(exp, "val_id.txt"), SYSU_LAYOUT)
        self.test_ids = read_id_file(os.path.join(exp, "test_id.txt"), SYSU_LAYOUT)
        self.default_trial = (
            0 if trial is None else check_trial(trial, range(NUM_GALLERY_TRIALS), "sysu")
        )
        overlap = set(self.test_ids) & (set(train_ids) | set(self.val_ids))
        if overlap:
            log.warning(
                "sysu: %d test ids are also training ids: %s", len(overlap), sorted(overlap)[:10]
            )

        camera_folders: dict[int, dict[str, str]] = {}
        for cam in SYSU_CAMERAS:
            folder = os.path.join(root, f"cam{cam}")
            require_dir(folder, f"camera folder cam{cam}", SYSU_LAYOUT)
            camera_folders[cam] = subfolders(folder)

        # List every folder the splits can touch once; the test/val draws reuse these lists.
        self._groups: dict[tuple[int, int], list[Sample]] = {}
        for pid in sorted(set(train_ids) | set(self.val_ids) | set(self.test_ids)):
            key = f"{pid:04d}"  # the official code builds folder names with "%04d"
            for cam in SYSU_CAMERAS:
                id_folder = camera_folders[cam].get(key)
                if id_folder is None:
                    continue
                names = image_names(id_folder)
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
        super().__init__(root, non_empty(train, "sysu training set", root, SYSU_LAYOUT), val)

    def _images_of(self, pids: set[int]) -> list[Sample]:
        samples = [s for (pid, _c), group in self._groups.items() if pid in pids for s in group]
        samples.sort(key=lambda s: s.path)
        return samples

    def _trial(self, trial: int | None) -> int:
        if trial is None:
            return self.default_trial
        return check_trial(trial, range(NUM_GALLERY_TRIALS), "sysu")

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
        check_choice(mode, SYSU_GALLERY_CAMERAS, "sysu test_split mode")
        trial = self._trial(trial)
        query = all_shots(self.test_ids, SYSU_QUERY_CAMERAS, self._groups)
        gallery = single_shot(self.test_ids, SYSU_GALLERY_CAMERAS[mode], self._groups, trial)
        non_empty(query, "sysu test query", self.root, SYSU_LAYOUT)
        non_empty(gallery, f"sysu {mode} test gallery", self.root, SYSU_LAYOUT)
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
        query = all_shots(self.val_ids, SYSU_QUERY_CAMERAS, self._groups)
        gallery = single_shot(self.val_ids, SYSU_GALLERY_CAMERAS["all"], self._groups, trial)
        non_empty(query, "sysu validation query", self.root, SYSU_LAYOUT)
        non_empty(gallery, "sysu validation gallery", self.root, SYSU_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """Every test-identity image of one modality, sorted by path.

        Args:
            modality: ``"visible"`` (cameras 1, 2, 4, 5) or ``"infrared"`` (3, 6).

        Returns:
            The images, for the within-modality diagnostic.
        """
        check_choice(modality, MODALITIES, "modality")
        return [s for s in self._images_of(set(self.test_ids)) if s.modality == modality]
