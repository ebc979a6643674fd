"""LightningCLI wiring: run layout under ``checkpoints/<run_name>/``, default loggers and callbacks.

Every run writes ``ckpt/`` (Lightning checkpoints, ``last.ckpt`` for resume), ``final/`` (weights
export: safetensors + config.json), ``tb/`` and ``csv/`` logs. Values the config already knows are
linked, never duplicated: ``trainer.max_steps`` → ``model.total_steps`` (the LR schedule's end).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from plm.callbacks.export import FinalExport
from plm.callbacks.monitor import DataMonitor, Throughput
from plm.data.datamodule import ProteinDataModule
from plm.lit.language_model import LanguageModel


class PlmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="run", help="run directory name under run_root")
        parser.add_argument("--run_root", type=str, default="checkpoints", help="where runs are written")
        parser.add_argument("--checkpoint_every", type=int, default=500, help="optimizer steps between checkpoints")
        parser.add_argument("--keep_checkpoints", type=int, default=2, help="step checkpoints kept besides last.ckpt")
        parser.add_argument("--max_bad_steps", type=int, default=5,
                            help="consecutive NaN/Inf-loss or -gradient steps (each skipped) before training stops")
        parser.add_argument("--loggers", type=list[str], default=["tensorboard", "csv"],
                            help="any of tensorboard, csv, wandb (wandb only when installed)")
        parser.link_arguments("trainer.max_steps", "model.init_args.total_steps")

    def _run_dir(self) -> Path:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        return Path(cfg.run_root) / cfg.run_name

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run = self._run_dir()
        if self.subcommand == "fit" and not (config.get("max_steps") or 0) > 0:
            raise ValueError(f"trainer.max_steps={config.get('max_steps')}: plm fit needs a positive step count, the "
                             "LR schedule's warm-up and cosine end there; give --trainer.max_steps N "
                             "(plm plan / plm train --size compute it from a budget)")
        config["default_root_dir"] = str(run)
        config["precision"] = cpu_precision(config.get("precision"), config.get("accelerator"))
        if config.get("enable_progress_bar", True) is not False:  # steps, not micro-batches; plain lines in logs
            from plm.callbacks.progress import StepProgress

            callbacks = [*callbacks, StepProgress()]
        if config.get("enable_model_summary") is None:  # the start line of StepProgress says what matters
            config["enable_model_summary"] = False
        if config.get("logger") in (None, True):
            config["logger"] = _loggers(list(cfg.loggers), run)
        callbacks = list(callbacks)
        if config.get("enable_checkpointing", True) is not False:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run / "ckpt",
                    filename="step{step:08d}",
                    auto_insert_metric_name=False,
                    every_n_train_steps=cfg.checkpoint_every,
                    save_top_k=cfg.keep_checkpoints,
                    monitor="step",
                    mode="max",
                    save_last=True,
                )
            )
        callbacks += [FinalExport(run / "final"), Throughput(), DataMonitor()]
        # fault tolerance (plm.reliability): atomic verified checkpoints, NaN/Inf skipping, preemption
        from lightning.pytorch.plugins import CheckpointIO

        from plm.reliability import AtomicCheckpointIO, NaNGuard, PreemptionCheckpoint, resolve_resume_path
        from plm.reliability.best import BestCheckpoint
        from plm.reliability.last import LastCheckpoint

        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        callbacks += [NaNGuard(cfg.max_bad_steps), PreemptionCheckpoint(run / "ckpt")]
        if config.get("enable_checkpointing", True) is not False:
            callbacks.append(BestCheckpoint(run / "ckpt"))  # best.ckpt by val/loss, beside the newest K
            callbacks.append(LastCheckpoint(run / "ckpt"))  # last.ckpt = the final step, not the last due one
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            # the newest checkpoint that verifies, not blindly last.ckpt (None: first attempt, start fresh)
            self.config_init[self.subcommand]["ckpt_path"] = resolve_resume_path(run / "ckpt")
        if config["logger"]:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return super()._instantiate_trainer(config, callbacks)


def _loggers(names: list[str], run: Path) -> list[Any]:
    loggers: list[Any] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(run), name="tb", version=""))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=str(run), name="csv", version=""))
        elif name == "wandb":
            try:
                from lightning.pytorch.loggers import WandbLogger

                loggers.append(WandbLogger(save_dir=str(run), name=run.name))
            except (ImportError, ModuleNotFoundError) as err:
                raise ValueError("--loggers wandb needs `pip install wandb`") from err
        else:
            raise ValueError(f"--loggers: unknown logger {name!r}; use tensorboard, csv or wandb")
    return loggers


def cpu_precision(precision: Any, accelerator: Any) -> Any:
    """bf16 on a CPU without native bf16 matrix products runs ≈40× slower than fp32 (plm.hardware): such a
    run trains in fp32 instead, and says so. ``PLM_CPU_BF16=1`` keeps bf16 (e.g. to test its numerics)."""
    import torch

    from plm.hardware import NATIVE_BF16_FLAGS, cpu_native_bf16

    on_cpu = str(accelerator) == "cpu" or (str(accelerator) in ("auto", "None") and not torch.cuda.is_available())
    if not (on_cpu and str(precision).startswith("bf16")) or os.environ.get("PLM_CPU_BF16") == "1":
        return precision
    if cpu_native_bf16():
        return precision
    rank_zero_info(f"precision {precision} → 32-true: this CPU has no native bf16 ({' / '.join(NATIVE_BF16_FLAGS)}), "
                   "where bf16 matrix products are ≈40× slower than fp32; PLM_CPU_BF16=1 keeps bf16")
    return "32-true"


#: Lightning notes that say nothing about a plm run: an advert, a default plm always sets on purpose,
#: and a deprecation inside Lightning itself. Everything else Lightning logs is kept.
_NOISE = ("try installing [litlogger]", "`weights_only` was not set", "isinstance(treespec, LeafSpec)")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


def quiet_lightning_noise() -> None:
    """Filter the notes in ``_NOISE`` from Lightning's loggers and warnings (idempotent)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def run_lightning_cli(args: list[str] | None) -> PlmCLI:
    quiet_lightning_noise()
    return PlmCLI(
        LanguageModel,
        ProteinDataModule,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )
