import csv
import json

import numpy as np
import pytest

from plm.cli import main as plm_main
from plm.scaling.fit import Run, fit_all, fit_parametric, isoflop_minimum, load_results

# Chinchilla's published constants as the generating law: N_opt ∝ C^(β/(α+β)) = C^0.4516
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def law_loss(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def true_n_opt(c):
    a, b = TRUE["alpha"], TRUE["beta"]
    return (a * TRUE["A"] / (b * TRUE["B"])) ** (1 / (a + b)) * (c / 6) ** (b / (a + b))


def synthetic(
    seed: int, noise: float, objective: str = "clm", budgets=(1e18, 3e18, 1e19, 3e19, 1e20)
) -> list[Run]:
    """An IsoFLOP sweep drawn from the law: 9 sizes per budget around the optimum (off-centre by up to
    0.2 decades, as a real grid would be), multiplicative Gaussian noise on the loss."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        centre = np.log10(true_n_opt(c)) + rng.uniform(-0.2, 0.2)
        for x in np.linspace(centre - 1, centre + 1, 9):
            n = 10**x
            d = c / (6 * n)
            runs.append(Run(objective, c, n, d, law_loss(n, d) * float(np.exp(rng.normal(0, noise)))))
    return runs


def write_csv(path, runs, columns=("objective", "flops", "n_params", "tokens", "loss")):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in runs:
            w.writerow([getattr(r, c) for c in columns])
    return path


def test_isoflop_exponents_recovered_inside_bootstrap_interval():
    fit = fit_all(synthetic(seed=3, noise=0.01), "synthetic", n_boot=400, seed=0)["clm"]
    lo, hi = fit.n_opt.ci
    assert lo <= TRUE_A <= hi and hi - lo < 0.3
    assert abs(fit.n_opt.exponent - TRUE_A) < 0.05
    lo, hi = fit.d_opt.ci
    assert lo <= 1 - TRUE_A <= hi
    assert fit.n_opt.exponent + fit.d_opt.exponent == pytest.approx(1.0, abs=1e-9)  # C = 6·N·D
    for m in fit.minima:  # the parabola vertex lands near the true optimum of each budget
        assert abs(np.log10(m.n_opt / true_n_opt(m.flops))) < 0.15


def test_parametric_fit_recovers_generating_constants_without_noise():
    runs = synthetic(seed=0, noise=0.0)
    got = fit_parametric(*(np.array([getattr(r, k) for r in runs]) for k in ("n_params", "tokens", "loss")))
    for key, value in TRUE.items():
        assert got[key] == pytest.approx(value, rel=1e-3), key
    assert got["n_opt_exponent"] == pytest.approx(TRUE_A, rel=1e-3)


def test_isoflop_minimum_rejects_concave_curves():
    n = np.array([1e6, 1e7, 1e8])
    assert isoflop_minimum(1e18, n, np.array([2.0, 1.9, 2.0])).n_opt == pytest.approx(1e7)
    assert isoflop_minimum(1e18, n, np.array([2.0, 2.1, 2.0])) is None


def test_fit_laws_cli_json_table_and_plots(tmp_path, capsys):
    csv_path = write_csv(
        tmp_path / "results.csv",
        synthetic(1, 0.005) + synthetic(2, 0.005, "mlm"),
        columns=("objective", "flops", "n_params", "loss"),
    )  # tokens optional: C/(6N)
    assert (
        plm_main(
            ["fit-laws", str(csv_path), "--json", "--bootstrap", "200", "--plots", str(tmp_path / "plots")]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"clm", "mlm"}
    for obj in out.values():
        assert {"coef", "exponent", "ci"} <= set(obj["n_opt"]) and len(obj["d_opt"]["ci"]) == 2
        assert obj["n_opt"]["ci"][0] <= TRUE_A <= obj["n_opt"]["ci"][1]
        assert {"E", "A", "B", "alpha", "beta"} <= set(obj["parametric"])
    for name in ("isoflop_clm.png", "isoflop_mlm.png", "laws.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plm_main(["fit-laws", str(csv_path), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    assert "N_opt = " in table and "published: 0.00126·C^0.578" in table and "L(N, D) = " in table


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("objective,flops,loss\nclm,1e18,2.0\n", r"missing column\(s\) n_params"),
        (
            "objective,flops,n_params,loss\nclm,1e18,abc,2.0\nclm,1e18,1e6,two\n",
            r"2 bad value\(s\):\n  line 2: n_params='abc' is not a number\n  line 3: loss='two'",
        ),
        ("objective,flops,n_params,loss\nclm,1e18,-5,2.0\n", r"line 2: n_params=-5 must be a positive"),
        ("objective,flops,n_params,loss\n", "no result rows"),
        ("", r"missing column\(s\) objective, flops, n_params, loss"),
        (
            "objective,flops,n_params,loss\n"
            + "".join(f"clm,1e18,{n},2.{n % 7}\n" for n in (10, 20, 40, 80)),
            r"clm: only 1 usable budget\(s\); need at least 2",
        ),
        (
            "objective,flops,n_params,loss\n"
            + "".join(f"clm,{c},{n},2.{n % 7}\n" for c in (1e18, 1e19) for n in (10, 20)),
            r"budget\(s\) 1e\+18 \(2 sizes\), 1e\+19 \(2 sizes\) have fewer than 3",
        ),
    ],
    ids=["missing-column", "non-numeric", "negative", "header-only", "empty", "one-budget", "two-sizes"],
)
def test_malformed_csvs_are_clear_errors(tmp_path, capsys, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        fit_all(load_results(path), str(path))
    assert plm_main(["fit-laws", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_missing_results_path_is_a_clear_error(tmp_path, capsys):
    assert plm_main(["fit-laws", str(tmp_path / "nope.csv")]) == 2
    assert "no such results CSV or sweep directory" in capsys.readouterr().err
    assert plm_main(["fit-laws", str(tmp_path)]) == 2
    assert "no sweep.json" in capsys.readouterr().err


def test_extrapolated_minima_are_reported_but_left_out_of_the_laws():
    runs = synthetic(3, 0.0)
    c0 = min(r.flops for r in runs)
    shifted = []  # the smallest budget only tries sizes well above its optimum: a one-sided curve
    for c in sorted({r.flops for r in runs}):
        if c != c0:
            shifted += [r for r in runs if r.flops == c]
            continue
        for x in np.linspace(np.log10(true_n_opt(c)) + 0.8, np.log10(true_n_opt(c)) + 1.8, 5):
            n = 10**x
            shifted.append(Run("clm", c, n, c / (6 * n), law_loss(n, c / (6 * n))))
    fits = fit_all(shifted, "synthetic", n_boot=50)
    first = fits["clm"].minima[0]
    assert first.n_opt < first.n_range[0]  # the vertex lands below the sizes tried
    assert not first.used and all(m.used for m in fits["clm"].minima[1:])
    assert any(
        "not bracketed" in n and "add smaller sizes" in n and "left out of the laws" in n
        for n in fits["clm"].notes
    )
    assert fits["clm"].n_opt.ci[0] <= TRUE_A <= fits["clm"].n_opt.ci[1]
    kept = fit_all(shifted, "synthetic", n_boot=50, keep_extrapolated=True)
    assert kept["clm"].minima[0].used and kept["clm"].n_opt.exponent != fits["clm"].n_opt.exponent


def test_monotone_curve_is_not_bracketed_even_if_the_vertex_falls_inside():
    n = np.array(
        [1.4e4, 5.9e4, 1.0e5, 3.5e5, 8.1e5]
    )  # a real CPU budget: smallest size best, steep on the right
    m = isoflop_minimum(1e12, n, np.array([2.678, 2.688, 2.699, 2.780, 2.895]))
    assert m.n_range[0] <= m.n_opt <= m.n_range[1] and m.best_n == n[0] and not m.bracketed
    m = isoflop_minimum(1e12, n, np.array([2.70, 2.68, 2.69, 2.72, 2.80]))
    assert m.bracketed


def test_flat_resampled_curves_give_finite_intervals_without_overflow():
    """Bootstrap resamples of a nearly flat curve can put the vertex at N = 10^300; the fit works in
    log space, so the interval stays finite and nothing overflows (the committed CPU sweep did this)."""
    rng = np.random.default_rng(0)
    runs = []
    for c, centre in [(1e12, 2.7), (3e12, 2.69), (1e13, 2.68)]:
        for n in [3.6e3, 1.4e4, 5.9e4, 1.0e5, 3.5e5, 8.1e5]:
            runs.append(
                Run("mlm", c, n, c / (6 * n), centre + 0.003 * rng.standard_normal() + 0.02 * (n > 3e5))
            )
    with np.errstate(over="raise"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fit = fit_all(runs, "flat", n_boot=300, keep_extrapolated=True)["mlm"]
    for interval in (fit.n_opt.ci, fit.d_opt.ci):
        assert all(np.isfinite(interval)) and interval[0] <= interval[1]


def test_isoflop_plot_labels_unbracketed_minima(tmp_path, monkeypatch):
    """A one-sided budget is marked 'not bracketed' on the figure, a bracketed one is not."""
    import matplotlib.pyplot as plt

    from plm.scaling import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", lambda fig: figures.append(fig))
    runs = synthetic(3, 0.0)
    fit = fit_all(runs, "synthetic", n_boot=20)["clm"]
    plots.plot_isoflop(runs, fit, "clm", tmp_path / "a.png")
    assert not [t for t in figures[0].axes[0].texts if t.get_text() == "not bracketed"]
    fit.minima[0].best_n = fit.minima[0].n_range[0]  # its best run at the edge: no longer bracketed
    plots.plot_isoflop(runs, fit, "clm", tmp_path / "b.png")
    assert [t.get_text() for t in figures[1].axes[0].texts] == ["not bracketed"]
    monkeypatch.undo()  # the real plt.close again
    for fig in figures:
        plt.close(fig)
