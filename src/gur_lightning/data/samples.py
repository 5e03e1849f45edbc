"""The sample record shared by every reader, sampler and evaluation protocol."""

from __future__ import annotations

from dataclasses import dataclass

# The modality vocabulary is shared with the models and the clustering policy; re-exported here
# for the readers, samplers and evaluation.
from gur_lightning.modalities import MODALITIES, MODALITY_INDEX, Modality

__all__ = ["MODALITIES", "MODALITY_INDEX", "Modality", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One image of a visible-infrared re-ID data set, as read from its raw layout.

    Attributes:
        path: Absolute path of the image file.
        pid: The data set's own identity number (ground truth; never used for training in the
            unsupervised setting, only for evaluation and pseudo-label statistics).
        camid: The data set's own camera number (e.g. SYSU-MM01 cameras 1-6).
        modality: ``"visible"`` or ``"infrared"`` (thermal / near-infrared).
    """

    path: str
    pid: int
    camid: int
    modality: Modality

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(
                f"Sample {self.path!r}: modality must be one of {MODALITIES}, "
                f"got {self.modality!r}"
            )
