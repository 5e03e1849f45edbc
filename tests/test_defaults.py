"""One source per setting: schema defaults, constructor defaults, YAML files and the builders."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from gur_lightning.clustering import cmlu
from gur_lightning.clustering.cae import cae_embedding
from gur_lightning.clustering.policy import ClusterOptions
from gur_lightning.config import (
    AugmentConfig,
    BackboneConfig,
    ClusterConfig,
    DataConfig,
    EvalRunConfig,
    MemoryConfig,
    ModelConfig,
    constructor_kwargs,
)
from gur_lightning.data.datamodule import VIReIDDataModule
from gur_lightning.data.transforms import build_train_transform
from gur_lightning.models import DualStreamResNet, GURLitModule
from gur_lightning.models.memory import ClusterMemory
from gur_lightning.schedule import CMLUConfig, ScheduleConfig
from gur_lightning.train import CONF_DIR, build_datamodule, build_module, build_reclustering
from tests.helpers import compose_config


def _defaults(target: Any) -> dict[str, Any]:
    """Parameter -> default of a callable (parameters without a default left out)."""
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


# The reference's values (docs/method.md §3-12), written out here: the schema, the constructor
# and this table must agree on every one.
REFERENCE: list[tuple[Any, Any, dict[str, str], dict[str, Any]]] = [
    (
        DataConfig,
        VIReIDDataModule,
        {},
        {
            "trial": 1,
            "height": 288,
            "width": 144,
            "num_instances": 16,
            "visible_batch_size": 128,
            "infrared_batch_size": 256,
            "num_workers": 4,
            "eval_batch_size": 64,
            "shrink_batch": True,
            "min_identities": 2,
        },
    ),
    (
        AugmentConfig,
        build_train_transform,
        {},
        {
            "pad": 10,
            "flip_p": 0.5,
            "erasing_p": 0.5,
            "adap_gray_p": 0.5,
            "intensity_remap_p": 0.0,
            "intensity_remap_knots": 4,
        },
    ),
    (BackboneConfig, DualStreamResNet, {}, {"depth": 50, "last_stride": 1, "gem_p": 3.0}),
    (
        MemoryConfig,
        GURLitModule,
        {"momentum": "memory_momentum", "update_mode": "memory_update"},
        {"temperature": 0.05, "momentum": 0.1, "update_mode": "mean"},
    ),
    (
        MemoryConfig,
        ClusterMemory,
        {},
        {"temperature": 0.05, "momentum": 0.1, "update_mode": "mean"},
    ),
    (
        ModelConfig,
        GURLitModule,
        {},
        {
            "lr": 3.5e-4,
            "weight_decay": 5e-4,
            "loss_weight_visible": 1.0,
            "loss_weight_infrared": 1.0,
        },
    ),
    (ModelConfig, DualStreamResNet, {}, {"bn_replicas": 1}),
    (ScheduleConfig, GURLitModule, {}, {"lr_step_size": 20, "lr_gamma": 0.1}),
    (CMLUConfig, ClusterOptions, {"topk": "cmlu_topk"}, {"topk": 20}),
    (CMLUConfig, cmlu, {}, {"topk": 20}),
    (
        ClusterConfig,
        ClusterOptions,
        {},
        {
            "eps": 0.6,
            "eps_intra_camera": 0.55,
            "min_samples": 4,
            "k1": 30,
            "k2": 6,
            "knn_backend": "auto",
            "kernels": "auto",
            "cae_temperature": 0.05,
        },
    ),
    (ClusterConfig, cae_embedding, {"cae_temperature": "temperature"}, {"cae_temperature": 0.05}),
]


@pytest.mark.parametrize(
    ("schema", "target", "rename", "reference"),
    REFERENCE,
    ids=[f"{s.__name__}-{getattr(t, '__name__', t)}" for s, t, _, _ in REFERENCE],
)
def test_schema_and_constructor_share_the_reference_defaults(schema, target, rename, reference):
    node, params = schema(), _defaults(target)
    for key, value in reference.items():
        assert getattr(node, key) == value, f"{schema.__name__}.{key}"
        assert params[rename.get(key, key)] == value, f"{target.__name__}({key})"


def test_eps_inter_modality_defaults_to_eps_in_the_schema_and_the_options():
    cfg = OmegaConf.merge(OmegaConf.structured(ClusterConfig), {"eps": 0.3})
    assert cfg.eps_inter_modality == 0.3  # follows eps, resolved when read
    cfg = OmegaConf.merge(cfg, {"eps_inter_modality": 0.5})
    assert (cfg.eps, cfg.eps_inter_modality) == (0.3, 0.5)
    radii = ClusterOptions(eps=0.3)
    assert [radii.eps_of(s) for s in ("intra_camera", "inter_camera", "inter_modality")] == [
        0.55,
        0.3,
        0.3,
    ]
    assert ClusterOptions(eps=0.3, eps_inter_modality=0.5).eps_of("inter_modality") == 0.5


def test_constructor_kwargs_maps_fields_by_name_and_refuses_unwired_ones():
    def target(a: int, *, b_param: str = "x", c: float = 1.0) -> None:
        del a, b_param, c

    assert constructor_kwargs({"a": 1, "b": "y"}, target, rename={"b": "b_param"}) == {
        "a": 1,
        "b_param": "y",
    }
    assert constructor_kwargs({"a": 1, "skip": 2}, target, exclude=("skip",)) == {"a": 1}
    with pytest.raises(TypeError, match=r"config field 'b' has no parameter 'b' in .*target"):
        constructor_kwargs({"a": 1, "b": "y"}, target)
    # Nested nodes arrive as plain containers, interpolations resolved.
    node = OmegaConf.create({"a": {"x": [1, 2]}, "c": "${.d}", "d": 2.0})
    assert constructor_kwargs(node, target, exclude=("d",)) == {"a": {"x": [1, 2]}, "c": 2.0}


def _recorder(real: Any, seen: dict[str, Any]) -> Any:
    """A stand-in for ``real`` with its signature that records the keyword arguments it gets."""

    def record(*args: Any, **kwargs: Any) -> str:
        seen.update(kwargs)
        return real.__name__

    record.__signature__ = inspect.signature(real)  # type: ignore[attr-defined]
    return record


def _field_names(schema: Any) -> set[str]:
    return {f.name for f in fields(schema)}


def test_every_data_field_reaches_the_data_module(monkeypatch):
    seen: dict[str, Any] = {}
    monkeypatch.setattr("gur_lightning.train.VIReIDDataModule", _recorder(VIReIDDataModule, seen))
    cfg = compose_config("+experiment=smoke", "seed=7", "recipe=official")
    build_datamodule(cfg)
    assert set(seen) == _field_names(DataConfig) - {"check"} | {"seed", "bn_replicas"}
    assert (seen["seed"], seen["bn_replicas"]) == (7, 4)
    # synvi_sysu's remap, the smoke experiment's pad, the schema's defaults for the rest.
    assert seen["augment"] == {
        "pad": 1,
        "flip_p": 0.5,
        "erasing_p": 0.5,
        "adap_gray_p": 0.5,
        "intensity_remap_p": 0.5,
        "intensity_remap_knots": 4,
    }
    assert seen["synvi"] == {"layout": "sysu", "seed": 0, "num_ids": 24, "preset": "easy"}
    assert (seen["height"], seen["eval_batch_size"]) == (32, 64)  # the smoke experiment's


def test_every_model_field_reaches_the_module(monkeypatch):
    import gur_lightning.models as models

    seen: dict[str, dict[str, Any]] = {"DualStreamResNet": {}, "GURLitModule": {}}
    for real in (DualStreamResNet, GURLitModule):
        recorder = _recorder(real, seen[real.__name__])
        monkeypatch.setattr(models, real.__name__, recorder, raising=False)
    cfg = compose_config(
        "+experiment=smoke", "model.memory.update_mode=hard", "schedule.lr_gamma=0.5"
    )
    build_module(cfg)
    # synvi_pretrain is read by the pretrained start, which turns `pretrained=synvi` into a file.
    assert set(seen["DualStreamResNet"]) == (
        _field_names(BackboneConfig) - {"synvi_pretrain"} | {"bn_replicas"}
    )
    assert seen["DualStreamResNet"]["last_stride"] == 2  # gur_cpu's
    module = seen["GURLitModule"]
    assert set(module) == (
        _field_names(ModelConfig) - {"backbone", "memory", "bn_replicas"}
        | {"temperature", "memory_momentum", "memory_update", "lr_step_size", "lr_gamma"}
    )
    assert (module["memory_momentum"], module["memory_update"]) == (0.9, "hard")
    assert (module["lr_step_size"], module["lr_gamma"]) == (1, 0.5)


def test_every_cluster_field_reaches_the_reclustering_callback():
    cfg = compose_config(
        "+experiment=regdb",
        "data.root=/x",
        "cluster.eps_intra_camera=0.4",
        "cluster.cae_temperature=0.1",
        "cluster.oracle=true",
        "method=supervised",
    )
    callback = build_reclustering(cfg, [])
    options = callback.options
    assert (options.eps_intra_camera, options.eps, options.eps_inter_modality) == (0.4, 0.3, 0.3)
    assert (options.cae_temperature, options.cae_legacy_slicing) == (0.1, True)  # official
    assert (options.oracle, options.cmlu_topk, callback.experiment) == (True, 10, "regdb")


# ----------------------------------------------------------------------------- YAML files

#: Keys that name what a group option selects: kept even where they equal the schema's default.
IDENTITY_KEYS = {"data.name", "data.synvi.layout", "method", "recipe"}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _schema_option_files() -> list[Path]:
    """Group options merged onto the schema directly (no parent option in between)."""
    conf = Path(CONF_DIR)
    files = [conf / "train.yaml", conf / "eval.yaml"]
    for group in ("data", "model", "cluster", "schedule", "method", "recipe", "callbacks"):
        for path in sorted((conf / group).glob("*.yaml")):
            if "defaults" not in (yaml.safe_load(path.read_text()) or {}):
                files.append(path)
    return files


@pytest.mark.parametrize("path", _schema_option_files(), ids=lambda p: p.name)
def test_yaml_holds_only_what_differs_from_the_schema(path):
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(EvalRunConfig)))
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    data.pop("defaults", None)
    package = "" if "@package _global_" in text or path.parent.name == "conf" else path.parent.name
    restated = {
        key: value
        for key, value in _leaves(data, package).items()
        if key in schema and schema[key] == value and key not in IDENTITY_KEYS
    }
    assert not restated, f"{path.name} restates schema defaults: {restated}"


SHARED_TRAINER_KEYS = {
    "reload_dataloaders_every_n_epochs": 1,
    "use_distributed_sampler": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
    "enable_model_summary": False,
    "enable_progress_bar": True,
}


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu"])
def test_every_trainer_extends_the_shared_default(trainer):
    cfg = compose_config(f"trainer={trainer}", "data.root=/x")
    for key, value in SHARED_TRAINER_KEYS.items():
        assert cfg.trainer[key] == value, (trainer, key)
    text = (Path(CONF_DIR) / "trainer" / f"{trainer}.yaml").read_text()
    written = set(yaml.safe_load(text)) & set(SHARED_TRAINER_KEYS)
    assert not written, f"trainer/{trainer}.yaml repeats {written} of trainer/default.yaml"
