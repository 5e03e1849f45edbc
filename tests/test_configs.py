"""Every experiment composes; typos and out-of-range values fail at composition, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from gur_lightning.config import ConfigError, register_configs, validate_config
from gur_lightning.train import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_expected_experiments_exist():
    assert {"sysu", "regdb", "llcm", "synvi", "synvi_regdb", "smoke"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name):
    cfg = _compose(f"+experiment={name}", "data.root=/data/x", "paths.data_dir=/tmp/x")
    validate_config(cfg)
    assert cfg.experiment == name


def test_misspelled_key_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        _compose("+experiment=regdb", "cluster.esp=0.5", "data.root=/x")
    assert "esp" in str(err.value)


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        _compose("+experiment=regdb", "data.height=tall", "data.root=/x")
    assert "height" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cluster.eps=0", "cluster.eps"),
        ("cluster.eps=-0.2", "cluster.eps"),
        ("cluster.kernels=cython", "cluster.kernels"),
        ("cluster.knn_backend=annoy", "cluster.knn_backend"),
        ("data.num_instances=48", "data.visible_batch_size"),
        ("data.trial=11", "data.trial"),
        ("model.memory.momentum=1.5", "model.memory.momentum"),
        ("schedule.epochs=0", "schedule.epochs"),
        ("data.augment.pad=-1", "data.augment.pad"),
        ("data.augment.erasing_p=1.5", "data.augment.erasing_p"),
        ("data.augment.intensity_remap_p=-0.1", "data.augment.intensity_remap_p"),
        ("data.augment.intensity_remap_knots=0", "data.augment.intensity_remap_knots"),
        ("+trainer.max_epochs=3", "trainer.max_epochs"),
    ],
)
def test_out_of_range_value_names_the_key(override, key):
    cfg = _compose("+experiment=regdb", "data.root=/x", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_sweep_override_of_interpolated_eps():
    cfg = _compose("+experiment=regdb", "data.root=/x", "cluster.eps=0.45")
    assert cfg.cluster.eps_inter_modality == 0.45


def test_cluster_engine_options_reach_the_reclustering_callback():
    from gur_lightning.train import build_reclustering

    cfg = _compose(
        "+experiment=regdb", "data.root=/x", "cluster.kernels=numpy", "cluster.knn_backend=torch"
    )
    validate_config(cfg)
    callback = build_reclustering(cfg, [])
    assert (callback.kernels, callback.knn_backend) == ("numpy", "torch")
