"""The stage schedule against the reference's tables (docs/method.md §10.1 and §11)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gur_lightning.config import register_configs
from gur_lightning.schedule import ScheduleConfig, ScheduleError, build_phases
from gur_lightning.train import CONF_DIR

SYSU_VIS, SYSU_IR = [1, 2, 4, 5], [3, 6]


def _schedule(name: str) -> ScheduleConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"schedule={name}", "data.root=/nonexistent"])
    return OmegaConf.to_object(cfg.schedule)


def test_sysu_schedule_matches_reference_table():
    phases = build_phases(_schedule("gur_sysu"), SYSU_VIS, SYSU_IR)
    # 50 epochs x (8 camera pairs + stage 2) + stage 3 in epochs 0..39.
    assert len(phases) == 50 * 9 + 40
    assert [p.index for p in phases] == list(range(len(phases)))
    # §10.1: 38,000 optimiser steps in total; 800 per epoch before 40, 600 after.
    assert sum(p.iterations for p in phases) == 38_000
    per_epoch = {}
    for p in phases:
        per_epoch[p.gur_epoch] = per_epoch.get(p.gur_epoch, 0) + p.iterations
    assert per_epoch[0] == per_epoch[39] == 800 and per_epoch[40] == per_epoch[49] == 600
    epoch0 = [p for p in phases if p.gur_epoch == 0]
    pairs = [(p.visible_camera, p.infrared_camera) for p in epoch0 if p.stage == "intra_camera"]
    # Nested loop: visible outer, infrared inner (§10 stage 1).
    assert pairs == [(1, 3), (1, 6), (2, 3), (2, 6), (4, 3), (4, 6), (5, 3), (5, 6)]
    assert [p.stage for p in epoch0][-2:] == ["inter_camera", "inter_modality"]
    assert [p.last_of_epoch for p in epoch0] == [False] * 9 + [True]
    stage2 = {p.gur_epoch: p for p in phases if p.stage == "inter_camera"}
    assert stage2[0].camera_cae and not stage2[0].cmlu
    assert stage2[29].cmlu is False and stage2[30].cmlu and not stage2[30].smooth
    assert stage2[39].smooth is False and stage2[40].smooth and stage2[40].cmlu
    assert max(p.gur_epoch for p in phases if p.stage == "inter_modality") == 39


def test_regdb_schedule_matches_reference_table():
    phases = build_phases(_schedule("gur_regdb"), [1], [2])
    assert {p.stage for p in phases} == {"inter_camera", "inter_modality"}
    assert len(phases) == 30 + 25
    assert sum(p.iterations for p in phases) == 25 * 200 + 5 * 100
    stage2 = {p.gur_epoch: p for p in phases if p.stage == "inter_camera"}
    assert not stage2[0].camera_cae
    assert not stage2[19].cmlu and stage2[20].cmlu and stage2[20].smooth
    assert phases[-1].stage == "inter_camera" and phases[-1].gur_epoch == 29


def test_cycle_pairing_and_labels():
    cfg = ScheduleConfig(epochs=1)
    cfg.intra_camera.pairing = "cycle"
    phases = build_phases(cfg, SYSU_VIS, SYSU_IR)
    pairs = [(p.visible_camera, p.infrared_camera) for p in phases if p.stage == "intra_camera"]
    assert pairs == [(1, 3), (2, 6), (4, 3), (5, 6)]
    assert phases[0].label == "epoch 0 intra_camera v1/i3"


def test_stage_one_without_cameras_and_bad_values_fail():
    with pytest.raises(ScheduleError, match="no infrared camera"):
        build_phases(ScheduleConfig(epochs=1), [1], [])
    bad = ScheduleConfig(epochs=1)
    bad.inter_camera.iterations = 0
    with pytest.raises(ScheduleError, match="schedule.inter_camera.iterations"):
        build_phases(bad, [1], [2])
    bad = ScheduleConfig(epochs=1)
    bad.intra_camera.pairing = "zigzag"
    with pytest.raises(ScheduleError, match="pairing"):
        build_phases(bad, [1], [2])


def test_adca_method_has_no_bottom_up_stage():
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=sysu", "method=adca", "data.root=/x"])
    phases = build_phases(OmegaConf.to_object(cfg.schedule), SYSU_VIS, SYSU_IR)
    assert len(phases) == 50
    assert all(p.stage == "inter_camera" and not p.camera_cae and not p.cmlu for p in phases)


@pytest.mark.parametrize("method", ["adca", "supervised"])
@pytest.mark.parametrize("experiment", ["synvi", "synvi_regdb", "regdb"])
def test_method_switches_survive_experiment_overrides(method, experiment):
    # `+experiment=` is merged after `method=`: an experiment's CMLU epochs must not re-enable
    # CMLU or stages that the method switched off.
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={experiment}", f"method={method}"])
    phases = build_phases(OmegaConf.to_object(cfg.schedule), SYSU_VIS, SYSU_IR)
    assert phases and all(p.stage == "inter_camera" and not p.cmlu for p in phases)
    assert cfg.cluster.oracle is (method == "supervised")


@pytest.mark.parametrize(
    ("overrides", "method", "name"),
    [
        (["+experiment=synvi", "method=adca"], "adca", "adca_synvi"),
        (["+experiment=synvi", "method=supervised"], "supervised", "supervised_synvi"),
        (["+experiment=synvi"], "gur", "gur_synvi"),
        (["+experiment=sysu", "method=adca", "data.root=/x"], "adca", "adca_sysu"),
        (
            ["+experiment=regdb", "method=supervised", "data.root=/x"],
            "supervised",
            "supervised_regdb",
        ),
    ],
)
def test_recorded_names_say_which_method_ran(overrides, method, name):
    # The experiment is merged after the method group; the names recorded with the run (the
    # resolved config the loggers and hparams.yaml receive, the schedule the log lines name)
    # must still be the method's, not the experiment's GUR label.
    from gur_lightning.config import ConfigError, validate_config
    from gur_lightning.train import run_config

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/unused"])
    validate_config(cfg)
    recorded = run_config(cfg)
    assert recorded["method"] == method
    assert recorded["schedule"]["name"] == name
    assert OmegaConf.to_object(cfg.schedule).name == name
    cfg.method = "dbscan"
    with pytest.raises(ConfigError, match="method"):
        validate_config(cfg)
