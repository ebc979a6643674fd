"""Preemption: on SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 (outside SLURM) save ``last.ckpt``, then stop cleanly.

Schedulers send SIGTERM some seconds before SIGKILL. The handler only sets a flag (nothing unsafe
runs inside a signal handler); at the end of the next optimizer step — the same point where
``ModelCheckpoint`` saves, so resuming is exact — the callback writes ``<ckpt dir>/last.ckpt`` and
asks the trainer to stop. ``fit`` then returns normally: loggers are flushed and the exit code is 0,
which tells a requeue script "resume me with ``--ckpt_path last``" — except after Ctrl-C, where it
is 130 as for any interrupted command, so ``make train && make eval`` does not evaluate a half-trained
model. A second Ctrl-C stops at once without saving.

SLURM and a terminal send the signal to the whole process group, data-loader workers included; a
worker killed by it takes the run down with "DataLoader worker … killed by signal" before anything is
saved. Workers therefore ignore these signals (:func:`ignore_stop_signals`, installed by
:class:`SignalSafeDataLoader`) and leave them to the main process, which stops them when it is done.

Under SLURM with auto-requeue Lightning already owns SIGUSR1 (``#SBATCH --signal=USR1@90``: HPC
checkpoint + ``scontrol requeue``); that handler is left alone.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
#: what the main process turns into "save and stop": data-loader workers ignore all of them
STOP_SIGNALS = tuple(getattr(signal, n) for n in DEFAULT_SIGNALS if hasattr(signal, n))
#: exit code after a Ctrl-C that saved: the shell's "interrupted" (128 + SIGINT)
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path, signals: tuple[str, ...] = DEFAULT_SIGNALS) -> None:
        """
        Args:
            dirpath: checkpoint directory; ``last.ckpt`` there is what ``--ckpt_path last`` resumes.
            signals: signal names that mean "save and stop".
        """
        self.dirpath = Path(dirpath)
        self.signal_names = tuple(s for s in signals if hasattr(signal, s))
        self.received: int | None = None
        self.saved_path: Path | None = None  # set once the preemption checkpoint is written
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = 0

    @property
    def preempted(self) -> bool:
        return self.saved_path is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        self.received = signum
        if signum == signal.SIGINT:  # os.write: print() may be mid-call in the interrupted frame
            os.write(
                2,
                b"\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again to stop "
                b"without saving)\n",
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own registration (which happens before the loops start), so ours wins.
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("PreemptionCheckpoint: not in the main thread, signals cannot be caught here")
            return
        for name in self.signal_names:
            sig = getattr(signal, name)
            current = signal.getsignal(sig)
            defaults = (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler)
            if sig != signal.SIGTERM and current not in defaults:
                continue  # e.g. Lightning's SLURM requeue handler on SIGUSR1
            self._previous[sig] = current
            signal.signal(sig, self._handler)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start or self.preempted:
            return  # mid gradient-accumulation: no consistent state to save yet
        requested = self.received is not None
        if trainer.world_size > 1:  # the signal may reach only some ranks; all must save and stop together
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        for logger in trainer.loggers:  # the logs up to the saved step, should SIGKILL follow the signal
            logger.save()
        self.saved_path = path
        trainer.should_stop = True
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        rank_zero_info(
            f"{name} received: saved {path} at step {trainer.global_step}; stopping cleanly. "
            "Run the same command again to resume (or add --ckpt_path last)"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def was_preempted(trainer: pl.Trainer) -> bool:
    """True when this fit stopped early because of a preemption signal (e.g. to skip a final export)."""
    return any(isinstance(cb, PreemptionCheckpoint) and cb.preempted for cb in trainer.callbacks)


def preemption_exit_code(trainer: pl.Trainer | None) -> int:
    """0 after a clean run or a SIGTERM/SIGUSR1 save (requeue scripts resume on 0); 130 after a Ctrl-C save."""
    callbacks = getattr(trainer, "callbacks", None) or []
    interrupted = any(
        isinstance(cb, PreemptionCheckpoint) and cb.preempted and cb.received == signal.SIGINT
        for cb in callbacks
    )
    return INTERRUPTED_EXIT_CODE if interrupted else 0


# ---- data-loader workers ----------------------------------------------------------------------------------
def ignore_stop_signals(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    """``worker_init_fn``: the main process decides when to stop; a worker dying of a group signal would
    end the run before it saves. Unblocks what :class:`SignalSafeDataLoader` blocked around the fork."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if then is not None:
        then(worker_id)


class SignalSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose worker processes ignore the stop signals.

    The signals are blocked while the workers are forked, so one arriving between the fork and
    :func:`ignore_stop_signals` waits (and is then ignored in the worker, delivered in the main process)
    instead of killing a worker that has not yet set up its handlers. Pass
    ``worker_init_fn=ignore_stop_signals`` (or a ``functools.partial`` of it with ``then=``)."""

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
