"""The SynVI results table: every row of the README's benchmark table from one command.

    python -m gur_lightning.results --out results/synvi [--jobs 2] [--rows gur,adca]

Each row is a real run of ``gur_lightning.train`` (or ``gur_lightning.evaluate`` for the
feature baselines) on the SynVI tree in the SYSU-MM01 layout with the SYSU protocol, under the
same optimiser-step budget (740 steps, ±1 %), in its own subprocess and Hydra folder under
``--out``. The table (``table.md``) reports all-search rank-1, mAP and mINP over the ten gallery
draws, the last pseudo-labelling's ARI against the ground truth and, when the rows ran with
``eval.within_modality=true``, the within-modality mAP. ``--table-only`` rebuilds the table from
finished folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Row:
    """One row: a name, the entry point and its overrides on top of ``+experiment=synvi``."""

    key: str
    title: str
    module: str
    overrides: tuple[str, ...] = ()


#: GUR's synvi schedule takes 740 steps; single-stage methods get 8 x 92 = 736.
ROWS: tuple[Row, ...] = (
    Row("raw_pixels", "raw pixels (flattened, cosine)", "evaluate", ("features=raw_pixels",)),
    Row("untrained", "untrained network", "evaluate", ("features=untrained",)),
    Row(
        "adca",
        "ADCA-style ADC (no bottom-up stages)",
        "train",
        ("method=adca", "schedule.inter_camera.iterations=92"),
    ),
    Row("gur", "GUR", "train"),
    Row(
        "gur_no_intra",
        "GUR without the intra-camera stage",
        "train",
        ("schedule.intra_camera.enabled=false", "schedule.inter_camera.iterations=70"),
    ),
    Row(
        "gur_no_cae",
        "GUR without CAE",
        "train",
        ("schedule.inter_camera.camera_cae=false", "schedule.inter_modality.modality_cae=false"),
    ),
    Row("gur_no_cmlu", "GUR without CMLU", "train", ("schedule.cmlu.enabled=false",)),
    Row(
        "supervised",
        "supervised upper bound (ground-truth labels)",
        "train",
        ("method=supervised", "schedule.inter_camera.iterations=92"),
    ),
)


def _run(row: Row, out: Path, extra: list[str], threads: int) -> dict[str, float]:
    run_dir = out / row.key
    cmd = [
        sys.executable,
        "-m",
        f"gur_lightning.{row.module}",
        "+experiment=synvi",
        *row.overrides,
        *extra,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    log.info("%s: %s", row.key, " ".join(cmd[2:]))
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "w") as stream:
        proc = subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"row {row.key} failed (exit {proc.returncode}); see {run_dir}")
    return json.loads((run_dir / "metrics.json").read_text())


def _last_ari(run_dir: Path) -> str:
    path = run_dir / "clustering_history.json"
    if not path.is_file():
        return "—"
    done = [h for h in json.loads(path.read_text()) if not h["skipped"]]
    if not done:
        return "—"
    last = done[-1]
    if "ari" in last:
        return f"{last['ari']:.3f}"
    return f"{last['visible/ari']:.3f} / {last['infrared/ari']:.3f}"


#: Metric keys of the within-modality diagnostic (``eval.within_modality=true``).
WITHIN_KEYS = ("test/within_visible/mAP", "test/within_infrared/mAP")


def write_table(out: Path, rows: list[Row], metrics: dict[str, dict[str, float]]) -> str:
    """Render ``table.md`` from the rows' metrics (percent, mean ± std over gallery draws).

    When every row carries the within-modality diagnostic, a column gives its visible and
    infrared mAP (every test image of a modality queries the others of that modality).
    """
    within = all(all(k in metrics[r.key] for k in WITHIN_KEYS) for r in rows)
    header = "| method | rank-1 | mAP | mINP | last pseudo-label ARI |"
    rule = "|---|---|---|---|---|"
    if within:
        header += " within-modality mAP (visible / infrared) |"
        rule += "---|"
    lines = [header, rule]
    for row in rows:
        m = metrics[row.key]

        def cell(name: str, m: dict[str, float] = m) -> str:
            mean = 100 * m[f"test/sysu_all/{name}"]
            std = 100 * m[f"test/sysu_all/{name}_std"]
            return f"{mean:.1f} ± {std:.1f}"

        line = (
            f"| {row.title} | {cell('rank1')} | {cell('mAP')} | {cell('mINP')} | "
            f"{_last_ari(out / row.key)} |"
        )
        if within:
            vis, ir = (100 * m[k] for k in WITHIN_KEYS)
            line += f" {vis:.1f} / {ir:.1f} |"
        lines.append(line)
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the rows (in parallel lanes with ``--jobs``) and write ``table.md``."""
    parser = argparse.ArgumentParser(prog="python -m gur_lightning.results")
    parser.add_argument("--out", type=Path, default=Path("results/synvi"))
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once")
    parser.add_argument("--rows", default=",".join(r.key for r in ROWS))
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild table.md from the rows' finished folders instead of running them",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    wanted = args.rows.split(",")
    unknown = set(wanted) - {r.key for r in ROWS}
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; known: {[r.key for r in ROWS]}")
    rows = [r for r in ROWS if r.key in wanted]
    if args.table_only:
        missing = [r.key for r in rows if not (args.out / r.key / "metrics.json").is_file()]
        if missing:
            raise SystemExit(f"--table-only: no metrics.json for rows {missing} under {args.out}")
        results = [json.loads((args.out / r.key / "metrics.json").read_text()) for r in rows]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda r: _run(r, args.out, args.overrides, threads), rows))
    table = write_table(args.out, rows, {r.key: m for r, m in zip(rows, results, strict=True)})
    log.info("SynVI (SYSU layout, all-search, %%):\n%s", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
