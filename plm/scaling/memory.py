"""What one GPU holds while training a plan, how long a step takes, and the smallest layout that fits.

``plm train --size S --devices G --num-nodes M --dry-run`` prints this per GPU for the recipe's strategy
and micro-batch (``MemoryPlan.table``); ``plm train`` refuses a layout that does not fit and names the
smallest one that does. Bytes, with P all parameters (embedding included), W GPUs, t = rows × row length
tokens per GPU micro-batch, h hidden, f FFN width, V vocabulary, L layers, bf16-mixed training:

* DDP: fp32 weights 4P, fp32 gradients 4P, DDP's gradient buckets 4P (Lightning keeps
  ``gradient_as_bucket_view`` off), AdamW moments 8P, autocast's bf16 weight copies 2P.
* FSDP2 (``plm.strategies.FSDP2``): fp32 weight, gradient and moment shards 4P/W + 4P/W + 8P/W; in flight
  the bf16 root (embedding, head, final norm: kept gathered) 2P_root and per block being computed: bf16
  weights of that block and the prefetched next one 4P_block, its bf16 gradients 2P_block and their fp32
  copy for the reduce-scatter 4P_block.
* Activations per token per layer, as saved for the backward by plm's block with a varlen kernel (no
  T × T scores): esm2 24h + 4f, progen2 20h + 4f bytes. esm2: fp32 LayerNorm inputs 2 × 4h, bf16 casts
  of the two matmul inputs 2 × 2h, the q,k,v projection 6h (kept whole by the v view), rotated q,k 4h,
  attention output 2h, GELU input and output 2 × 2f; progen2 shares one LayerNorm but casts it twice.
  Read from the fields (``parallel_block``: one LN; ``activation='geglu'``: 8f, the gate, the value, the
  GELU output and their product), so DeepNorm or a new flavour needs no new case.
  Plus fp32 statistics: 8 bytes per LayerNorm (mean, rstd) and the kernel's log-sum-exp, 4 per head.
  Measured with ``torch.autograd.graph.saved_tensors_hooks`` on this code (tests/test_memory_plan.py).
  With activation checkpointing a layer keeps only its fp32 input (4h) and one layer is recomputed at a
  time. Outside the layers: the final norm's input and output (8h) and the logits (10V: bf16, fp32 and
  the softmax gradient), counted for every position.
* A GPU's usable memory is :data:`USABLE_FRACTION` of its capacity: the CUDA context, NCCL buffers and
  allocator fragmentation take the rest.

Step time is the model's training FLOPs (``ModelConfig.flops_per_token`` with attention over whole rows,
an upper bound for packed documents) over W × the GPU's bf16 peak × the stated MFU. MFU counts model
FLOPs, so activation checkpointing's extra forward (8 instead of 6 FLOPs per weight per token) shows up
as a longer step at the same hardware utilisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from plm.hardware import GPU_MEMORY_GB, GPU_PEAK_BF16
from plm.model.config import ModelConfig

GB = 1e9
#: share of a GPU's memory a training process can fill (CUDA context, NCCL, fragmentation take the rest)
USABLE_FRACTION = 0.85
#: FLOPs executed per model FLOP with activation checkpointing: the forward runs twice (8 vs 6 per weight)
RECOMPUTE_FACTOR = 8 / 6
DEFAULT_MFU = 0.40
DEFAULT_GPU = "h100"
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of one training layout; ``activations_ac`` with activation checkpointing."""

    config: ModelConfig
    strategy: str
    world: int
    rows: int
    row_len: int
    checkpointing: bool
    params: float
    grads: float
    optimizer: float
    working: float
    activations: float
    activations_ac: float

    def total(self, checkpointing: bool | None = None) -> float:
        ac = self.checkpointing if checkpointing is None else checkpointing
        return (
            self.params
            + self.grads
            + self.optimizer
            + self.working
            + (self.activations_ac if ac else self.activations)
        )

    def fits(self, gpu_memory: float) -> bool:
        return self.total() <= USABLE_FRACTION * gpu_memory


def block_activation_bytes(cfg: ModelConfig) -> float:
    """Bytes per token one block saves for its backward (bf16-mixed, varlen attention): see the module.
    From the fields, not the flavour: the LayerNorms of the block (one if parallel), each with its fp32
    input; the FFN's bf16 GELU input and output, and with GeGLU also the value half and the product."""
    h, f = cfg.n_embd, cfg.ffn
    norms = 1 if cfg.parallel_block else 2
    stats = 8 * norms + 4 * cfg.n_head  # LayerNorm mean and rstd, attention log-sum-exp (fp32)
    attention = 4 * h * norms + 4 * h + 12 * h  # LN inputs; bf16 matmul-input casts; qkv, rotated q,k, output
    ffn = (8 if cfg.activation == "geglu" else 4) * f
    return attention + ffn + stats


def activation_bytes(cfg: ModelConfig, tokens: int, checkpointing: bool) -> float:
    """Activations of one micro-batch of ``tokens`` tokens, with or without activation checkpointing."""
    layer = block_activation_bytes(cfg) * tokens
    outside = (8 * cfg.n_embd + 10 * cfg.vocab_size) * tokens
    if checkpointing:
        return cfg.n_layer * 4 * cfg.n_embd * tokens + layer + outside
    return cfg.n_layer * layer + outside


def memory_plan(
    cfg: ModelConfig, strategy: str, world: int, rows: int, row_len: int, checkpointing: bool | None = None
) -> MemoryPlan:
    """Bytes per GPU for ``strategy`` ('ddp' or 'fsdp') over ``world`` GPUs with ``rows`` × ``row_len`` tokens
    per GPU micro-batch. ``checkpointing`` None: FSDP2 recomputes activations (its default), DDP does not."""
    p = float(cfg.n_params())
    tokens = rows * row_len
    if strategy == "ddp":
        params, grads, optimizer, working = 4 * p, 8 * p, 8 * p, 2 * p  # grads: tensors + DDP's buckets
    elif strategy == "fsdp":
        p_block = float(cfg.n_params_block())
        p_root = p - cfg.n_layer * p_block
        params, grads, optimizer = 4 * p / world, 4 * p / world, 8 * p / world
        working = 2 * p_root + (4 + 2 + 4) * p_block
    else:
        raise ValueError(f"strategy {strategy!r}: use 'ddp' or 'fsdp'")
    ac = strategy == "fsdp" if checkpointing is None else checkpointing
    return MemoryPlan(
        cfg,
        strategy,
        world,
        rows,
        row_len,
        ac,
        params,
        grads,
        optimizer,
        working,
        activation_bytes(cfg, tokens, False),
        activation_bytes(cfg, tokens, True),
    )


def gpu_facts(gpu: str) -> tuple[str, float, float]:
    """(name, memory bytes, bf16 peak FLOP/s) of a GPU named like ``h100`` or ``NVIDIA H100 80GB HBM3``."""
    name = next((g for g in GPU_MEMORY_GB if g in gpu.lower()), None)
    if name is None or name not in GPU_PEAK_BF16:
        raise ValueError(
            f"unknown GPU {gpu!r}; known: {', '.join(g for g in GPU_MEMORY_GB if g in GPU_PEAK_BF16)}"
        )
    return name, GPU_MEMORY_GB[name] * GB, GPU_PEAK_BF16[name]


def step_seconds(cfg: ModelConfig, step_tokens: int, world: int, peak: float, mfu: float) -> float:
    """One optimizer step's model FLOPs (attention over whole rows) at ``mfu`` of ``world`` GPUs' peak."""
    return cfg.flops_per_token() * step_tokens / (world * peak * mfu)


def smallest_fitting(plan: MemoryPlan, gpu_memory: float, max_world: int = 4096) -> MemoryPlan | None:
    """The fewest GPUs (then the most rows per GPU, up to the plan's) on which a layout fits: the plan's
    strategy first, then FSDP2, each as plm runs it (FSDP2 recomputes activations, DDP does not)."""
    strategies = [plan.strategy] + (["fsdp"] if plan.strategy != "fsdp" else [])
    world = 1
    while world <= max_world:
        for strategy in strategies:
            rows = plan.rows
            while rows >= 1:
                candidate = memory_plan(plan.config, strategy, world, rows, plan.row_len)
                if candidate.fits(gpu_memory):
                    return candidate
                rows //= 2
        world *= 2
    return None


def layout_flags(world: int) -> str:
    """``--devices G --num-nodes M`` for ``world`` GPUs, filling nodes of :data:`GPUS_PER_NODE`."""
    nodes = math.ceil(world / GPUS_PER_NODE)
    return f"--devices {min(world, GPUS_PER_NODE)} --num-nodes {nodes}"


def _fit_word(plan: MemoryPlan, memory: float) -> str:
    return "fits" if plan.fits(memory) else "does NOT fit"


def table(
    plan: MemoryPlan,
    gpu: str,
    steps: int,
    step_tokens: int,
    mfu: float = DEFAULT_MFU,
    memory: float | None = None,
) -> str:
    """The per-GPU memory table, the step time and the days to finish, as ``plm train --dry-run`` prints.
    ``memory``: the GPU's bytes when known from the device (default: its data sheet)."""
    name, sheet, peak = gpu_facts(gpu)
    memory = memory or sheet
    ac, no_ac = replace(plan, checkpointing=True), replace(plan, checkpointing=False)
    what = "FSDP2: full shard" if plan.strategy == "fsdp" else "DDP: full replica"
    usable = USABLE_FRACTION * memory
    rows = [
        ("parameters (fp32)", plan.params, plan.params),
        ("gradients (fp32)", plan.grads, plan.grads),
        ("optimizer state (AdamW, fp32)", plan.optimizer, plan.optimizer),
        ("bf16 weights/grads in flight", plan.working, plan.working),
        ("activations", plan.activations, plan.activations_ac),
        ("total", no_ac.total(), ac.total()),
        (f"usable ({USABLE_FRACTION:.0%} of {memory / GB:.0f} GB)", usable, usable),
    ]
    lines = [
        (
            f"memory per GPU ({what} over {plan.world} × {name.upper()}, bf16-mixed, micro-batch "
            f"{plan.rows} rows × {plan.row_len} tokens):"
        ),
        f"  {'':32s}{'no recompute':>14s}{'activation ckpt':>17s}",
    ]
    lines += [f"  {label:32s}{a / GB:>11.2f} GB{b / GB:>14.2f} GB" for label, a, b in rows]
    lines.append(
        f"  {'':32s}{_fit_word(no_ac, memory):>14s}{_fit_word(ac, memory):>17s}   (this run: "
        f"{'activation checkpointing' if plan.checkpointing else 'no recompute'})"
    )
    t = step_seconds(plan.config, step_tokens, plan.world, peak, mfu)
    t_run = t * (RECOMPUTE_FACTOR if plan.checkpointing else 1.0)
    lines.append(
        f"  step of {step_tokens:,} tokens at {mfu:.0%} MFU ({name.upper()} bf16 peak {peak / 1e12:.0f} "
        f"TFLOP/s): {t:.2f} s, {t * RECOMPUTE_FACTOR:.2f} s with recompute; {steps:,} steps ≈ "
        f"{steps * t_run / 86400:.1f} days"
    )
    return "\n".join(lines)
