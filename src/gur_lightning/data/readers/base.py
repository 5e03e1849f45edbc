"""The interface every raw-layout reader implements.

A reader lists the training images and builds the splits that the protocol table
(:mod:`gur_lightning.data.protocols`, docs/method.md §13) calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from gur_lightning.data.readers.common import DatasetLayoutError, check_choice
from gur_lightning.data.samples import MODALITIES, Modality, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


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
        check_choice(modality, MODALITIES, "modality")
        return sorted({s.camid for s in self.train if s.modality == modality})

    @abstractmethod
    def test_split(self, *args: Any, **kwargs: Any) -> tuple[list[Sample], list[Sample]]:
        """Return ``(query, gallery)`` of one official test setting (``data.protocols`` table)."""

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
