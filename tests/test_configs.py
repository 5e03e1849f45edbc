"""Every experiment composes; typos and out-of-range values fail at composition, naming the key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from gur_lightning.clustering import JaccardOptions, dbscan_labels
from gur_lightning.clustering.policy import ClusterOptions
from gur_lightning.config import (
    ClusterConfig,
    ConfigError,
    DataConfig,
    SynVITreeConfig,
    register_configs,
    validate_config,
)
from gur_lightning.synvi import generate_synvi
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
        ("eval.max_trials=0", "eval.max_trials"),
    ],
)
def test_out_of_range_value_names_the_key(override, key):
    cfg = _compose("+experiment=regdb", "data.root=/x", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_unknown_data_set_lists_the_registry_names():
    cfg = _compose("+experiment=regdb", "data.root=/x", "data.name=market")
    with pytest.raises(ConfigError, match=r"data\.name='market'.*\('sysu', 'regdb', 'llcm'\)"):
        validate_config(cfg)


def test_synvi_node_defaults_are_the_generators():
    """``data.synvi`` selects a tree with generate_synvi's own defaults, for data.name's layout."""
    generator = inspect.signature(generate_synvi).parameters
    node = SynVITreeConfig()
    assert node.seed == generator["seed"].default == 0
    assert node.num_ids is generator["num_ids"].default is None
    assert node.preset == generator["preset"].default == "default"
    assert node.layout == DataConfig().name == "sysu"


def test_cluster_defaults_are_the_pseudo_label_librarys():
    """The schema, the callback and the library agree, on the reference's values (§7.2-7.3)."""
    cluster, jaccard = ClusterConfig(), JaccardOptions()
    assert (cluster.k1, cluster.k2) == (jaccard.k1, jaccard.k2) == (30, 6)
    assert (cluster.knn_backend, cluster.kernels) == (jaccard.knn.backend, jaccard.knn.kernels)
    assert cluster.kernels == "auto" and cluster.knn_backend == "auto"
    assert (
        cluster.min_samples == inspect.signature(dbscan_labels).parameters["min_samples"].default
    )
    assert cluster.min_samples == 4
    policy = ClusterOptions()
    for key in ("min_samples", "k1", "k2", "knn_backend", "kernels"):
        assert getattr(policy, key) == getattr(cluster, key), key


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
    assert (callback.options.kernels, callback.options.knn_backend) == ("numpy", "torch")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+cluster.esp=0.5", "cluster.esp"),
        ("+model.lerning_rate=0.1", "model.lerning_rate"),
        ("+data.augment.flip=0.2", "data.augment.flip"),
        ("+seeed=3", "seeed"),
    ],
)
def test_key_added_with_plus_is_checked_against_the_schema(override, key):
    cfg = _compose("+experiment=regdb", "data.root=/x", override)
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
        validate_config(cfg)


def test_legitimate_plus_overrides_still_validate():
    # Config groups added with + and the free-form trainer node accept what they always did.
    cfg = _compose(
        "+experiment=regdb", "data.root=/x", "+sweep=regdb_trials", "+trainer.benchmark=true"
    )
    validate_config(cfg)
    assert cfg.trainer.benchmark is True


def test_evaluate_only_keys_are_refused_by_training_with_a_hint():
    cfg = _compose("+experiment=regdb", "data.root=/x", "+ckpt=/runs/last.ckpt")
    with pytest.raises(ConfigError, match=r"'ckpt'.*ckpt_path=.*gur_lightning\.evaluate"):
        validate_config(cfg)
    with pytest.raises(ConfigCompositionException, match="ckpt"):
        _compose("+experiment=regdb", "data.root=/x", "ckpt=/runs/last.ckpt")


def test_train_command_line_with_ckpt_names_the_alternatives(monkeypatch):
    from gur_lightning import train as train_mod

    def fail_main() -> None:  # Hydra must not even compose
        raise AssertionError("main() ran")

    monkeypatch.setattr(train_mod, "main", fail_main)
    monkeypatch.setattr("sys.argv", ["train", "+experiment=smoke", "ckpt=/runs/last.ckpt"])
    with pytest.raises(SystemExit) as err:
        train_mod.cli()
    message = str(err.value.code)
    assert "ckpt=" in message and "ckpt_path=" in message and "gur_lightning.evaluate" in message


def test_eval_config_has_its_own_schema_with_ckpt_and_features():
    from gur_lightning.config import EvalRunConfig, TrainConfig

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=["+experiment=regdb", "data.root=/x", "ckpt=/a.ckpt"])
    assert OmegaConf.get_type(cfg) is EvalRunConfig
    assert (cfg.ckpt, cfg.features, cfg.task_name) == ("/a.ckpt", "model", "eval")
    # The experiment's values survive the schema swap.
    assert cfg.data.name == "regdb" and cfg.experiment == "regdb"
    validate_config(cfg, EvalRunConfig)
    assert "ckpt" not in _compose("+experiment=regdb", "data.root=/x")
    assert OmegaConf.get_type(_compose("+experiment=regdb", "data.root=/x")) is TrainConfig


def test_no_experiment_is_a_one_line_hint_listing_the_experiments():
    from gur_lightning.train import main

    cfg = _compose("paths.output_dir=/tmp/unused")
    with pytest.raises(SystemExit) as err:
        main(cfg)
    message = str(err.value.code)
    assert err.value.code not in (0, None)
    assert "\n" not in message
    for name in EXPERIMENTS:
        assert f"+experiment={name}" in message
