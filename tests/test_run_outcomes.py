"""How a run ends: signals, status.json, failures in the log, untrained runs, one metrics record.

In-process runs use ``train(cfg)`` with the smoke experiment; the signal tests at the end send
REAL signals to ``python -m gur_lightning.train`` subprocesses (slow).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gur_lightning import train as train_mod
from gur_lightning.callbacks.signals import GracefulStop
from gur_lightning.config import ConfigError
from gur_lightning.train import (
    CONF_DIR,
    RunInterrupted,
    UntrainedRunError,
    build_datamodule,
    build_logger,
    check_trained_share,
    main,
    train,
)
from gur_lightning.utils import loggers as loggers_mod
from gur_lightning.utils.loggers import rows_before_checkpoint, wandb_resume_kwargs
from gur_lightning.utils.run_status import read_status, resume_command, update_status
from tests.helpers import smoke_config

ROOT = Path(CONF_DIR).parent
#: One GUR epoch: phases 0-3 intra-camera (1 batch each), 4 inter-camera and 5 inter-modality
#: (2 batches each).
SHORT = ("schedule.epochs=1", "eval.max_trials=1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The smoke experiment's SynVI tree, generated once for the module."""
    tmp = tmp_path_factory.mktemp("outcomes")
    build_datamodule(smoke_config(tmp / "data", tmp / "run")).prepare_data()
    return tmp / "data"


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


class SignalAt(Callback):
    """Send a real signal to this process at a given batch of a given phase."""

    def __init__(self, signum: int, phase: int, batch: int = 0) -> None:
        self.signum, self.phase, self.batch = signum, phase, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.phase and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


# ------------------------------------------------------------------------- the callback


def test_handler_records_the_signal_and_restores_the_previous_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = GracefulStop()
    stop.install_handlers()
    try:
        assert signal.getsignal(signal.SIGTERM) == stop.handle
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the handler
        assert stop.received == signal.SIGTERM
    finally:
        stop.restore_handlers()
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.SIGUSR1 not in stop.signals  # SLURM's requeue signal stays Lightning's


def test_second_signal_aborts_at_once(tmp_path):
    code = (
        "import os, signal, time\n"
        "from gur_lightning.callbacks.signals import GracefulStop\n"
        "s = GracefulStop(); s.install_handlers()\n"
        "os.kill(os.getpid(), signal.SIGTERM); print('first', s.received, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30); print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "first 15"
    assert proc.returncode == -signal.SIGTERM  # killed by the signal's default action


def test_interrupted_run_keeps_the_phase_end_checkpoint_and_resumes_with_one_record(
    data_dir, tmp_path
):
    run = tmp_path / "a"
    # The handler the run must restore: Python's default, or SIG_IGN when the test process was
    # started in the background (nohup, `&` in a script), which ignores SIGINT from the start.
    before = signal.getsignal(signal.SIGINT)
    # Phase 4 has 2 batches: SIGINT during its first one stops after it, mid-phase.
    with pytest.raises(RunInterrupted) as err:
        train(smoke_config(data_dir, run, *SHORT), extra_callbacks=[SignalAt(signal.SIGINT, 4)])
    last = run / "checkpoints" / "last.ckpt"
    assert err.value.exit_code == 130
    assert err.value.checkpoint == last.resolve()
    # Nothing was written mid-phase: last.ckpt is the end of phase 3, as Reclustering wants.
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (3, 4)
    assert saved["callbacks"]["Reclustering"]["at_phase_boundary"]
    status = _status(run)
    assert status["status"] == "interrupted" and status["signal"] == signal.SIGINT
    assert status["resume_command"].endswith(f"ckpt_path={last.resolve()}")
    assert not (run / "metrics.json").exists()  # no test evaluation after a signal
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    old_rows = _csv_rows(run / "csv" / "metrics.csv")
    # Stopped in on_train_batch_end, before Lightning logs the batch: phase 4 left no row.
    assert [int(r["step"]) for r in old_rows if r.get("train/loss")] == [0, 1, 2, 3]

    # Resume into a NEW folder: the record starts with the old rows up to the checkpoint.
    new = tmp_path / "b"
    metrics = train(smoke_config(data_dir, new, *SHORT, f"ckpt_path={last}"))
    assert 0.0 <= metrics["test/sysu_all/mAP"] <= 1.0
    assert _status(new)["status"] == "finished"
    assert _status(new)["metrics"] == str((new / "metrics.json").resolve())
    rows = _csv_rows(new / "csv" / "metrics.csv")
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    # 4 one-batch phases + 2 two-batch phases: steps 0..7, each once (phase 4 not twice).
    assert train_steps == list(range(8))
    clustered = [r for r in rows if r.get("cluster/inter_camera/skipped")]
    assert len(clustered) == 1  # phase 4's clustering: logged by the first run only

    # Resume into the SAME folder: the earlier rows stay, the new ones are appended.
    with pytest.raises(RunInterrupted):
        train(
            smoke_config(data_dir, tmp_path / "c", *SHORT),
            extra_callbacks=[SignalAt(signal.SIGTERM, 4)],
        )
    same = tmp_path / "c"
    train(smoke_config(data_dir, same, *SHORT, f"ckpt_path={same / 'checkpoints/last.ckpt'}"))
    rows = _csv_rows(same / "csv" / "metrics.csv")
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == list(range(8))
    assert _status(same)["status"] == "finished"


def test_signal_before_any_phase_end_says_there_is_nothing_to_resume(data_dir, tmp_path, caplog):
    run = tmp_path / "run"
    phase0_two_batches = "schedule.intra_camera.iterations=2"
    with caplog.at_level(logging.WARNING, logger="gur_lightning"):
        with pytest.raises(RunInterrupted) as err:
            train(
                smoke_config(data_dir, run, *SHORT, phase0_two_batches),
                extra_callbacks=[SignalAt(signal.SIGTERM, 0)],
            )
    assert err.value.exit_code == 143 and err.value.checkpoint is None
    assert "before any phase ended: nothing to resume from" in caplog.text
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert _status(run)["status"] == "interrupted" and "resume_command" not in _status(run)


# ------------------------------------------------------------------------- status.json


def test_status_file_is_replaced_atomically_and_keeps_earlier_fields(tmp_path):
    update_status(tmp_path, "running", command="python -m x", wandb_run_id="abc")
    first = read_status(tmp_path)
    update_status(tmp_path, "failed", error="ValueError: bad")
    data = read_status(tmp_path)
    assert data["status"] == "failed" and data["error"] == "ValueError: bad"
    assert data["started"] == first["started"] and data["command"] == "python -m x"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left
    with pytest.raises(ValueError, match="status must be one of"):
        update_status(tmp_path, "done")


def test_status_is_written_by_global_rank_zero_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert update_status(tmp_path, "running") is None
    assert not (tmp_path / "status.json").exists()


def test_resume_command_replaces_an_earlier_ckpt_path(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cmd = resume_command(ckpt, ["+experiment=smoke", "ckpt_path=/old.ckpt", "seed=3"])
    assert shlex.split(cmd) == [
        "python",
        "-m",
        "gur_lightning.train",
        "+experiment=smoke",
        "seed=3",
        f"ckpt_path={ckpt.resolve()}",
    ]


# ------------------------------------------------------------------------- failures


def test_failure_is_in_the_job_log_file_and_in_status(data_dir, tmp_path, monkeypatch):
    class DiskOnFire(Exception):
        pass

    def boom(phase, features, identities, prototypes, options):
        raise DiskOnFire("the disk is on fire")

    # The stage policy is the callback's constructor argument.
    build = functools.partial(train_mod.build_reclustering, policy=boom)
    monkeypatch.setattr(train_mod, "build_reclustering", build)
    run = tmp_path / "run"
    argv = ["train", "+experiment=smoke", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]
    monkeypatch.setattr(sys, "argv", [*argv, *SHORT])
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        with pytest.raises(SystemExit) as exit_info:  # Hydra reports the error and exits 1
            main()
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert exit_info.value.code == 1
    log_text = (run / "train.log").read_text()  # conf/hydra/default.yaml: <task_name>.log
    assert "training failed: DiskOnFire: the disk is on fire" in log_text
    assert "Traceback (most recent call last)" in log_text
    assert 'in boom\n    raise DiskOnFire("the disk is on fire")' in log_text
    status = _status(run)
    assert status["status"] == "failed"
    assert status["error"] == "DiskOnFire: the disk is on fire"


# ------------------------------------------------------------------------- untrained runs


def test_run_where_no_phase_trained_fails_and_says_why(data_dir, tmp_path):
    run = tmp_path / "run"
    # The real DBSCAN with an impossible core size: every phase is skipped.
    with pytest.raises(UntrainedRunError) as err:
        train(smoke_config(data_dir, run, *SHORT, "cluster.min_samples=10000"))
    assert "only 0 of 6 phases trained (0%), below eval.min_trained_share=0.5" in str(err.value)
    assert not (run / "metrics.json").exists()
    history = json.loads((run / "clustering_history.json").read_text())
    assert len(history) == 6 and all(h["skipped"] for h in history)
    assert _status(run)["status"] == "failed"
    assert _status(run)["error"].startswith("UntrainedRunError: only 0 of 6 phases trained")


def test_trained_share_counts_the_last_record_of_each_phase():
    history = [{"phase": p, "skipped": p in (0, 2)} for p in range(4)]
    assert check_trained_share(history, 4, 0.5) == 0.5
    with pytest.raises(UntrainedRunError, match="only 2 of 4 phases trained"):
        check_trained_share(history, 4, 0.75)
    assert check_trained_share([], 4, 0.0) == 0.0  # 0 disables the check
    # A fit stopped after 2 phases: the record of phase 2 (clustered, never trained) and later
    # ones do not count; 1 of the 2 phases that ran trained.
    assert check_trained_share(history, 2, 0.5) == 0.5


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_min_trained_share_out_of_range_names_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=f"eval.min_trained_share={value} is invalid"):
        train(smoke_config(tmp_path / "data", tmp_path / "run", f"eval.min_trained_share={value}"))


# ------------------------------------------------------------------------- records


def test_rows_before_checkpoint_drop_the_unfinished_phase_and_test_rows():
    rows = [
        {"step": "3", "epoch": "", "cluster/x": "1", "test/a": ""},  # phase 4's clustering
        {"step": "3", "epoch": "3", "cluster/x": "", "test/a": ""},  # phase 3's batch
        {"step": "4", "epoch": "", "cluster/x": "1", "test/a": ""},  # phase 5's, not saved
        {"step": "4", "epoch": "4", "cluster/x": "", "test/a": ""},  # phase 4's first batch
        {"step": "0", "epoch": "", "cluster/x": "", "test/a": "0.5"},  # a test result
    ]
    assert rows_before_checkpoint(rows, epoch=3, global_step=4) == [rows[0], rows[1], rows[2]]


class FakeWandbLogger:
    """Stands in for W&B's logger: records what it was built with."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


def test_wandb_run_id_is_kept_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers_mod, "build_wandb_logger", FakeWandbLogger)
    old = tmp_path / "old"
    update_status(old, "interrupted", wandb_run_id="1a2b3c4d")
    resumed = smoke_config(
        tmp_path / "data",
        tmp_path / "new",
        "logger=wandb",
        f"ckpt_path={old / 'checkpoints' / 'last.ckpt'}",
    )
    logger, run_id = build_logger(resumed)
    assert run_id == "1a2b3c4d"
    assert (logger.kwargs["id"], logger.kwargs["resume"]) == ("1a2b3c4d", "allow")

    fresh, fresh_id = build_logger(smoke_config(tmp_path / "data", tmp_path / "f", "logger=wandb"))
    assert fresh.kwargs["id"] == fresh_id and len(fresh_id) == 8 and fresh_id != "1a2b3c4d"
    # Other loggers get nothing; an id set in the config wins.
    assert wandb_resume_kwargs({"_target_": "x.CSVLogger"}, "1a2b3c4d") == ({}, None)
    assert wandb_resume_kwargs({"_target_": "a.WandbLogger", "id": "mine"}, "other") == (
        {"resume": "allow"},
        "mine",
    )


# ------------------------------------------------------------------------- real signals


def _start(data_dir: Path, logs: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    overrides = [
        "+experiment=smoke",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={logs}",
        "schedule.epochs=1",
        "schedule.inter_camera.iterations=400",
        "eval.max_trials=1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gur_lightning.train", *overrides]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, overrides


def _wait_for_checkpoint(logs: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(logs.glob("train/runs/*/checkpoints/last.ckpt"))
        if found:
            time.sleep(1.0)  # into the long inter-camera phase
            return found[0]
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no checkpoints/last.ckpt appeared")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_real_signal_exits_with_the_shell_code_and_the_printed_command_resumes(
    data_dir, tmp_path, signum, code
):
    logs = tmp_path / "logs"
    proc, overrides = _start(data_dir, logs)
    last = _wait_for_checkpoint(logs, proc)
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, output
    run = last.parents[1]
    expected = shlex.join(
        ["python", "-m", "gur_lightning.train", *overrides, f"ckpt_path={last.resolve()}"]
    )
    assert expected in output
    assert _status(run)["resume_command"] == expected
    assert not (run / "metrics.json").exists()

    args = shlex.split(expected)[1:]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in (logs / "train" / "runs").iterdir() if p != run)
    assert len(runs) == 1
    assert _status(runs[0])["status"] == "finished"
    assert f"resumed from {last.resolve()}" in (runs[0] / "train.log").read_text()
    assert (runs[0] / "metrics.json").is_file()
