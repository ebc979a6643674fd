"""One LightningModule for supervised downstream training in three modes.

- ``frozen``: no backbone in the module; batches carry cached residue embeddings (computed once by
  the runner), only the probe trains. Cheap enough to run during pre-training.
- ``lora``: ``peft`` injects low-rank adapters into the attention and MLP projections; every other
  backbone weight is frozen, so only adapters and the head train.
- ``full``: everything trains, the backbone at a smaller learning rate than the head.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from plm.model.transformer import Transformer

Mode = Literal["frozen", "lora", "full"]
IGNORE = -100
LORA_TARGETS = ["qkv", "out", "fc_in", "fc_out"]


def add_lora(backbone: Transformer, rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> Transformer:
    """Inject LoRA adapters (peft) into every attention/MLP projection and freeze all other weights."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    backbone = inject_adapter_in_model(cfg, backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad = "lora_" in name
    return backbone


def resolve_layer(layer: int, n_layer: int) -> int:
    """ESM ``repr_layers`` numbering: 0 = token embeddings, i = residual stream after block i, ``n_layer``
    (or -1) = the last block's output after the final LayerNorm (what ``Transformer.hidden`` returns)."""
    resolved = layer + n_layer + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layer:
        raise ValueError(f"layer {layer}: the model has layers 0..{n_layer} (0 = embeddings, {n_layer} or -1 = final, "
                         "after the final norm); set 'layer' in the task's defaults")
    return resolved


def residue_features(backbone: Transformer, tokens: Tensor, causal: bool = False, layer: int = -1) -> tuple[Tensor, Tensor]:
    """(B, T-2, h) features of residues only (drop <cls> and the last column) and the residue mask.

    ``tokens`` are ``<cls> seq <eos> <pad>…`` rows; residue t sits at column t+1. ``layer`` picks the
    representation (``resolve_layer``); intermediate layers are read with forward hooks on the blocks, so
    the backbone's own forward is the only code path."""
    from plm.tokenizer import FIRST_RESIDUE

    n_layer = len(backbone.blocks)
    resolved = resolve_layer(layer, n_layer)
    captured: list[Tensor] = []
    if resolved == 0:  # the input of block 0 is the embedding (after ESM token-dropout scaling)
        hook = backbone.blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    elif resolved < n_layer:
        hook = backbone.blocks[resolved - 1].register_forward_hook(lambda m, args, out: captured.append(out[0]))
    try:
        hidden, _ = backbone.hidden(tokens, causal=causal)
    finally:
        if resolved < n_layer:
            hook.remove()
    if resolved < n_layer:
        hidden = captured[0]
    body = tokens[:, 1:-1]
    return hidden[:, 1:-1], body >= FIRST_RESIDUE


class FineTune(pl.LightningModule):
    """Backbone (or cached embeddings) + head, trained on one task.

    Batches: ``{"tokens": (B, T)}`` (lora/full) or ``{"feats": (B, L, h), "mask": (B, L)}`` (frozen),
    plus ``"labels"``: (B, L) class ids with -100 ignored for residue tasks, (B,) otherwise."""

    def __init__(self, head: nn.Module, kind: str, backbone: Transformer | None = None, mode: Mode = "frozen",
                 lr: float = 1e-3, backbone_lr: float = 1e-4, lora_rank: int = 8, lora_alpha: int = 16,
                 causal: bool = False, weight_decay: float = 0.0, layer: int = -1) -> None:
        super().__init__()
        if mode not in ("frozen", "lora", "full"):
            raise ValueError(f"mode {mode!r}: use frozen, lora or full")
        if mode != "frozen" and backbone is None:
            raise ValueError(f"mode {mode!r} needs a backbone; frozen mode trains on cached embeddings")
        self.kind, self.mode, self.lr, self.backbone_lr = kind, mode, lr, backbone_lr
        self.causal, self.weight_decay, self.layer = causal, weight_decay, layer
        self.head = head
        if backbone is not None and mode == "lora":
            backbone = add_lora(backbone, lora_rank, lora_alpha)
        elif backbone is not None:
            for p in backbone.parameters():
                p.requires_grad = mode == "full"
        self.backbone = backbone

    def features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "feats" in batch:
            return batch["feats"], batch["mask"]
        if self.backbone is None:
            raise ValueError("batch has tokens but the module has no backbone (frozen mode expects 'feats')")
        if self.mode == "frozen":
            with torch.no_grad():
                return residue_features(self.backbone, batch["tokens"], self.causal, self.layer)
        return residue_features(self.backbone, batch["tokens"], self.causal, self.layer)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        feats, mask = self.features(batch)
        return self.head(feats, mask)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        if self.kind in ("residue_classification", "sequence_classification"):
            out = out[:, : labels.shape[1]] if labels.dim() == 2 else out
            return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1).long(),
                                               ignore_index=IGNORE)
        if self.kind == "sequence_regression":
            return nn.functional.mse_loss(out.squeeze(-1), labels.float())
        if self.kind == "contacts":
            keep = labels >= 0
            return nn.functional.binary_cross_entropy_with_logits(out[:, : labels.shape[1], : labels.shape[2]][keep],
                                                                  labels[keep].float())
        raise ValueError(f"kind {self.kind!r} has no supervised loss")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("finetune/train_loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "lr": self.lr}]
        if self.backbone is not None and self.mode != "frozen":
            lr = self.lr if self.mode == "lora" else self.backbone_lr
            groups.append({"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)
