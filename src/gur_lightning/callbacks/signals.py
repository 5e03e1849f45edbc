"""Stop a training run cleanly on SIGTERM / SIGINT, leaving a resumable checkpoint.

Schedulers stop jobs with SIGTERM (SLURM at the time limit or on ``scancel``, Kubernetes and
Docker on ``stop``), a person with Ctrl+C (SIGINT). The only checkpoints a run can resume from
exactly are those written at phase ends (``checkpoints/last.ckpt``, see
:mod:`gur_lightning.callbacks.recluster`); a phase can last minutes, longer than the grace period
a scheduler gives before SIGKILL. So :class:`GracefulStop` stops at the end of the current batch
and writes NOTHING: ``checkpoints/last.ckpt`` keeps the last phase end, the work of the
interrupted phase is lost, and the resume from it is exact. :func:`gur_lightning.train.train`
then writes ``status.json`` (``interrupted``, with the resume command), logs the command, skips
the test evaluation, and the command line exits with 130 (SIGINT) or 143 (SIGTERM), the shell's
codes for a process ended by those signals.

Details:

* A signal that arrives during the last batch of a phase, or while the next phase is clustered,
  lets the phase end (its checkpoint is written); the run stops before the next phase's first
  batch.
* A second signal aborts at once with the signal's default action (no cleanup).
* Handlers are installed in :meth:`GracefulStop.setup` (before Lightning registers its own, and
  before the first clustering in ``on_fit_start``) and only from a process's main thread; the
  previous handlers come back in :meth:`GracefulStop.restore_handlers`.
* Lightning also handles SIGTERM: its handler is chained with ours (it keeps any handler already
  installed), forwards the signal to the processes its launcher started and raises its
  ``SIGTERMException`` (exit code 0) at the end of a batch or phase; ``train`` turns that into
  the same interrupted outcome.
* Under DDP, the decision to stop is made on every rank at the same batch: the flags of all ranks
  are reduced (any rank signalled stops them all), so no rank waits in a collective for a rank
  that has left.
* SLURM (``SLURM_JOB_ID`` set): Lightning's ``SLURMEnvironment(auto_requeue=True)`` (the default
  when Lightning detects SLURM) handles the requeue signal (SIGUSR1, sent with
  ``#SBATCH --signal=SIGUSR1@90``) by saving ``hpc_ckpt_*.ckpt`` and calling
  ``scontrol requeue``. This callback leaves SIGUSR1 to Lightning and handles only SIGTERM and
  SIGINT, so the two do not conflict. Note that such an HPC checkpoint is saved mid-phase and is
  refused by the Reclustering callback on resume: requeued jobs must be started with
  ``ckpt_path=<run>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: Signals handled by default.
HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def exit_code_for(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 128 + the signal number."""
    return 128 + int(signum)


class TrainingInterrupted(Exception):  # noqa: N818 - an outcome, not a programming error
    """Raised inside ``fit`` to stop after a signal without running the phase-end hooks.

    Args:
        signum: The signal received.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")


class GracefulStop(Callback):
    """Turn SIGTERM / SIGINT into a stop at the next batch end (see the module docstring).

    Args:
        signals: Signals to handle (default SIGTERM and SIGINT; never the SLURM requeue signal).

    Attributes:
        received: The first signal received, or None.
    """

    def __init__(self, signals: Sequence[int] = HANDLED_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ handlers
    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler: remember the first signal; abort at once on the second."""
        if self.received is not None:
            # Second signal: the default action (terminate), whatever is chained with us.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = int(signum)
        log.warning(
            "received %s: stopping at the end of the current batch (send it again to abort "
            "at once)",
            signal.Signals(signum).name,
        )

    def install_handlers(self) -> None:
        """Install :meth:`handle` for the signals, remembering the previous handlers."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self.handle)

    def restore_handlers(self) -> None:
        """Put the handlers found by :meth:`install_handlers` back (safe to call twice)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # --------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Install the handlers when fit starts (before Lightning adds its SIGTERM handler)."""
        if stage == "fit":
            self.received = None
            self.install_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Restore the previous handlers."""
        if stage == "fit":
            self.restore_handlers()

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        """Whether any rank received a signal (a collective under DDP: called on every rank)."""
        return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop before a phase's first batch (a signal during the previous phase end)."""
        if self._stop_requested(trainer):
            raise TrainingInterrupted(self.received or signal.SIGTERM)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Stop after this batch, unless it is the phase's last (then the phase end is saved)."""
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        if self._stop_requested(trainer):
            raise TrainingInterrupted(self.received or signal.SIGTERM)
