"""``plm train`` / ``make train SIZE=… OBJECTIVE=…``: pick a ladder size, print its plan, check the
machine can hold it, then hand over to ``plm fit`` (LightningCLI) with the matching configs.

Without ``--size`` it runs ``configs/train/<objective>.yaml`` as is: the bundled CPU demo. With a size
it plans the compute-optimal token count for that size from the published laws (REFERENCE.md) unless
``--tokens`` says otherwise, uses the paper's batch (0.5M tokens below 1B, 1M from 1B) and peak LR.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from plm.model.config import SIZES, ModelConfig, config_for

# Published compute-optimal laws, N_opt = A·C^a (Cheng et al. 2024; REFERENCE.md): invert for C(N).
_LAW_N = {"clm": (1.26e-3, 0.578), "mlm": (6.19e-8, 0.776)}
BYTES_PER_PARAM_TRAINING = 16  # fp32 master weights 4 + grads 4 + Adam moments 8 (bf16 autocast on top)
DEFAULT_CPU_MAX_PARAMS = 150e6


def compute_optimal_tokens(n_non_embedding: float, objective: str) -> float:
    """D such that N is compute-optimal: C = (N / A)^(1/a), D = C / (6 N)."""
    a_coef, a_exp = _LAW_N["mlm" if objective == "transfer" else objective]
    c = (n_non_embedding / a_coef) ** (1.0 / a_exp)
    return c / (6.0 * n_non_embedding)


def count_on_meta(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) parameters counted on the meta device: nothing is allocated."""
    from plm.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    emb = model.embed.weight.numel() + (0 if cfg.tied_head else model.head.weight.numel()) + model.head.bias.numel()
    return total, total - emb


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plm train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default=None, help=f"ladder size: {', '.join(SIZES)} (default: the CPU demo config)")
    p.add_argument("--objective", default="mlm", choices=["mlm", "clm", "transfer"],
                   help="masked LM, causal LM, or CLM → MLM transfer in one run")
    p.add_argument("--tokens", type=float, default=None, help="training tokens (default: compute-optimal for the size)")
    p.add_argument("--row-len", type=int, default=1024, help="context / packed row length for ladder sizes")
    p.add_argument("--rows-per-device", type=int, default=8, help="packed rows per device per micro-batch")
    p.add_argument("--devices", type=int, default=None, help="devices per node (default: all GPUs, or 1 CPU)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (SLURM / torchrun)")
    p.add_argument("--cpu-max-params", type=float, default=DEFAULT_CPU_MAX_PARAMS,
                   help="largest model (total params) trained on a machine without a GPU")
    p.add_argument("--force", action="store_true", help="train even if the machine looks too small")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the plm fit command, then stop")
    return p


def main(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    else:
        argv, extra = argv, []
    args, unknown = _parser().parse_known_args(argv)
    extra = unknown + extra  # anything else goes to plm fit (e.g. --trainer.max_steps 10)
    root = Path(__file__).resolve().parents[1]
    fit_args = ["fit", "--config", str(root / "configs" / "train" / f"{args.objective}.yaml")]
    if args.size is None:
        print(f"plm train: CPU demo, configs/train/{args.objective}.yaml (bundled real sequences)")
        fit_args += extra
    else:
        if args.size not in SIZES:
            print(f"plm train: unknown size {args.size!r}; valid sizes: {', '.join(SIZES)}", file=sys.stderr)
            return 2
        fit_args += _plan_size(args, root)
        if fit_args[-1] == "REFUSED":
            return 2
        fit_args += extra
    print("plm " + " ".join(fit_args))
    if args.dry_run:
        return 0
    from plm.cli import main as plm_main

    return plm_main(fit_args)


def _plan_size(args: argparse.Namespace, root: Path) -> list[str]:
    preset = SIZES[args.size]
    cfg = config_for(args.size)
    total, non_emb = count_on_meta(cfg)
    tokens = args.tokens if args.tokens is not None else compute_optimal_tokens(non_emb, args.objective)
    has_gpu = torch.cuda.is_available()
    devices = args.devices or (torch.cuda.device_count() if has_gpu else 1)
    world = devices * args.num_nodes
    rows_per_step = max(1, preset.batch_tokens // args.row_len)
    accumulate = max(1, math.ceil(rows_per_step / (args.rows_per_device * world)))
    step_tokens = accumulate * args.rows_per_device * world * args.row_len
    steps = max(1, math.ceil(tokens / step_tokens))
    flops = 6.0 * non_emb * steps * step_tokens
    need_gb = total * BYTES_PER_PARAM_TRAINING / 1e9
    print(
        f"size {args.size} ({preset.origin}): {cfg.n_layer} layers × {cfg.n_embd} hidden × {cfg.n_head} heads\n"
        f"  parameters: {total:,} total, non-embedding N = {non_emb:,} ({non_emb / 1e9:.2f}B)\n"
        f"  plan: {steps * step_tokens:.3g} tokens = {steps:,} steps × {step_tokens:,} tokens "
        f"({accumulate} accumulation × {args.rows_per_device} rows × {world} devices × {args.row_len})\n"
        f"  compute: C = 6·N·D = {flops:.3g} FLOPs; peak LR {preset.peak_lr:g}\n"
        f"  memory for weights + grads + Adam: ≈ {need_gb:.1f} GB (plus activations)"
    )
    if not has_gpu and total > args.cpu_max_params and not args.force:
        print(
            f"plm train: refusing size {args.size} on a machine without a GPU: it needs ≈ {need_gb:.0f} GB for "
            f"weights, gradients and optimizer state alone and would take years on a CPU.\n"
            f"  Launch it on GPU nodes: `sbatch scripts/slurm/train.sbatch` (SIZE={args.size}), or\n"
            f"  `plm train --size {args.size} --devices 8 --num-nodes N` under torchrun / SLURM.\n"
            f"  FORCE=1 (make) or --force overrides; --cpu-max-params raises the limit "
            f"({args.cpu_max_params:.3g} parameters).",
            file=sys.stderr,
        )
        return ["REFUSED"]
    out = [
        "--model.init_args.size", args.size,
        "--model.init_args.lr", str(preset.peak_lr),
        "--data.row_len", str(args.row_len),
        "--data.rows_per_batch", str(args.rows_per_device),
        "--trainer.max_steps", str(steps),
        "--trainer.accumulate_grad_batches", str(accumulate),
        "--trainer.val_check_interval", str(max(1, min(steps, 1000)) * accumulate),
        "--trainer.num_nodes", str(args.num_nodes),
        "--trainer.devices", str(devices),
        "--run_name", f"{args.objective}-{args.size}",
    ]
    size_cfg = root / "configs" / "model" / f"{args.size}.yaml"
    if size_cfg.is_file() and has_gpu:
        out = ["--config", str(size_cfg), *out]
    return out
