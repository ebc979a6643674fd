"""``plm train`` / ``make train SIZE=… OBJECTIVE=…``: pick a ladder size, print its plan, check the
machine can hold it, then hand over to ``plm fit`` (LightningCLI) with the matching configs.

Without ``--size`` it runs ``configs/train/<objective>.yaml`` as is: the bundled CPU demo. With a size
the run is the one recipe's plan (:func:`plm.scaling.recipe.plan_for_size`): the compute-optimal token
count for that size unless ``--tokens`` says otherwise, the size's batch, peak LR and GPU strategy, and
for ``transfer`` the switch to MLM at the CLM stage's share of the budget — the same run `plm plan`
prints for that budget.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Annotated

import torch

from plm import paths
from plm.command import Flag, Passthrough, command
from plm.hardware import GPU_MEMORY_GB
from plm.model.config import SIZES
from plm.scaling.memory import DEFAULT_GPU, DEFAULT_MFU
from plm.scaling.recipe import OBJECTIVES, Layout, RunPlan, overrides_as_args, plan_for_size

BYTES_PER_PARAM_TRAINING = 16  # fp32 master weights 4 + grads 4 + Adam moments 8 (bf16 autocast on top)
DEFAULT_CPU_MAX_PARAMS = 150e6


def train(
    size: str | None = None,
    objective: Annotated[str, Flag(choices=OBJECTIVES)] = "mlm",
    tokens: float | None = None,
    row_len: int = 1024,
    rows_per_device: int = 8,
    devices: Annotated[int | None, Flag("--devices", "--gpus")] = None,
    num_nodes: Annotated[int, Flag("--num-nodes", "--nodes")] = 1,
    gpu: str | None = None,
    mfu: float = DEFAULT_MFU,
    cpu_max_params: float = DEFAULT_CPU_MAX_PARAMS,
    force: bool = False,
    dry_run: bool = False,
    extra: Annotated[Sequence[str], Passthrough()] = (),
) -> int:
    """Train a ladder size (SIZE=…, OBJECTIVE=…) with resource checks; wraps `plm fit`.

    Args:
        size: ladder size, one of the sizes listed below (default: the CPU demo config)
        objective: masked LM, causal LM, or CLM → MLM transfer in one run
        tokens: training tokens (default: compute-optimal for the size)
        row_len: context / packed row length for ladder sizes
        rows_per_device: packed rows per device per micro-batch
        devices: devices per node (default: all GPUs, or 1 CPU)
        num_nodes: nodes (SLURM / torchrun)
        gpu: GPU model the memory plan and step time assume, one of those listed below (default: this
            machine's, else the one named below)
        mfu: model FLOPs utilisation the step time assumes
        cpu_max_params: largest model (total params) trained on a machine without a GPU
        force: train even if the machine looks too small
        dry_run: print the plan and the plm fit command, then stop
        extra: passed on to plm fit (e.g. --trainer.max_steps 10)
    """
    fit_args = ["fit", "--config", str(paths.train_config(objective))]
    if size is None:
        if tokens is not None:
            print(
                "plm train: --tokens (TOKENS=) needs --size (SIZE=): the CPU demo runs its config's fixed "
                "number of steps",
                file=sys.stderr,
            )
            return 2
        print(f"plm train: CPU demo, configs/train/{objective}.yaml (bundled real sequences)")
        fit_args += extra
    else:
        if size not in SIZES:
            print(f"plm train: unknown size {size!r}; valid sizes: {', '.join(SIZES)}", file=sys.stderr)
            return 2
        has_gpu = torch.cuda.is_available()
        devices = devices or (torch.cuda.device_count() if has_gpu else 1)
        try:
            layout = Layout(row_len, rows_per_device, devices, num_nodes)
            plan = plan_for_size(size, objective, layout, tokens=tokens)
        except ValueError as err:
            print(f"plm train: {err}", file=sys.stderr)
            return 2
        print(describe(plan))
        if (has_gpu or dry_run) and not fits_gpu(plan, has_gpu, gpu, mfu, force):
            return 2
        gpu_layout = dry_run and plan.layout.world > 1  # planning GPUs from here: this CPU is not the target
        if not gpu_layout and refuse_on_cpu(plan, has_gpu, force, cpu_max_params) and not dry_run:
            return 2
        on_gpu = True if has_gpu else None if dry_run else False  # a dry run shows the GPU command it plans
        fit_args += overrides_as_args({**plan.fit_overrides(gpu=on_gpu), "run_name": plan.run_name}) + list(
            extra
        )
    print("plm " + shlex.join(fit_args))
    if dry_run:
        return 0
    from plm.cli import main as plm_main

    return plm_main(fit_args)


main = command(
    train,
    "plm train",
    description=__doc__,
    epilog=f"sizes: {', '.join(SIZES)}\nGPU models: {', '.join(GPU_MEMORY_GB)} (default {DEFAULT_GPU})",
)


def describe(plan: RunPlan) -> str:
    cfg, preset = plan.config, SIZES[plan.size]
    total = cfg.n_params()
    lines = [
        f"size {plan.size} ({preset.origin}): {cfg.n_layer} layers × {cfg.n_embd} hidden × {cfg.n_head} heads",
        f"  parameters: {total:,} total, non-embedding N = {plan.n_params:,} ({plan.n_params / 1e9:.2f}B)",
        (
            f"  plan: {plan.train_tokens:.3g} tokens = {plan.steps:,} steps × {plan.step_tokens:,} tokens "
            f"({plan.accumulate} accumulation × {plan.layout.rows_per_device} rows × {plan.layout.world} devices × "
            f"{plan.layout.row_len})"
        ),
        (
            f"  compute: C = 6·N·D = {6.0 * plan.n_params * plan.train_tokens:.3g} FLOPs; peak LR {plan.peak_lr:g}, "
            f"warm-up {plan.warmup_steps:,} steps; GPU strategy {plan.strategy}"
        ),
        f"  memory for weights + grads + Adam: ≈ {total * BYTES_PER_PARAM_TRAINING / 1e9:.1f} GB (plus activations)",
    ]
    if plan.objective == "transfer":
        lines.append(
            f"  transfer: CLM until {plan.clm_flops:.3g} FLOPs ({plan.clm_flops / plan.flops:.0%}), then MLM"
        )
    return "\n".join(lines)


def fits_gpu(
    plan: RunPlan, has_gpu: bool, gpu: str | None = None, mfu: float = DEFAULT_MFU, force: bool = False
) -> bool:
    """Print the per-GPU memory plan (plm.scaling.memory); False (after saying so, with the smallest layout
    that fits) when it does not fit the GPU, unless --force."""
    from plm.scaling import memory

    model = gpu or (torch.cuda.get_device_name() if has_gpu else DEFAULT_GPU)
    layout = plan.layout
    mem = memory.memory_plan(plan.config, plan.strategy, layout.world, layout.rows_per_device, layout.row_len)
    try:
        name, capacity, _ = memory.gpu_facts(model)
        if has_gpu and gpu is None:  # this machine's GPU: its own size, not the data sheet's
            capacity = float(torch.cuda.get_device_properties(0).total_memory)
        print(memory.table(mem, model, plan.steps, plan.step_tokens, mfu, capacity))
    except ValueError as err:
        print(f"plm train: no memory plan ({err}); pass --gpu to get one", file=sys.stderr)
        return True
    if mem.fits(capacity) or force:
        return True
    need = mem.total() / memory.GB
    lines = [
        (
            f"plm train: refusing: size {plan.size} needs {need:.1f} GB per GPU on {layout.world} × "
            f"{name.upper()} ({plan.strategy}, {layout.rows_per_device} rows × {layout.row_len} per GPU), more "
            f"than the {memory.USABLE_FRACTION * capacity / memory.GB:.0f} GB usable."
        )
    ]
    best = memory.smallest_fitting(mem, capacity)
    if best is None:
        lines.append("  No layout up to 4096 GPUs fits; use a smaller size or a shorter --row-len.")
    else:
        how = "FSDP2, activation checkpointing" if best.strategy == "fsdp" else "DDP"
        lines.append(
            f"  Smallest layout that fits: {memory.layout_flags(best.world)} --rows-per-device {best.rows} "
            f"({how}: {best.total() / memory.GB:.1f} GB per GPU); more GPUs shorten the run."
        )
    lines.append("  FORCE=1 (make) or --force launches anyway.")
    print("\n".join(lines), file=sys.stderr)
    return False


#: share of the measured bf16 matmul peak a CPU run reaches (0.6 measured for 35m on AVX512-BF16; tiny
#: shapes reach less, so this errs towards a shorter estimate)
CPU_MFU = 0.5
MAX_CPU_HOURS = 1.0


def cpu_hours(plan: RunPlan, peak_flops: float | None = None) -> tuple[float, float]:
    """(estimated hours, the matmul peak used): 6·N·D at :data:`CPU_MFU` of this CPU's measured matmul peak
    in the precision it will train in (bf16 where native, else fp32: see plm.lightning_cli.cpu_precision)."""
    if peak_flops is None:
        from plm.callbacks.monitor import matmul_peak
        from plm.hardware import cpu_native_bf16

        dtype = torch.bfloat16 if cpu_native_bf16() else torch.float32
        peak_flops = matmul_peak(dtype, "cpu", sizes=(1024,), reps=3)
    return 6.0 * plan.n_params * plan.train_tokens / (peak_flops * CPU_MFU) / 3600, peak_flops


def refuse_on_cpu(
    plan: RunPlan, has_gpu: bool, force: bool = False, cpu_max_params: float = DEFAULT_CPU_MAX_PARAMS
) -> bool:
    """Sizes that would take years on a CPU are refused before anything is allocated, and so is any plan
    estimated to take more than an hour here (--force overrides both)."""
    total = plan.config.n_params()
    if has_gpu or force:
        return False
    if total > cpu_max_params:
        need_gb = total * BYTES_PER_PARAM_TRAINING / 1e9
        print(
            f"plm train: refusing size {plan.size} on a machine without a GPU: it needs ≈ {need_gb:.0f} GB for "
            f"weights, gradients and optimizer state alone and would take years on a CPU.\n"
            f"  Launch it on GPU nodes: `sbatch scripts/slurm/train.sbatch` (SIZE={plan.size}), or\n"
            f"  `plm train --size {plan.size} --devices 8 --num-nodes N` under torchrun / SLURM.\n"
            f"  FORCE=1 (make) or --force overrides; --cpu-max-params raises the limit "
            f"({cpu_max_params:.3g} parameters).",
            file=sys.stderr,
        )
        return True
    hours, peak = cpu_hours(plan)
    if hours <= MAX_CPU_HOURS:
        return False
    print(
        f"plm train: this plan needs ≈ {_duration(hours)} on this CPU (C = {6.0 * plan.n_params * plan.train_tokens:.3g} "
        f"FLOPs at {CPU_MFU:.0%} of its measured matmul peak, {peak / 1e9:.0f} GFLOP/s).\n"
        f"  Run it on a GPU, train fewer tokens (TOKENS=… / --tokens), or FORCE=1 (make) / --force to start anyway.\n"
        f"  `make train` without SIZE is the minutes-long CPU demo.",
        file=sys.stderr,
    )
    return True


def _duration(hours: float) -> str:
    return f"{hours / 24:,.1f} days" if hours >= 48 else f"{hours:,.1f} hours"
