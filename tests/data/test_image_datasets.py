"""PseudoLabelDataset / ImageDataset on a tiny JPEG tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gur_lightning.data.image_datasets import ImageDataset, PseudoLabelDataset
from gur_lightning.data.readers import read_image
from gur_lightning.data.samples import Sample
from gur_lightning.data.transforms import build_eval_transform, build_train_transform

H, W = 24, 12


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i, (modality, pid, cam) in enumerate(
        [("visible", 3, 1), ("visible", 5, 2), ("infrared", 3, 3), ("infrared", 8, 6)]
    ):
        folder = tmp_path / modality / f"cam{cam}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i}.jpg"
        Image.fromarray((rng.random((32, 16, 3)) * 255).astype(np.uint8)).save(path, "JPEG")
        out.append(Sample(str(path), pid, cam, modality))
    return out


class CountingLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: str) -> Image.Image:
        self.calls.append(path)
        return read_image(path)


def test_pseudo_label_item_two_views_from_one_decode(samples: list[Sample]) -> None:
    torch.manual_seed(0)
    loader = CountingLoader()
    ds = PseudoLabelDataset(
        samples[:2],
        [7, 2],
        build_train_transform(H, W, "visible", 1, erasing_p=0.0),
        second_transform=build_train_transform(H, W, "visible", 2),
        loader=loader,
    )
    assert len(ds) == 2
    item = ds[1]
    assert loader.calls == [samples[1].path]  # decoded once for both views
    assert set(item) == {"img", "img2", "label", "camid", "index"}
    assert (item["label"], item["camid"], item["index"]) == (2, 2, 1)
    for key in ("img", "img2"):
        assert item[key].shape == (3, H, W) and item[key].dtype == torch.float32
    assert not torch.equal(item["img"], item["img2"])
    assert torch.equal(item["img2"][0], item["img2"][1])  # view 2: one replicated channel


def test_both_views_receive_the_same_decoded_image(samples: list[Sample]) -> None:
    received: list[Image.Image] = []

    def record(img: Image.Image) -> torch.Tensor:
        received.append(img)
        return torch.zeros(3, H, W)

    ds = PseudoLabelDataset(samples[:1], [0], record, second_transform=record)
    ds[0]
    assert len(received) == 2 and received[0] is received[1]
    assert received[0].mode == "RGB" and received[0].size == (16, 32)


def test_single_view_item_has_no_img2(samples: list[Sample]) -> None:
    ds = PseudoLabelDataset(samples[2:], [0, 1], build_train_transform(H, W, "infrared"))
    item = ds[0]
    assert set(item) == {"img", "label", "camid", "index"}
    assert item["img"].shape == (3, H, W)


def test_image_dataset_items_and_collation(samples: list[Sample]) -> None:
    ds = ImageDataset(samples, build_eval_transform(H, W))
    item = ds[2]
    assert set(item) == {"img", "pid", "camid", "modality", "index"}
    assert (item["pid"], item["camid"], item["modality"], item["index"]) == (3, 3, 1, 2)
    assert ds[0]["modality"] == 0
    expected = build_eval_transform(H, W)(read_image(samples[2].path))
    assert torch.equal(item["img"], expected)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["img"].shape == (4, 3, H, W)
    assert batch["modality"].tolist() == [0, 0, 1, 1]
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_length_mismatch_and_corrupt_file(samples: list[Sample], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 samples but 1 labels"):
        PseudoLabelDataset(samples[:2], [0], build_eval_transform(H, W))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = ImageDataset([Sample(str(bad), 0, 1, "visible")], build_eval_transform(H, W))
    with pytest.raises(OSError, match="broken.jpg"):
        ds[0]
