"""Smoke test of the training benchmark: one JSON line, figures consistent with each other."""

from __future__ import annotations

import json

import pytest

from gur_lightning.bench import training

pytestmark = pytest.mark.filterwarnings("ignore")


def test_training_bench_prints_one_consistent_json_line(capsys):
    argv = ["--height", "32", "--width", "16", "--visible", "2", "--infrared", "3"]
    argv += ["--clusters", "4", "--steps", "2", "--warmup", "1", "--rounds", "1"]
    record = training.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert record["images_per_step"] == 2 * 2 + 3
    assert record["measured_steps_each"] == 2
    for key in ("lightning_img_per_s", "plain_img_per_s", "lightning_img_per_cpu_s"):
        assert record[key] > 0
    cpu_ratio = record["plain_img_per_cpu_s"] / record["lightning_img_per_cpu_s"]
    assert record["overhead_pct"] == pytest.approx(100 * (cpu_ratio - 1), abs=0.5)
    assert record["meets_target"] == (record["overhead_pct"] <= 5.0)


def test_training_bench_rejects_bad_counts():
    with pytest.raises(SystemExit):
        training.main(["--steps", "0"])


def test_replica_bench_prints_one_consistent_json_line(capsys):
    from gur_lightning.bench import replicas

    argv = ["--height", "32", "--width", "16", "--visible", "2", "--infrared", "4"]
    argv += ["--clusters", "4", "--steps", "2", "--warmup", "0", "--rounds", "1"]
    record = replicas.main([*argv, "--replicas", "4", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert record["images_per_step"] == 2 * 2 + 4 and record["measured_steps_each"] == 2
    ratio = record["cpu_step_s_rR"] / record["cpu_step_s_r1"]
    assert record["overhead_pct_cpu"] == pytest.approx(100 * (ratio - 1), abs=0.5)
    with pytest.raises(SystemExit):  # 2 x 2 visible rows do not split into 3 replicas
        replicas.main([*argv, "--replicas", "3"])
