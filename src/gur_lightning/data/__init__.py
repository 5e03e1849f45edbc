"""Data: readers for SYSU-MM01, RegDB and LLCM raw layouts, SynVI, transforms and samplers."""

from gur_lightning.data.samples import MODALITIES, MODALITY_INDEX, Modality, Sample

__all__ = ["MODALITIES", "MODALITY_INDEX", "Modality", "Sample"]
