"""The two modalities of visible-infrared re-identification: names and integer codes.

One vocabulary for every layer: the readers and samples (``data``), the network and its
memories (``models``) and the stage policy (``clustering``) all name the modalities alike, and
none of them has to import another layer for it. This module imports nothing.
"""

from __future__ import annotations

from typing import Literal

Modality = Literal["visible", "infrared"]
MODALITIES: tuple[Modality, Modality] = ("visible", "infrared")

#: Integer code of each modality in tensors and batches (visible 0, infrared 1).
MODALITY_INDEX: dict[str, int] = {"visible": 0, "infrared": 1}
