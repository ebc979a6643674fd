"""Keep the best checkpoint by held-out loss next to the rolling step checkpoints.

Step checkpoints are pruned to the newest K (``--keep_checkpoints``); a loss spike late in a run
must not take the best weights with it, so ``best.ckpt`` is kept separately, replaced only when
``val/loss`` improves.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    def __init__(self, dirpath: str | Path, monitor: str = "val/loss", mode: str = "min") -> None:
        """
        Args:
            dirpath: checkpoint directory (the run's ``ckpt/``).
            monitor: logged metric that defines "best".
            mode: 'min' or 'max' of ``monitor``.
        """
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            save_on_train_epoch_end=False,
            enable_version_counter=False,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs without a held-out split never log val/loss: nothing to rank, not an error.
        if self.monitor in trainer.callback_metrics:
            super().on_validation_end(trainer, pl_module)
