"""One LightningModule for both objectives; ``MaskedLM`` and ``CausalLM`` only pick the default.

The objective is an attribute, not a class hierarchy of models, so the CLM→MLM transfer callback can
switch it in place: same backbone, the mask becomes bidirectional and the inputs become masked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from plm.data.batch import Batch, as_batch
from plm.data.protocol import TrainingData, training_data
from plm.lit.arch import ArchOverrides, model_config
from plm.lit.objectives import IGNORE, Objective, clm_labels, mlm_inputs
from plm.lit.schedule import MIN_LR_RATIO, WARMUP_FRACTION, cosine_schedule, warmup_steps
from plm.model.config import SIZES, ModelConfig
from plm.model.transformer import Transformer
from plm.tokenizer import MASK
from plm.utils.hashing import mix64


class LanguageModel(pl.LightningModule):
    objective: Objective
    default_objective: Objective = "mlm"

    def __init__(
        self,
        objective: Objective | None = None,
        size: str = "tiny",
        arch: ArchOverrides | None = None,
        lr: float | None = None,
        min_lr_ratio: float = MIN_LR_RATIO,
        warmup_fraction: float = WARMUP_FRACTION,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        total_steps: int = 1000,
        mask_prob: float = 0.15,
        seed: int = 0,
        init_from: str | None = None,
        compile: bool = False,
        meta_init: bool = False,
    ) -> None:
        """
        Args:
            objective: 'mlm' (bidirectional, masked residues) or 'clm' (causal, next token); None
                takes the class default (MaskedLM: mlm, CausalLM: clm).
            size: a ladder size (tiny, 8m, 35m, … 10b); its shape is the starting point for ``arch``.
            arch: ModelConfig fields overriding the preset, e.g. {flavour: progen2, token_dropout: true};
                keys and values are checked against ModelConfig when the config is parsed.
            lr: peak learning rate; None takes the size's peak LR from the papers.
            min_lr_ratio: the cosine ends at lr × this ratio (papers: 0.1).
            warmup_fraction: share of steps spent warming up linearly (papers: 2.5%).
            weight_decay: AdamW decay on matrices (not on norms, biases, embeddings).
            betas: AdamW betas (papers: 0.9, 0.95).
            total_steps: optimizer steps of the run; the cosine reaches its floor exactly here.
                Linked to trainer.max_steps by the CLI.
            mask_prob: MLM share of residues selected for prediction (15%).
            seed: seeds initialisation and the objective's masks.
            init_from: weights-only start from a plm export or checkpoint (not a resume).
            compile: ``torch.compile`` each Transformer block (fuses norms, rotary, GELU, casts; the
                attention kernel itself stays eager). Parameter names and checkpoints are unchanged.
                The first steps pay the compilation.
            meta_init: build the Transformer on the meta device; ``configure_model`` gives it storage and
                its initial values (sharded block by block under FSDP2, whole otherwise), so a 7b/10b model is
                never whole on one rank. The recipe sets it for sharded sizes. Same weights as without.
        """
        super().__init__()
        objective = objective or self.default_objective
        self.save_hyperparameters()
        self.hparams.objective = objective
        if objective not in ("mlm", "clm"):
            raise ValueError(f"objective={objective!r}: use 'mlm' or 'clm'")
        config = model_config(size, arch)
        if meta_init and init_from:
            raise ValueError(
                "model.init_from with model.meta_init: load the weights into a whole model (drop "
                "meta_init) or convert them to a sharded checkpoint and resume from it"
            )
        with torch.random.fork_rng(), torch.device("meta") if meta_init else contextlib.nullcontext():
            torch.manual_seed(seed)
            self.model = Transformer(config)
        self.objective = objective
        self.peak_lr = lr if lr is not None else SIZES[size].peak_lr
        self.tokens_seen = 0  # real (non-pad) tokens, all ranks
        self.stage_start_step = 0  # where the current LR schedule started (transfer restarts it)
        self.stage_start_tokens = 0  # tokens seen when the current objective started
        if init_from:
            from plm.lit.init import load_backbone_weights

            load_backbone_weights(self.model, init_from)
        if compile:
            # per block, not the whole module: blocks are identical, so one compiled graph serves all
            # layers, and FSDP units / activation checkpointing are per block too (torchtitan does the same)
            for block in self.model.blocks:
                block.compile()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def causal(self) -> bool:
        return self.objective == "clm"

    def forward(self, tokens: Tensor, doc_ids: Tensor | None = None) -> Tensor:
        return self.model(tokens, doc_ids, causal=self.causal)

    # ---- the shared step ----------------------------------------------------------------------------
    def _generator(self, batch: Batch) -> torch.Generator:
        """The masks' generator: a pure function of (model seed, the batch's masking seed, rank)."""
        seed = int(mix64(self.hparams.seed, batch.mask_seed, self.global_rank) >> 1)
        return torch.Generator(device=batch.device).manual_seed(seed)

    def objective_inputs(self, batch: Batch | Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        batch = as_batch(batch)
        tokens, docs = batch.tokens, batch.doc_ids
        if self.objective == "mlm":
            return mlm_inputs(tokens, docs, self._generator(batch), self.hparams.mask_prob)
        return tokens, clm_labels(tokens, docs)

    def loss(self, batch: Batch | Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """The training objective: mean cross-entropy over predicted positions, and their count."""
        loss, count, _ = self.scored_loss(batch)
        return loss, count

    def scored_loss(
        self, batch: Batch | Mapping[str, Any], masked_only: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean cross-entropy over the scored positions, their count and their labels. The LM head runs
        only on positions that have a label (15% of them for MLM).

        ``masked_only`` (MLM validation): score only positions whose input is ``<mask>``. The 10% of
        selected positions left unchanged show the answer in the input (their loss is ≈ 0.6 nats), so
        averaging over them flatters the model; training keeps the full 80/10/10 objective."""
        batch = as_batch(batch)
        inputs, labels = self.objective_inputs(batch)
        sel = labels != IGNORE
        if masked_only and self.objective == "mlm":
            sel &= inputs == MASK
        logits = self.model(inputs, batch.doc_ids, causal=self.causal, select=sel)  # (n_predicted, V)
        loss = F.cross_entropy(logits.float(), labels[sel])
        return loss, sel.sum(), labels[sel]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """The loss of the whole global batch, token-weighted: DDP and FSDP average the ranks' gradients, so
        rank r's mean is scaled by its share of the scored positions (count_r · world / Σ count); a plain
        average of per-rank means would weight a rank's positions by how few it has, and 2 ranks would
        not train like one process on the same rows (issue #21). One all-reduce carries it with the
        token count."""
        batch = as_batch(batch)
        loss, count = self.loss(batch)
        n_real = torch.tensor(float(batch.n_real), device=self.device, dtype=torch.float64)
        stats = torch.stack([n_real, count.to(torch.float64), loss.detach().to(torch.float64) * count])
        world = self.trainer.world_size
        if world > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
            loss = loss * (count * world / stats[1].clamp(min=1)).to(loss.dtype)
        n_real, total, loss_sum = stats.tolist()
        self.tokens_seen += int(n_real)
        mean = loss_sum / max(total, 1.0)  # over the global batch, the same on every rank
        self.log("train/loss", mean, prog_bar=True)
        self.log("train/ppl", math.exp(min(mean, 50.0)))
        self.log("train/tokens", float(self.tokens_seen))
        self.log("train/objective_is_mlm", float(self.objective == "mlm"))
        self.log("train/flops", self.config.flops_per_token(attention=False) * self.tokens_seen)
        return loss

    @property
    def val_metric(self) -> str:
        """Per-set metric stem: it names the positions scored (MLM: ``<mask>`` inputs only)."""
        return "masked_loss" if self.objective == "mlm" else "loss"

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        batch = as_batch(batch)
        loss, count, labels = self.scored_loss(batch, masked_only=True)
        sums = self._val_sums.setdefault(batch.set, [0.0, 0, 0.0])
        if not count:  # a rank's filler batch (plm.data: every rank runs as many batches): nothing scored
            return
        sums[0] += float(loss) * int(count)
        sums[1] += int(count)
        if self._unigram_nll is not None:  # the context-free baseline on exactly these positions
            sums[2] += float(self._unigram_nll.to(labels.device)[labels].sum())

    def on_validation_epoch_start(self) -> None:
        self._val_sums: dict[str, list] = {}
        dm: TrainingData | None = training_data(self._trainer)
        self._unigram_nll: Tensor | None = None
        if dm is not None and dm.is_set_up:
            p = torch.as_tensor(dm.unigram_probs(), dtype=torch.float64)
            self._unigram_nll = -torch.log(p.clamp(min=1e-12))

    def on_validation_epoch_end(self) -> None:
        """Per set: ``val/<set>/<metric>`` and the unigram baseline on the same positions; over the
        in-distribution held-out sets: ``val/loss`` (what best.ckpt and sweeps rank by) and ``val/ppl``."""
        dm: TrainingData | None = training_data(self._trainer)
        heldout = set(dm.heldout_names if dm is not None else self._val_sums)
        metric = self.val_metric
        total = torch.zeros(3, dtype=torch.float64)
        for name, (s, n, u) in sorted(self._val_sums.items()):
            s_t = torch.tensor([s, float(n), u], device=self.device, dtype=torch.float64)
            if self.trainer.world_size > 1:
                s_t = self.trainer.strategy.reduce(s_t, reduce_op="sum")
            count = float(s_t[1].clamp(min=1))
            mean = float(s_t[0]) / count
            self.log(f"val/{name}/{metric}", mean, sync_dist=False, add_dataloader_idx=False)
            self.log(
                f"val/{name}/{metric.replace('loss', 'ppl')}",
                math.exp(min(mean, 50)),
                add_dataloader_idx=False,
            )
            if self._unigram_nll is not None:
                self.log(f"val/{name}/unigram_{metric}", float(s_t[2]) / count, add_dataloader_idx=False)
            if name in heldout:
                total += s_t.cpu()
        if total[1]:
            mean = float(total[0] / total[1])
            self.log("val/loss", mean, prog_bar=True, add_dataloader_idx=False)
            self.log("val/ppl", math.exp(min(mean, 50)), add_dataloader_idx=False)
            if self._unigram_nll is not None:
                self.log("val/unigram_loss", float(total[2] / total[1]), add_dataloader_idx=False)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def configure_model(self) -> None:
        """Shard the Transformer under FSDP2, give a meta-built one storage otherwise, log the attention
        kernel. Called by Lightning before the strategy sets the model up (and again per fit/validate)."""
        from lightning.pytorch.utilities import rank_zero_info

        from plm.model.attention import describe_choice
        from plm.strategies import FSDP2, materialize_whole

        strategy = self.trainer.strategy
        if isinstance(strategy, FSDP2):
            strategy.shard(self.model)
        else:
            materialize_whole(self.model, strategy.root_device)
        precision = str(self.trainer.precision)
        dtype = (
            torch.bfloat16
            if precision.startswith("bf16")
            else torch.float16
            if precision.startswith("16")
            else torch.float32
        )
        rank_zero_info(describe_choice(strategy.root_device.type, dtype, self.config.head_dim))

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.peak_lr,
            betas=tuple(self.hparams.betas),
            # foreach, not fused: Lightning refuses gradient clipping with fused optimizers under
            # mixed precision (they unscale internally), and clipping at 1.0 is part of the recipe
            foreach=True,
        )
        total = max(1, self.hparams.total_steps - self.stage_start_step)
        warmup = warmup_steps(total, self.hparams.warmup_fraction)
        ratio = self.hparams.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_schedule(s, total, warmup, ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    # ---- checkpoint contents --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint record (plm.model.record) as of now: after a CLM→MLM switch it says MLM."""
        from plm.model.record import RECORD_KEY, record_dict

        record = record_dict(self.config, self.objective, self.global_step, self.tokens_seen)
        checkpoint[RECORD_KEY] = record
        # the same values under the keys older plm versions read (never a second source: copied from record)
        checkpoint["plm_model_config"] = record["model"]
        checkpoint["plm_objective"] = record["objective"]
        checkpoint["plm_tokens_seen"] = record["tokens_seen"]
        checkpoint["plm_stage_start_step"] = self.stage_start_step
        checkpoint["plm_stage_start_tokens"] = self.stage_start_tokens
        from plm.reliability.resume import CHECKPOINT_KEY, optimizer_settings

        checkpoint[CHECKPOINT_KEY] = optimizer_settings(self)  # what the saved optimizer state was built with

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from plm.model.record import stored_record
        from plm.reliability.resume import saved_settings

        record = stored_record(checkpoint)
        self.objective = record.get("objective") or self.objective
        self.tokens_seen = int(record.get("tokens_seen") or 0)
        self.stage_start_step = int(checkpoint.get("plm_stage_start_step", 0))
        self.stage_start_tokens = int(checkpoint.get("plm_stage_start_tokens", 0))
        self._saved_optimizer = saved_settings(checkpoint)

    def on_train_start(self) -> None:
        """A resume restored the optimizer as saved: a learning rate (or other optimizer setting) given with
        the resume is applied from here on, and the change is logged (plm.reliability.resume)."""
        from plm.reliability.resume import apply_resumed_settings

        apply_resumed_settings(self, getattr(self, "_saved_optimizer", None))
        self._saved_optimizer = None


class MaskedLM(LanguageModel):
    """ESM-2-style masked LM (bidirectional attention, 15% masking, loss on masked residues)."""

    default_objective: Objective = "mlm"


class CausalLM(LanguageModel):
    """ProGen2-style causal LM (causal attention, next-token loss within each sequence)."""

    default_objective: Objective = "clm"
