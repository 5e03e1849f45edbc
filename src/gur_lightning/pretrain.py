"""The SynVI pretrained start: what ImageNet weights are to real data (docs/synthetic.md).

Real visible-infrared re-ID methods start from ImageNet weights, so their first clusterings
already group people within a camera. SynVI runs would otherwise start from random weights. This
module builds the stand-in (docs/synthetic.md, "The pretrained start"):

* a SynVI world of its own: its random streams live in their own namespace
  (:data:`~gur_lightning.synvi.world.NAMESPACE_PRETRAIN`), so no identity, camera or scene can be
  one of a benchmark tree's, whatever either seed; **visible cameras only** (no infrared image
  is ever rendered); drawn at the benchmark's input size with the benchmark's preset;
* a torchvision ResNet of the configured depth trained once to classify its identities
  (cross-entropy with label smoothing; flip, pad-crop and colour jitter), as ImageNet weights are
  trained once to classify objects;
* its state dict (``fc`` removed) cached under ``<data_dir>/synvi_pretrain_<hash>/`` by a hash
  of every parameter, written atomically like a SynVI tree, and loaded into both stems and the
  body exactly as an ImageNet file is (:class:`~gur_lightning.models.backbone.DualStreamResNet`).

The entry points select it with ``model.backbone.pretrained=synvi``; the command line is
``python -m gur_lightning.pretrain [--out DIR] [options]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from gur_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from gur_lightning.models.backbone import DEPTHS
from gur_lightning.synvi.config import GENERATOR_VERSION, PRESETS, add_set_option
from gur_lightning.synvi.generate import (
    install_atomically,
    parameter_hash,
    read_json_marker,
    staging_folder,
    write_json_marker,
)
from gur_lightning.synvi.pretraining import (
    PretrainConfig,
    build_pretrain_world,
    pretrain_config,
    world_config,
)
from gur_lightning.synvi.render import render_image
from gur_lightning.synvi.world import World
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: Bumped whenever a change here changes the weights for equal parameters, so that cached
#: entries of an older recipe are rebuilt instead of silently reused.
PRETRAIN_VERSION = 1
#: Cache entries are ``<data_dir>/<CACHE_PREFIX><first 16 hex digits of the hash>``.
CACHE_PREFIX = "synvi_pretrain_"
#: Marker of a complete entry (parameters, hash, training figures), written last.
MARKER_NAME = "synvi_pretrain.json"
#: The weights file of an entry: a torchvision ResNet state dict without ``fc``.
WEIGHTS_NAME = "weights.pth"
#: Progress lines logged over one pretraining.
PROGRESS_LINES = 10
#: Seconds a non-zero local rank waits for local rank 0 to build the entry.
WAIT_TIMEOUT_S = 3600.0
#: Polling period of that wait.
WAIT_POLL_S = 1.0
#: Rec. 601 luma weights: the grey level that contrast and saturation jitter pivot on.
_LUMA = (0.299, 0.587, 0.114)


def render_pretrain_set(world: World, cameras_per_identity: int) -> tuple[Tensor, Tensor]:
    """Render every training image of the pretraining world, in memory.

    Args:
        world: From :func:`build_pretrain_world`.
        cameras_per_identity: Cameras that see each identity: identity ``pid`` in cameras
            ``(pid - 1 + j) % C`` of the sorted camera list, ``j < cameras_per_identity``
            (:attr:`PretrainConfig.cameras_of_identity`).

    Returns:
        ``(images, labels)``: ``(N, 3, H, W)`` uint8 and ``(N,)`` int64 class indices
        ``pid - 1``, ordered by identity, camera and image number.
    """
    per_camera = world.config.images_per_camera
    cameras = sorted(world.cameras)
    jobs = [
        (pid, cam, k)
        for pid in sorted(world.identities)
        # Sorted, so that with every camera the set is the one before this option existed.
        for cam in sorted(
            cameras[(pid - 1 + j) % len(cameras)] for j in range(cameras_per_identity)
        )
        for k in range(per_camera)
    ]
    images = np.stack([render_image(world, pid, cam, "visible", k) for pid, cam, k in jobs])
    labels = torch.tensor([pid - 1 for pid, _, _ in jobs], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def augment(images: Tensor, cfg: PretrainConfig, generator: torch.Generator) -> Tensor:
    """Colour jitter, pad-crop and flip a batch, then normalise it as the benchmark does.

    Args:
        images: ``(B, 3, H, W)`` uint8.
        cfg: ``colour_jitter``, ``pad`` and ``flip_p``.
        generator: The training stream.

    Returns:
        ``(B, 3, H, W)`` float32, normalised with the ImageNet statistics of every pipeline
        (docs/method.md §4).
    """
    x = images.float().div_(255.0)
    b, _, h, w = x.shape
    if cfg.colour_jitter > 0:
        luma = torch.tensor(_LUMA).view(1, 3, 1, 1)

        def factor() -> Tensor:
            u = torch.rand(b, 1, 1, 1, generator=generator)
            return 1.0 + (2.0 * u - 1.0) * cfg.colour_jitter

        x = x * factor()  # brightness
        mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        grey = (x * luma).sum(1, keepdim=True)
        x = ((x - grey) * factor() + grey).clamp_(0.0, 1.0)  # saturation
    if cfg.pad > 0:
        # Black padding before normalisation, as the benchmark's pipelines pad.
        p = cfg.pad
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        x = torch.stack(
            [
                padded[i, :, y : y + h, z : z + w]
                for i, (y, z) in enumerate(zip(oy, ox, strict=True))
            ]
        )
    flip = torch.rand(b, generator=generator) < cfg.flip_p
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    mean_t = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std_t = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def train_pretrained_start(
    cfg: PretrainConfig, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Render the pretraining set and train the ResNet to classify its identities.

    The global torch random state is saved and restored around the training, so a run that
    builds the entry draws exactly what a run that finds it cached draws.

    Args:
        cfg: The pretraining parameters.
        device: Where to train.

    Returns:
        ``(state_dict, figures)``: the torchvision ResNet state dict without ``fc`` (on the
        CPU), and ``train_accuracy`` / ``train_loss`` (last epoch, augmented images),
        ``seconds``, ``images_per_second``, ``steps``.
    """
    start = time.perf_counter()
    world = build_pretrain_world(cfg)
    images, labels = render_pretrain_set(world, cfg.cameras_of_identity)
    render_s = time.perf_counter() - start
    n = len(labels)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch  # the last partial batch is dropped: BatchNorm needs > 1
    total = steps_per_epoch * cfg.epochs
    log.info(
        "SynVI pretraining: %d images of %d identities in %d visible cameras (rendered in "
        "%.1f s); ResNet-%d, %d epochs of %d steps, batch %d",
        n,
        cfg.num_ids,
        cfg.num_cameras,
        render_s,
        cfg.depth,
        cfg.epochs,
        steps_per_epoch,
        batch,
    )
    device = torch.device(device)
    # manual_seed below seeds every CUDA device too: restore all of them afterwards.
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        builder, _ = DEPTHS[cfg.depth]
        net: torchvision.models.ResNet = getattr(torchvision.models, builder)(
            weights=None, num_classes=cfg.num_ids
        )
        net.to(device).train()
        optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=total)
        every = max(1, math.ceil(total / PROGRESS_LINES))
        train_start = time.perf_counter()
        step = 0
        loss_sum = correct = seen = 0.0
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=generator)
            loss_sum = correct = seen = 0.0
            for k in range(steps_per_epoch):
                idx = order[k * batch : (k + 1) * batch]
                x = augment(images[idx], cfg, generator).to(device)
                y = labels[idx].to(device)
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += float((logits.argmax(1) == y).sum())
                seen += len(y)
                if step % every == 0 or step == total:
                    elapsed = time.perf_counter() - train_start
                    log.info(
                        "SynVI pretraining: step %d/%d (epoch %d/%d), loss %.3f, train "
                        "accuracy %.1f %%, %.0f images/s, %.0f s left",
                        step,
                        total,
                        epoch + 1,
                        cfg.epochs,
                        loss_sum / seen,
                        100.0 * correct / seen,
                        step * batch / elapsed,
                        elapsed / step * (total - step),
                    )
        train_s = time.perf_counter() - train_start
    state = {
        k: v.detach().cpu().clone() for k, v in net.state_dict().items() if not k.startswith("fc.")
    }
    figures = {
        "train_accuracy": correct / seen,
        "train_loss": loss_sum / seen,
        "seconds": time.perf_counter() - start,
        "images_per_second": total * batch / train_s,
        "steps": float(total),
    }
    return state, figures


# --------------------------------------------------------------------------- the cache


def pretrain_parameters(cfg: PretrainConfig) -> dict[str, Any]:
    """The canonical parameters of an entry (what its hash is computed from).

    Besides the fields, the resolved world configuration is included, so that a change of a
    preset's knobs (or of the generator) gives a new entry under the same preset name.
    """
    return {
        "kind": "synvi_pretrain",
        "version": PRETRAIN_VERSION,
        "generator_version": GENERATOR_VERSION,
        "pretrain": cfg.to_dict(),
        "world": world_config(cfg).to_dict(),
    }


def entry_dir(cfg: PretrainConfig, data_dir: str | os.PathLike[str]) -> Path:
    """The cache folder of ``cfg`` under ``data_dir`` (whether or not it exists yet)."""
    digest = parameter_hash(pretrain_parameters(cfg))
    return Path(data_dir).absolute() / f"{CACHE_PREFIX}{digest[:16]}"


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a pretrained-start entry at ``folder``, or ``None`` if it is not one."""
    return read_json_marker(folder / MARKER_NAME, "kind", "synvi_pretrain")


def _is_complete(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds the finished entry with hash ``digest``."""
    marker = read_marker(folder)
    weights = folder / WEIGHTS_NAME
    return (
        marker is not None
        and marker.get("hash") == digest
        and weights.is_file()
        and weights.stat().st_size == marker.get("weights_bytes")
    )


def install_entry(tmp: Path, out: Path, digest: str) -> None:
    """Move the finished entry ``tmp`` to ``out``; a concurrent identical entry wins.

    Args:
        tmp: The finished entry (weights and marker), a sibling folder of ``out``.
        out: The cache entry's folder (:func:`entry_dir`).
        digest: The entry's parameter hash, as its marker records it.

    Raises:
        FileExistsError: ``out`` exists and is not an entry of ours.
    """
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_marker(out) is None)):
        raise FileExistsError(
            f"{out} exists and is not a SynVI pretrained-start entry (no {MARKER_NAME}); "
            "refusing to replace it. Move it away or choose another data directory."
        )
    # A damaged entry of ours (its weights deleted or truncated) is replaced.
    install_atomically(tmp, out, lambda folder: _is_complete(folder, digest))


def ensure_pretrained_start(
    cfg: PretrainConfig,
    data_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
) -> Path:
    """Return the weights file of the pretrained start, training it first when not cached.

    The entry is trained into a temporary sibling folder and renamed into place only when its
    weights and its marker (written last) are complete, so an interrupted build (an exception,
    Ctrl-C) leaves nothing behind and a concurrent build of the same entry is harmless.

    Args:
        cfg: The pretraining parameters.
        data_dir: The folder that holds the cache entries (``paths.data_dir``).
        device: Where to train when the entry is built (not part of the key).

    Returns:
        ``<data_dir>/synvi_pretrain_<hash>/weights.pth``.

    Raises:
        FileExistsError: The entry's folder exists and is not an entry.
    """
    params = pretrain_parameters(cfg)
    digest = parameter_hash(params)
    out = entry_dir(cfg, data_dir)
    if _is_complete(out, digest):
        log.info("SynVI pretrained start %s is cached", out)
        return out / WEIGHTS_NAME
    with staging_folder(out) as tmp:
        state, figures = train_pretrained_start(cfg, device=device)
        torch.save(state, tmp / WEIGHTS_NAME)
        marker = {
            **params,
            "hash": digest,
            "weights_bytes": (tmp / WEIGHTS_NAME).stat().st_size,
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            **figures,
        }
        write_json_marker(tmp / MARKER_NAME, marker)
        install_entry(tmp, out, digest)
    log.info(
        "SynVI pretrained start -> %s: train accuracy %.1f %% in %.0f s (%.0f images/s)",
        out,
        100.0 * figures["train_accuracy"],
        figures["seconds"],
        figures["images_per_second"],
    )
    return out / WEIGHTS_NAME


def wait_for_pretrained_start(
    cfg: PretrainConfig,
    data_dir: str | os.PathLike[str],
    *,
    timeout_s: float = WAIT_TIMEOUT_S,
    poll_s: float = WAIT_POLL_S,
) -> Path:
    """Block until another process (local rank 0) has built the entry; return its weights.

    Raises:
        TimeoutError: If the entry is still missing after ``timeout_s`` seconds.
    """
    digest = parameter_hash(pretrain_parameters(cfg))
    out = entry_dir(cfg, data_dir)
    deadline = time.monotonic() + timeout_s
    while not _is_complete(out, digest):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for local rank 0 to build the SynVI pretrained start "
                f"at {out}; did rank 0 fail? (its log names the error)"
            )
        time.sleep(poll_s)
    return out / WEIGHTS_NAME


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser (unset options keep :class:`PretrainConfig`'s)."""
    parser = argparse.ArgumentParser(
        prog="python -m gur_lightning.pretrain",
        description="Build (or find cached) the SynVI pretrained start: a torchvision ResNet "
        "trained to classify the visible identities of a SynVI world of its own.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data"), help="cache folder (paths.data_dir; ./data)"
    )
    parser.add_argument("--depth", type=int, choices=sorted(DEPTHS))
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--preset", choices=PRESETS)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ids", dest="num_ids", type=int, help="pretraining identities")
    parser.add_argument("--cameras", dest="num_cameras", type=int, help="visible cameras")
    parser.add_argument("--images-per-camera", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda)")
    add_set_option(parser, "PretrainConfig field, e.g. --set lr=0.001")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the entry and log where its weights are."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = ("depth", "height", "width", "preset", "seed", "num_ids", "num_cameras")
    options = {name: getattr(args, name) for name in (*names, "images_per_camera", "epochs")}
    options = {k: v for k, v in options.items() if v is not None}
    options.update(dict(args.set))
    try:
        cfg = pretrain_config(options)
        weights = ensure_pretrained_start(cfg, args.out, device=args.device)
    except (ValueError, FileExistsError) as err:
        log.error("error: %s", err)
        return 2
    log.info("SynVI pretrained start ready: %s", weights)
    log.info("use it with model.backbone.pretrained=%s (or the path)", "synvi")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
