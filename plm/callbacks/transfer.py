"""CLM → MLM transfer in one run (Cheng et al. 2024, §"CLM → MLM transfer"; docs/reference.md).

The run starts as a causal LM; once the FLOPs spent reach the CLM budget the callback switches the same
module to the masked objective: backbone weights carry over untouched, attention becomes bidirectional
(the objective decides the mask), inputs become MLM-masked (masking lives in the module), and the
optimizer and LR schedule restart from zero (fresh AdamW state, fresh warm-up + cosine over the steps
that remain). The LM head is carried over from the CLM by default (same vocabulary and shape; the paper
does not re-initialise it); ``head_init="random"`` re-initialises it instead.

Budget: by default the CLM law's compute-optimal budget C_CLM(N) for this model's non-embedding N (the
released runs give each stage its compute-optimal budget for the shared size; ``plm train`` and
``plm plan`` pass the same value as ``switch_flops`` from the one recipe, :mod:`plm.scaling.recipe`),
or ``clm_share`` of the run's planned compute, or an explicit ``switch_flops``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from plm.data.protocol import TrainingData, training_data
from plm.scaling import recipe


def clm_budget(n_non_embedding: float) -> float:
    """The CLM stage's default budget, the recipe's (:func:`plm.scaling.recipe.transfer_switch_flops`): the
    compute at which N is the CLM law's optimum, as in the plan ``plm train`` and ``plm plan`` make."""
    return recipe.transfer_switch_flops(n_non_embedding)


class CLMToMLMTransfer(pl.Callback):
    def __init__(
        self,
        switch_flops: float | None = None,
        clm_share: float | None = None,
        head_init: Literal["clm", "random"] = "clm",
    ) -> None:
        """
        Args:
            switch_flops: switch once 6·N·tokens reaches this many FLOPs.
            clm_share: or switch after this share of the run's planned compute (the paper suggests 10–20%).
            head_init: MLM head start: 'clm' keeps the CLM's LM head, 'random' re-initialises it.
        """
        if switch_flops is not None and clm_share is not None:
            raise ValueError("CLMToMLMTransfer: give switch_flops or clm_share, not both")
        if clm_share is not None and not 0 < clm_share < 1:
            raise ValueError(f"CLMToMLMTransfer: clm_share={clm_share} must be in (0, 1)")
        self.switch_flops, self.clm_share, self.head_init = switch_flops, clm_share, head_init

    def budget(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        n = pl_module.config.n_params_non_embedding()
        if self.switch_flops is not None:
            return float(self.switch_flops)
        if self.clm_share is not None:
            dm: TrainingData | None = training_data(trainer)
            if dm is None:
                raise ValueError(
                    "CLMToMLMTransfer: clm_share needs the run's data module to plan its tokens "
                    "(plm.data.protocol.TrainingData); give switch_flops instead"
                )
            planned_tokens = trainer.max_steps * trainer.accumulate_grad_batches * dm.planned_tokens(1)
            return self.clm_share * 6.0 * n * planned_tokens
        return clm_budget(n)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.objective == "clm" and pl_module.stage_start_step == 0 and trainer.global_step == 0:
            rank_zero_info(f"transfer: CLM stage until {self.budget(trainer, pl_module):.3g} FLOPs, then MLM")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.objective != "clm":
            return  # already switched (also after a resume in the MLM stage)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only between optimizer steps
        flops = 6.0 * pl_module.config.n_params_non_embedding() * pl_module.tokens_seen
        if flops >= self.budget(trainer, pl_module):
            self.switch(trainer, pl_module)

    def switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.objective = "mlm"
        pl_module.stage_start_step = trainer.global_step
        pl_module.stage_start_tokens = pl_module.tokens_seen
        if self.head_init == "random":
            head = pl_module.model.head
            with torch.no_grad():
                if head.transform:  # ESM-2's dense → GELU → LayerNorm in front of the decoder
                    torch.nn.init.normal_(head.dense.weight, std=0.02)
                    head.dense.bias.zero_()
                    head.norm.reset_parameters()
                if not head.tied:  # a tied decoder is the embedding, which the backbone keeps
                    torch.nn.init.normal_(head.weight, std=0.02)
                head.bias.zero_()
        trainer.strategy.setup_optimizers(trainer)  # fresh AdamW state + fresh warm-up/cosine
        n = pl_module.config.n_params_non_embedding()
        stats = {
            "transfer/switch_step": float(trainer.global_step),
            "transfer/clm_tokens": float(pl_module.tokens_seen),
            "transfer/clm_flops": 6.0 * n * pl_module.tokens_seen,
        }
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)
        rank_zero_info(
            f"transfer: switched to MLM at step {trainer.global_step} after {pl_module.tokens_seen:,} CLM tokens "
            f"({stats['transfer/clm_flops']:.3g} FLOPs); optimizer and LR schedule restarted for "
            f"{trainer.max_steps - trainer.global_step} MLM steps; LM head from {self.head_init}"
        )
