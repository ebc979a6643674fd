"""``last.ckpt`` is the last step, always.

``ModelCheckpoint`` writes ``last.ckpt`` only when a step checkpoint is due, so a 900-step run saving
every 500 steps ended with ``last.ckpt`` at step 500 while ``final/`` held step 900, and tools given
``last.ckpt`` scored a different model. At the end of ``fit`` this writes it once more unless it
already holds the final step (a preemption save, or a step checkpoint on the last step).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


class LastCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path) -> None:
        """
        Args:
            dirpath: the run's checkpoint directory; ``last.ckpt`` there is what ``--ckpt_path last`` resumes.
        """
        self.dirpath = Path(dirpath)
        self._saved_step: int | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self._saved_step = trainer.global_step  # any save at this step also rewrote last.ckpt (save_last)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from plm.reliability.signals import was_preempted

        if (
            was_preempted(trainer)
            or self._saved_step == trainer.global_step
            and (self.dirpath / "last.ckpt").exists()
        ):
            return
        trainer.save_checkpoint(self.dirpath / "last.ckpt")
