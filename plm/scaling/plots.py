"""PNG figures of a scaling-law fit: IsoFLOP curves with their minima, and N_opt / D_opt against C.

The published laws (plm.scaling.laws) are drawn dashed on the same axes so a sweep on your own data
can be compared with Cheng et al. at a glance. Matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from plm.scaling.laws import LAWS

if TYPE_CHECKING:
    from plm.scaling.fit import ObjectiveFit, Run

COLOURS = {"clm": "tab:red", "mlm": "tab:blue"}


def plot_isoflop(runs: list[Run], fit: ObjectiveFit, objective: str, path: Path) -> Path:
    """Loss against N, one colour per budget: the runs, the fitted parabola and its minimum (star)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    budgets = sorted({r.flops for r in runs})
    cmap = plt.get_cmap("viridis")
    minima = {m.flops: m for m in fit.minima}
    for i, c in enumerate(budgets):
        colour = cmap(i / max(1, len(budgets) - 1) * 0.9)
        sel = sorted((r for r in runs if r.flops == c), key=lambda r: r.n_params)
        n = np.array([r.n_params for r in sel])
        ax.plot(n, [r.loss for r in sel], "o", color=colour, label=f"C = {c:.2g}")
        m = minima.get(c)
        if m is not None:
            x = np.linspace(np.log10(min(n.min(), m.n_opt)), np.log10(max(n.max(), m.n_opt)), 100)
            ax.plot(10**x, np.polyval(m.parabola, x), "-", color=colour, alpha=0.7)
            ax.plot(
                [m.n_opt],
                [m.loss],
                "*",
                color=colour if m.used else "none",
                markersize=14,
                markeredgecolor="black",
            )
            if not m.bracketed:  # a vertex extrapolated from a one-sided curve: say so on the figure
                ax.annotate(
                    "not bracketed",
                    (m.n_opt, m.loss),
                    textcoords="offset points",
                    xytext=(8, -12),
                    fontsize=7,
                    color=colour,
                )
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title(
        f"{objective.upper()} IsoFLOP profiles\n★ parabola minimum (filled: used in the laws, hollow: left out)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_laws(fits: dict[str, ObjectiveFit], path: Path) -> Path:
    """N_opt(C) and D_opt(C): fitted minima, fitted power law with its label, published law dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, label in (
        (axes[0], "n_opt", "N_opt (non-embedding parameters)"),
        (axes[1], "d_opt", "D_opt (tokens)"),
    ):
        for obj, f in fits.items():
            colour = COLOURS.get(obj, "tab:green")
            c = np.array([m.flops for m in f.minima if m.used])
            y = np.array([getattr(m, key) for m in f.minima if m.used])
            out = [m for m in f.minima if not m.used]
            if out:  # extrapolated minima: shown hollow, not fitted
                ax.plot([m.flops for m in out], [getattr(m, key) for m in out], "o", mfc="none", color=colour)
            law = getattr(f, key)
            grid = np.geomspace(c.min() / 2, c.max() * 2, 50)
            ax.plot(c, y, "o", color=colour)
            ax.plot(
                grid,
                law(grid),
                "-",
                color=colour,
                label=f"{obj.upper()} fit {law.coef:.3g}·C^{law.exponent:.2f} [{law.ci[0]:.2f}, {law.ci[1]:.2f}]",
            )
            if obj in LAWS:
                pub = getattr(LAWS[obj], key)
                ax.plot(
                    grid,
                    pub(grid),
                    "--",
                    color=colour,
                    alpha=0.6,
                    label=f"{obj.upper()} published {pub.coef:.3g}·C^{pub.exponent:.3f}",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C = 6·N·D (FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        "Compute-optimal allocation: this sweep (solid, 95% CI of exponent) vs Cheng et al. 2024 (dashed)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(runs: list[Run], fits: dict[str, ObjectiveFit], out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_isoflop([r for r in runs if r.objective == obj], f, obj, out / f"isoflop_{obj}.png")
        for obj, f in fits.items()
    ]
    written.append(plot_laws(fits, out / "laws.png"))
    return written
