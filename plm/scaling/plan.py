"""`plm plan`: from a compute budget to a model size, a token count and a config that `plm fit` runs.

    plm plan --flops 1e21 --objective clm
    plm plan --gpu-hours 5000 --gpu h100 --mfu 0.4 --objective mlm --manifest data/prepared/manifest.json
    plm plan --flops 3e13 --objective mlm --write run.yaml --rows-per-device 4 --row-len 256
    plm plan --flops 1e19 --objective clm --laws fit.json   # your own laws: `plm fit-laws … --json > fit.json`
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plm.model.config import SIZES, ModelConfig, config_for, peak_lr_for
from plm.scaling.laws import law, transfer_split

#: dense bf16 tensor-core peaks (FLOP/s) from vendor data sheets, without sparsity
GPU_PEAK_BF16 = {
    "v100": 125e12,  # fp16 tensor cores (no bf16 on V100)
    "a10g": 125e12,
    "a100": 312e12,
    "l40s": 362e12,
    "h100": 989e12,  # SXM
    "h200": 989e12,
    "b200": 2250e12,
    "mi250x": 383e12,
    "mi300x": 1307e12,
}
LADDER_TOLERANCE = 1.15  # use a ladder size when it is within this factor of N_opt


@dataclass
class Plan:
    objective: str
    flops: float
    n_params: float  # non-embedding N of the chosen shape
    n_opt: float  # N the law asks for
    tokens: float
    layers: int
    hidden: int
    heads: int
    size: str | None  # ladder name, or None for a generated shape
    batch_tokens: int
    steps: int
    warmup_steps: int
    peak_lr: float
    clm_flops: float | None = None
    mlm_flops: float | None = None
    expected_loss: float | None = None
    epochs: dict[str, float] | None = None
    law_source: str = "published: Cheng et al. 2024"


def generated_shape(n_target: float) -> tuple[int, int, int]:
    """Layers × hidden × heads with N ≈ 12·L·h², hidden a multiple of 64, head size 64 (128 from 2048
    hidden when it divides) and an aspect ratio h/L near the ESM-2 / paper ladder (≈ 20–100)."""
    best, best_score = (2, 64, 1), float("inf")
    for layers in range(2, 129):
        hidden = max(64, round(math.sqrt(n_target / (12 * layers)) / 64) * 64)
        aspect = hidden / layers
        if not 16 <= aspect <= 128:
            continue
        score = abs(math.log(12 * layers * hidden**2 / n_target)) + 0.05 * abs(math.log(aspect / 48))
        if score < best_score:
            head = 128 if hidden >= 2048 and hidden % 128 == 0 else 64  # 128-dim heads only where they divide
            best, best_score = (layers, hidden, hidden // head), score
    return best


def choose_shape(n_target: float) -> tuple[str | None, ModelConfig]:
    name = min((s for s in SIZES if s != "tiny"), key=lambda s: abs(math.log(config_for(s).n_params_non_embedding() / n_target)))
    cfg = config_for(name)
    if abs(math.log(cfg.n_params_non_embedding() / n_target)) <= math.log(LADDER_TOLERANCE):
        return name, cfg
    layers, hidden, heads = generated_shape(n_target)
    return None, ModelConfig(n_layer=layers, n_embd=hidden, n_head=heads, name="planned")


def epochs_per_source(tokens: float, manifest: Path, weights: dict[str, float] | None) -> dict[str, float]:
    """Epochs of each source that ``tokens`` implies under the mixture (default: proportional to residues)."""
    try:
        data = json.loads(manifest.read_text())
        residues = {n: float(s["train"]["residues"]) for n, s in data["sources"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest}: not a `plm data prepare` manifest ({err}); pass DIR/manifest.json") from err
    w = weights or residues
    unknown = sorted(set(w) - set(residues))
    if unknown:
        raise ValueError(f"--weights names {unknown}, not in {manifest} (sources: {sorted(residues)})")
    total = sum(w.values())
    return {n: tokens * w.get(n, 0.0) / total / max(1.0, residues[n]) for n in residues}


def load_fitted_law(path: Path, objective: str) -> dict[str, Any]:
    """One objective's entry of `plm fit-laws --json` output (n_opt power law, optional parametric)."""
    if objective == "transfer":
        raise ValueError("--laws applies to --objective clm or mlm (the transfer split uses the published laws)")
    try:
        entry = json.loads(Path(path).read_text())[objective]
        float(entry["n_opt"]["coef"]), float(entry["n_opt"]["exponent"])
    except (OSError, ValueError) as err:
        raise ValueError(f"--laws {path}: not readable JSON ({err}); write it with `plm fit-laws RESULTS --json > {path}`") from err
    except (KeyError, TypeError) as err:
        raise ValueError(f"--laws {path}: no {objective!r} entry with n_opt.coef and n_opt.exponent ({err!r}); "
                         f"fit-laws output lists the objectives of the sweep") from err
    return entry


def make_plan(flops: float, objective: str, row_len: int = 1024, manifest: Path | None = None,
              weights: dict[str, float] | None = None, fitted: dict[str, Any] | None = None,
              fitted_source: str = "fitted") -> Plan:
    """The plan for one budget; ``fitted`` (an objective's `plm fit-laws --json` entry) replaces the published
    N_opt law and, through its parametric L(N, D), gives the expected loss."""
    if not flops > 0 or not math.isfinite(flops):
        raise ValueError(f"--flops must be a positive number, got {flops}")
    clm_c = mlm_c = None
    if objective == "transfer":
        n_opt, clm_c, mlm_c = transfer_split(flops)
    elif fitted is not None:
        n_opt = float(fitted["n_opt"]["coef"]) * flops ** float(fitted["n_opt"]["exponent"])
    else:
        n_opt = law(objective).n_opt(flops)
    size, cfg = choose_shape(n_opt)
    n = cfg.n_params_non_embedding()
    tokens = flops / (6.0 * n)  # spend the whole budget on the chosen shape
    batch = (512 if n < 1e9 else 1024) * row_len
    steps = max(1, math.ceil(tokens / batch))
    lr = SIZES[size].peak_lr if size else peak_lr_for(n)
    plan = Plan(objective, flops, n, n_opt, tokens, cfg.n_layer, cfg.n_embd, cfg.n_head, size, batch, steps,
                max(1, round(0.025 * steps)), lr, clm_c, mlm_c)
    if fitted is not None:
        plan.law_source = fitted_source
        q = fitted.get("parametric")
        if q:
            plan.expected_loss = q["E"] + q["A"] / n ** q["alpha"] + q["B"] / tokens ** q["beta"]
    if manifest is not None:
        plan.epochs = epochs_per_source(tokens, manifest, weights)
        for name, e in plan.epochs.items():
            if e > 1:
                warnings.warn(f"source {name!r} would be seen {e:.2f} times: repeated data hurts (REFERENCE.md); "
                              "add data or lower its weight", stacklevel=2)
    return plan


def write_config(plan: Plan, path: Path, row_len: int, rows_per_device: int, devices: int, num_nodes: int) -> None:
    """A LightningCLI config `plm fit --config PATH` runs as is; its schedule ends exactly at the budget."""
    import yaml

    per_step_rows = max(1, plan.batch_tokens // row_len)
    accumulate = max(1, math.ceil(per_step_rows / (rows_per_device * devices * num_nodes)))
    step_tokens = accumulate * rows_per_device * devices * num_nodes * row_len
    steps = max(1, math.ceil(plan.tokens / step_tokens))
    init: dict[str, Any] = {"size": plan.size or "tiny", "lr": plan.peak_lr}
    if plan.size is None:
        init["arch"] = {"n_layer": plan.layers, "n_embd": plan.hidden, "n_head": plan.heads}
    cls = "plm.lit.CausalLM" if plan.objective in ("clm", "transfer") else "plm.lit.MaskedLM"
    trainer: dict[str, Any] = {
        "max_steps": steps, "accumulate_grad_batches": accumulate, "devices": devices, "num_nodes": num_nodes,
        "precision": "bf16-mixed", "gradient_clip_val": 1.0, "val_check_interval": min(steps, 1000) * accumulate,
        "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
    }
    if plan.objective == "transfer":
        trainer["callbacks"] = [{"class_path": "plm.callbacks.transfer.CLMToMLMTransfer",
                                 "init_args": {"switch_flops": plan.clm_flops}}]
    cfg = {
        "seed_everything": 0,
        "run_name": f"plan-{plan.objective}-{plan.flops:.0e}",
        "model": {"class_path": cls, "init_args": init},
        "data": {"row_len": row_len, "rows_per_batch": rows_per_device},
        "trainer": trainer,
    }
    header = (f"# plm plan: {plan.objective} at C = {plan.flops:.3g} FLOPs → N = {plan.n_params:.3g} non-embedding, "
              f"D = {steps * step_tokens:.3g} tokens\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plm plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="training compute C = 6·N·D in FLOPs")
    budget.add_argument("--gpu-hours", type=float, help="GPU-hours (with --gpu and --mfu)")
    p.add_argument("--gpu", default="a100", help=f"GPU for --gpu-hours: {', '.join(GPU_PEAK_BF16)}")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (0–1)")
    p.add_argument("--objective", default="mlm", choices=["mlm", "clm", "transfer"], help="training objective")
    p.add_argument("--manifest", type=Path, help="DIR/manifest.json of `plm data prepare`: report epochs per source")
    p.add_argument("--weights", help="mixture weights name=w,… for --manifest (default: by residues)")
    p.add_argument("--row-len", type=int, default=1024, help="context length of packed rows")
    p.add_argument("--rows-per-device", type=int, default=8, help="rows per device per micro-batch (--write)")
    p.add_argument("--devices", type=int, default=1, help="devices per node (--write)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (--write)")
    p.add_argument("--write", type=Path, help="write a plm fit config here")
    p.add_argument("--laws", type=Path, help="`plm fit-laws --json` output: plan with your fitted N_opt law and its "
                                             "parametric L(N, D) for the expected loss (clm/mlm)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    return p


def budget_from_args(args: argparse.Namespace) -> float:
    if args.flops is not None:
        return args.flops
    if args.gpu.lower() not in GPU_PEAK_BF16:
        raise ValueError(f"--gpu {args.gpu!r} is unknown; use one of {', '.join(GPU_PEAK_BF16)} or give --flops")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu {args.mfu} must be in (0, 1]")
    return args.gpu_hours * 3600 * GPU_PEAK_BF16[args.gpu.lower()] * args.mfu


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        weights = None
        if args.weights:
            weights = {k: float(v) for k, v in (item.split("=", 1) for item in args.weights.split(","))}
        fitted = load_fitted_law(args.laws, args.objective) if args.laws else None
        plan = make_plan(budget_from_args(args), args.objective, args.row_len, args.manifest, weights, fitted,
                         f"fitted: {args.laws}")
    except ValueError as err:
        print(f"plm plan: {err}", file=sys.stderr)
        return 2
    if args.write:
        write_config(plan, args.write, args.row_len, args.rows_per_device, args.devices, args.num_nodes)
    if args.json:
        print(json.dumps({**asdict(plan), "hidden": plan.hidden, "heads": plan.heads}))
        return 0
    shape = f"ladder size {plan.size}" if plan.size else "generated shape"
    lines = [
        f"objective {plan.objective}, compute C = {plan.flops:.3g} FLOPs",
        (f"  N_opt ({plan.law_source}) = {plan.n_opt:.3g} non-embedding parameters → {shape}: "
         f"{plan.layers} layers × {plan.hidden} hidden × {plan.heads} heads, N = {plan.n_params:.3g}"),
        (f"  D = C / 6N = {plan.tokens:.3g} tokens; batch {plan.batch_tokens:,} tokens → {plan.steps:,} steps, "
         f"warm-up {plan.warmup_steps:,}, peak LR {plan.peak_lr:g}, cosine to LR/10"),
        (f"  expected loss: {plan.expected_loss:.4f} nats (parametric L(N, D) of {plan.law_source})"
         if plan.expected_loss is not None else
         "  expected loss: not given by the published fits (they fix the allocation, not the loss level; "
         "pass --laws from `plm fit-laws --json`)"),
    ]
    if plan.objective == "transfer":
        total = plan.clm_flops + plan.mlm_flops
        lines.append(f"  transfer split: CLM {plan.clm_flops:.3g} FLOPs ({plan.clm_flops / total:.0%}), "
                     f"MLM {plan.mlm_flops:.3g} FLOPs ({plan.mlm_flops / total:.0%})")
    if plan.epochs:
        lines.append("  epochs per source: " + ", ".join(f"{k} {v:.2f}" for k, v in plan.epochs.items()))
    if args.write:
        lines.append(f"  wrote {args.write}: plm fit --config {args.write}")
    print("\n".join(lines))
    return 0
