"""Sweep aggregation (mean ± std over jobs) and the RegDB trial sweep config."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from gur_lightning.config import register_configs
from gur_lightning.sweep import aggregate_sweep
from gur_lightning.train import CONF_DIR


def test_aggregate_sweep_means_and_stds(tmp_path):
    jobs = {"0": 0.2, "1": 0.4, "2": 0.9}
    for name, value in jobs.items():
        (tmp_path / name).mkdir()
        metrics = {"test/regdb_v2t/mAP": value, "test/regdb_v2t/rank1": 2 * value / 3}
        if name != "2":
            metrics["only/some"] = 1.0  # not in every job: left out
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "3").mkdir()  # a job that did not finish: no metrics.json
    result = aggregate_sweep(tmp_path)
    assert result["jobs"] == ["0", "1", "2"]
    assert result["mean"]["test/regdb_v2t/mAP"] == pytest.approx(0.5)
    # population std of (0.2, 0.4, 0.9) = sqrt(((0.3)^2 + (0.1)^2 + (0.4)^2) / 3)
    assert result["std"]["test/regdb_v2t/mAP"] == pytest.approx((0.26 / 3) ** 0.5)
    assert "only/some" not in result["mean"]
    assert json.loads((tmp_path / "aggregate.json").read_text()) == result
    table = (tmp_path / "aggregate.md").read_text()
    assert "regdb_v2t" in table and "50.00" in table


def test_aggregate_without_jobs_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        aggregate_sweep(tmp_path)


def test_regdb_trials_sweep_composes():
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["+experiment=regdb", "+sweep=regdb_trials", "data.root=/x"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.params["data.trial"] == "range(1,11)"
    assert cfg.hydra.callbacks.aggregate._target_ == "gur_lightning.sweep.AggregateMetrics"
