"""VIReIDDataModule's phase loaders without pseudo-labels: a skipped phase, a missing callback."""

from __future__ import annotations

import pytest

from gur_lightning.data.datamodule import VIReIDDataModule


def test_a_skipped_phase_is_served_as_its_step_indices():
    dm = VIReIDDataModule("sysu", "/nonexistent", seed=1, bn_replicas=1)
    dm.skip_phase(3)
    assert dm.train_dataloader() == range(3)  # no images, no placeholder batches
    dm.skip_phase(0)
    assert dm.train_dataloader() == range(1)  # Lightning ends the fit on an empty epoch


def test_no_pseudo_labels_names_the_missing_callback():
    with pytest.raises(RuntimeError, match="is the Reclustering callback configured"):
        VIReIDDataModule("sysu", "/nonexistent", seed=1, bn_replicas=1).train_dataloader()
