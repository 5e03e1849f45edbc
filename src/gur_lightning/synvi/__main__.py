"""Command line: ``python -m gur_lightning.synvi --layout sysu --out DIR [options]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gur_lightning.synvi.config import (
    DEFAULT_PRESET,
    DEFAULT_SEED,
    LAYOUTS,
    PRESETS,
    add_set_option,
)
from gur_lightning.synvi.generate import generate_synvi, read_marker

log = logging.getLogger("gur_lightning.synvi")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m gur_lightning.synvi",
        description="Write a SynVI tree in the raw layout of SYSU-MM01, RegDB or LLCM.",
    )
    parser.add_argument("--layout", choices=LAYOUTS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="data set root to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--ids", type=int, default=None, help="identities (default per layout)")
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--images-per-camera", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes (default 2)")
    add_set_option(parser, "SynVIConfig option, e.g. --set clutter=0")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate the tree and log a one-line summary."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    overrides = dict(args.set)
    if args.images_per_camera is not None:
        overrides["images_per_camera"] = args.images_per_camera
    try:
        root = generate_synvi(
            args.layout,
            args.out,
            seed=args.seed,
            num_ids=args.ids,
            preset=args.preset,
            height=args.height,
            width=args.width,
            workers=args.workers,
            **overrides,
        )
    except (ValueError, FileExistsError) as err:
        log.error("error: %s", err)
        return 2
    marker = read_marker(root) or {}
    log.info(
        "SynVI tree ready: %s (%s files, hash %s)",
        root,
        marker.get("num_files"),
        str(marker.get("hash", ""))[:12],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
