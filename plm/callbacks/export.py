"""Write the final weights export and say, in one line, whether the run learned anything."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from plm.model.io import save_pretrained


class FinalExport(pl.Callback):
    """At the end of ``fit``: safetensors + config.json in ``dirpath`` (atomic), then a summary that
    compares the final validation loss with the unigram-entropy baseline of the training data."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from plm.reliability import was_preempted

        if was_preempted(trainer):  # a preempted run is not finished: final/ must not pretend it is
            rank_zero_info("stopped by a preemption signal: no final export; resume with --ckpt_path last")
            return
        if trainer.is_global_zero:
            save_pretrained(
                pl_module.model,
                self.dirpath,
                objective=pl_module.objective,
                tokens_seen=pl_module.tokens_seen,
                global_step=trainer.global_step,
            )
        cfg = pl_module.config
        lines = [
            f"weights export: {self.dirpath}  (load with plm.load({str(self.dirpath)!r}))",
            f"model: {cfg.name} {cfg.flavour} {cfg.n_layer}x{cfg.n_embd}x{cfg.n_head}, "
            f"non-embedding N = {cfg.n_params_non_embedding():,}, tokens seen = {pl_module.tokens_seen:,}, "
            f"C = 6·N·D = {cfg.flops_per_token(attention=False) * pl_module.tokens_seen:.3g} FLOPs",
        ]
        val = trainer.callback_metrics.get("val/loss")
        dm = getattr(trainer, "datamodule", None)
        if val is not None and dm is not None and hasattr(dm, "unigram_entropy"):
            base = dm.unigram_entropy()
            verdict = "below" if float(val) < base else "NOT below"
            lines.append(
                f"final validation loss {float(val):.4f} nats (ppl {math.exp(float(val)):.2f}) is {verdict} "
                f"the unigram-entropy baseline {base:.4f} nats (ppl {math.exp(base):.2f})"
            )
        for line in lines:
            rank_zero_info(line)
