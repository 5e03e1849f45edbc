"""The DataModule's training augmentations follow ``data.augment``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gur_lightning.data.datamodule import LabelledSet, VIReIDDataModule
from gur_lightning.data.readers import read_image
from gur_lightning.data.transforms import build_eval_transform

SYNVI = {"layout": "sysu", "seed": 0, "num_ids": 8, "preset": "easy"}
H, W = 32, 16


def _module(root, augment) -> VIReIDDataModule:
    dm = VIReIDDataModule(
        "sysu",
        str(root),
        seed=1,
        bn_replicas=1,
        synvi=SYNVI,
        height=H,
        width=W,
        num_instances=2,
        visible_batch_size=4,
        infrared_batch_size=4,
        num_workers=0,
        augment=augment,
    )
    dm.prepare_data()
    dm.setup("fit")
    labelled = {}
    for modality in ("visible", "infrared"):
        samples = dm.train_samples(modality)
        _, labels = np.unique([s.pid for s in samples], return_inverse=True)
        labelled[modality] = LabelledSet.from_labels(samples, labels)
    dm.set_pseudo_labels(labelled["visible"], labelled["infrared"], num_batches=1, phase_index=0)
    return dm


def _train_datasets(dm: VIReIDDataModule) -> dict:
    """The phase's training data sets by modality, as ``train_dataloader`` hands them out."""
    return {m: loader.dataset for m, loader in dm.train_dataloader().iterables.items()}


def test_augmentations_switched_off_leave_the_eval_view(tmp_path):
    """pad 0, no flip, no erasing: visible view 1 is the plain resized, normalised image."""
    dm = _module(tmp_path, {"pad": 0, "flip_p": 0.0, "erasing_p": 0.0})
    dataset = _train_datasets(dm)["visible"]
    expected = build_eval_transform(H, W)
    for index in range(4):
        item = dataset[index]
        image = read_image(dataset.samples[index].path)
        torch.testing.assert_close(item["img"], expected(image))
        # View 2 replicates one channel of view 1 (ChannelExchange), whatever the knobs.
        img2 = item["img2"]
        assert torch.equal(img2[0], img2[1]) and torch.equal(img2[1], img2[2])


def test_default_augmentations_change_the_view(tmp_path):
    """The reference's pad / flip / erasing do move pixels (the test above can fail)."""
    dm = _module(tmp_path, {})
    dataset = _train_datasets(dm)["visible"]
    expected = build_eval_transform(H, W)
    torch.manual_seed(0)
    differs = [
        not torch.allclose(dataset[i]["img"], expected(read_image(dataset.samples[i].path)))
        for i in range(8)
    ]
    assert any(differs)


def test_unknown_augment_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown augment keys.*'padding'"):
        VIReIDDataModule("sysu", str(tmp_path), seed=1, bn_replicas=1, augment={"padding": 2})


def test_intensity_remap_reaches_the_infrared_and_second_visible_views(tmp_path):
    """intensity_remap_p=1: infrared grey levels leave the eval view's; visible view 1 does not."""
    off = {"pad": 0, "flip_p": 0.0, "erasing_p": 0.0, "adap_gray_p": 0.0}
    dm = _module(tmp_path, {**off, "intensity_remap_p": 1.0})
    expected = build_eval_transform(H, W)
    datasets = _train_datasets(dm)
    visible, infrared = datasets["visible"], datasets["infrared"]
    torch.manual_seed(0)
    for index in range(2):
        image = read_image(visible.samples[index].path)
        torch.testing.assert_close(visible[index]["img"], expected(image))
        ir_image = read_image(infrared.samples[index].path)
        assert not torch.allclose(infrared[index]["img"], expected(ir_image), atol=0.1)
