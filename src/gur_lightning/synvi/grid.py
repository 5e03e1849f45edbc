"""Example grid of SynVI images: several identities across cameras, visible and infrared.

``python -m gur_lightning.synvi.grid --out docs/synvi_grid.png`` renders it for the README
(docs/synthetic.md, "Look at it"). Images are rendered in memory with the same code that writes
trees, so the grid shows exactly what a tree contains (whether or not an identity is actually
covered by a camera in a given tree).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gur_lightning.synvi.config import DEFAULT_PRESET, DEFAULT_SEED, PRESETS, resolve_config
from gur_lightning.synvi.layouts import SYSU_CAMERAS, build_world
from gur_lightning.synvi.render import render_image
from gur_lightning.synvi.world import World
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: Pixel gaps and label band sizes of the grid.
GAP = 4
LABEL_W = 52
HEADER_H = 16
#: Colours a PNG palette keeps (the grid must stay under ~300 KB for the repository).
PNG_COLOURS = 256
#: Background and text colours of the grid.
PAPER = (255, 255, 255)
INK = (20, 20, 20)


def pick_identities(world: World, count: int) -> list[int]:
    """Pick identities that show the generator's range, twins first.

    Args:
        world: The world to pick from.
        count: Number of identities.

    Returns:
        ``count`` identity numbers: a colour-twin pair and a shape-twin pair when present,
        then the lowest remaining ids.
    """
    chosen: list[int] = []
    for kind in ("colour", "shape"):
        twins = [p for p in world.identities.values() if p.twin_kind == kind]
        if twins and len(chosen) + 2 <= count:
            chosen += [twins[0].twin_of or twins[0].pid, twins[0].pid]
    for pid in sorted(world.identities):
        if len(chosen) >= count:
            break
        if pid not in chosen:
            chosen.append(pid)
    return chosen[:count]


def render_grid(
    out: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    preset: str = DEFAULT_PRESET,
    num_identities: int = 8,
    height: int = 128,
    width: int = 64,
) -> Path:
    """Render a grid: one row per identity; SYSU visible cameras, then infrared cameras.

    Args:
        out: PNG file to write.
        seed: World seed.
        preset: Difficulty preset.
        num_identities: Rows.
        height: Image height.
        width: Image width.

    Returns:
        The written path.
    """
    cfg = resolve_config("sysu", preset=preset, height=height, width=width)
    world = build_world("sysu", cfg, seed)
    columns = [c for c, (m, _, _) in SYSU_CAMERAS.items() if m == "visible"] + [
        c for c, (m, _, _) in SYSU_CAMERAS.items() if m == "infrared"
    ]
    pids = pick_identities(world, num_identities)
    cell_w, cell_h = width + GAP, height + GAP
    canvas = Image.new(
        "RGB", (LABEL_W + len(columns) * cell_w + GAP, HEADER_H + len(pids) * cell_h), PAPER
    )
    draw = ImageDraw.Draw(canvas)
    for k, cam in enumerate(columns):
        tag = "VIS" if SYSU_CAMERAS[cam][0] == "visible" else "IR"
        draw.text((LABEL_W + k * cell_w + 2, 2), f"cam{cam} {tag}", fill=INK)
    for r, pid in enumerate(pids):
        identity = world.identities[pid]
        y = HEADER_H + r * cell_h
        draw.text((2, y + 2), f"id {pid}", fill=INK)
        if identity.twin_kind:
            # Twins make the point of the benchmark: say which cue they share.
            draw.text((2, y + 14), f"{identity.twin_kind}", fill=INK)
            draw.text((2, y + 26), "twin of", fill=INK)
            draw.text((2, y + 38), f"id {identity.twin_of}", fill=INK)
        for k, cam in enumerate(columns):
            pixels = render_image(world, pid, cam, SYSU_CAMERAS[cam][0], 0)
            canvas.paste(Image.fromarray(np.ascontiguousarray(pixels)), (LABEL_W + k * cell_w, y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(PNG_COLOURS, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)
    log.info("SynVI grid (%d identities x %d cameras) -> %s", len(pids), len(columns), out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gur_lightning.synvi.grid --out FILE.png``."""
    parser = argparse.ArgumentParser(prog="python -m gur_lightning.synvi.grid")
    parser.add_argument("--out", type=Path, default=Path("docs/synvi_grid.png"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET)
    parser.add_argument("--ids", type=int, default=8, help="identities (rows)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    render_grid(
        args.out,
        seed=args.seed,
        preset=args.preset,
        num_identities=args.ids,
        height=args.height,
        width=args.width,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
