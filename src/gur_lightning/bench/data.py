"""Input-pipeline throughput: decode + augmentation items per second per worker, one thread.

Writes a small SynVI-like tree of 128x64 JPEGs (smooth random content plus noise, so the files
compress like photographs rather than like white noise) to a temporary folder, then times, in
this process with ``torch.set_num_threads(1)`` (what one ``DataLoader`` worker does):

* ``decode``: :func:`gur_lightning.data.readers.read_image` alone;
* ``visible_two_views``: a :class:`PseudoLabelDataset` item with RGB views 1 and 2 (one decode);
* ``infrared``: an item with the infrared pipeline;
* ``eval_bicubic`` / ``eval_lanczos``: :class:`ImageDataset` items (clustering / final test);
* ``visible_view1`` and ``visible_view1_v1_pil``: RGB view 1 with the library's pipeline and with
  the reference-style ``torchvision.transforms`` v1 chain on PIL images, side by side, to justify
  the backend choice documented in :mod:`gur_lightning.data.transforms`.

Pipelines are timed in interleaved rounds and the median round rate is reported, so that load
from other processes hits all of them alike. Optionally (``--loader-workers N``) the two-view
items are also pulled through a real ``DataLoader`` with ``N`` workers to show the IPC overhead.

Usage: ``python -m gur_lightning.bench data --height 288 --width 144``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as tv1

from gur_lightning.data.image_datasets import ImageDataset, PseudoLabelDataset
from gur_lightning.data.readers import read_image
from gur_lightning.data.samples import Sample
from gur_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChannelRandomErasing,
    build_eval_transform,
    build_train_transform,
)

#: Argument lists run by ``make bench``: the small CPU training size and the paper's size.
DEFAULT_ARGS: list[list[str]] = [
    ["--height", "96", "--width", "48", "--loader-workers", "1"],
    ["--height", "288", "--width", "144", "--loader-workers", "1"],
]

#: Source image size (height, width), the size of RegDB crops and of SynVI images.
SOURCE_SIZE = (128, 64)
#: Side of the coarse random grid upsampled to make smooth image content.
_COARSE = (16, 8)
#: Amplitude of the per-pixel noise added to the smooth content (grey levels).
_NOISE = 12
_JPEG_QUALITY = 90


def _write_tree(root: Path, num_images: int, seed: int) -> list[Sample]:
    """Write ``num_images`` JPEGs per modality under ``root`` and return their samples."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    height, width = SOURCE_SIZE
    for modality in ("visible", "infrared"):
        for i in range(num_images):
            pid, cam = i // 4, 1 + i % 2
            folder = root / modality / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = (rng.random((*_COARSE, 3)) * 255).astype(np.uint8)
            if modality == "infrared":
                coarse[..., 1:] = coarse[..., :1]
            smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
            noisy = np.asarray(smooth, dtype=np.int16) + rng.integers(
                -_NOISE, _NOISE + 1, (height, width, 1)
            )
            path = folder / f"{i:05d}.jpg"
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(
                path, "JPEG", quality=_JPEG_QUALITY
            )
            samples.append(Sample(str(path), pid, cam, modality))
    return samples


def _v1_visible_view1(height: int, width: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB view 1 as the reference writes it: torchvision v1 on PIL images (docs/method.md §4)."""
    return tv1.Compose(
        [
            tv1.Resize((height, width), interpolation=tv1.InterpolationMode.BICUBIC),
            tv1.Pad(10),
            tv1.RandomCrop((height, width)),
            tv1.RandomHorizontalFlip(),
            tv1.ToTensor(),
            tv1.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ChannelRandomErasing(inplace=True),
        ]
    )


def _time_rounds(
    jobs: dict[str, Callable[[int], Any]], n_items: int, iters: int, rounds: int
) -> dict[str, float]:
    """Median over interleaved rounds of items per second for each job (job(i) makes item i)."""
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    per_round = max(1, iters // rounds)
    for job in jobs.values():  # warm-up: first-call allocations and lazy imports
        for i in range(min(8, n_items)):
            job(i)
    for r in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            for i in range(per_round):
                job((r * per_round + i) % n_items)
            rates[name].append(per_round / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def _loader_rate(dataset: PseudoLabelDataset, workers: int, batch_size: int, iters: int) -> float:
    """Items per second through a ``DataLoader`` (first batch excluded: worker start-up)."""
    indices = [i % len(dataset) for i in range(max(iters, 2 * batch_size))]
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    count = 0
    for batch in it:
        count += int(batch["img"].shape[0])
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print one JSON line and return the same record.

    Args:
        argv: Command-line options (``--help`` lists them); ``None`` reads ``sys.argv``.

    Returns:
        The result record: rates in items per second per worker, and the ratios quoted in the
        transforms module.
    """
    parser = argparse.ArgumentParser(prog="gur_lightning.bench data", description=__doc__)
    parser.add_argument("--height", type=int, default=288, help="training/eval image height")
    parser.add_argument("--width", type=int, default=144, help="training/eval image width")
    parser.add_argument("--num-images", type=int, default=64, help="JPEGs per modality")
    parser.add_argument("--iters", type=int, default=600, help="items timed per pipeline")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--loader-workers", type=int, default=0, help="also time a DataLoader (0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="DataLoader batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.iters < 1 or args.rounds < 1:
        parser.error("--num-images, --iters and --rounds must be positive")

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    h, w = args.height, args.width
    with tempfile.TemporaryDirectory(prefix="gur_bench_data_") as tmp:
        samples = _write_tree(Path(tmp), args.num_images, args.seed)
        visible = [s for s in samples if s.modality == "visible"]
        infrared = [s for s in samples if s.modality == "infrared"]
        labels = [s.pid for s in visible]
        two_views = PseudoLabelDataset(
            visible,
            labels,
            build_train_transform(h, w, "visible", view=1),
            second_transform=build_train_transform(h, w, "visible", view=2),
        )
        ir = PseudoLabelDataset(infrared, labels, build_train_transform(h, w, "infrared"))
        ev_bicubic = ImageDataset(samples, build_eval_transform(h, w, "bicubic"))
        ev_lanczos = ImageDataset(samples, build_eval_transform(h, w, "lanczos"))
        view1 = build_train_transform(h, w, "visible", view=1)
        view1_v1 = _v1_visible_view1(h, w)
        jobs: dict[str, Callable[[int], Any]] = {
            "decode": lambda i: read_image(visible[i].path),
            "visible_two_views": two_views.__getitem__,
            "infrared": ir.__getitem__,
            "eval_bicubic": ev_bicubic.__getitem__,
            "eval_lanczos": ev_lanczos.__getitem__,
            "visible_view1": lambda i: view1(read_image(visible[i].path)),
            "visible_view1_v1_pil": lambda i: view1_v1(read_image(visible[i].path)),
        }
        rates = _time_rounds(jobs, args.num_images, args.iters, args.rounds)
        loader_rate = (
            _loader_rate(two_views, args.loader_workers, args.batch_size, args.iters)
            if args.loader_workers > 0
            else None
        )

    record: dict[str, Any] = {
        "bench": "data",
        "height": h,
        "width": w,
        "source_size": list(SOURCE_SIZE),
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "rounds": args.rounds,
        "items_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        # One two-view item is two training images.
        "visible_images_per_s": round(2 * rates["visible_two_views"], 1),
        "decode_share_visible_two_views": round(rates["visible_two_views"] / rates["decode"], 3),
        "decode_share_infrared": round(rates["infrared"] / rates["decode"], 3),
        "speedup_v2_uint8_over_v1_pil": round(
            rates["visible_view1"] / rates["visible_view1_v1_pil"], 2
        ),
        "loader_workers": args.loader_workers,
        "loader_items_per_s": None if loader_rate is None else round(loader_rate, 1),
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
