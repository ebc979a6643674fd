"""How lora and full fine-tuning make a backbone trainable: LoRA adapters (peft), gradient checkpointing."""

from __future__ import annotations

from typing import Any

import torch

from plm.model.transformer import Transformer

LORA_TARGETS = ["qkv", "out", "fc_in", "fc_out"]


def add_lora(backbone: Transformer, rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> Transformer:
    """Inject LoRA adapters (peft) into every attention/MLP projection and freeze all other weights."""
    from peft import inject_adapter_in_model

    backbone = inject_adapter_in_model(lora_config(rank, alpha, dropout), backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad = "lora_" in name
    return backbone


def lora_config(rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)


def enable_gradient_checkpointing(backbone: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (memory for time).

    The block's ``forward`` is wrapped in place rather than the block replaced, so parameter names, LoRA
    targets, forward hooks (layer choice) and checkpoints are unchanged. Without gradients (frozen mode,
    evaluation) the block runs as it is."""
    from torch.utils.checkpoint import checkpoint

    for block in backbone.blocks:
        inner = block.forward

        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
