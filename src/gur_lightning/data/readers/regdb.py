"""RegDB from its raw tree and ``idx`` lists (docs/method.md §2.3, protocol §13.3)."""

from __future__ import annotations

import os

from gur_lightning.data.readers.base import VIReIDDataset
from gur_lightning.data.readers.common import (
    check_choice,
    check_trial,
    holdout_ids,
    non_empty,
    read_list_file,
    require_dir,
    resolve_listed,
)
from gur_lightning.data.samples import MODALITIES, Modality, Sample

#: RegDB ships ten identity splits, ``idx/*_{1..10}.txt`` (docs/method.md §2.3).
REGDB_TRIALS = range(1, 11)
#: RegDB has one camera per modality (a co-located visible/thermal pair); we number them 1
#: and 2, as the official evaluation does (docs/method.md §13.3), so no camera filter ever
#: removes a match.
REGDB_CAMERA: dict[str, int] = {"visible": 1, "infrared": 2}

REGDB_LAYOUT = (
    "expected RegDB raw layout: ROOT/Visible/.../*.bmp, ROOT/Thermal/.../*.bmp and "
    "ROOT/idx/{train,test}_{visible,thermal}_{1..10}.txt (lines 'relative/path.bmp label')"
)


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
        self.trial = check_trial(trial, REGDB_TRIALS, "regdb")
        root = os.path.abspath(root)
        require_dir(root, "RegDB root", REGDB_LAYOUT)
        require_dir(os.path.join(root, "idx"), "RegDB list folder idx", REGDB_LAYOUT)
        self._root = root
        train = self._read_list("train", "visible") + self._read_list("train", "infrared")
        train.sort(key=lambda s: s.path)
        # The test lists are read (and their images checked) once, at load time.
        self._test = {m: self._read_list("test", m) for m in MODALITIES}
        self.val_ids = holdout_ids(train)
        held = set(self.val_ids)
        val = [s for s in train if s.pid in held]
        if holdout_val:
            train = [s for s in train if s.pid not in held]
        super().__init__(root, non_empty(train, "regdb training set", root, REGDB_LAYOUT), val)

    def _read_list(self, part: str, modality: Modality) -> list[Sample]:
        """Samples of ``idx/{part}_{visible|thermal}_{trial}.txt``, in file order."""
        stem = "visible" if modality == "visible" else "thermal"
        list_path = os.path.join(self._root, "idx", f"{part}_{stem}_{self.trial}.txt")
        entries = read_list_file(list_path, REGDB_LAYOUT)
        paths = resolve_listed(self._root, entries, list_path, REGDB_LAYOUT)
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
        check_choice(direction, ("v2t", "t2v"), "regdb test_split direction")
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
        non_empty(query, "regdb validation query", self.root, REGDB_LAYOUT)
        non_empty(gallery, "regdb validation gallery", self.root, REGDB_LAYOUT)
        return query, gallery

    def test_samples(self, modality: Modality) -> list[Sample]:
        """The loaded trial's test list of one modality, in file order.

        Args:
            modality: ``"visible"`` or ``"infrared"`` (thermal).

        Returns:
            The images, for the within-modality diagnostic.
        """
        check_choice(modality, MODALITIES, "modality")
        return list(self._test[modality])
