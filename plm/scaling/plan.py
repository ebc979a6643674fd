"""`plm plan`: from a compute budget to a model size, a token count and a config that `plm fit` runs.

    plm plan --flops 1e21 --objective clm
    plm plan --gpu-hours 5000 --gpu h100 --mfu 0.4 --objective mlm --manifest data/prepared/manifest.json
    plm plan --flops 3e13 --objective mlm --write run.yaml --rows-per-device 4 --row-len 256
    plm plan --flops 1e19 --objective clm --laws fit.json   # your own laws: `plm fit-laws … --json > fit.json`
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from plm.hardware import GPU_PEAK_BF16
from plm.scaling.recipe import OBJECTIVES, Layout, RunPlan, fit_config, plan_for_budget
from plm.utils.atomic import atomic_write_text


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


def expected_loss(plan: RunPlan, fitted: dict[str, Any] | None) -> float | None:
    """L(N, D) of a fitted parametric law (the published fits fix the allocation, not the loss level)."""
    q = (fitted or {}).get("parametric")
    if not q:
        return None
    return q["E"] + q["A"] / plan.n_params ** q["alpha"] + q["B"] / plan.tokens ** q["beta"]


def check_epochs(plan: RunPlan, manifest: Path, weights: dict[str, float] | None) -> dict[str, float]:
    epochs = epochs_per_source(plan.tokens, manifest, weights)
    for name, e in epochs.items():
        if e > 1:
            warnings.warn(f"source {name!r} would be seen {e:.2f} times: repeated data hurts (docs/reference.md, "
                          "\"Data\"); add data or lower its weight", stacklevel=2)
    return epochs


def manifest_sources(manifest: Path) -> dict[str, str]:
    """``data.sources`` for the stores a `plm data prepare` manifest describes (each is DIR/<source>)."""
    data = json.loads(manifest.read_text())
    return {name: str((manifest.parent / name).resolve()) for name in data["sources"]}


def write_config(plan: RunPlan, path: Path, manifest: Path | None = None,
                 weights: dict[str, float] | None = None) -> None:
    """A LightningCLI config `plm fit --config PATH` runs as is; its schedule ends exactly at the budget,
    on the manifest's stores (and mixture weights) when the plan was made for them."""
    import yaml

    header = (f"# plm plan: {plan.objective} at C = {plan.flops:.3g} FLOPs → N = {plan.n_params:.3g} non-embedding, "
              f"D = {plan.train_tokens:.3g} tokens\n")
    cfg = fit_config(plan, run_name=f"plan-{plan.objective}-{plan.flops:.0e}")
    if manifest is not None:
        cfg["data"]["sources"] = manifest_sources(manifest)
        if weights:
            cfg["data"]["weights"] = weights
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plm plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="training compute C = 6·N·D in FLOPs")
    budget.add_argument("--gpu-hours", type=float, help="GPU-hours (with --gpu and --mfu)")
    p.add_argument("--gpu", default="a100", help=f"GPU for --gpu-hours: {', '.join(GPU_PEAK_BF16)}")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (0–1)")
    p.add_argument("--objective", default="mlm", choices=OBJECTIVES, help="training objective")
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
        layout = Layout(args.row_len, args.rows_per_device, args.devices, args.num_nodes)
        plan = plan_for_budget(budget_from_args(args), args.objective, layout, fitted, f"fitted: {args.laws}")
        epochs = check_epochs(plan, args.manifest, weights) if args.manifest is not None else None
    except ValueError as err:
        print(f"plm plan: {err}", file=sys.stderr)
        return 2
    loss = expected_loss(plan, fitted)
    if args.write:
        write_config(plan, args.write, args.manifest, weights)
    if args.json:
        print(json.dumps({**plan.to_json(), "expected_loss": loss, "epochs": epochs}))
        return 0
    shape = f"ladder size {plan.size}" if plan.size else "generated shape"
    lines = [
        f"objective {plan.objective}, compute C = {plan.flops:.3g} FLOPs",
        (f"  N_opt ({plan.law_source}) = {plan.n_opt:.3g} non-embedding parameters → {shape}: "
         f"{plan.layers} layers × {plan.hidden} hidden × {plan.heads} heads, N = {plan.n_params:.3g}"),
        (f"  D = C / 6N = {plan.tokens:.3g} tokens; batch {plan.step_tokens:,} tokens ({plan.accumulate} accumulation "
         f"× {args.rows_per_device} rows × {layout.world} devices × {args.row_len}) → {plan.steps:,} steps, "
         f"warm-up {plan.warmup_steps:,}, peak LR {plan.peak_lr:g}, cosine to LR/10; GPU strategy {plan.strategy}"),
        (f"  expected loss: {loss:.4f} nats (parametric L(N, D) of {plan.law_source})" if loss is not None else
         "  expected loss: not given by the published fits (they fix the allocation, not the loss level; "
         "pass --laws from `plm fit-laws --json`)"),
    ]
    if plan.objective == "transfer":
        lines.append(f"  transfer split: CLM {plan.clm_flops:.3g} FLOPs ({plan.clm_flops / plan.flops:.0%}), "
                     f"MLM {plan.mlm_flops:.3g} FLOPs ({plan.mlm_flops / plan.flops:.0%})")
    if epochs:
        lines.append("  epochs per source: " + ", ".join(f"{k} {v:.2f}" for k, v in epochs.items()))
    lines += [f"  note: {note}" for note in plan.notes]
    if args.write:
        lines.append(f"  wrote {args.write}: plm fit --config {args.write}")
    print("\n".join(lines))
    return 0
