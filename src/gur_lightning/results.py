"""The SynVI results table: every row of the README's benchmark table from one command.

    python -m gur_lightning.results --out results/synvi [--jobs 2] [--rows gur,adca] [--seeds 3]

Each row is a real run of ``gur_lightning.train`` (or ``gur_lightning.evaluate`` for the
feature baselines) on the SynVI tree in the SYSU-MM01 layout with the SYSU protocol, under the
same optimiser-step budget (370 steps, ±1 %), once per seed (``seed=1..S``: initialisation,
sampling and augmentation change, the data tree does not), each in its own subprocess and Hydra
folder ``--out/<row>/seed<S>``. A folder that already holds ``metrics.json`` is reused.

``table.md`` reports, per row, the mean ± std over seeds of the per-seed all-search rank-1, mAP
and mINP (each a mean over the ten gallery draws), the last pseudo-labelling's ARI against the
ground truth, the within-modality mAP when the rows ran with ``eval.within_modality=true``, the
reference's test-selected mAP when a row reports it (``recipe=official``), and a paired
comparison with the reference row (GUR by default): the mean and std over seeds of the per-seed
difference of mAP. ``summary.json`` holds every row's per-seed figures and the commit each ran
at. ``--table-only`` rebuilds both from finished folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gur_lightning.callbacks.validation import SELECTED_ON_TEST_PREFIX
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Row:
    """One row: a name, the entry point and its overrides on top of ``+experiment=synvi``."""

    key: str
    title: str
    module: str
    overrides: tuple[str, ...] = ()


#: GUR's synvi schedule takes 370 steps; single-stage methods get 4 x 92 = 368.
ROWS: tuple[Row, ...] = (
    Row("raw_pixels", "raw pixels (flattened, cosine)", "evaluate", ("features=raw_pixels",)),
    Row(
        "pretrained_start",
        "SynVI pretrained start, no training",
        "evaluate",
        ("features=untrained",),
    ),
    Row(
        "adca",
        "ADCA-style ADC (no bottom-up stages)",
        "train",
        ("method=adca", "schedule.inter_camera.iterations=92"),
    ),
    Row("gur", "GUR (recipe=fixed)", "train"),
    Row("gur_bn4", "GUR, DataParallel BatchNorm R = 4", "train", ("model.bn_replicas=4",)),
    Row(
        "gur_official",
        "GUR, recipe=official (R = 4, legacy CAE slicing, fp32)",
        "train",
        ("recipe=official",),
    ),
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


#: Rows of ``make results`` (the README's main table); the recipe rows have their own table.
DEFAULT_ROWS: tuple[str, ...] = (
    "raw_pixels",
    "pretrained_start",
    "adca",
    "gur",
    "gur_official",
    "gur_no_intra",
    "gur_no_cae",
    "gur_no_cmlu",
    "supervised",
)
#: Metric keys of the within-modality diagnostic (``eval.within_modality=true``).
WITHIN_KEYS = ("test/within_visible/mAP", "test/within_infrared/mAP")
#: The all-search figures of the table, per seed.
MAIN_METRICS = ("rank1", "mAP", "mINP")


def run_dir(out: Path, key: str, seed: int) -> Path:
    """The Hydra folder of one row and seed."""
    return out / key / f"seed{seed}"


def _commit() -> str:
    """The commit the runs are made at (``-dirty``: uncommitted changes; else ``unknown``)."""
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return proc.stdout.strip()


def prepare_data(overrides: list[str]) -> None:
    """Build the SynVI tree and the pretrained start once, before parallel runs race to."""
    from hydra import compose, initialize_config_dir

    from gur_lightning.config import register_configs
    from gur_lightning.train import CONF_DIR, build_datamodule, pretrained_weights

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=synvi", *overrides])
    build_datamodule(cfg).prepare_data()
    pretrained_weights(cfg)


def _run(row: Row, seed: int, out: Path, extra: list[str], threads: int) -> dict[str, float]:
    folder = run_dir(out, row.key, seed)
    if (folder / "metrics.json").is_file():
        log.info("%s seed %d: reusing %s", row.key, seed, folder)
        return json.loads((folder / "metrics.json").read_text())
    cmd = [
        sys.executable,
        "-m",
        f"gur_lightning.{row.module}",
        "+experiment=synvi",
        *row.overrides,
        *extra,
        f"seed={seed}",
        f"hydra.run.dir={folder}",
        "trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    log.info("%s seed %d: %s", row.key, seed, " ".join(cmd[2:]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "commit.txt").write_text(_commit() + "\n")
    with open(folder / "stdout.log", "w") as stream:
        proc = subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"row {row.key} seed {seed} failed (exit {proc.returncode}); see {folder}"
        )
    return json.loads((folder / "metrics.json").read_text())


def last_ari(folder: Path) -> dict[str, float]:
    """ARI of the last successful clustering: ``{"joint"}`` or ``{"visible", "infrared"}``."""
    path = folder / "clustering_history.json"
    if not path.is_file():
        return {}
    done = [h for h in json.loads(path.read_text()) if not h["skipped"]]
    if not done:
        return {}
    last = done[-1]
    if "ari" in last:
        return {"joint": float(last["ari"])}
    return {m: float(last[f"{m}/ari"]) for m in ("visible", "infrared")}


def first_modality_clustering(folder: Path) -> dict[str, dict[str, float]]:
    """Per-modality quality of a run's first inter-camera (per-modality) clustering.

    The first stage-2 clustering shows what the data and the starting point give before
    CMLU relabels visible images from infrared clusters (docs/synthetic.md, "Calibration
    against the real data"): its ARI against the hidden identities and its number of clusters
    per identity present, per modality.

    Args:
        folder: A run folder holding ``clustering_history.json``.

    Returns:
        ``{modality: {"ari": ..., "clusters_per_id": ...}}``; empty when the run has no such
        clustering (evaluation rows, single-stage methods).
    """
    path = folder / "clustering_history.json"
    if not path.is_file():
        return {}
    for record in json.loads(path.read_text()):
        if record.get("skipped") or record.get("stage") != "inter_camera":
            continue
        out = {}
        for m in ("visible", "infrared"):
            if f"{m}/ari" in record and record.get(f"{m}/num_true_ids"):
                out[m] = {
                    "ari": float(record[f"{m}/ari"]),
                    "clusters_per_id": float(record[f"{m}/num_clusters"])
                    / float(record[f"{m}/num_true_ids"]),
                }
        return out
    return {}


#: The table's targets (SYSU layout, all-search mAP, means over seeds): the supervised bound's
#: floor, GUR's share of it, and how many stds of the paired difference GUR must beat ADCA by.
SUPERVISED_FLOOR = 0.50
GUR_SHARE_OF_SUPERVISED = 2.0 / 3.0
GUR_OVER_ADCA_STDS = 2.0


def check_targets(metrics: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, object]]:
    """Each target the rows present allow to judge: its statement, the figures and the verdict.

    Args:
        metrics: Row key -> seed -> the run's ``metrics.json``.

    Returns:
        One entry per target (``target``, ``value``, ``met``), for whichever of the rows
        ``supervised``, ``gur`` and ``adca`` are present.
    """
    key = "test/sysu_all/mAP"

    def mean(row: str) -> float:
        return statistics.fmean(m[key] for m in metrics[row].values())

    out: list[dict[str, object]] = []
    if "supervised" in metrics:
        sup = mean("supervised")
        out.append(
            {
                "target": f"supervised bound mAP >= {100 * SUPERVISED_FLOOR:.0f}",
                "value": f"{100 * sup:.1f}",
                "met": sup >= SUPERVISED_FLOOR,
            }
        )
        if "gur" in metrics:
            gur = mean("gur")
            out.append(
                {
                    "target": "GUR mAP >= 2/3 of the supervised bound's",
                    "value": f"{100 * gur:.1f} vs {100 * GUR_SHARE_OF_SUPERVISED * sup:.1f} "
                    f"({gur / sup:.0%} of it)",
                    "met": gur >= GUR_SHARE_OF_SUPERVISED * sup,
                }
            )
    if "gur" in metrics and "adca" in metrics:
        common = sorted(set(metrics["gur"]) & set(metrics["adca"]))
        diffs = [metrics["gur"][s][key] - metrics["adca"][s][key] for s in common]
        d_mean, d_std = _mean_std(diffs)
        out.append(
            {
                "target": f"GUR − ADCA (paired mAP) > {GUR_OVER_ADCA_STDS:g} × its std over seeds",
                "value": f"{100 * d_mean:.1f} ± {100 * d_std:.1f} over seeds {common}",
                "met": len(diffs) > 1 and d_mean > GUR_OVER_ADCA_STDS * d_std,
            }
        )
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = _mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_table(
    out: Path,
    rows: list[Row],
    metrics: dict[str, dict[int, dict[str, float]]],
    *,
    reference: str | None = "gur",
) -> str:
    """Render ``table.md`` and ``summary.json`` from every row's per-seed metrics.

    Args:
        out: The results folder (``<row>/seed<S>`` run folders below it).
        rows: The rows, in table order.
        metrics: Row key -> seed -> the run's ``metrics.json``.
        reference: Row every other row is paired with (mean ± std over the seeds both have of
            the per-seed mAP difference, reference minus row); None or absent: no column.

    Returns:
        The table.
    """
    seeds = {r.key: sorted(metrics[r.key]) for r in rows}
    within = all(all(k in m for k in WITHIN_KEYS) for r in rows for m in metrics[r.key].values())
    selected_key = f"{SELECTED_ON_TEST_PREFIX}/sysu_all/mAP"
    selected = any(selected_key in m for r in rows for m in metrics[r.key].values())
    paired = reference is not None and reference in metrics and len(rows) > 1
    header = "| method | seeds | rank-1 | mAP | mINP | last pseudo-label ARI |"
    if within:
        header += " within-modality mAP (visible / infrared) |"
    if selected:
        header += " mAP selected on test (reference's reporting) |"
    if paired:
        header += f" mAP: {reference} − row (paired) |"
    lines = [header, "|" + "---|" * header.count(" |")]
    summary: dict[str, object] = {"reference": reference, "rows": {}}
    for row in rows:
        per_seed = [metrics[row.key][s] for s in seeds[row.key]]
        cells = [row.title, ",".join(str(s) for s in seeds[row.key])]
        cells += [_pm([m[f"test/sysu_all/{name}"] for m in per_seed]) for name in MAIN_METRICS]
        aris = [last_ari(run_dir(out, row.key, s)) for s in seeds[row.key]]
        if any(aris):
            parts = sorted(
                {k for a in aris for k in a}, key=("visible", "infrared", "joint").index
            )
            cells.append(" / ".join(_pm([a[p] for a in aris if p in a], 1.0, 3) for p in parts))
        else:
            cells.append("—")
        if within:
            cells.append(
                " / ".join(
                    f"{statistics.fmean(100 * m[k] for m in per_seed):.1f}" for k in WITHIN_KEYS
                )
            )
        if selected:
            values = [m[selected_key] for m in per_seed if selected_key in m]
            cells.append(_pm(values) if values else "—")
        if paired:
            assert reference is not None
            common = sorted(set(seeds[row.key]) & set(seeds[reference]))
            if row.key == reference or not common:
                cells.append("—")
            else:
                cells.append(
                    _pm(
                        [
                            metrics[reference][s]["test/sysu_all/mAP"]
                            - metrics[row.key][s]["test/sysu_all/mAP"]
                            for s in common
                        ]
                    )
                )
        lines.append("| " + " | ".join(cells) + " |")
        summary["rows"][row.key] = {  # type: ignore[index]
            "title": row.title,
            "seeds": {
                str(s): {
                    "rank1": metrics[row.key][s]["test/sysu_all/rank1"],
                    "mAP": metrics[row.key][s]["test/sysu_all/mAP"],
                    "last_ari": last_ari(run_dir(out, row.key, s)),
                    "commit": _read_commit(run_dir(out, row.key, s)),
                }
                for s in seeds[row.key]
            },
        }
    table = "\n".join(lines) + "\n"
    reliability = [
        (row, [first_modality_clustering(run_dir(out, row.key, s)) for s in seeds[row.key]])
        for row in rows
    ]
    reliability = [(row, [c for c in clusterings if c]) for row, clusterings in reliability]
    reliability = [(row, clusterings) for row, clusterings in reliability if clusterings]
    if reliability:
        table += (
            "\nFirst inter-camera clustering, per modality (mean ± std over seeds):\n\n"
            "| method | ARI visible | ARI infrared | clusters per identity visible "
            "| clusters per identity infrared |\n|---|---|---|---|---|\n"
        )
        for row, clusterings in reliability:
            cells = [row.title]
            for field, scale, digits in (("ari", 1.0, 3), ("clusters_per_id", 1.0, 2)):
                for m in ("visible", "infrared"):
                    values = [c[m][field] for c in clusterings if m in c]
                    cells.append(_pm(values, scale, digits) if values else "—")
            table += "| " + " | ".join(cells) + " |\n"
        for row, clusterings in reliability:
            summary["rows"][row.key]["first_inter_camera"] = clusterings  # type: ignore[index]
    targets = check_targets({r.key: metrics[r.key] for r in rows})
    if targets:
        table += "\nTargets:\n\n" + "".join(
            f"- {t['target']}: {t['value']} — {'met' if t['met'] else 'NOT met'}\n"
            for t in targets
        )
        summary["targets"] = targets
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return table


def _read_commit(folder: Path) -> str:
    path = folder / "commit.txt"
    return path.read_text().strip() if path.is_file() else "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the rows over the seeds (in parallel lanes with ``--jobs``) and write the table."""
    parser = argparse.ArgumentParser(prog="python -m gur_lightning.results")
    parser.add_argument("--out", type=Path, default=Path("results/synvi"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..S of every row")
    parser.add_argument(
        "--reference", default="gur", help="row the paired differences are taken against"
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild table.md and summary.json from finished folders instead of running",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
    wanted = args.rows.split(",")
    unknown = set(wanted) - {r.key for r in ROWS}
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; known: {[r.key for r in ROWS]}")
    rows = [r for r in ROWS if r.key in wanted]
    runs = [(r, s) for s in range(1, args.seeds + 1) for r in rows]
    if args.table_only:
        missing = [
            f"{r.key}/seed{s}"
            for r, s in runs
            if not (run_dir(args.out, r.key, s) / "metrics.json").is_file()
        ]
        if missing:
            raise SystemExit(f"--table-only: no metrics.json for {missing} under {args.out}")
        results = [
            json.loads((run_dir(args.out, r.key, s) / "metrics.json").read_text()) for r, s in runs
        ]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        prepare_data(args.overrides)
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(
                pool.map(lambda rs: _run(rs[0], rs[1], args.out, args.overrides, threads), runs)
            )
    metrics: dict[str, dict[int, dict[str, float]]] = {r.key: {} for r in rows}
    for (row, seed), m in zip(runs, results, strict=True):
        metrics[row.key][seed] = m
    reference = args.reference if args.reference in metrics else None
    table = write_table(args.out, rows, metrics, reference=reference)
    log.info("SynVI (SYSU layout, all-search, %%, mean ± std over seeds):\n%s", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
