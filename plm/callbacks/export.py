"""Write the final weights export and say, in one line, whether the run learned anything."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from plm.model.io import save_pretrained


def validation_summary(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
    """The last held-out loss against the unigram baseline scored on the same positions, per set."""
    metrics = trainer.callback_metrics
    val = metrics.get("val/loss")
    if val is None:
        return []
    what = "masked positions" if getattr(pl_module, "objective", "") == "mlm" else "next tokens"
    base = metrics.get("val/unigram_loss")
    if base is None:
        return [f"final validation loss ({what}) {float(val):.4f} nats (ppl {math.exp(float(val)):.2f})"]
    verdict = "below" if float(val) < float(base) else "NOT below"
    lines = [
        (
            f"final validation loss on {what} {float(val):.4f} nats (ppl {math.exp(float(val)):.2f}) is {verdict} "
            f"the unigram baseline on the same positions {float(base):.4f} nats (ppl {math.exp(float(base)):.2f})"
        )
    ]
    metric = getattr(pl_module, "val_metric", "loss")
    for key in sorted(
        k for k in metrics if k.startswith("val/") and k.endswith(f"/{metric}") and k.count("/") == 2
    ):
        name = key.split("/")[1]
        uni = metrics.get(f"val/{name}/unigram_{metric}")
        lines.append(
            f"  {name}: {float(metrics[key]):.4f}"
            + (f" vs unigram {float(uni):.4f}" if uni is not None else "")
        )
    return lines


class FinalExport(pl.Callback):
    """At the end of ``fit``: safetensors + config.json in ``dirpath`` (atomic), then a summary that
    compares the final validation loss with a unigram model scored on the same positions."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from plm.reliability import was_preempted

        if was_preempted(trainer):  # a preempted run is not finished: final/ must not pretend it is
            rank_zero_info("stopped by a preemption signal: no final export; resume with --ckpt_path last")
            return
        from plm.strategies import full_model

        model = full_model(pl_module.model)  # FSDP2: every rank sends its shards, rank 0 gets the model
        if trainer.is_global_zero:
            save_pretrained(
                model,
                self.dirpath,
                objective=pl_module.objective,
                tokens_seen=pl_module.tokens_seen,
                global_step=trainer.global_step,
            )
        cfg = pl_module.config
        lines = [
            f"weights export: {self.dirpath}  (load with plm.load({str(self.dirpath)!r}))",
            (
                f"model: {cfg.name} {cfg.flavour} {cfg.n_layer}x{cfg.n_embd}x{cfg.n_head}, "
                f"non-embedding N = {cfg.n_params_non_embedding():,}, tokens seen = {pl_module.tokens_seen:,}, "
                f"C = 6·N·D = {cfg.flops_per_token(attention=False) * pl_module.tokens_seen:.3g} FLOPs"
            ),
        ]
        lines += validation_summary(trainer, pl_module)
        for line in lines:
            rank_zero_info(line)
