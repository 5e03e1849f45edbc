"""Dispatch ``python -m gur_lightning.bench NAME [options]`` to ``gur_lightning.bench.NAME``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from gur_lightning.bench import BENCHMARKS

log = logging.getLogger("gur_lightning.bench")


def _run_all(out_dir: Path) -> int:
    """Run every benchmark with its ``DEFAULT_ARGS`` and write one JSON file per benchmark."""
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in BENCHMARKS:
        module = importlib.import_module(f"gur_lightning.bench.{name}")
        records = []
        for argv in module.DEFAULT_ARGS:
            log.info("bench %s %s", name, " ".join(argv))
            try:
                records.append(module.main(list(argv)))
            except Exception:  # a failing benchmark must not hide the others' figures
                log.exception("benchmark %s %s failed", name, argv)
                failures += 1
        (out_dir / f"{name}.json").write_text(json.dumps(records, indent=2) + "\n")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``all --out DIR`` or one benchmark name followed by its own options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    choices = ("all", *BENCHMARKS)
    if not argv or argv[0] not in choices:
        raise SystemExit(f"usage: python -m gur_lightning.bench {{{','.join(choices)}}} [options]")
    if argv[0] == "all":
        parser = argparse.ArgumentParser(prog="gur_lightning.bench all")
        parser.add_argument("--out", type=Path, default=Path("bench_results"))
        return _run_all(parser.parse_args(argv[1:]).out)
    importlib.import_module(f"gur_lightning.bench.{argv[0]}").main(argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
