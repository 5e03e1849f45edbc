"""Aggregate the jobs of a Hydra multirun into one table (e.g. RegDB's ten trials).

Registered as a Hydra callback by ``conf/sweep/regdb_trials.yaml``; at the end of the multirun it
reads every job's ``metrics.json`` under the sweep folder and writes ``aggregate.json`` (mean and
population std of every numeric key over the jobs) and ``aggregate.md`` (the test table) there.
Also usable by hand: ``python -m gur_lightning.sweep SWEEP_DIR``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gur_lightning.evaluation import format_table
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


def aggregate_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """Mean ± std over the jobs of a sweep folder.

    Args:
        sweep_dir: The multirun folder holding one sub-folder per job with a ``metrics.json``.

    Returns:
        ``{"jobs": [job folder names], "mean": {key: value}, "std": {key: value}}`` over the
        keys every job reported.

    Raises:
        FileNotFoundError: If no job folder holds a ``metrics.json``.
    """
    sweep_dir = Path(sweep_dir)
    files = sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: p.parent.name)
    if not files:
        raise FileNotFoundError(f"{sweep_dir}: no */metrics.json found (did the jobs finish?)")
    runs = [json.loads(p.read_text()) for p in files]
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    values = {k: np.array([float(r[k]) for r in runs]) for k in keys}
    mean = {k: float(v.mean()) for k, v in values.items()}
    std = {k: float(v.std()) for k, v in values.items()}
    result = {"jobs": [p.parent.name for p in files], "mean": mean, "std": std}
    table_input = {k: v for k, v in mean.items() if not k.endswith("_std")}
    table_input.update({f"{k}_std": v for k, v in std.items() if not k.endswith("_std")})
    (sweep_dir / "aggregate.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    table = format_table(table_input)
    (sweep_dir / "aggregate.md").write_text(
        f"Mean ± std over {len(files)} jobs ({', '.join(result['jobs'])}), in %:\n\n"
        f"```\n{table}\n```\n"
    )
    log.info("aggregate over %d jobs (%%, mean ± std):\n%s", len(files), table)
    return result


class AggregateMetrics(Callback):
    """Hydra callback: aggregate the sweep's ``metrics.json`` files when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write ``aggregate.json`` and ``aggregate.md`` into ``hydra.sweep.dir``."""
        aggregate_sweep(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m gur_lightning.sweep SWEEP_DIR``: aggregate a finished sweep folder."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m gur_lightning.sweep SWEEP_DIR")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    aggregate_sweep(argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
