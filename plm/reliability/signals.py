"""Preemption: on SIGTERM (or SIGUSR1 outside SLURM) save ``last.ckpt``, then stop cleanly.

Schedulers send SIGTERM some seconds before SIGKILL. The handler only sets a flag (nothing unsafe
runs inside a signal handler); at the end of the next optimizer step — the same point where
``ModelCheckpoint`` saves, so resuming is exact — the callback writes ``<ckpt dir>/last.ckpt`` and
asks the trainer to stop. ``fit`` then returns normally: loggers are flushed and the exit code is 0,
which tells a requeue script "resume me with ``--ckpt_path last``".

Under SLURM with auto-requeue Lightning already owns SIGUSR1 (``#SBATCH --signal=USR1@90``: HPC
checkpoint + ``scontrol requeue``); that handler is left alone.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


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
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own registration (which happens before the loops start), so ours wins.
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("PreemptionCheckpoint: not in the main thread, signals cannot be caught here")
            return
        for name in self.signal_names:
            sig = getattr(signal, name)
            current = signal.getsignal(sig)
            if sig != signal.SIGTERM and current not in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # e.g. Lightning's SLURM requeue handler on SIGUSR1
            self._previous[sig] = current
            signal.signal(sig, self._handler)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_batch_start or self.preempted:
            return  # mid gradient-accumulation: no consistent state to save yet
        requested = self.received is not None
        if trainer.world_size > 1:  # the signal may reach only some ranks; all must save and stop together
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved_path = path
        trainer.should_stop = True
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        rank_zero_info(
            f"{name} received: saved {path} at step {trainer.global_step}; stopping cleanly. "
            "Resume with the same command plus --ckpt_path last"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def was_preempted(trainer: pl.Trainer) -> bool:
    """True when this fit stopped early because of a preemption signal (e.g. to skip a final export)."""
    return any(isinstance(cb, PreemptionCheckpoint) and cb.preempted for cb in trainer.callbacks)
