"""Resume: a run interrupted at phase ends and resumed from last.ckpt equals an uninterrupted run.

Exactness holds on CPU because every draw of a phase (identity plan, instances, augmentations)
is seeded from (seed, phase, rank), the Reclustering callback checkpoints the labels installed
for the next phase, and the module its memories plus the trained memories that later stages use
as CAE prototypes. Foreign checkpoints (other schedule or data, mid-phase, not ours) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gur_lightning.callbacks.recluster import Reclustering, ResumeError, check_fingerprint
from gur_lightning.train import train
from tests.helpers import smoke_config


class StopAfterPhase(Callback):
    """Stop fit after the given phase (Lightning epoch), as a crash right after it would."""

    def __init__(self, phase: int) -> None:
        self.phase = phase

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.phase:
            trainer.should_stop = True


def _cfg(data_dir: Path, out: Path, *overrides: str):
    return smoke_config(data_dir, out, "~logger", *overrides)


def _history(run: Path) -> list[dict]:
    records = json.loads((run / "clustering_history.json").read_text())
    for r in records:
        r.pop("seconds")  # wall time, the only field allowed to differ
    return records


def _timeless(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("/seconds")}


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def one_phase(tmp_path_factory):
    """A smoke run stopped after its first phase: (data dir, its last.ckpt)."""
    tmp = tmp_path_factory.mktemp("resume")
    run = tmp / "one"
    train(
        _cfg(tmp / "data", run, "eval.test_after_fit=false"), extra_callbacks=[StopAfterPhase(0)]
    )
    return tmp / "data", run / "checkpoints" / "last.ckpt"


def test_resume_continues_at_the_next_phase_without_reclustering(one_phase, tmp_path):
    data, ckpt = one_phase
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = saved["callbacks"]["Reclustering"]
    # Saved at the end of phase 0, after phase 1 was clustered and installed.
    assert saved["epoch"] == 0
    assert state["installed"]["phase"] == 1 and state["at_phase_boundary"]
    assert [h["phase"] for h in state["history"]] == [0, 1]

    train(
        _cfg(data, tmp_path, f"ckpt_path={ckpt}", "eval.test_after_fit=false"),
        extra_callbacks=[StopAfterPhase(1)],
    )
    history = _history(tmp_path)
    # Phase 1 is trained from the checkpoint's labels (not clustered again, and not phase 0
    # again although Lightning's epoch counter still reads 0 in on_fit_start); phase 2 is
    # clustered at the end of Lightning epoch 1.
    assert [h["phase"] for h in history] == [0, 1, 2]
    assert [h["trainer_epoch"] for h in history] == [-1, 0, 1]
    assert history[:2] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in state["history"]
    ]
    assert _last(tmp_path)["epoch"] == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.epochs=1", "its schedule has 11 phases, this run's has 6"),
        ("schedule.inter_camera.iterations=3", "schedule's phases"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_schedule(one_phase, tmp_path, override, message):
    data, ckpt = one_phase
    with pytest.raises(ResumeError, match=message) as err:
        train(_cfg(data, tmp_path, f"ckpt_path={ckpt}", override))
    assert str(ckpt) in str(err.value) and "'smoke'" in str(err.value)


def test_resume_refuses_a_checkpoint_of_other_data():
    data = {"name": "sysu", "trial": 0, "num_visible": 10, "num_infrared": 8, "digest": "ab"}
    current = {"num_phases": 0, "schedule": "s", "data": data}
    other = {**data, "num_visible": 12, "digest": "cd"}
    state = {"fingerprint": {"num_phases": 0, "schedule": "s", "data": other}, "experiment": "x"}
    with pytest.raises(ResumeError, match="training data .*'num_visible': 12"):
        check_fingerprint(state, current, experiment="none", ckpt="some.ckpt")
    state["fingerprint"]["data"] = dict(data)
    # Same data and schedule: accepted.
    check_fingerprint(state, current, experiment="none", ckpt="some.ckpt")


def test_resume_refuses_a_mid_phase_checkpoint(one_phase, tmp_path):
    data, ckpt = one_phase
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    saved["callbacks"]["Reclustering"]["at_phase_boundary"] = False
    doctored = tmp_path / "mid.ckpt"
    torch.save(saved, doctored)
    with pytest.raises(ResumeError, match="middle of a phase"):
        train(_cfg(data, tmp_path / "run", f"ckpt_path={doctored}"))


def test_resume_refuses_a_checkpoint_without_reclustering_state(one_phase, tmp_path):
    data, ckpt = one_phase
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    del saved["callbacks"]["Reclustering"]
    doctored = tmp_path / "foreign.ckpt"
    torch.save(saved, doctored)
    with pytest.raises(ResumeError, match="holds no Reclustering state"):
        train(_cfg(data, tmp_path / "run", f"ckpt_path={doctored}"))


def test_reclustering_state_of_another_version_is_refused():
    with pytest.raises(ResumeError, match="version 99"):
        Reclustering([]).load_state_dict({"version": 99, "history": []})


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    full = tmp_path / "full"
    metrics_full = train(_cfg(data, full))

    # Smoke phases: 0-3 intra-camera (epoch 0), 4 inter-camera, 5 inter-modality, 6-9 intra
    # (epoch 1, lower LR), 10 inter-camera with CMLU. Stopping after 3 resumes into stage 2, whose
    # camera-level CAE needs stage 1's trained memories; stopping after 4 resumes into stage 3,
    # whose CAE needs stage 2's.
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(_cfg(data, a, "eval.test_after_fit=false"), extra_callbacks=[StopAfterPhase(3)])
    assert _last(a)["epoch"] == 3
    train(
        _cfg(data, b, f"ckpt_path={a / 'checkpoints' / 'last.ckpt'}", "eval.test_after_fit=false"),
        extra_callbacks=[StopAfterPhase(4)],
    )
    assert _last(b)["epoch"] == 4
    metrics_resumed = train(_cfg(data, c, f"ckpt_path={b / 'checkpoints' / 'last.ckpt'}"))

    # Same pseudo-labels at every phase (the history carries every clustering's statistics:
    # cluster counts, outlier fractions, ARI against the hidden identities) ...
    assert _history(c) == _history(full)
    assert len(_history(full)) == 11
    # ... the same final weights, optimizer state and test metrics, bit for bit (clustering
    # wall times aside).
    assert _timeless(metrics_resumed) == _timeless(metrics_full)
    assert "test/sysu_all/mAP" in metrics_full
    last_full, last_resumed = _last(full), _last(c)
    assert last_full["state_dict"].keys() == last_resumed["state_dict"].keys()
    for key, value in last_full["state_dict"].items():
        assert torch.equal(value, last_resumed["state_dict"][key]), key
    opt_full = last_full["optimizer_states"][0]["state"]
    opt_resumed = last_resumed["optimizer_states"][0]["state"]
    for idx, state in opt_full.items():
        for name, value in state.items():
            assert torch.equal(value, opt_resumed[idx][name]), (idx, name)
    assert last_full["global_step"] == last_resumed["global_step"]
