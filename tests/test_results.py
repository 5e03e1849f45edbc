"""The SynVI results table: seeds, paired differences, summary.json, reuse and --table-only."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from gur_lightning import results
from gur_lightning.results import ROWS, run_dir, write_table


def _metrics(rank1: float, mAP: float, within: bool = False) -> dict[str, float]:
    m = {
        "test/sysu_all/rank1": rank1,
        "test/sysu_all/rank1_std": 0.01,
        "test/sysu_all/mAP": mAP,
        "test/sysu_all/mAP_std": 0.005,
        "test/sysu_all/mINP": 0.125,
        "test/sysu_all/mINP_std": 0.0,
    }
    if within:
        m |= {"test/within_visible/mAP": 0.5, "test/within_infrared/mAP": 0.0625}
    return m


def _rows(*keys: str) -> list[results.Row]:
    return [r for r in ROWS if r.key in keys]


def test_table_gives_mean_and_std_over_seeds_and_paired_differences(tmp_path: Path) -> None:
    rows = _rows("raw_pixels", "gur")
    # Per-seed mAP: GUR 0.30, 0.20, 0.25; raw pixels 0.10, 0.10, 0.05.
    metrics = {
        "gur": {1: _metrics(0.5, 0.30), 2: _metrics(0.25, 0.20), 3: _metrics(0.25, 0.25)},
        "raw_pixels": {1: _metrics(0.0, 0.10), 2: _metrics(0.0, 0.10), 3: _metrics(0.0, 0.05)},
    }
    for seed, (vis, ir) in {1: (0.5, 0.25), 2: (0.75, 0.25), 3: (1.0, 0.25)}.items():
        folder = run_dir(tmp_path, "gur", seed)
        folder.mkdir(parents=True)
        history = [{"skipped": False, "visible/ari": vis, "infrared/ari": ir}]
        (folder / "clustering_history.json").write_text(json.dumps(history))
        (folder / "commit.txt").write_text(f"abc{seed}\n")
    table = write_table(tmp_path, rows, metrics, reference="gur")
    lines = table.splitlines()
    assert lines[0] == (
        "| method | seeds | rank-1 | mAP | mINP | last pseudo-label ARI "
        "| mAP: gur − row (paired) |"
    )
    # Raw pixels: mAP mean 8.33, sample std 2.89; differences 20, 10, 20 -> 16.7 ± 5.8.
    assert lines[2] == (
        "| raw pixels (flattened, cosine) | 1,2,3 | 0.0 ± 0.0 | 8.3 ± 2.9 | 12.5 ± 0.0 | — "
        "| 16.7 ± 5.8 |"
    )
    # GUR: rank-1 (50, 25, 25) -> 33.3 ± 14.4; mAP 25.0 ± 5.0; ARI 0.75 ± 0.25 / 0.25 ± 0.
    assert lines[3] == (
        "| GUR (recipe=fixed) | 1,2,3 | 33.3 ± 14.4 | 25.0 ± 5.0 | 12.5 ± 0.0 "
        "| 0.750 ± 0.250 / 0.250 ± 0.000 | — |"
    )
    assert statistics.stdev([20.0, 10.0, 20.0]) == pytest.approx(5.77, abs=0.01)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"]["gur"]["seeds"]["2"] == {
        "rank1": 0.25,
        "mAP": 0.20,
        "last_ari": {"visible": 0.75, "infrared": 0.25},
        "commit": "abc2",
    }
    assert summary["rows"]["raw_pixels"]["seeds"]["3"]["commit"] == "unknown"


def test_optional_columns_appear_only_when_the_rows_carry_them(tmp_path: Path) -> None:
    rows = _rows("raw_pixels", "gur_official")
    official = _metrics(0.25, 0.25, within=True) | {"test_selected_on_test/sysu_all/mAP": 0.5}
    metrics = {"raw_pixels": {1: _metrics(0.0, 0.1, True)}, "gur_official": {1: official}}
    header = write_table(tmp_path, rows, metrics, reference=None).splitlines()[0]
    assert "within-modality mAP (visible / infrared)" in header
    assert "mAP selected on test" in header and "paired" not in header
    lines = write_table(tmp_path, rows, metrics, reference=None).splitlines()
    assert lines[2].endswith("| 50.0 / 6.2 | — |")
    assert lines[3].endswith("| 50.0 / 6.2 | 50.0 ± 0.0 |")
    metrics["gur_official"][1].pop("test/within_visible/mAP")
    assert "within-modality" not in write_table(tmp_path, rows, metrics, reference=None)


def test_finished_runs_are_reused_and_table_only_rebuilds(tmp_path: Path, monkeypatch) -> None:
    for key in ("raw_pixels", "pretrained_start"):
        for seed in (1, 2):
            folder = run_dir(tmp_path, key, seed)
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(_metrics(0.5, 0.25 * seed)))

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(results, "prepare_data", lambda overrides: None)
    argv = ["--out", str(tmp_path), "--rows", "raw_pixels,pretrained_start", "--seeds", "2"]
    assert results.main(argv) == 0
    assert (
        "| SynVI pretrained start, no training | 1,2 | 50.0 ± 0.0 | 37.5 ± 17.7 |"
        in (tmp_path / "table.md").read_text()
    )
    assert results.main([*argv, "--table-only"]) == 0
    with pytest.raises(SystemExit, match=r"no metrics.json for \['raw_pixels/seed3'"):
        results.main([*argv[:-1], "3", "--table-only"])
    with pytest.raises(SystemExit, match="--seeds and --jobs must be >= 1"):
        results.main([*argv[:-1], "0"])


@pytest.mark.slow
def test_a_tiny_configuration_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """Two seeds of the feature baselines on a tiny tree, through real subprocesses."""
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    tiny = [
        "data.synvi.num_ids=24",
        "data.synvi.preset=easy",
        "eval.max_trials=2",
        "model.backbone.synvi_pretrain={num_ids:6,images_per_camera:1,epochs:1,batch_size:8}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    rows = "raw_pixels,pretrained_start"
    argv = ["--out", str(tmp_path / "out"), "--rows", rows, "--seeds", "2"]
    assert results.main([*argv, "--jobs", "2", *tiny]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    start = summary["rows"]["pretrained_start"]["seeds"]
    raw = summary["rows"]["raw_pixels"]["seeds"]
    # Raw pixels do not depend on the run's seed; the pretrained start is one file for every
    # seed (as ImageNet weights are), built once before the parallel runs, and only the
    # BN-neck's weights, drawn from N(1, 0.01) as in the reference, change with the seed.
    assert raw["1"]["mAP"] == raw["2"]["mAP"]
    assert start["1"]["mAP"] == pytest.approx(start["2"]["mAP"], abs=0.01)
    assert len(list((tmp_path / "data").glob("synvi_pretrain_*"))) == 1


def test_first_inter_camera_clustering_gives_ari_and_clusters_per_identity(
    tmp_path: Path,
) -> None:
    history = [
        {"skipped": False, "stage": "intra_camera", "visible/ari": 0.9},
        {"skipped": True, "stage": "inter_camera"},
        {
            "skipped": False,
            "stage": "inter_camera",
            "visible/ari": 0.4,
            "visible/num_clusters": 30.0,
            "visible/num_true_ids": 20.0,
            "infrared/ari": 0.6,
            "infrared/num_clusters": 21.0,
            "infrared/num_true_ids": 20.0,
        },
        {"skipped": False, "stage": "inter_camera", "visible/ari": 0.1},
    ]
    (tmp_path / "clustering_history.json").write_text(json.dumps(history))
    # The first non-skipped stage-2 record; 30 / 20 and 21 / 20 clusters per identity.
    assert results.first_modality_clustering(tmp_path) == {
        "visible": {"ari": 0.4, "clusters_per_id": 1.5},
        "infrared": {"ari": 0.6, "clusters_per_id": 1.05},
    }
    assert results.first_modality_clustering(tmp_path / "absent") == {}


def test_targets_are_judged_from_seed_means_and_the_paired_difference() -> None:
    def runs(*maps: float) -> dict[int, dict[str, float]]:
        return {s + 1: {"test/sysu_all/mAP": v} for s, v in enumerate(maps)}

    # Supervised mean 0.55 >= 0.50; GUR mean 0.40 >= 2/3 * 0.55 = 0.3667; GUR - ADCA per seed
    # 0.10, 0.12, 0.08 -> mean 0.10, sample std 0.02 -> 0.10 > 2 * 0.02.
    met = results.check_targets(
        {
            "supervised": runs(0.50, 0.60, 0.55),
            "gur": runs(0.40, 0.42, 0.38),
            "adca": runs(0.30, 0.30, 0.30),
        }
    )
    assert [t["met"] for t in met] == [True, True, True]
    assert met[2]["value"] == "10.0 ± 2.0 over seeds [1, 2, 3]"
    # ADCA per seed 0.25, 0.40, 0.30 -> differences 0.15, 0.02, 0.08: mean 0.0833, std 0.065;
    # 0.0833 < 0.13. GUR 0.40 < 2/3 of 0.66 = 0.44; supervised 0.66 >= 0.5.
    missed = results.check_targets(
        {
            "supervised": runs(0.66, 0.66, 0.66),
            "gur": runs(0.40, 0.42, 0.38),
            "adca": runs(0.25, 0.40, 0.30),
        }
    )
    assert [t["met"] for t in missed] == [True, False, False]
    # One seed gives no std: the margin cannot be judged as met.
    assert results.check_targets({"gur": runs(0.4), "adca": runs(0.1)})[0]["met"] is False
