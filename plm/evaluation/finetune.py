"""One LightningModule for supervised downstream training in three modes.

- ``frozen``: the backbone never trains; its residue embeddings are computed once per data part and
  cached (``plm evaluate`` hands them over precomputed), only the head trains. Cheap enough to run during
  pre-training.
- ``lora``: ``peft`` injects low-rank adapters into the attention and MLP projections; every other
  backbone weight is frozen, so only adapters and the head train.
- ``full``: everything trains, the backbone at a smaller learning rate than the head.

Two ways to build it: from objects (``FineTune(head, kind, backbone, mode, …)``, what ``plm evaluate``
does) or from paths (``FineTune(backbone="ckpt/final", task="gb1", mode="lora")``, what ``plm finetune``'s
config gives): the task YAML then decides the head, its width and the defaults, and the backbone's record
decides MLM or CLM attention.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from plm.evaluation import kinds
from plm.evaluation.backbone import residue_features
from plm.evaluation.heads import head_for
from plm.evaluation.options import MODES, EvalOptions, Mode
from plm.evaluation.trainable import add_lora, enable_gradient_checkpointing, lora_config
from plm.model.transformer import Transformer

IGNORE = kinds.IGNORE


class FineTune(pl.LightningModule):
    """Backbone (or cached embeddings) + head, trained on one task.

    Batches: ``{"tokens": (B, T)}`` (with ``"index"``/``"part"`` from ``DownstreamDataModule``, which frozen
    mode uses to look its cached features up) or ``{"feats": (B, L, h), "mask": (B, L)}`` (precomputed),
    plus ``"labels"`` as :mod:`plm.evaluation.kinds` lays them out."""

    def __init__(
        self,
        head: nn.Module | None = None,
        kind: str = "",
        backbone: Transformer | str | None = None,
        mode: Mode = "frozen",
        lr: float | None = None,
        backbone_lr: float | None = None,
        lora_rank: int | None = None,
        lora_alpha: int | None = None,
        causal: bool | None = None,
        weight_decay: float = 0.0,
        layer: int | None = None,
        *,
        task: str | None = None,
        task_dir: str | None = None,
        head_type: str | None = None,
        lora_dropout: float = 0.0,
        class_weights: Literal["balanced"] | list[float] | None = None,
        gradient_checkpointing: bool = False,
        schedule: Literal["constant", "cosine"] = "constant",
        warmup_fraction: float = 0.0,
        total_steps: int | None = None,
        seed: int = 0,
        random_init: bool = False,
        embed_batch_size: int = 16,
    ) -> None:
        """
        Args:
            head: the head module (object form); None builds it from ``task``.
            kind: the task kind (object form); taken from ``task`` when given.
            backbone: a ``Transformer``, or a plm export / checkpoint path (its record decides ``causal``).
            mode: frozen (cached embeddings, head only), lora (adapters + head) or full.
            lr: head (and LoRA adapter) learning rate; default the task's ``defaults.lr``.
            backbone_lr: learning rate of the backbone in full mode; default the task's.
            lora_rank, lora_alpha, lora_dropout: LoRA adapter shape and dropout.
            causal: CLM attention; default from the backbone's record (False for a module).
            weight_decay: AdamW weight decay.
            layer: representation the head reads (ESM numbering, -1 = final); default the task's.
            task: task name (evaluation/tasks/<name>.yaml) or YAML path: kind, classes and head come from it.
            task_dir: directory of task YAMLs for names.
            head_type: linear or mlp; default the task's ``head``.
            class_weights: 'balanced' (from the training labels), one weight per class (per label: the
                positives' weight), or None.
            gradient_checkpointing: recompute block activations in the backward pass (lora / full).
            schedule: constant learning rate, or cosine decay to 10% over ``total_steps`` (after warm-up).
            warmup_fraction: share of ``total_steps`` with a linear warm-up.
            total_steps: the schedule's end (``plm finetune`` links it to ``trainer.max_steps``).
            seed: seeds dropout per optimizer step, so a resumed run draws what an uninterrupted one draws.
            random_init: same architecture, freshly initialised with ``seed`` (the control a trained
                backbone must beat).
            embed_batch_size: sequences per forward pass when frozen mode caches embeddings.
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: use frozen, lora or full")
        self.spec = None
        self.backbone_source: str | None = None
        if isinstance(backbone, (str, Path)):
            backbone, causal = self._load_backbone(str(backbone), causal, random_init, seed)
        elif random_init and backbone is not None:
            torch.manual_seed(seed)
            backbone = Transformer(backbone.config)
        if task is not None:
            head, kind = self._from_task(task, task_dir, head, backbone, head_type)
        if mode != "frozen" and backbone is None:
            raise ValueError(f"mode {mode!r} needs a backbone; frozen mode trains on cached embeddings")
        if head is None and self.spec is None:
            raise ValueError("FineTune needs a head module or a task to build one from")
        # the task's options (plm's defaults without a task) for what the arguments leave at None
        base = self.spec.options() if self.spec is not None else EvalOptions()
        given = lambda value, default: default if value is None else value
        self.kind, self.mode = kind, mode
        self.lr, self.backbone_lr = float(given(lr, base.lr)), float(given(backbone_lr, base.backbone_lr))
        self.layer = int(given(layer, base.layer))
        self.causal, self.weight_decay = bool(causal), weight_decay
        self.schedule, self.warmup_fraction, self.total_steps = schedule, warmup_fraction, total_steps
        self.seed, self.embed_batch_size, self.class_weights = seed, embed_batch_size, class_weights
        self.lora = {
            "rank": int(given(lora_rank, base.lora_rank)),
            "alpha": int(given(lora_alpha, base.lora_alpha)),
            "dropout": lora_dropout,
        }
        self.head = head
        self.head_type = head_type or (self.spec.head if self.spec is not None else "linear")
        if backbone is not None and mode == "lora":
            backbone = add_lora(backbone, self.lora["rank"], self.lora["alpha"], lora_dropout)
        elif backbone is not None:
            for p in backbone.parameters():
                p.requires_grad = mode == "full"
        if backbone is not None:
            backbone.train()  # loaders return eval-mode models; plm's backbone has no dropout, so this is Lightning's view
        if backbone is not None and gradient_checkpointing:
            enable_gradient_checkpointing(backbone)
        self.backbone = backbone
        # regression targets are trained as (y - mean) / std of the training targets; kept with the head
        self.register_buffer("target_stats", torch.tensor([0.0, 1.0]))
        self.class_weight: Tensor | None = None
        self._features: dict[str, list[Tensor]] = {}
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {}

    # ---- construction from paths -----------------------------------------------------------------------
    def _load_backbone(
        self, path: str, causal: bool | None, random_init: bool, seed: int
    ) -> tuple[Transformer, bool]:
        from plm.model.io import load_with_record

        model, record = load_with_record(path)
        if random_init:
            torch.manual_seed(seed)
            model = Transformer(model.config)
        self.backbone_source = path
        return model, record.causal if causal is None else causal

    def _from_task(
        self,
        task: str,
        task_dir: str | None,
        head: nn.Module | None,
        backbone: Transformer | None,
        head_type: str | None,
    ) -> tuple[nn.Module, str]:
        from plm.evaluation.tasks import load_task

        self.spec = load_task(task, task_dir)
        if head is None and backbone is None:
            raise ValueError(f"task {task!r}: building the head needs the backbone (its width)")
        if head is None and (self.spec.classes or self.spec.kind == "sequence_regression"):
            head = self._build_head(backbone, head_type)
        return head, self.spec.kind  # None: the classes are read with the data (setup builds the head)

    def _build_head(self, backbone: Transformer, head_type: str | None) -> nn.Module:
        n_out = kinds.n_outputs(self.spec.kind, len(self.spec.classes))
        return head_for(self.spec.kind, backbone.config.n_embd, n_out, head_type or self.spec.head)

    def lora_peft_config(self) -> Any:
        return lora_config(self.lora["rank"], self.lora["alpha"], self.lora["dropout"])

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes) if self.spec is not None else []

    # ---- data-dependent state ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Training statistics from the datamodule's training part (when there is one): the regression
        target scale and 'balanced' class weights. A resumed run recomputes the same values (and loads
        ``target_stats`` from its checkpoint)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.head is None:  # the label vocabulary came with the data (e.g. EC numbers in the header)
            if dm is None or not getattr(dm, "classes", None):
                raise ValueError(
                    f"{self.spec.source}: no classes in the YAML and no datamodule to read them from"
                )
            self.spec.classes = list(dm.classes)
            self.head = self._build_head(self.backbone, self.head_type).to(self.device)
        labels = dm.train_labels() if dm is not None and hasattr(dm, "train_labels") else None
        if labels is None or stage != "fit":
            return
        if self.kind == "sequence_regression":
            y = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in labels])
            self.target_stats = torch.tensor([float(y.mean()), float(y.std().clamp(min=1e-8))])
        self.class_weight = self._class_weight(labels)

    def _class_weight(self, labels: list[Tensor]) -> Tensor | None:
        if self.class_weights is None:
            return None
        n = len(self.classes) if self.classes else None
        if self.class_weights == "balanced":
            return kinds.balanced_weights(self.kind, [torch.as_tensor(t) for t in labels], n or 0)
        weights = torch.tensor([float(w) for w in self.class_weights])
        if n is not None and len(weights) != n:
            raise ValueError(
                f"class_weights: {len(weights)} weights for {n} classes {self.classes}; give one per "
                "class in the task's order, or 'balanced'"
            )
        return weights

    # ---- forward -------------------------------------------------------------------------------------------
    def features(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if "feats" in batch:
            return batch["feats"], batch["mask"]
        if self.backbone is None:
            raise ValueError("batch has tokens but the module has no backbone (frozen mode expects 'feats')")
        if self.mode == "frozen":
            if "part" in batch and self._datamodule() is not None:
                return self._cached(batch["part"], batch["index"])
            with torch.no_grad():
                return residue_features(self.backbone, batch["tokens"], self.causal, self.layer)
        return residue_features(self.backbone, batch["tokens"], self.causal, self.layer)

    def _datamodule(self) -> Any:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return dm if dm is not None and hasattr(dm, "sequences") else None

    def _cached(self, part: str, index: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen features of a part's records, embedded once (all of the part, in a fixed order and
        batching, so a resumed run caches exactly what the first attempt did)."""
        if part not in self._features:
            from plm.evaluation.backbone import embed

            seqs = self._datamodule().sequences(part)
            feats = embed(
                self.backbone,
                seqs,
                10**9,
                self.causal,
                self.embed_batch_size,
                progress=False,
                desc=f"embedding {part}",
                layer=self.layer,
            )
            self._features[part] = [f.to(self.device) for f in feats]
        rows = [self._features[part][int(i)] for i in index]
        width = max(r.shape[0] for r in rows)
        feats = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=feats.device)
        for i, r in enumerate(rows):
            feats[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return feats, mask

    def forward(self, batch: dict[str, Any]) -> Tensor:
        feats, mask = self.features(batch)
        return self.head(feats, mask)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        if self.kind == "sequence_regression":
            mean, std = self.target_stats
            labels = (labels.float() - mean) / std
        weight = self.class_weight.to(out.device) if self.class_weight is not None else None
        return kinds.loss(self.kind, out, labels, weight)

    # ---- steps ---------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Dropout (LoRA, MLP heads) draws from a seed of (seed, step): a resumed run draws the same masks."""
        from plm.utils.hashing import mix64

        torch.manual_seed(int(mix64(self.seed, self.global_step)) % (1 << 63))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("test", batch)

    def _collect(self, stage: str, batch: dict[str, Any]) -> None:
        out = self(batch)
        self._outputs.setdefault(stage, []).append(
            (out.detach().float().cpu(), batch["labels"].detach().cpu())
        )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        batches = self._outputs.pop(stage, [])
        if not batches or self.trainer.sanity_checking:
            return
        values = self.evaluate_outputs(batches)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if not math.isnan(v)}, sync_dist=True)

    def evaluate_outputs(self, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """The loss and every metric of the kind over a whole split (metrics do not average over batches)."""
        outs, labels = [o for o, _ in batches], [y for _, y in batches]
        n_out = outs[0].shape[-1]
        rows, ys = kinds.scored_rows(self.kind, outs, labels, n_out)
        mean, std = (float(v) for v in self.target_stats.cpu())
        y_train = (ys - mean) / std if self.kind == "sequence_regression" else ys
        weight = self.class_weight.cpu() if self.class_weight is not None else None
        with torch.no_grad():
            values = {"loss": float(kinds.loss(self.kind, rows, y_train, weight))}
        classes = self.classes or [str(i) for i in range(n_out)]
        return values | kinds.metrics(self.kind, rows, y_train, classes, mean, std)

    # ---- optimisation -------------------------------------------------------------------------------------
    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "lr": self.lr}]
        if self.backbone is not None and self.mode != "frozen":
            lr = self.lr if self.mode == "lora" else self.backbone_lr
            groups.append({"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        if self.schedule == "constant" and not self.warmup_fraction:
            return optimizer
        from plm.lit.schedule import cosine_schedule

        if not self.total_steps or self.total_steps <= 0:
            raise ValueError(
                f"schedule {self.schedule!r} with warm-up {self.warmup_fraction} needs total_steps "
                "(plm finetune links it to --trainer.max_steps)"
            )
        warmup, total = int(self.warmup_fraction * self.total_steps), self.total_steps
        cosine = self.schedule == "cosine"

        def factor(step: int) -> float:  # warm-up, then constant or plm's one cosine schedule to 10%
            if cosine:
                return cosine_schedule(step, total, warmup, min_ratio=0.1)
            return (step + 1) / warmup if step < warmup else 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
