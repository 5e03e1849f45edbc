"""Map-style image data sets for training on pseudo-labels and for feature extraction.

Items are dictionaries so that the default ``collate_fn`` batches them by key and every item
carries its position in the sample list (``index``), which lets features gathered from several
ranks be scattered back in order (docs/architecture.md §10.4, §11.6).

Images are decoded with :func:`gur_lightning.data.readers.read_image` (PIL RGB; its error names
the file at fault). No decoded-image cache is provided: ``python -m gur_lightning.bench data``
shows decoding a 128x64 JPEG is a small share of an item's cost next to the augmentations, and a
per-worker cache of SYSU-MM01 would cost gigabytes per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from gur_lightning.data.samples import MODALITY_INDEX, Sample

__all__ = ["ImageDataset", "PseudoLabelDataset", "default_loader"]

Transform = Callable[[Image.Image], Tensor]
Loader = Callable[[str], Image.Image]


def default_loader(path: str) -> Image.Image:
    """Decode ``path`` with :func:`gur_lightning.data.readers.read_image`.

    Args:
        path: Image file.

    Returns:
        The PIL RGB image.
    """
    # Imported here so that this module does not pull the data-set readers into every worker
    # import and stays importable on its own.
    from gur_lightning.data.readers import read_image

    return read_image(path)


class PseudoLabelDataset(Dataset[dict[str, Any]]):
    """Labelled training images, optionally with two independent views (docs/method.md §4).

    The reference's ``Preprocessor_color`` opens each visible image once and applies the two RGB
    pipelines to it independently (own crop, flip and erasing each); this does the same.

    Args:
        samples: The samples to train on (outliers already removed).
        labels: Pseudo-label of each sample, aligned with ``samples``.
        transform: Pipeline producing ``img`` from the decoded image.
        second_transform: Optional pipeline producing ``img2`` from the same decoded image.
        loader: Decoder ``path -> PIL RGB image``; :func:`default_loader` when ``None``.

    Raises:
        ValueError: When ``samples`` and ``labels`` differ in length.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: Sequence[int],
        transform: Transform,
        second_transform: Transform | None = None,
        *,
        loader: Loader | None = None,
    ) -> None:
        if len(samples) != len(labels):
            raise ValueError(
                f"PseudoLabelDataset: got {len(samples)} samples but {len(labels)} labels; "
                "labels must be aligned with samples"
            )
        self.samples = list(samples)
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.second_transform = second_transform
        self.loader = default_loader if loader is None else loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Decode once and transform.

        Args:
            index: Position in ``samples``.

        Returns:
            ``{"img": Tensor (3, H, W), "label": int, "camid": int, "index": int}`` plus
            ``"img2": Tensor (3, H, W)`` when ``second_transform`` is set.
        """
        sample = self.samples[index]
        image = self.loader(sample.path)
        item: dict[str, Any] = {
            "img": self.transform(image),
            "label": self.labels[index],
            "camid": sample.camid,
            "index": index,
        }
        if self.second_transform is not None:
            item["img2"] = self.second_transform(image)
        return item


class ImageDataset(Dataset[dict[str, Any]]):
    """Images with their ground truth, for clustering and evaluation (docs/method.md §7.1).

    Args:
        samples: The samples.
        transform: Deterministic eval pipeline (see ``build_eval_transform``).
        loader: Decoder ``path -> PIL RGB image``; :func:`default_loader` when ``None``.
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Transform, *, loader: Loader | None = None
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.loader = default_loader if loader is None else loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Decode and transform.

        Args:
            index: Position in ``samples``.

        Returns:
            ``{"img": Tensor (3, H, W), "pid": int, "camid": int, "modality": int, "index":
            int}``, with ``modality`` coded by ``MODALITY_INDEX`` (visible 0, infrared 1).
        """
        sample = self.samples[index]
        return {
            "img": self.transform(self.loader(sample.path)),
            "pid": sample.pid,
            "camid": sample.camid,
            "modality": MODALITY_INDEX[sample.modality],
            "index": index,
        }
