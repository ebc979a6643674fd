"""Cheap downstream probes during pre-training: are the representations getting better, not just the loss?

Every ``every_n_steps`` optimizer steps (and at the end of training) the callback runs a small probe
suite (frozen backbone, capped example counts) on the current weights and logs ``downstream/<task>/<metric>``
to the trainer's loggers. Rank 0 only; the backbone's train/eval state and RNG are restored afterwards.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from plm.evaluation.runner import run_task
from plm.evaluation.tasks import load_task


class DownstreamEval(pl.Callback):
    def __init__(
        self,
        tasks: list[str] = ("ss3", "dms_blat"),
        every_n_steps: int = 1000,
        data_root: str | None = None,
        small: bool = False,
        max_train: int = 300,
        max_test: int = 200,
        epochs: int = 5,
        task_dir: str | None = None,
        metrics: list[str] | None = None,
    ) -> None:
        """
        Args:
            tasks: task names (evaluation/tasks/<name>.yaml) or YAML paths; any kind works, but keep them cheap.
            every_n_steps: run after every this many optimizer steps (and once when training ends).
            data_root: root for the YAMLs' ``data`` paths (default $PLM_DATA_ROOT, else CI's shared/data next to the checkout).
            small: use the in-repo subsets instead (tests, smoke runs).
            max_train, max_test, epochs: caps that keep one evaluation to seconds-minutes (epochs apply to
                MLP heads; linear probes are fitted to convergence by L-BFGS).
            metrics: only log these metric names (default: all the task reports).
        """
        self.specs = [load_task(t, task_dir) for t in tasks]  # fail at construction on a bad YAML
        self.every_n_steps, self.data_root, self.small = every_n_steps, data_root, small
        self.overrides = {
            "max_train": max_train,
            "max_test": max_test,
            "epochs": epochs,
            "use_trainer": False,
        }
        self.metrics = set(metrics) if metrics else None
        self.last_step = -1
        self.history: list[dict] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self.run(trainer, pl_module)

    @rank_zero_only
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_step = trainer.global_step
        backbone = pl_module.model
        was_training = backbone.training
        objective = getattr(pl_module, "objective", "mlm")
        values: dict[str, float] = {}
        with torch.random.fork_rng():
            for spec in self.specs:
                for row in run_task(
                    spec,
                    backbone,
                    objective,
                    "frozen",
                    self.data_root,
                    self.small,
                    self.overrides,
                    progress=False,
                ):
                    if self.metrics is None or row["metric"] in self.metrics:
                        values[f"downstream/{row['task']}/{row['metric']}"] = float(row["value"])
        backbone.train(was_training)
        self.history.append({"step": trainer.global_step, **values})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)


__all__ = ["DownstreamEval"]
