"""Data: readers for SYSU-MM01, RegDB and LLCM raw layouts, SynVI, transforms and samplers."""

from gur_lightning.data.readers import (
    DATASET_NAMES,
    DATASETS,
    DatasetLayoutError,
    DatasetPathMissingError,
    ImageReadError,
    LLCMDataset,
    RegDBDataset,
    SYSUMM01Dataset,
    VIReIDDataset,
    load_dataset,
    read_image,
)
from gur_lightning.data.samples import MODALITIES, MODALITY_INDEX, Modality, Sample

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "MODALITIES",
    "MODALITY_INDEX",
    "DatasetLayoutError",
    "DatasetPathMissingError",
    "ImageReadError",
    "LLCMDataset",
    "Modality",
    "RegDBDataset",
    "SYSUMM01Dataset",
    "Sample",
    "VIReIDDataset",
    "load_dataset",
    "read_image",
]
