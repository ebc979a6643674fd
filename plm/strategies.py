"""Scale-out: FSDP2 for sizes from ``1b`` up, as a Lightning strategy the size preset names.

``FSDP2`` is Lightning's ``ModelParallelStrategy`` (PyTorch's ``fully_shard``: every parameter a DTensor
sharded over all ranks) fixed to pure data-parallel sharding. ``LanguageModel.configure_model`` calls
:func:`shard_transformer`: one FSDP unit per Transformer block (optionally recomputing its activations
in the backward pass), then one for the rest (embedding, final norm, LM head), with a bf16 mixed-precision
policy under ``bf16-mixed`` (parameters all-gathered in bf16, gradients reduced in fp32 onto fp32
shards). A model built on the meta device (``meta_init``, set by the recipe for sharded sizes) gets its
storage and initial values one block at a time just before that block is sharded, so a 7b/10b model is
never whole on one rank, and its weights are the ones a whole build with the same seed would have.

Why ``ModelParallelStrategy`` and not Lightning's ``FSDPStrategy``: that one wraps FSDP1 (flat parameters,
its own state-dict types, wrapping policies); FSDP2 keeps every parameter's name and shape, initialises
from the meta device without a wrapping policy, saves through ``torch.distributed.checkpoint`` (sharded
checkpoints that load on any world size) and is what PyTorch develops. Lightning 2.6's strategy runs it
on CPUs with gloo as well, which is how the test suite runs it (tests/test_multiprocess.py).

Checkpoints are sharded directories (``step….ckpt/`` with one shard per rank plus ``meta.pt``), written
into a hidden sibling and renamed into place when complete, like every other plm output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from plm.model.transformer import Transformer, init_weights
from plm.utils.atomic import atomic_directory


class FSDP2(ModelParallelStrategy):
    def __init__(
        self,
        activation_checkpointing: bool = True,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            activation_checkpointing: recompute each block's activations in the backward pass (memory for
                about a third more compute; ``plm train --dry-run`` shows both).
            reshard_after_forward: free each block's gathered parameters after its forward and gather them
                again for the backward (ZeRO-3); False keeps them (ZeRO-2: more memory, less traffic).
            save_distributed_checkpoint: one shard per rank (resumable on any world size); False gathers
                the full state on rank 0 into one file.
            **kwargs: ``process_group_backend``, ``timeout`` of Lightning's ``ModelParallelStrategy``.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # shard over every rank: Lightning's "auto" would make the data-parallel size the number of nodes
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def param_dtype(self) -> torch.dtype | None:
        """bf16 under ``bf16-mixed`` (half the all-gather traffic, what autocast would cast to anyway)."""
        precision = getattr(self.precision_plugin, "precision", "32-true")
        return torch.bfloat16 if str(precision).startswith("bf16") else None

    def shard(self, model: Transformer) -> None:
        """``fully_shard`` the Transformer over this run's ranks (what ``configure_model`` calls)."""
        shard_transformer(
            model,
            self.device_mesh["data_parallel"],
            self.root_device,
            param_dtype=self.param_dtype,
            activation_checkpointing=self.activation_checkpointing,
            reshard_after_forward=self.reshard_after_forward,
        )

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Sharded save into a hidden sibling all ranks write to, renamed over ``filepath`` once complete: a
        kill mid-save leaves the previous checkpoint whole."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        if self.is_global_zero:
            with atomic_directory(path) as tmp:
                self.broadcast(str(tmp))
                super().save_checkpoint(checkpoint, tmp, storage_options)
                self.barrier("plm-sharded-save")
        else:
            tmp = Path(self.broadcast(None))
            super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier("plm-sharded-save")
        self.barrier("plm-sharded-publish")


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_transformer(
    model: Transformer,
    mesh: Any,
    device: torch.device,
    *,
    param_dtype: torch.dtype | None = None,
    activation_checkpointing: bool = True,
    reshard_after_forward: bool = True,
) -> None:
    """One FSDP unit per block, then the root (embedding, final norm, LM head; the tied head stays with the
    embedding it shares its weight with). Meta parts get storage and values just before they are sharded.
    Idempotent: Lightning calls ``configure_model`` again for every ``fit`` / ``validate`` of a trainer."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        return
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    for i, block in enumerate(model.blocks):
        materialize(block, model, device, prefix=f"blocks.{i}.")
        if activation_checkpointing:  # the wrapper's parameter names are cleaned in every state dict
            block = model.blocks[i] = checkpoint_wrapper(block)
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    materialize_root(model, device)
    # the root's parameters are used first (embedding) and last (head): keep them gathered between the two
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


def materialize(module: nn.Module, model: Transformer, device: torch.device, prefix: str) -> None:
    """Storage on ``device`` and the initial values ``model`` would have had built whole (meta modules only)."""
    if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        return
    module.to_empty(device=device)
    init_weights(
        ((prefix + n, p) for n, p in module.named_parameters()), model.init_seed, model.config.n_layer
    )


def materialize_root(model: Transformer, device: torch.device) -> None:
    """The parts outside the blocks; the tied LM head is pointed back at the embedding (``to_empty`` gives
    each module its own new tensor) and the rotary frequencies are recomputed."""
    if not any(
        t.is_meta
        for n, t in (*model.named_parameters(), *model.named_buffers())
        if not n.startswith("blocks.")
    ):
        return
    for name, child in model.named_children():
        if name != "blocks":
            child.to_empty(device=device)
    if model.config.tied_head:
        model.head.weight = model.embed.weight
    model.rotary.reset_parameters()
    init_weights(
        ((n, p) for n, p in model.named_parameters() if not n.startswith("blocks.")),
        model.init_seed,
        model.config.n_layer,
    )


def materialize_whole(model: Transformer, device: torch.device) -> None:
    """A meta-built model on one device, for runs that do not shard (DDP, one GPU, CPU)."""
    for i, block in enumerate(model.blocks):
        materialize(block, model, device, prefix=f"blocks.{i}.")
    materialize_root(model, device)


def full_model(model: Transformer) -> Transformer | None:
    """The whole model on the CPU: ``model`` itself when not sharded; under FSDP2 its shards gathered on
    rank 0 (a collective: every rank must call it; the others get None), for exports."""
    if not is_sharded(model):
        return model
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        whole = Transformer(model.config, init_seed=model.init_seed)
    whole.load_state_dict(state, strict=True, assign=True)
    if whole.config.tied_head:
        whole.head.weight = whole.embed.weight
    whole.rotary.to_empty(device="cpu")
    whole.rotary.reset_parameters()
    return whole.train(model.training)
