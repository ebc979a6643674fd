"""`plm plan`: from a compute budget to a model size, a token count and a config that `plm fit` runs.

plm plan --flops 1e21 --objective clm
plm plan --gpu-hours 5000 --gpu h100 --mfu 0.4 --objective mlm --manifest data/prepared/manifest.json
plm plan --flops 3e13 --objective mlm --write run.yaml --rows-per-device 4 --row-len 256
plm plan --flops 1e19 --objective clm --laws fit.json   # your own laws: `plm fit-laws … --json > fit.json`
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

from plm.command import Exclusive, Flag, command
from plm.hardware import GPU_PEAK_BF16
from plm.scaling.recipe import OBJECTIVES, Layout, RunPlan, fit_config, plan_for_budget
from plm.utils.atomic import atomic_write_text


def epochs_per_source(tokens: float, manifest: Path, weights: dict[str, float] | None) -> dict[str, float]:
    """Epochs of each source that ``tokens`` implies under the mixture (default: proportional to residues)."""
    try:
        data = json.loads(manifest.read_text())
        residues = {n: float(s["train"]["residues"]) for n, s in data["sources"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{manifest}: not a `plm data prepare` manifest ({err}); pass DIR/manifest.json"
        ) from err
    w = weights or residues
    unknown = sorted(set(w) - set(residues))
    if unknown:
        raise ValueError(f"--weights names {unknown}, not in {manifest} (sources: {sorted(residues)})")
    total = sum(w.values())
    return {n: tokens * w.get(n, 0.0) / total / max(1.0, residues[n]) for n in residues}


def load_fitted_law(path: Path, objective: str) -> dict[str, Any]:
    """One objective's entry of `plm fit-laws --json` output (n_opt power law, optional parametric)."""
    if objective == "transfer":
        raise ValueError(
            "--laws applies to --objective clm or mlm (the transfer split uses the published laws)"
        )
    try:
        entry = json.loads(Path(path).read_text())[objective]
        float(entry["n_opt"]["coef"]), float(entry["n_opt"]["exponent"])
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--laws {path}: not readable JSON ({err}); write it with `plm fit-laws RESULTS --json > {path}`"
        ) from err
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"--laws {path}: no {objective!r} entry with n_opt.coef and n_opt.exponent ({err!r}); "
            f"fit-laws output lists the objectives of the sweep"
        ) from err
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
            warnings.warn(
                f"source {name!r} would be seen {e:.2f} times: repeated data hurts (docs/reference.md, "
                '"Data"); add data or lower its weight',
                stacklevel=2,
            )
    return epochs


def manifest_sources(manifest: Path) -> dict[str, str]:
    """``data.sources`` for the stores a `plm data prepare` manifest describes (each is DIR/<source>)."""
    data = json.loads(manifest.read_text())
    return {name: str((manifest.parent / name).resolve()) for name in data["sources"]}


def write_config(
    plan: RunPlan, path: Path, manifest: Path | None = None, weights: dict[str, float] | None = None
) -> None:
    """A LightningCLI config `plm fit --config PATH` runs as is; its schedule ends exactly at the budget,
    on the manifest's stores (and mixture weights) when the plan was made for them."""
    import yaml

    header = (
        f"# plm plan: {plan.objective} at C = {plan.flops:.3g} FLOPs → N = {plan.n_params:.3g} non-embedding, "
        f"D = {plan.train_tokens:.3g} tokens\n"
    )
    cfg = fit_config(plan, run_name=f"plan-{plan.objective}-{plan.flops:.0e}")
    if manifest is not None:
        cfg["data"]["sources"] = manifest_sources(manifest)
        if weights:
            cfg["data"]["weights"] = weights
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))


def budget_flops(flops: float | None, gpu_hours: float | None, gpu: str, mfu: float) -> float:
    """The budget in FLOPs: ``flops``, or ``gpu_hours`` on ``gpu`` at model FLOPs utilisation ``mfu``."""
    if flops is not None:
        return flops
    if gpu.lower() not in GPU_PEAK_BF16:
        raise ValueError(f"--gpu {gpu!r} is unknown; use one of {', '.join(GPU_PEAK_BF16)} or give --flops")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu {mfu} must be in (0, 1]")
    return gpu_hours * 3600 * GPU_PEAK_BF16[gpu.lower()] * mfu


def make_plan(
    flops: float | None = None,
    gpu_hours: float | None = None,
    gpu: str = "a100",
    mfu: float = 0.4,
    objective: Annotated[str, Flag(choices=OBJECTIVES)] = "mlm",
    manifest: Path | None = None,
    weights: str | None = None,
    row_len: int = 1024,
    rows_per_device: int = 8,
    devices: int = 1,
    num_nodes: int = 1,
    write: Path | None = None,
    laws: Path | None = None,
    as_json: Annotated[bool, Flag("--json")] = False,
) -> int:
    """Compute budget (FLOPs or GPU-hours) → model size, tokens, schedule, and a plm fit config.

    Args:
        flops: training compute C = 6·N·D in FLOPs
        gpu_hours: GPU-hours (with --gpu and --mfu)
        gpu: GPU for --gpu-hours, a name in plm.hardware.GPU_PEAK_BF16 (a100, h100, …)
        mfu: model FLOPs utilisation to assume (0–1)
        objective: training objective
        manifest: DIR/manifest.json of `plm data prepare`: report epochs per source
        weights: mixture weights name=w,… for --manifest (default: by residues)
        row_len: context length of packed rows
        rows_per_device: rows per device per micro-batch (--write)
        devices: devices per node (--write)
        num_nodes: nodes (--write)
        write: write a plm fit config here
        laws: `plm fit-laws --json` output: plan with your fitted N_opt law and its parametric L(N, D) for the
            expected loss (clm/mlm)
        as_json: print the plan as one JSON object
    """
    try:
        mix = (
            {k: float(v) for k, v in (item.split("=", 1) for item in weights.split(","))} if weights else None
        )
        fitted = load_fitted_law(laws, objective) if laws else None
        layout = Layout(row_len, rows_per_device, devices, num_nodes)
        plan = plan_for_budget(
            budget_flops(flops, gpu_hours, gpu, mfu), objective, layout, fitted, f"fitted: {laws}"
        )
        epochs = check_epochs(plan, manifest, mix) if manifest is not None else None
    except ValueError as err:
        print(f"plm plan: {err}", file=sys.stderr)
        return 2
    loss = expected_loss(plan, fitted)
    if write:
        write_config(plan, write, manifest, mix)
    if as_json:
        print(json.dumps({**plan.to_json(), "expected_loss": loss, "epochs": epochs}))
        return 0
    shape = f"ladder size {plan.size}" if plan.size else "generated shape"
    lines = [
        f"objective {plan.objective}, compute C = {plan.flops:.3g} FLOPs",
        (
            f"  N_opt ({plan.law_source}) = {plan.n_opt:.3g} non-embedding parameters → {shape}: "
            f"{plan.layers} layers × {plan.hidden} hidden × {plan.heads} heads, N = {plan.n_params:.3g}"
        ),
        (
            f"  D = C / 6N = {plan.tokens:.3g} tokens; batch {plan.step_tokens:,} tokens ({plan.accumulate} accumulation "
            f"× {rows_per_device} rows × {layout.world} devices × {row_len}) → {plan.steps:,} steps, "
            f"warm-up {plan.warmup_steps:,}, peak LR {plan.peak_lr:g}, cosine to LR/10; GPU strategy {plan.strategy}"
        ),
        (
            f"  expected loss: {loss:.4f} nats (parametric L(N, D) of {plan.law_source})"
            if loss is not None
            else "  expected loss: not given by the published fits (they fix the allocation, not the loss level; "
            "pass --laws from `plm fit-laws --json`)"
        ),
    ]
    if plan.objective == "transfer":
        lines.append(
            f"  transfer split: CLM {plan.clm_flops:.3g} FLOPs ({plan.clm_flops / plan.flops:.0%}), "
            f"MLM {plan.mlm_flops:.3g} FLOPs ({plan.mlm_flops / plan.flops:.0%})"
        )
    if epochs:
        lines.append("  epochs per source: " + ", ".join(f"{k} {v:.2f}" for k, v in epochs.items()))
    lines += [f"  note: {note}" for note in plan.notes]
    if write:
        lines.append(f"  wrote {write}: plm fit --config {write}")
    print("\n".join(lines))
    return 0


main = command(
    make_plan, "plm plan", exclusive=[Exclusive("flops", "gpu_hours", required=True)], description=__doc__
)
