"""``plm finetune``: pre-training's LightningCLI (``plm fit``) over ``FineTune`` and ``DownstreamDataModule``.

``plm finetune --config configs/finetune/gb1_lora.yaml [--ckpt_path last]`` is ``plm fit`` with another
model and data: the same run directory rules (one process, one configuration, resume instead of a silent
restart), atomic verified checkpoints, preemption saves, NaN/Inf skipping and loggers, all from
:class:`plm.lightning_cli.PlmCLI`. What differs is what fine-tuning needs instead of pre-training's
summaries: early stopping and the best checkpoint on the task's own metric (``val/<metric>``), and at the
end a kept model in ``final/`` (:mod:`plm.evaluation.kept`) built from the best checkpoint and scored
on the test set.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info

from plm.evaluation import kinds
from plm.evaluation.downstream_data import DownstreamDataModule
from plm.evaluation.finetune import FineTune
from plm.lightning_cli import PlmCLI, run_cli


def task_metric(task: str, task_dir: str | None) -> tuple[str, str]:
    """The task's metric and the direction that is better ('max' or 'min')."""
    from plm.evaluation.tasks import load_task

    spec = load_task(task, task_dir)
    metric = spec.metric or kinds.DEFAULT_METRIC[spec.kind]
    return metric, "max" if kinds.higher_is_better(spec.kind, metric) else "min"


class KeptModel(pl.Callback):
    """At the end of a fit that was not preempted: ``final/`` from the best checkpoint by the task's metric
    (the last weights when no validation ran). The module itself is left as it is, so ``last.ckpt``
    (written after this, by ``LastCheckpoint``) still holds the last step and resumes exactly."""

    def __init__(self, dirpath: str | Path, best: pl.callbacks.ModelCheckpoint) -> None:
        self.dirpath, self.best = Path(dirpath), best
        self.written: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from plm.evaluation.kept import write_kept
        from plm.reliability import was_preempted

        if was_preempted(trainer):
            rank_zero_info(
                "stopped by a preemption signal: no kept model; run the same command again to resume"
            )
            return
        state, step, source = None, trainer.global_step, "the last step"
        best = self.best.best_model_path
        if best and Path(best).is_file():
            from plm.model.record import read_lightning_checkpoint

            ckpt = read_lightning_checkpoint(Path(best))
            state, step = ckpt["state_dict"], ckpt.get("global_step", step)
            source = f"the best validation {self.best.monitor} ({float(self.best.best_model_score):.4f}, step {step})"
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.written = write_kept(self.dirpath, pl_module, state, step, {"val_last": metrics})
            rank_zero_info(
                f"kept model: {self.dirpath} from {source}  (plm predict --checkpoint {self.dirpath} "
                "--in seqs.fasta --out preds.csv)"
            )


class FinetuneCLI(PlmCLI):
    """PlmCLI with fine-tuning's callbacks in place of pre-training's summaries."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--early_stopping_patience",
            type=int,
            default=5,
            help="validations without improvement of the task's metric before stopping (0: never)",
        )
        parser.link_arguments("data.task", "model.init_args.task")
        parser.link_arguments("data.task_dir", "model.init_args.task_dir")

    def before_instantiate_classes(self) -> None:
        """The task YAML and the backbone's record are read first: their errors are plm's one-line messages,
        not jsonargparse's wrapping of them, and nothing is locked or written for a command that cannot run."""
        if self.subcommand is not None:
            from plm.evaluation.tasks import load_task
            from plm.model.record import read_record

            cfg = self.config[self.subcommand]
            load_task(cfg.data.task, cfg.data.task_dir)
            if isinstance(cfg.model.init_args.get("backbone"), str):
                read_record(cfg.model.init_args.backbone)
        super().before_instantiate_classes()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from plm.callbacks.export import FinalExport
        from plm.callbacks.monitor import DataMonitor, Throughput
        from plm.reliability.best import BestCheckpoint

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run = self._run_dir()
        metric, mode = task_metric(cfg.data.task, cfg.data.task_dir)
        best = BestCheckpoint(run / "ckpt", monitor=f"val/{metric}", mode=mode)
        ours: list[Any] = [best, KeptModel(run / "final", best)]
        if cfg.early_stopping_patience > 0:
            ours.insert(
                0, EarlyStopping(monitor=f"val/{metric}", mode=mode, patience=cfg.early_stopping_patience)
            )
        trainer = super()._instantiate_trainer(config, [*callbacks, *ours])
        # pre-training's: weights export and summaries of a LanguageModel, throughput in LM FLOPs, data mixture
        # epochs, and the best checkpoint by val/loss (here the task's metric decides)
        pretraining = (FinalExport, Throughput, DataMonitor)
        trainer.callbacks[:] = [
            cb
            for cb in trainer.callbacks
            if not isinstance(cb, pretraining) and not (isinstance(cb, BestCheckpoint) and cb is not best)
        ]
        return trainer

    def after_fit(self) -> None:
        """Score the kept model (the best checkpoint) on the test set and record the numbers with it."""
        from plm.evaluation.kept import add_metrics
        from plm.reliability import was_preempted

        kept = next((cb for cb in self.trainer.callbacks if isinstance(cb, KeptModel)), None)
        if kept is None or kept.written is None or was_preempted(self.trainer):
            return
        best = kept.best.best_model_path
        results = self.trainer.test(
            self.model,
            datamodule=self.datamodule,
            ckpt_path=best if best and Path(best).is_file() else None,
            verbose=False,
        )
        test = {k.removeprefix("test/"): v for k, v in (results[0] if results else {}).items()}
        if self.trainer.is_global_zero:
            add_metrics(kept.written, test)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(test.items()))
            print(
                f"plm finetune: test ({len(self.datamodule.records['test']):,} records): {shown}",
                file=sys.stderr,
            )


def main(argv: list[str]) -> int:
    """``plm finetune [fit options]``: ``plm fit`` (:func:`plm.lightning_cli.run_cli`, the same exit codes and
    one-line errors) with :class:`FinetuneCLI` over ``FineTune`` and ``DownstreamDataModule``."""
    return run_cli(FinetuneCLI, FineTune, DownstreamDataModule, "plm finetune", ["fit", *argv])
