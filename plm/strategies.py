"""Scale-out strategies as config values. Lightning does the work; this only names the policies.

``FSDP`` shards parameters, gradients and optimizer state, wraps every Transformer ``Block`` as one
FSDP unit and, by default, recomputes each block's activations in the backward pass: what sizes from
``1b`` up need on 40–80 GB GPUs. Select it in YAML with ``trainer.strategy.class_path: plm.strategies.FSDP``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from plm.model.transformer import Block


class FSDP(FSDPStrategy):
    def __init__(self, activation_checkpointing: bool = True, sharding_strategy: str = "FULL_SHARD", **kwargs: Any) -> None:
        """
        Args:
            activation_checkpointing: recompute Block activations in backward (memory for compute).
            sharding_strategy: FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD or NO_SHARD.
        """
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            **kwargs,
        )
