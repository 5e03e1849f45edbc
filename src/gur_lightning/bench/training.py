"""Training throughput: ``GURLitModule`` under ``Trainer.fit`` against a plain PyTorch loop.

Both paths train the same model on the same pre-built batch (two visible views plus an infrared
batch, docs/method.md §6.2) with the same maths: forward through both stems and the shared body,
InfoNCE against two cluster memories, Adam step, memory momentum update. The difference is the
framework overhead (hooks, logging, precision plugin, loop bookkeeping), which must stay
at most 5 %.

Method: ``--rounds`` rounds, each one Lightning fit of ``--warmup + --steps`` batches followed by
the plain loop for as many steps, in one process so both see the same machine load. A step's
time is the interval between consecutive ends of steps (it includes fetching the batch and the
memory update), the first ``--warmup`` steps of every run are dropped, and the figures are
medians over all measured steps of all rounds. Each interval is taken on two clocks:
wall-clock (``*_img_per_s``, ``overhead_pct_wall``) and this process's CPU time
(``*_img_per_cpu_s``, ``overhead_pct``). With one intra-op thread the CPU clock counts only
this process's work, so it is the figure that stays meaningful on a machine shared with other
jobs; ``overhead_pct`` (CPU) is the one compared with the 5 % target. Fit start-up (building
the Trainer, configuring the optimizer) is reported separately: it is paid once per phase, not
per step.

Usage::

    python -m gur_lightning.bench training --precision bf16 --channels-last
    python -m gur_lightning.bench training --depth 50 --height 288 --width 144 --visible 16 \
        --infrared 32 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from gur_lightning.models import ClusterMemory, DualStreamResNet, GURLitModule, adc_loss
from gur_lightning.models.options import SUPPORTED_DEPTHS

__all__ = ["DEFAULT_ARGS", "add_step_arguments", "main"]

#: ``make bench``: ResNet-18 at 96×48 on CPU, fp32 and bf16 autocast (about 2 minutes on 2
#: idle cores). The bf16 run uses half the batch: on CPUs without native bf16 (no AMX /
#: AVX512-BF16) bf16 convolutions are about 3× slower than fp32.
DEFAULT_ARGS: list[list[str]] = [
    ["--precision", "32"],
    ["--precision", "bf16", "--channels-last", "--visible", "16", "--infrared", "32"],
]

#: The target for the framework overhead, in percent.
TARGET_OVERHEAD_PCT: float = 5.0


class _SameBatch(IterableDataset):
    """Yields one pre-built batch ``n`` times (data loading is not what is measured)."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch = batch
        self.n = n

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.n):
            yield self.batch

    def __len__(self) -> int:
        return self.n


def _now() -> tuple[float, float]:
    """(wall-clock, process CPU) time in seconds."""
    return time.perf_counter(), time.process_time()


def _intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Consecutive differences of (wall, cpu) stamps."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


class _StepClock(L.Callback):
    """Stamps the end of every training batch, before the module's own hook.

    Each interval between stamps then holds exactly one memory update, one batch fetch and one
    optimizer step.
    """

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps = [_now()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self.stamps.append(_now())


def _make_batch(args: argparse.Namespace, generator: torch.Generator) -> dict:
    """A P×K-like batch with ``--clusters`` pseudo-labels per modality."""
    shape = (3, args.height, args.width)
    return {
        "visible": {
            "img": torch.randn(args.visible, *shape, generator=generator),
            "img2": torch.randn(args.visible, *shape, generator=generator),
            "label": torch.randint(0, args.clusters, (args.visible,), generator=generator),
        },
        "infrared": {
            "img": torch.randn(args.infrared, *shape, generator=generator),
            "label": torch.randint(0, args.clusters, (args.infrared,), generator=generator),
        },
    }


def _lightning_run(
    module: GURLitModule, batch: dict, n_steps: int, precision: str
) -> tuple[list[tuple[float, float]], float]:
    """One ``Trainer.fit`` of ``n_steps`` batches; returns per-step intervals and start-up time."""
    clock = _StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=cast(Any, precision),  # Lightning validates the string itself
        max_epochs=1,
        limit_train_batches=n_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    begin = time.perf_counter()
    trainer.fit(module, DataLoader(_SameBatch(batch, n_steps), batch_size=None))
    return _intervals(clock.stamps), clock.stamps[0][0] - begin


def _plain_run(
    module: GURLitModule,
    batch: dict,
    memories: dict[str, torch.Tensor],
    n_steps: int,
    bf16: bool,
) -> list[tuple[float, float]]:
    """The same training step written as a plain loop; returns per-step intervals."""
    hp = module.hparams
    backbone = module.backbone
    backbone.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    mem = {
        name: ClusterMemory(c, temperature=hp["temperature"], momentum=hp["memory_momentum"])
        for name, c in memories.items()
    }
    fmt = torch.channels_last if hp["channels_last"] else torch.contiguous_format
    vis, ir = batch["visible"], batch["infrared"]
    stamps = [_now()]
    for _ in range(n_steps):
        x_v = torch.cat([vis["img"], vis["img2"]]).contiguous(memory_format=fmt)
        y_v = torch.cat([vis["label"], vis["label"]])
        x_i = ir["img"].contiguous(memory_format=fmt)
        y_i = ir["label"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            f_v, f_i = backbone(x_v, x_i)
            loss, _ = adc_loss(mem["visible"].logits(f_v), y_v, mem["infrared"].logits(f_i), y_i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mem["visible"].update(f_v.detach(), y_v)
        mem["infrared"].update(f_i.detach(), y_i)
        stamps.append(_now())
    return _intervals(stamps)


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The network and batch options shared by the training-step benchmarks."""
    parser.add_argument("--depth", type=int, default=18, choices=SUPPORTED_DEPTHS)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--visible", type=int, default=32, help="visible images (×2 views)")
    parser.add_argument("--infrared", type=int, default=64, help="infrared images")
    parser.add_argument("--clusters", type=int, default=32, help="memory rows per modality")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print one JSON line and return the same record."""
    parser = argparse.ArgumentParser(prog="gur_lightning.bench training", description=__doc__)
    add_step_arguments(parser)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="dropped steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.visible, args.infrared) < 1 or args.warmup < 0:
        parser.error("--steps, --rounds, --visible, --infrared must be >= 1, --warmup >= 0")

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting ruins shared cores
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    bf16 = args.precision == "bf16"
    module = GURLitModule(DualStreamResNet(args.depth), channels_last=args.channels_last)
    dim = module.feature_dim
    memories = {
        "visible": torch.randn(args.clusters, dim, generator=generator),
        "infrared": torch.randn(args.clusters, dim, generator=generator),
    }
    batch = _make_batch(args, generator)
    images_per_step = 2 * args.visible + args.infrared
    n_steps = args.warmup + args.steps

    lightning_log = logging.getLogger("lightning.pytorch")
    previous_level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    lit_steps: list[tuple[float, float]] = []
    plain_steps: list[tuple[float, float]] = []
    startups: list[float] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's worker-count and tip messages
            for _ in range(args.rounds):
                module.set_memories(memories, {"visible": "visible", "infrared": "infrared"})
                intervals, startup = _lightning_run(
                    module, batch, n_steps, "bf16-mixed" if bf16 else "32-true"
                )
                lit_steps += intervals[args.warmup :]
                startups.append(startup)
                intervals = _plain_run(module, batch, memories, n_steps, bf16)
                plain_steps += intervals[args.warmup :]
    finally:
        lightning_log.setLevel(previous_level)

    def median(steps: list[tuple[float, float]], clock: int) -> float:
        return statistics.median(step[clock] for step in steps)

    wall_lit, wall_plain = median(lit_steps, 0), median(plain_steps, 0)
    cpu_lit, cpu_plain = median(lit_steps, 1), median(plain_steps, 1)
    # CPU time of this process is the robust comparison on a shared machine: other sessions'
    # load stretches wall-clock steps at random but hardly changes the work done per step.
    overhead_cpu = 100.0 * (cpu_lit / cpu_plain - 1.0)
    record = {
        "bench": "training",
        "device": "cpu",
        "threads": args.threads,
        "depth": args.depth,
        "input": [args.height, args.width],
        "precision": args.precision,
        "channels_last": args.channels_last,
        "batch": {"visible": args.visible, "visible_views": 2, "infrared": args.infrared},
        "images_per_step": images_per_step,
        "measured_steps_each": len(lit_steps),
        "lightning_img_per_s": round(images_per_step / wall_lit, 2),
        "plain_img_per_s": round(images_per_step / wall_plain, 2),
        "overhead_pct_wall": round(100.0 * (wall_lit / wall_plain - 1.0), 2),
        "lightning_img_per_cpu_s": round(images_per_step / cpu_lit, 2),
        "plain_img_per_cpu_s": round(images_per_step / cpu_plain, 2),
        "overhead_pct": round(overhead_cpu, 2),
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "meets_target": overhead_cpu <= TARGET_OVERHEAD_PCT,
        "fit_startup_s": round(statistics.median(startups), 3),
    }
    print(json.dumps(record))  # the benchmark's one line of stdout
    return record


if __name__ == "__main__":
    main()
