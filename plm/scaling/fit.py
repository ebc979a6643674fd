"""`plm fit-laws`: fit compute-optimal laws to the results of an IsoFLOP sweep (docs/reference.md).

    plm fit-laws results.csv
    plm fit-laws sweeps/clm --json --plots sweeps/clm/plots

Method (Hoffmann et al. 2022, approaches 2 and 3, as used by Cheng et al. 2024):

* per budget C, a parabola in log10 N through the IsoFLOP curve gives the loss-minimising N (minima
  are flat, so a single best run would be noisy); D_opt = C / (6·N_opt);
* N_opt = A·C^a and D_opt = B·C^b by least squares in log-log, with percentile bootstrap intervals
  from resampling the runs within each budget (the exponents are only known to about ±0.1);
* the parametric L(N, D) = E + A/N^α + B/D^β, fitted with a Huber loss (δ = 1e-3) on log-space
  residuals by L-BFGS, started from the best points of a grid (the objective is multi-modal).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from plm.command import Flag, command
from plm.scaling.results import Run, load_results

MIN_SIZES_PER_BUDGET = 3  # a parabola needs three points
MIN_BUDGETS = 2  # a power law needs two minima (three for a meaningful interval)
HUBER_DELTA = 1e-3


@dataclass
class PowerFit:
    """y = coef · C^exponent; ``ci`` is the bootstrap interval of the exponent, ``coef_ci`` of the coef."""

    coef: float
    exponent: float
    ci: list[float]
    coef_ci: list[float]

    def __call__(self, c: np.ndarray | float) -> np.ndarray | float:
        return self.coef * np.asarray(c, dtype=float) ** self.exponent


@dataclass
class Minimum:
    flops: float
    n_opt: float
    d_opt: float
    loss: float
    parabola: list[float]  # loss = p0·x² + p1·x + p2 with x = log10 N
    n_range: list[float]  # smallest and largest N tried at this budget
    best_n: float = 0.0  # the size of the lowest measured loss at this budget
    used: bool = True  # False: not bracketed, so left out of the laws

    @property
    def bracketed(self) -> bool:
        """The vertex lies inside the sizes tried *and* the best run is not the smallest or largest one:
        a parabola through a one-sided (monotone) curve can put its vertex inside the range anyway."""
        inside = self.n_range[0] <= self.n_opt <= self.n_range[1]
        return inside and self.n_range[0] < self.best_n < self.n_range[1]


@dataclass
class ObjectiveFit:
    minima: list[Minimum]
    n_opt: PowerFit
    d_opt: PowerFit
    parametric: dict[str, float] | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "n_opt": asdict(self.n_opt),
            "d_opt": asdict(self.d_opt),
            "parametric": self.parametric,
            "minima": [asdict(m) for m in self.minima],
            "notes": self.notes,
        }


def check_design(runs: list[Run], source: str) -> None:
    """An IsoFLOP fit needs ≥ 2 budgets per objective, each with ≥ 3 distinct sizes."""
    problems = []
    for obj in sorted({r.objective for r in runs}):
        budgets: dict[float, set[float]] = {}
        for r in runs:
            if r.objective == obj:
                budgets.setdefault(r.flops, set()).add(r.n_params)
        thin = {c: len(n) for c, n in budgets.items() if len(n) < MIN_SIZES_PER_BUDGET}
        if thin:
            problems.append(
                f"{obj}: budget(s) "
                + ", ".join(f"{c:.3g} ({k} size{'s' * (k != 1)})" for c, k in sorted(thin.items()))
                + f" have fewer than {MIN_SIZES_PER_BUDGET} distinct n_params; add sizes or drop them"
            )
        if len(budgets) - len(thin) < MIN_BUDGETS:
            problems.append(
                f"{obj}: only {len(budgets) - len(thin)} usable budget(s); need at least {MIN_BUDGETS} "
                f"(3 or more for a meaningful interval)"
            )
    if problems:
        raise ValueError(f"{source}: too few runs for an IsoFLOP fit:\n  " + "\n  ".join(problems))


# ---- approach 2: IsoFLOP minima and power laws ---------------------------------------------------
def _log_vertex(x: np.ndarray, loss: np.ndarray) -> tuple[float, np.ndarray] | None:
    """log10 N at the vertex of the parabola loss(x = log10 N), with its coefficients; None when fewer
    than three sizes or the curve is not convex. Kept in log space: a flat curve can put it at 10^300."""
    if len(np.unique(x)) < 3:
        return None
    p = np.polyfit(x, loss, 2)
    return (float(-p[1] / (2 * p[0])), p) if p[0] > 0 else None


def isoflop_minimum(flops: float, n: np.ndarray, loss: np.ndarray) -> Minimum | None:
    """Vertex of loss = p0·x² + p1·x + p2 in x = log10 N; None when the curve is not convex."""
    fitted = _log_vertex(np.log10(n), loss)
    if fitted is None:
        return None
    x_opt, p = fitted
    n_opt = 10.0**x_opt
    return Minimum(
        flops,
        n_opt,
        flops / (6.0 * n_opt),
        float(np.polyval(p, x_opt)),
        p.tolist(),
        [float(n.min()), float(n.max())],
        float(n[np.argmin(loss)]),
    )


def _power_fit(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log10(c), np.log10(y), 1)
    return float(10.0**intercept), float(slope)


def fit_isoflop(
    runs: list[Run], n_boot: int = 1000, seed: int = 0, keep_extrapolated: bool = False
) -> tuple[list[Minimum], PowerFit, PowerFit, list[str]]:
    """Minima per budget, then N_opt(C) and D_opt(C) with bootstrap intervals (runs resampled per budget).

    A budget whose parabola vertex lies outside the sizes tried is reported but left out of the power
    laws (its "minimum" is an extrapolation of a one-sided curve) unless ``keep_extrapolated``.
    """
    by_budget: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for c in sorted({r.flops for r in runs}):
        sel = [r for r in runs if r.flops == c]
        by_budget[c] = (np.array([r.n_params for r in sel]), np.array([r.loss for r in sel]))
    minima, notes = [], []
    for c, (n, loss) in by_budget.items():
        m = isoflop_minimum(c, n, loss)
        if m is None:
            notes.append(
                f"budget {c:.3g}: IsoFLOP curve is not convex in log N (no minimum); budget left out"
            )
            continue
        if not m.bracketed:
            m.used = keep_extrapolated
            side = "smaller" if min(m.n_opt, m.best_n) <= m.n_range[0] else "larger"
            notes.append(
                f"budget {c:.3g}: not bracketed (parabola vertex N = {m.n_opt:.3g}, best run N = {m.best_n:.3g}, "
                f"sizes tried [{m.n_range[0]:.3g}, {m.n_range[1]:.3g}]); add {side} sizes; "
                + ("kept in the laws (--keep-extrapolated)" if keep_extrapolated else "left out of the laws")
            )
        minima.append(m)
    used = [m for m in minima if m.used]
    if len(used) < MIN_BUDGETS:
        unbracketed = any(not m.used for m in minima)  # left out only because their minimum is extrapolated
        hint = (
            " (or pass --keep-extrapolated to fit the unbracketed budgets anyway, with wide intervals)"
            if unbracketed and not keep_extrapolated
            else ""
        )
        raise ValueError(
            f"only {len(used)} budget(s) have a convex IsoFLOP curve with its minimum inside the sizes "
            f"tried; need {MIN_BUDGETS}{hint}: " + "; ".join(notes)
        )
    c = np.array([m.flops for m in used])
    n_fit = _power_fit(c, np.array([m.n_opt for m in used]))
    d_fit = _power_fit(c, np.array([m.d_opt for m in used]))

    rng = np.random.default_rng(seed)
    boots: list[tuple[float, float, float, float]] = []
    budgets = [(m.flops, by_budget[m.flops]) for m in used]
    # resamples are fitted in log10 space: a flat resampled curve can put its vertex at N = 10^300,
    # which is a legitimate (uninformative) outcome but overflows when exponentiated
    for _ in range(n_boot):
        log_c, log_n = [], []
        for budget, (n, loss) in budgets:
            idx = rng.integers(0, len(n), len(n))
            fitted = _log_vertex(np.log10(n[idx]), loss[idx])
            if fitted is not None:
                log_c.append(np.log10(budget))
                log_n.append(fitted[0])
        if len(log_c) >= MIN_BUDGETS:
            lc, ln = np.array(log_c), np.array(log_n)
            n_slope, n_icpt = np.polyfit(lc, ln, 1)
            d_slope, d_icpt = np.polyfit(lc, lc - np.log10(6.0) - ln, 1)
            boots.append((n_icpt, n_slope, d_icpt, d_slope))
    if len(boots) < max(20, n_boot // 10):
        notes.append(
            f"only {len(boots)} of {n_boot} bootstrap resamples gave a fit; intervals are unreliable"
        )
    b = np.array(boots) if boots else np.full((1, 4), np.nan)

    def interval(col: int) -> list[float]:
        lo, hi = np.percentile(b[:, col], [2.5, 97.5])
        if col % 2 == 0:  # log10 coefficient → coefficient (inf only if the interval itself is beyond 1e308)
            with np.errstate(over="ignore"):
                lo, hi = 10.0**lo, 10.0**hi
        return [float(lo), float(hi)]

    n_opt = PowerFit(n_fit[0], n_fit[1], interval(1), interval(0))
    d_opt = PowerFit(d_fit[0], d_fit[1], interval(3), interval(2))
    if len(used) < 3:
        notes.append(
            "two budgets determine the line exactly: the interval reflects only the noise of the minima"
        )
    return minima, n_opt, d_opt, notes


# ---- approach 3: parametric L(N, D) -------------------------------------------------------------
def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(r)
    value = np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber(log L̂ − log L) and its gradient; θ = (a, b, e, α, β) with A = e^a, B = e^b, E = e^e."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    pred = logsumexp(terms, axis=0)
    value, dr = _huber(pred - log_loss, delta)
    w = softmax(terms, axis=0) * dr  # d pred / d term × dHuber/dr
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[0] * log_n).sum(), -(w[1] * log_d).sum()])
    return float(value.sum()), grad


def fit_parametric(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float = HUBER_DELTA, top_starts: int = 24
) -> dict[str, float]:
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. approach 3).

    The grid is Chinchilla's (α, β ∈ 0…2, e ∈ −1…1, a, b ∈ 0…25), evaluated in one vectorised pass;
    L-BFGS then starts from the ``top_starts`` best grid points and the lowest optimum wins.
    """
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    grid = (
        np.array(
            np.meshgrid(
                np.arange(0, 30, 5.0),
                np.arange(0, 30, 5.0),
                np.arange(-1, 1.5, 0.5),
                np.arange(0, 2.5, 0.5),
                np.arange(0, 2.5, 0.5),
                indexing="ij",
            )
        )
        .reshape(5, -1)
        .T
    )
    terms = np.stack(
        [
            grid[:, [0]] - grid[:, [3]] * log_n,
            grid[:, [1]] - grid[:, [4]] * log_d,
            np.repeat(grid[:, [2]], len(n), axis=1),
        ]
    )
    r = logsumexp(terms, axis=0) - log_loss
    grid_loss = _huber(r, delta)[0].sum(axis=1)
    best = None
    for start in grid[np.argsort(grid_loss)[:top_starts]]:
        res = minimize(
            _objective,
            start,
            args=(log_n, log_d, log_loss, delta),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12},
        )
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return {
        "E": float(math.exp(e)),
        "A": float(math.exp(a)),
        "B": float(math.exp(b)),
        "alpha": float(alpha),
        "beta": float(beta),
        "n_opt_exponent": float(beta / (alpha + beta)) if alpha + beta > 0 else float("nan"),
        "huber_loss": float(best.fun),
    }


def fit_objective(
    runs: list[Run], n_boot: int = 1000, seed: int = 0, keep_extrapolated: bool = False
) -> ObjectiveFit:
    minima, n_opt, d_opt, notes = fit_isoflop(runs, n_boot, seed, keep_extrapolated)
    n, d, loss = (np.array([getattr(r, k) for r in runs]) for k in ("n_params", "tokens", "loss"))
    parametric = fit_parametric(n, d, loss) if len(runs) >= 5 else None
    if parametric is None:
        notes.append("parametric fit skipped: it has 5 constants and needs at least 5 runs")
    return ObjectiveFit(minima, n_opt, d_opt, parametric, notes)


def fit_all(
    runs: list[Run], source: str, n_boot: int = 1000, seed: int = 0, keep_extrapolated: bool = False
) -> dict[str, ObjectiveFit]:
    check_design(runs, source)
    return {
        obj: fit_objective([r for r in runs if r.objective == obj], n_boot, seed, keep_extrapolated)
        for obj in sorted({r.objective for r in runs})
    }


# ---- CLI ----------------------------------------------------------------------------------------
def format_table(fits: dict[str, ObjectiveFit]) -> str:
    from plm.scaling.laws import LAWS

    lines = []
    for obj, f in fits.items():
        lines.append(f"{obj.upper()}  ({len(f.minima)} budgets)")
        lines.append(f"  {'budget C':>10} {'N_opt':>10} {'D_opt':>10} {'loss':>8}  sizes tried")
        for m in f.minima:
            lines.append(
                f"  {m.flops:>10.3g} {m.n_opt:>10.3g} {m.d_opt:>10.3g} {m.loss:>8.4f}  "
                f"{m.n_range[0]:.3g}…{m.n_range[1]:.3g}"
                + ("" if m.used else "  (not bracketed: not in the laws)")
            )
        pub = LAWS.get(obj)
        for name, p, ref in (
            ("N_opt", f.n_opt, pub.n_opt if pub else None),
            ("D_opt", f.d_opt, pub.d_opt if pub else None),
        ):
            ref_s = f"   (published: {ref.coef:.3g}·C^{ref.exponent:.3f})" if ref else ""
            lines.append(
                f"  {name} = {p.coef:.3g}·C^{p.exponent:.3f}, exponent 95% CI [{p.ci[0]:.3f}, {p.ci[1]:.3f}]{ref_s}"
            )
        if f.parametric:
            q = f.parametric
            lines.append(
                f"  L(N, D) = {q['E']:.3f} + {q['A']:.3g}/N^{q['alpha']:.3f} + {q['B']:.3g}/D^{q['beta']:.3f}"
                f"   (β/(α+β) = {q['n_opt_exponent']:.3f}; constants are poorly identified)"
            )
        lines += [f"  note: {n}" for n in f.notes]
    return "\n".join(lines)


def fit_laws(
    results: Path,
    /,
    as_json: Annotated[bool, Flag("--json")] = False,
    plots: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    keep_extrapolated: bool = False,
) -> int:
    """Fit N_opt(C), D_opt(C) (bootstrap CIs) and L(N, D) to sweep results; table, JSON, PNG plots.

    Args:
        results: CSV with objective,flops,n_params,loss[,tokens], or a `plm sweep` --out directory
        as_json: print the fits as one JSON object keyed by objective
        plots: write isoflop_<objective>.png and laws.png here
        bootstrap: bootstrap resamples for the intervals
        seed: seed of the bootstrap
        keep_extrapolated: also fit budgets whose minimum lies outside the sizes tried (default: report, leave out)
    """
    try:
        runs = load_results(results)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            fits = fit_all(runs, str(results), bootstrap, seed, keep_extrapolated)
    except (ValueError, FileNotFoundError) as err:
        print(f"plm fit-laws: {err}", file=sys.stderr)
        return 2
    if plots:
        from plm.scaling.plots import plot_all

        written = plot_all(runs, fits, plots)
        if not as_json:
            print("wrote " + ", ".join(str(p) for p in written))
    if as_json:
        print(json.dumps({obj: f.to_json() for obj, f in fits.items()}, indent=2))
    else:
        print(format_table(fits))
    return 0


main = command(fit_laws, "plm fit-laws", description=__doc__)
