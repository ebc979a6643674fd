"""LightningCLI wiring: run layout under ``checkpoints/<run_name>/``, default loggers and callbacks.

Every run writes ``ckpt/`` (Lightning checkpoints, ``last.ckpt`` for resume), ``final/`` (weights
export: safetensors + config.json), ``tb/`` and ``csv/`` logs, ``run.json`` (its configuration) and holds
``.lock`` while it runs. Before anything is written :mod:`plm.reliability.run_dir` decides whether this
command resumes the run, starts it, or is refused (busy directory, another configuration). Values the
config already knows are linked, never duplicated: ``trainer.max_steps`` → ``model.total_steps`` (the LR
schedule's end).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from plm.callbacks.export import FinalExport
from plm.callbacks.monitor import DataMonitor, Throughput
from plm.data.datamodule import ProteinDataModule
from plm.lit.language_model import LanguageModel
from plm.reliability.run_dir import (
    DataReport,
    FitStart,
    RunDirectory,
    check_ckpt_path,
    is_primary_process,
)
from plm.reliability.run_record import flatten

#: the run directory of the command being run (for messages about it, e.g. a full disk)
ACTIVE_RUN: list[Path] = []


class PlmCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.run_directory: RunDirectory | None = None
        self.fit_start: FitStart | None = None
        try:
            super().__init__(*args, **kwargs)
        finally:
            if self.run_directory is not None:
                self.run_directory.release()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="run", help="run directory name under run_root")
        parser.add_argument("--run_root", type=str, default="checkpoints", help="where runs are written")
        parser.add_argument(
            "--checkpoint_every", type=int, default=500, help="optimizer steps between checkpoints"
        )
        parser.add_argument(
            "--keep_checkpoints", type=int, default=2, help="step checkpoints kept besides last.ckpt"
        )
        parser.add_argument(
            "--max_bad_steps",
            type=int,
            default=5,
            help="consecutive NaN/Inf-loss or -gradient steps (each skipped) before training stops",
        )
        parser.add_argument(
            "--loggers",
            type=list[str],
            default=["tensorboard", "csv"],
            help="any of tensorboard, csv, wandb (wandb only when installed)",
        )
        parser.link_arguments("trainer.max_steps", "model.init_args.total_steps")

    def _run_dir(self) -> Path:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        return Path(cfg.run_root) / cfg.run_name

    def _parse_ckpt_path(self) -> None:
        """Check an explicit ``--ckpt_path`` first (one plm message instead of a zip or unpickling error).

        For ``fit`` Lightning's step is skipped: it reads the checkpoint's hyper-parameters over the
        command's, so a changed learning rate was silently dropped on resume; the run directory compares
        the command with the run's own record instead (:mod:`plm.reliability.run_dir`)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        check_ckpt_path(self.config[subcommand].get("ckpt_path"))
        if subcommand != "fit":
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Lock the run directory, then (``fit``) decide between resuming and starting: nothing is written
        there before this."""
        if self.subcommand is None:
            return
        cfg = self.config[self.subcommand]
        ACTIVE_RUN[:] = [self._run_dir()]
        self.run_directory = RunDirectory(self._run_dir(), primary=is_primary_process())
        self.run_directory.lock()
        if self.subcommand != "fit":
            return
        max_steps = cfg.trainer.max_steps
        if not (max_steps or 0) > 0:
            raise ValueError(
                f"trainer.max_steps={max_steps}: plm fit needs a positive step count, the "
                "LR schedule's warm-up and cosine end there; give --trainer.max_steps N "
                "(plm plan / plm train --size compute it from a budget)"
            )
        self.fit_start = self.run_directory.start_fit(flatten(cfg.as_dict()), cfg.get("ckpt_path"), max_steps)
        cfg["ckpt_path"] = self.fit_start.ckpt_path

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run = self._run_dir()
        resume_step = self.fit_start.step if self.fit_start is not None else None
        config["default_root_dir"] = str(run)
        config["precision"] = cpu_precision(config.get("precision"), config.get("accelerator"))
        if (
            config.get("enable_progress_bar", True) is not False
        ):  # steps, not micro-batches; plain lines in logs
            from plm.callbacks.progress import StepProgress

            callbacks = [*callbacks, StepProgress()]
        if config.get("enable_model_summary") is None:  # the start line of StepProgress says what matters
            config["enable_model_summary"] = False
        if config.get("logger") in (None, True):
            config["logger"] = _loggers(list(cfg.loggers), run, resume_step)
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
        callbacks += [FinalExport(run / "final"), Throughput(), DataMonitor(), DataReport(run)]
        # fault tolerance (plm.reliability): atomic verified checkpoints, NaN/Inf skipping, preemption
        from lightning.pytorch.plugins import CheckpointIO

        from plm.reliability import AtomicCheckpointIO, NaNGuard, PreemptionCheckpoint
        from plm.reliability.best import BestCheckpoint
        from plm.reliability.last import LastCheckpoint

        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        callbacks += [NaNGuard(cfg.max_bad_steps, ckpt_dir=run / "ckpt"), PreemptionCheckpoint(run / "ckpt")]
        if config.get("enable_checkpointing", True) is not False:
            callbacks.append(BestCheckpoint(run / "ckpt"))  # best.ckpt by val/loss, beside the newest K
            callbacks.append(LastCheckpoint(run / "ckpt"))  # last.ckpt = the final step, not the last due one
        if config["logger"]:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return super()._instantiate_trainer(config, callbacks)


def _loggers(names: list[str], run: Path, resume_step: int | None = None) -> list[Any]:
    """The run's loggers; ``resume_step`` (the step this fit starts at, None outside fit) makes the CSV and
    TensorBoard logs continue the run's earlier segments with each step once (plm.reliability.logs)."""
    from plm.reliability.logs import ContinuedCSVLogger

    loggers: list[Any] = []
    for name in names:
        if name == "tensorboard":
            purge = {"purge_step": resume_step} if resume_step is not None else {}
            loggers.append(TensorBoardLogger(save_dir=str(run), name="tb", version="", **purge))
        elif name == "csv":
            loggers.append(
                ContinuedCSVLogger(save_dir=str(run), name="csv", version="", keep_before_step=resume_step)
            )
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

    on_cpu = str(accelerator) == "cpu" or (
        str(accelerator) in ("auto", "None") and not torch.cuda.is_available()
    )
    if not (on_cpu and str(precision).startswith("bf16")) or os.environ.get("PLM_CPU_BF16") == "1":
        return precision
    if cpu_native_bf16():
        return precision
    rank_zero_info(
        f"precision {precision} → 32-true: this CPU has no native bf16 ({' / '.join(NATIVE_BF16_FLAGS)}), "
        "where bf16 matrix products are ≈40× slower than fp32; PLM_CPU_BF16=1 keeps bf16"
    )
    return "32-true"


#: Lightning notes that say nothing about a plm run: an advert, a default plm always sets on purpose,
#: and a deprecation inside Lightning itself. Everything else Lightning logs is kept.
_NOISE = ("try installing [litlogger]", "`weights_only` was not set", "isinstance(treespec, LeafSpec)")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


def quiet_lightning_noise() -> None:
    """Filter the notes in ``_NOISE`` from Lightning's loggers and warnings (idempotent)."""
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


#: less free space than this under the run directory when a write failed means the disk is full, whatever
#: error a library made of it (TensorBoard: "you tried to log 0")
FULL_DISK_BYTES = 1 << 20
_NO_SPACE_TEXT = ("no space left on device", "os error 28", "disk quota exceeded")


def no_space_message(err: BaseException) -> str | None:
    """One line for a full disk anywhere in the run (checkpoint, export, logs, config), or None."""
    seen: BaseException | None = err
    cause: BaseException | None = None
    while seen is not None and cause is None:
        if (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            text in str(seen).lower() for text in _NO_SPACE_TEXT
        ):
            cause = seen
        seen = seen.__cause__ or seen.__context__
    run = ACTIVE_RUN[0] if ACTIVE_RUN else None
    free = _free_bytes(run)
    if cause is None and (free is None or free >= FULL_DISK_BYTES):
        return None
    where = getattr(cause, "filename", None) or run or "the output directory"
    room = f", {free / 1e6:.1f} MB free" if free is not None else ""
    return (
        f"no space left on the device while writing {where}{room} ({type(err).__name__}: "
        f"{str(err).strip().splitlines()[0][:160] if str(err).strip() else 'no message'}). Free space there "
        "(or point --run_root at a larger disk, lower --keep_checkpoints), then run the same command again: "
        "it resumes from the last verified checkpoint"
    )


def _free_bytes(run: Path | None) -> int | None:
    path = run
    while path is not None and not path.exists():
        path = path.parent if path != path.parent else None
    try:
        return shutil.disk_usage(path).free if path is not None else None
    except OSError:
        return None


def expected_error_message(err: BaseException) -> str | None:
    """The one line for an error that is the input's or the machine's, not plm's (None: a bug, keep the
    traceback): plm's own errors, a full disk, a missing input, a ValueError plm raised."""
    from plm.errors import PlmError, one_line, raised_in_package
    from plm.model.io import CheckpointError
    from plm.reliability import CheckpointWriteError, NumericalFaultError

    if isinstance(err, CheckpointWriteError) and err.strerror:
        return err.strerror  # the whole message, without OSError's "[Errno 28]" in front
    if isinstance(err, (PlmError, CheckpointError, NumericalFaultError)):
        return one_line(err)
    full_disk = no_space_message(err)
    if full_disk is not None:
        return full_disk
    if isinstance(err, FileNotFoundError) or (isinstance(err, ValueError) and raised_in_package(err)):
        return one_line(err)
    return None


def run_cli(
    cli_class: type[PlmCLI],
    model_class: type,
    datamodule_class: type,
    prog: str,
    args: list[str],
    **cli_kwargs: Any,
) -> int:
    """Run a plm LightningCLI as the command ``prog``; ``args`` are the subcommand and its options.

    One way for every LightningCLI command (``plm fit``/``validate``/``test``, ``plm finetune``): a
    ``--config configs/…`` works from anywhere; expected errors (bad input, busy or foreign run directory,
    full disk, numerical blow-up: :func:`expected_error_message`) print one line ``<prog>: …`` with exit
    code 2, the traceback only with --debug or PLM_DEBUG=1; exit code 0 after a finished run, a run that
    needed nothing more or a SIGTERM/SIGUSR1 save, 130 after a Ctrl-C save. ``cli_kwargs`` go to the CLI."""
    from plm.errors import debug_requested, report, strip_debug
    from plm.paths import config_args
    from plm.reliability.run_dir import RunComplete
    from plm.reliability.signals import preemption_exit_code

    saved = sys.argv
    # LightningCLI reads sys.argv (passing args as well makes it warn)
    sys.argv = [saved[0], *config_args(strip_debug(args))]
    try:
        quiet_lightning_noise()
        cli = cli_class(
            model_class,
            datamodule_class,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf"},
            **cli_kwargs,
        )
    except RunComplete as done:
        print(f"{prog}: {done}", file=sys.stderr)
        return 0
    except Exception as err:
        message = expected_error_message(err)
        if message is None:
            raise
        return report(prog, err, debug_requested(args), message)
    finally:
        sys.argv = saved
    return preemption_exit_code(getattr(cli, "trainer", None))


def main(args: list[str]) -> int:
    """``plm fit|validate|test [options]``: pre-training's LightningCLI over ``LanguageModel`` and
    ``ProteinDataModule`` (the module's own optimizer and LR schedule), through :func:`run_cli`."""
    return run_cli(
        PlmCLI, LanguageModel, ProteinDataModule, f"plm {args[0]}", args, auto_configure_optimizers=False
    )
