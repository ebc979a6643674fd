"""CLM → MLM transfer vs MLM from scratch at equal compute, on the bundled data (issue 6 experiment).

For each size: MLM from scratch at several token budgets (a scratch loss-vs-tokens curve), and
transfer runs (CLM for a share of the compute, then MLM) whose total compute equals the middle
scratch budget. Effectively transferred tokens (Hernandez et al. 2021): D_t = D_scratch(L_transfer) −
D_MLM, the extra scratch tokens needed to reach the transferred model's loss, read off the scratch
curve by log-linear interpolation; then D_t = k · D_F^α · N^β is fitted by least squares in log space
when there are at least 3 positive points (D_F = CLM tokens).

    python -m evaluation.results.transfer.run            # writes results.csv, fit.json, transfer.png here
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from plm.callbacks.transfer import CLMToMLMTransfer
from plm.data.datamodule import ProteinDataModule
from plm.lit import CausalLM, MaskedLM

HERE = Path(__file__).parent
SIZES = {
    "2x64": {"n_layer": 2, "n_embd": 64, "n_head": 4},
    "4x128": {"n_layer": 4, "n_embd": 128, "n_head": 4},
}
ROW_LEN, ROWS = 256, 8
SCRATCH_STEPS = (200, 400, 600, 800)
TRANSFER_STEPS = 400
CLM_SHARES = (0.15, 0.3)


def run(arch: dict, steps: int, clm_share: float | None, seed: int = 0) -> dict:
    pl.seed_everything(seed, verbose=False)
    dm = ProteinDataModule(row_len=ROW_LEN, rows_per_batch=ROWS, val_rows=48, seed=seed)
    cls = CausalLM if clm_share else MaskedLM
    model = cls(size="8m", arch=arch, lr=2e-3, total_steps=steps, seed=seed)
    callbacks = [CLMToMLMTransfer(clm_share=clm_share)] if clm_share else []
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=callbacks,
    )
    trainer.fit(model, dm)
    assert model.objective == "mlm"
    trainer = pl.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    val = trainer.validate(model, dm, verbose=False)
    loss = float(np.mean([v["val/loss"] for v in val if "val/loss" in v]))
    n = model.config.n_params_non_embedding()
    clm_tokens = model.stage_start_tokens
    return {
        "n_params": n,
        "steps": steps,
        "clm_share": clm_share or 0.0,
        "clm_tokens": clm_tokens,
        "mlm_tokens": model.tokens_seen - clm_tokens,
        "tokens": model.tokens_seen,
        "flops": 6.0 * n * model.tokens_seen,
        "val_loss": loss,
    }


def effective_tokens(scratch: list[dict], transferred: dict) -> float:
    """Scratch tokens needed for the transferred loss, minus the transferred run's MLM tokens."""
    pts = sorted((r["tokens"], r["val_loss"]) for r in scratch)
    d = np.log([p[0] for p in pts])
    loss = np.array([p[1] for p in pts])
    target = transferred["val_loss"]
    if target >= loss[0]:
        d_needed = math.exp(np.interp(target, loss[::-1], d[::-1])) if target <= loss.max() else pts[0][0]
    elif target < loss[-1]:  # beyond the curve: extrapolate the last segment in log D
        slope = (loss[-1] - loss[-2]) / (d[-1] - d[-2])
        d_needed = math.exp(d[-1] + (target - loss[-1]) / slope) if slope < 0 else float("inf")
    else:
        d_needed = math.exp(np.interp(target, loss[::-1], d[::-1]))
    return d_needed - transferred["mlm_tokens"]


def fit_dt(rows: list[dict]) -> dict:
    pts = [r for r in rows if r["kind"] == "transfer" and r["d_t"] > 0 and math.isfinite(r["d_t"])]
    if len(pts) < 3:
        return {"fitted": False, "reason": f"{len(pts)} positive D_t points; need 3 for k, alpha, beta"}
    x = np.column_stack(
        [np.ones(len(pts)), np.log([r["clm_tokens"] for r in pts]), np.log([r["n_params"] for r in pts])]
    )
    y = np.log([r["d_t"] for r in pts])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return {
        "fitted": True,
        "k": float(math.exp(coef[0])),
        "alpha": float(coef[1]),
        "beta": float(coef[2]),
        "points": len(pts),
    }


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, size in enumerate(SIZES):
        sc = sorted(
            (float(r["flops"]), float(r["val_loss"]))
            for r in rows
            if r["size"] == size and r["kind"] == "scratch"
        )
        ax.plot(*zip(*sc), "o-", color=f"C{i}", label=f"{size} MLM from scratch")
        for r in rows:
            if r["size"] == size and r["kind"] == "transfer":
                marker = "*" if float(r["clm_share"]) < 0.2 else "X"
                ax.plot(
                    float(r["flops"]),
                    float(r["val_loss"]),
                    marker,
                    ms=12,
                    color=f"C{i}",
                    label=f"{size} CLM→MLM ({float(r['clm_share']):.0%} CLM)",
                )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training compute C = 6·N·D (FLOPs)")
    ax.set_ylabel("held-out MLM loss (nats)")
    ax.set_title("CLM→MLM transfer vs MLM from scratch (bundled data, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--plot-only", action="store_true", help="re-plot from OUT/results.csv")
    args = parser.parse_args()
    if args.plot_only:
        plot(list(csv.DictReader(open(args.out / "results.csv"))), args.out / "transfer.png")
        return
    torch.set_num_threads(2)
    rows: list[dict] = []
    for size, arch in SIZES.items():
        scratch = []
        for steps in SCRATCH_STEPS:
            r = {"size": size, "kind": "scratch", **run(arch, steps, None)}
            scratch.append(r)
            rows.append(r)
            print(r, flush=True)
        for share in CLM_SHARES:
            r = {"size": size, "kind": "transfer", **run(arch, TRANSFER_STEPS, share)}
            same = min(scratch, key=lambda s: abs(s["flops"] - r["flops"]))
            r["scratch_loss_same_compute"] = same["val_loss"]
            r["gain_nats"] = same["val_loss"] - r["val_loss"]
            r["d_t"] = effective_tokens(scratch, r)
            rows.append(r)
            print(r, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(args.out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    fit = fit_dt(rows)
    (args.out / "fit.json").write_text(json.dumps(fit, indent=2))
    plot(rows, args.out / "transfer.png")
    print(json.dumps(fit))


if __name__ == "__main__":
    main()
