"""Step time of DataParallel-exact BatchNorm: ``model.bn_replicas = R`` against R = 1.

The same network (ResNet two-stream backbone, weights copied), the same batch (two visible views
and an infrared batch), the same maths per step (forward through both stems and the shared body,
InfoNCE against two cluster memories, backward, Adam step), once with plain BatchNorm over the
whole batch and once with R virtual replicas (every BatchNorm normalises R chunks separately;
the streams are laid out replica-major in the shared body). Rounds alternate between the two
so that both see the same machine load; the figures are medians over every measured step, on
the wall clock and on this process's CPU clock (the robust one on a shared machine).

Usage::

    python -m gur_lightning.bench replicas --replicas 4
    python -m gur_lightning.bench replicas --depth 50 --height 288 --width 144 --visible 8 \
        --infrared 16 --replicas 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from gur_lightning.bench.training import add_step_arguments
from gur_lightning.models import ClusterMemory, DualStreamResNet, adc_loss

__all__ = ["DEFAULT_ARGS", "main"]

#: ``make bench``: ResNet-18 at 96×48 on CPU, fp32, R = 4 against R = 1 (about a minute).
DEFAULT_ARGS: list[list[str]] = [["--replicas", "4"]]


def _steps(
    net: DualStreamResNet,
    batch: dict[str, torch.Tensor],
    memories: dict[str, torch.Tensor],
    n_steps: int,
) -> list[tuple[float, float]]:
    """Train ``n_steps`` steps; per-step (wall, CPU) seconds."""
    net.train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3.5e-4)
    mem = {name: ClusterMemory(c, momentum=0.1) for name, c in memories.items()}
    out = []
    sync = torch.cuda.synchronize if batch["x_v"].is_cuda else (lambda: None)
    for _ in range(n_steps):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        f_v, f_i = net(batch["x_v"], batch["x_i"])
        loss, _ = adc_loss(
            mem["visible"].logits(f_v), batch["y_v"], mem["infrared"].logits(f_i), batch["y_i"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mem["visible"].update(f_v.detach(), batch["y_v"])
        mem["infrared"].update(f_i.detach(), batch["y_i"])
        sync()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print one JSON line and return the same record."""
    parser = argparse.ArgumentParser(prog="gur_lightning.bench replicas", description=__doc__)
    add_step_arguments(parser)
    parser.add_argument("--replicas", type=int, default=4, help="R, compared with R = 1")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="dropped steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU, when there is one)")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.visible, args.infrared) < 1 or args.warmup < 0:
        parser.error("--steps, --rounds, --visible, --infrared must be >= 1, --warmup >= 0")
    if args.replicas < 2 or (2 * args.visible) % args.replicas or args.infrared % args.replicas:
        parser.error(
            f"--replicas {args.replicas}: need R >= 2 dividing 2 x --visible and --infrared"
        )

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    plain = DualStreamResNet(args.depth)
    replicated = DualStreamResNet(args.depth, bn_replicas=args.replicas)
    replicated.load_state_dict(copy.deepcopy(plain.state_dict()))
    plain.to(device)
    replicated.to(device)
    shape = (3, args.height, args.width)
    y_v = torch.randint(0, args.clusters, (args.visible,), generator=g)
    batch = {
        "x_v": torch.randn(2 * args.visible, *shape, generator=g),
        "y_v": torch.cat([y_v, y_v]),
        "x_i": torch.randn(args.infrared, *shape, generator=g),
        "y_i": torch.randint(0, args.clusters, (args.infrared,), generator=g),
    }
    dim = plain.feature_dim
    memories = {m: torch.randn(args.clusters, dim, generator=g) for m in ("visible", "infrared")}
    batch = {k: v.to(device) for k, v in batch.items()}
    memories = {k: v.to(device) for k, v in memories.items()}
    measured: dict[str, list[tuple[float, float]]] = {"r1": [], "rR": []}
    n = args.warmup + args.steps
    for _ in range(args.rounds):
        measured["r1"] += _steps(plain, batch, memories, n)[args.warmup :]
        measured["rR"] += _steps(replicated, batch, memories, n)[args.warmup :]

    def median(key: str, clock: int) -> float:
        return statistics.median(step[clock] for step in measured[key])

    images = 2 * args.visible + args.infrared
    record = {
        "bench": "replicas",
        "device": str(device),
        "threads": args.threads,
        "depth": args.depth,
        "input": [args.height, args.width],
        "batch": {"visible": args.visible, "visible_views": 2, "infrared": args.infrared},
        "images_per_step": images,
        "replicas": args.replicas,
        "measured_steps_each": len(measured["r1"]),
        "step_s_r1": round(median("r1", 0), 4),
        "step_s_rR": round(median("rR", 0), 4),
        "overhead_pct_wall": round(100.0 * (median("rR", 0) / median("r1", 0) - 1.0), 2),
        "cpu_step_s_r1": round(median("r1", 1), 4),
        "cpu_step_s_rR": round(median("rR", 1), 4),
        "overhead_pct_cpu": round(100.0 * (median("rR", 1) / median("r1", 1) - 1.0), 2),
    }
    print(json.dumps(record))  # the benchmark's one line of stdout
    return record


if __name__ == "__main__":
    main()
