"""Readers for the raw SYSU-MM01, RegDB and LLCM layouts and their evaluation splits.

Implements docs/method.md §2.1 / §2.3 (raw layouts) and §13.2 / §13.3 (evaluation protocols), and
the LLCM layout of docs/synthetic.md "Layouts it writes". The readers read the data sets as
distributed (and SynVI trees, which use the same layouts) directly: nothing is converted or copied,
the Market-style ``prepare_*.py`` trees of the official code (docs/method.md §2.2, §2.4) are not
used.

One module per data set (:mod:`.sysu`, :mod:`.regdb`, :mod:`.llcm`), each a subclass of
:class:`~gur_lightning.data.readers.base.VIReIDDataset` with its layout and split builders;
the parts they share (errors, :func:`read_image`, list parsing, gallery draws) are in
:mod:`.common`. This module is the registry: :data:`DATASETS` maps each name to its reader
and :data:`DATASET_NAMES` is the one list of data-set names (the config schema and the data
check take it from here).

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
from collections.abc import Callable

from gur_lightning.data.readers.base import VIReIDDataset
from gur_lightning.data.readers.common import (
    DatasetLayoutError,
    DatasetPathMissingError,
    ImageReadError,
    read_image,
)
from gur_lightning.data.readers.llcm import LLCMDataset
from gur_lightning.data.readers.regdb import RegDBDataset
from gur_lightning.data.readers.sysu import SYSUMM01Dataset

#: Reader of each data set, keyed by the reader's own ``name``; their constructors take
#: ``trial``/``holdout_val`` keywords. The order is the order of :data:`DATASET_NAMES`.
DATASETS: dict[str, Callable[..., VIReIDDataset]] = {
    reader.name: reader for reader in (SYSUMM01Dataset, RegDBDataset, LLCMDataset)
}
#: Names accepted by :func:`load_dataset` and ``data.name``: ``("sysu", "regdb", "llcm")``.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    trial: int | None = None,
    holdout_val: bool = False,
) -> VIReIDDataset:
    """Read a data set from its raw layout.

    Args:
        name: One of :data:`DATASET_NAMES`: ``"sysu"``, ``"regdb"`` or ``"llcm"``.
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


__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DatasetLayoutError",
    "DatasetPathMissingError",
    "ImageReadError",
    "LLCMDataset",
    "RegDBDataset",
    "SYSUMM01Dataset",
    "VIReIDDataset",
    "load_dataset",
    "read_image",
]
