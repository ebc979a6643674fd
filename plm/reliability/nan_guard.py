"""Skip optimizer steps whose loss or gradients are NaN/Inf; stop after too many in a row.

One bad batch (a loss spike, an overflow) should cost one step, not the run: the update is skipped by
dropping every gradient before ``optimizer.step`` (AdamW then leaves those parameters, moments and
step counts untouched). The step counter, LR schedule and data cursor still advance, so the bad
batch is not retried. ``max_bad_steps`` consecutive bad steps mean the run itself is broken (LR too
high, bad data): training stops with ``NumericalFaultError`` *before* the bad update, so every
checkpoint on disk still holds finite weights.

With fp16 loss scaling the GradScaler already skips overflowing steps and Inf gradients are part of
its calibration, so only the loss is checked then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NumericalFaultError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class NaNGuard(pl.Callback):
    def __init__(self, max_bad_steps: int = 5, ckpt_dir: str | Path | None = None) -> None:
        """
        Args:
            max_bad_steps: consecutive skipped steps after which training stops with an error.
            ckpt_dir: the run's checkpoint directory: the stop message names its ``best.ckpt`` to restart from.
        """
        if max_bad_steps < 1:
            raise ValueError(f"--max_bad_steps={max_bad_steps}: must be >= 1")
        self.max_bad_steps = max_bad_steps
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.skipped = 0  # skipped optimizer steps over the whole run (survives resume)
        self.consecutive = 0
        self._loss_finite: torch.Tensor | None = None

    # ---- detection ----------------------------------------------------------------------------------
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        ok = torch.isfinite(loss.detach()).all()  # stays on device: one sync per optimizer step, below
        self._loss_finite = ok if self._loss_finite is None else self._loss_finite & ok

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        checks = [] if self._loss_finite is None else [self._loss_finite.reshape(())]
        loss_ok_t = self._loss_finite
        self._loss_finite = None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None:
            # FSDP2 gradients are DTensors: this rank's shard is checked, the decision is reduced below
            checks += [
                torch.isfinite(getattr(p.grad, "_local_tensor", p.grad)).all()
                for p in params
                if p.grad is not None
            ]
        finite = bool(torch.stack([c.to(checks[0].device) for c in checks]).all()) if checks else True
        if trainer.world_size > 1:  # sharded gradients (FSDP) can disagree: any bad rank skips everywhere
            finite = not trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if finite:
            self.consecutive = 0
            return
        loss_ok = loss_ok_t is None or bool(loss_ok_t)
        what = "gradient" if loss_ok else "loss"
        self.skipped += 1
        self.consecutive += 1
        step = trainer.global_step
        if self.consecutive >= self.max_bad_steps:
            raise NumericalFaultError(
                f"{self.consecutive} consecutive optimizer steps (up to step {step}) had a non-finite {what}; "
                f"stopping before the bad update, so the checkpoints on disk keep finite weights "
                f"({self.skipped} steps skipped in this run). {self.advice(pl_module)}"
            )
        if scaler is None:
            for p in params:
                p.grad = None  # AdamW skips parameters without a gradient: no update, no moment change
        rank_zero_warn(
            f"step {step}: non-finite {what}; optimizer step skipped "
            f"({self.consecutive}/{self.max_bad_steps} in a row, {self.skipped} in total)"
        )

    def advice(self, pl_module: pl.LightningModule) -> str:
        """The command that works after a blow-up. The newest checkpoints are finite but may already hold
        diverging weights (|w| ~ 1e9 before the first NaN); ``best.ckpt`` (lowest validation loss, never
        pruned) predates the divergence. A resume applies a changed learning rate (LanguageModel)."""
        peak = getattr(pl_module, "peak_lr", None)
        lower = f" --model.init_args.lr {peak / 10:g}" if isinstance(peak, (int, float)) and peak > 0 else ""
        best = self.ckpt_dir / "best.ckpt" if self.ckpt_dir is not None else None
        if best is not None and best.is_file():
            return (
                f"Restart from the checkpoint with the best validation loss, from before the divergence, "
                f"with a lower learning rate (a resume applies it): add --ckpt_path {best}{lower} to the "
                f"same command (or raise warm-up; check the data around step {pl_module.global_step})"
            )
        return (
            f"Lower the learning rate or raise warm-up (a resume applies them), check the data around this "
            f"step, then resume: add --ckpt_path last{lower} to the same command (or raise --max_bad_steps)"
        )

    # ---- reporting and state --------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped))

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
