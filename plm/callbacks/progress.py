"""Progress in optimizer steps, the unit ``max_steps``, checkpoints and the plan all count in.

Lightning's bar counts micro-batches against an epoch total that an endless packed stream does not
have ("Epoch 0/-2"), and after a resume or with gradient accumulation its count and ETA mean nothing
(``560/399``; a 79-day run shown as "1 day"). This one counts optimizer steps from the resumed step to
``max_steps``. On a terminal it is a tqdm bar; when output goes to a file or a pipe it prints a plain
line every few percent or minutes instead, so ``make train > log`` shows where the run is.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{h:d}:{m:02d}:{s:02d}"


def start_line(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
    """One line instead of Lightning's model-summary table: what is trained, for how long."""
    cfg = getattr(pl_module, "config", None)
    total = sum(p.numel() for p in pl_module.parameters())
    what = (
        (
            f"{cfg.name} {cfg.flavour} {cfg.n_layer}x{cfg.n_embd}x{cfg.n_head}, {total:,} parameters "
            f"(N = {cfg.n_params_non_embedding():,} non-embedding)"
        )
        if cfg is not None
        else f"{total:,} parameters"
    )
    objective = getattr(pl_module, "objective", None)
    steps = f"steps {trainer.global_step:,} → {trainer.max_steps:,}" if trainer.max_steps else ""
    accumulate = trainer.accumulate_grad_batches
    return " · ".join(
        x
        for x in (
            f"training {what}",
            f"objective {objective}" if objective else "",
            steps,
            f"{accumulate} micro-batches per step" if accumulate > 1 else "",
        )
        if x
    )


class StepProgress(ProgressBar):
    """A progress bar (Lightning's ``ProgressBar`` interface, so it replaces the default one)."""

    def __init__(
        self, stream: TextIO | None = None, lines_every_seconds: float = 60.0, lines: int = 20
    ) -> None:
        """
        Args:
            stream: where to write (default stderr).
            lines_every_seconds: without a terminal, print at least this often.
            lines: without a terminal, also print every ``1/lines`` of the run.
        """
        super().__init__()
        self.stream = stream
        self.lines_every_seconds, self.lines = lines_every_seconds, lines
        self._enabled = True
        self._bar: Any = None
        self._start_step = 0
        self._t0 = 0.0
        self._last_line = (0.0, -1)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _total(self, trainer: pl.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        print(start_line(trainer, pl_module), file=self._out, flush=True)
        self._start_step, self._t0 = trainer.global_step, time.monotonic()
        self._last_line = (self._t0, trainer.global_step)
        if self._out.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total(trainer),
                initial=trainer.global_step,
                unit="step",
                desc="train",
                file=self._out,
                dynamic_ncols=True,
                smoothing=0.1,
            )
        elif trainer.global_step:
            print(f"resumed at step {trainer.global_step}", file=self._out, flush=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        step = trainer.global_step
        metrics = self.get_metrics(trainer, pl_module)
        shown = {k: metrics[k] for k in ("train/loss", "val/loss") if k in metrics}
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
                self._bar.set_postfix(
                    {k.split("/")[0]: f"{float(v):.3f}" for k, v in shown.items()}, refresh=False
                )
            return
        self._maybe_print_line(trainer, step, shown)

    def _maybe_print_line(self, trainer: pl.Trainer, step: int, shown: dict[str, Any]) -> None:
        now = time.monotonic()
        last_time, last_step = self._last_line
        total = self._total(trainer)
        every = max(1, total // self.lines) if total else None
        due_by_steps = every is not None and step // every > last_step // every
        if step == last_step or not (
            due_by_steps or now - last_time >= self.lines_every_seconds or step == total
        ):
            return
        self._last_line = (now, step)
        done = step - self._start_step
        rate = done / max(1e-9, now - self._t0)
        parts = [f"step {step:,}" + (f"/{total:,} ({step / total:.0%})" if total else "")]
        parts += [f"{k} {float(v):.4f}" for k, v in shown.items()]
        if total and rate > 0:
            parts.append(f"elapsed {_fmt_seconds(now - self._t0)}, ETA {_fmt_seconds((total - step) / rate)}")
        print(" · ".join(parts), file=self._out, flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
