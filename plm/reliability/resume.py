"""On resume the command's optimizer settings win over the checkpoint's, and the change is stated.

Lightning restores the optimizer and LR schedule exactly as saved, so a lower learning rate given on
resume was silently ignored — and lowering it is the NaN guard's own advice after a blow-up. The LR
schedule's shape (warm-up, cosine end at ``total_steps``) is rebuilt from the command's settings by
``configure_optimizers`` anyway; what the restore brings back is the peak LR (``base_lrs``, each group's
``initial_lr`` and current ``lr``), the AdamW betas and the weight decay. :func:`apply_resumed_settings`
sets those from the module's current hyper-parameters at the start of training and reports every
change; with unchanged settings it changes nothing, so resumes stay bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

#: where a checkpoint keeps the settings its optimizer state was built with
CHECKPOINT_KEY = "plm_optimizer"


def optimizer_settings(module: pl.LightningModule) -> dict[str, Any]:
    """The settings ``configure_optimizers`` builds the optimizer and schedule from."""
    hp = module.hparams
    return {
        "lr": float(module.peak_lr),
        "betas": [float(b) for b in hp.betas],
        "weight_decay": float(hp.weight_decay),
        "min_lr_ratio": float(hp.min_lr_ratio),
        "warmup_fraction": float(hp.warmup_fraction),
        "total_steps": int(hp.total_steps),
    }


def saved_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a checkpoint was trained with; for checkpoints older than :data:`CHECKPOINT_KEY`, from
    its hyper-parameters (an unset ``lr`` is the size's peak LR)."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(saved, Mapping):
        return dict(saved)
    hp = checkpoint.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        return None
    from plm.model.config import SIZES

    lr = hp.get("lr")
    if lr is None and hp.get("size") in SIZES:
        lr = SIZES[hp["size"]].peak_lr
    fields = {
        "lr": lr,
        "betas": list(hp["betas"]) if hp.get("betas") is not None else None,
        "weight_decay": hp.get("weight_decay"),
        "min_lr_ratio": hp.get("min_lr_ratio"),
        "warmup_fraction": hp.get("warmup_fraction"),
        "total_steps": hp.get("total_steps"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def apply_resumed_settings(module: pl.LightningModule, saved: Mapping[str, Any] | None) -> list[str]:
    """Put the module's current settings into the restored optimizer and schedule; returns the changes
    (``"lr 0.01 → 0.001"``), also logged. The decay group is the first (``configure_optimizers``)."""
    if not saved:
        return []
    now = optimizer_settings(module)
    changed = [
        f"{k} {_fmt(saved[k])} → {_fmt(v)}" for k, v in now.items() if k in saved and _differs(saved[k], v)
    ]
    if not changed:
        return []
    trainer = module.trainer
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        groups = scheduler.optimizer.param_groups
        for i, group in enumerate(groups):
            group["initial_lr"] = now["lr"]
            group["betas"] = tuple(now["betas"])
            if i == 0:
                group["weight_decay"] = now["weight_decay"]
        scheduler.base_lrs = [now["lr"]] * len(groups)
        lambdas = getattr(scheduler, "lr_lambdas", None) or [lambda _: 1.0] * len(groups)
        for group, factor in zip(groups, lambdas):
            group["lr"] = now["lr"] * factor(scheduler.last_epoch)  # what the schedule gives at this step
        scheduler._last_lr = [group["lr"] for group in groups]
    rank_zero_info(
        f"resumed at step {trainer.global_step} with changed optimizer settings, applied from this step "
        f"on: {'; '.join(changed)}"
    )
    return changed


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return [float(x) for x in a] != [float(x) for x in b]
    try:
        return float(a) != float(b)
    except (TypeError, ValueError):
        return a != b


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(f"{float(v):g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)
