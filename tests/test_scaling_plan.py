import json
import math

import pytest
import yaml

from plm.cli import main as plm_main
from plm.scaling.laws import LAWS, transfer_split
from plm.scaling.plan import check_epochs
from plm.scaling.recipe import choose_shape, generated_shape, plan_for_budget
from tests.helpers.runs import REPO, fit_tiny


def _json(capsys, *args):
    assert plm_main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_sanity_points(capsys):
    clm = _json(capsys, "--flops", "1e21", "--objective", "clm")
    mlm = _json(capsys, "--flops", "1e21", "--objective", "mlm")
    big = _json(capsys, "--flops", "1.15e22", "--objective", "clm")
    assert clm["n_params"] == pytest.approx(1.7e9, rel=0.05)
    assert mlm["n_params"] == pytest.approx(1.2e9, rel=0.05)
    assert big["n_params"] == pytest.approx(7.2e9, rel=0.05) and big["tokens"] == pytest.approx(
        2.65e11, rel=0.05
    )
    for plan in (clm, mlm, big):
        assert {"objective", "flops", "n_params", "tokens", "layers", "hidden", "heads"} <= set(plan)
        assert plan["flops"] == pytest.approx(6 * plan["n_params"] * plan["tokens"], rel=1e-9)


def test_gpu_hours_budget_and_transfer_split(capsys):
    plan = _json(capsys, "--gpu-hours", "5000", "--gpu", "h100", "--mfu", "0.4", "--objective", "transfer")
    assert plan["flops"] == pytest.approx(5000 * 3600 * 989e12 * 0.4)
    n, c_clm, c_mlm = transfer_split(plan["flops"])
    assert c_clm + c_mlm == pytest.approx(plan["flops"], rel=1e-6)
    assert LAWS["clm"].n_opt(c_clm) == pytest.approx(n, rel=1e-6) == LAWS["mlm"].n_opt(c_mlm)
    # the CLM share grows with size (docs/reference.md: ≈25% at 470M, ≈35% at 1.2B)
    shares = [transfer_split(c)[1] / c for c in (1e19, 1e21, 1e23)]
    assert shares == sorted(shares)


def test_generated_shapes_are_sane():
    for n in (3e7, 2.5e8, 1.7e9, 2e10, 4.5e9, 7e9, 1.4e10):
        layers, hidden, heads = generated_shape(n)
        assert abs(math.log(12 * layers * hidden**2 / n)) < 0.15
        assert hidden % 64 == 0 and hidden % heads == 0 and 64 <= hidden // heads <= 128
        assert 16 <= hidden / layers <= 128
    assert choose_shape(1.21e9)[0] == "1b"


def test_bad_budgets_are_clear_errors(capsys):
    assert plm_main(["plan", "--gpu-hours", "10", "--gpu", "tpu9"]) == 2
    assert "--gpu 'tpu9' is unknown" in capsys.readouterr().err
    assert plm_main(["plan", "--flops", "-5"]) == 2
    assert "positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plm_main(["plan", "--flops", "1e20", "--gpu-hours", "3"])


def test_manifest_epochs_warn_above_one(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "sources": {
                    "a": {"train": {"records": 10, "residues": 1e6}},
                    "b": {"train": {"records": 10, "residues": 1e9}},
                }
            }
        )
    )
    plan = plan_for_budget(1e16, "mlm")
    with pytest.warns(UserWarning, match="source 'a' would be seen"):
        epochs = check_epochs(plan, manifest, {"a": 0.5, "b": 0.5})
    assert epochs["a"] == pytest.approx(plan.tokens * 0.5 / 1e6)
    with pytest.raises(ValueError, match="not a `plm data prepare` manifest"):
        check_epochs(plan, tmp_path / "missing.json", None)


@pytest.mark.parametrize("objective", ["mlm", "transfer"])
def test_written_config_trains_with_plm_fit(objective, tmp_path, capsys):
    cfg = tmp_path / "plan.yaml"
    assert (
        plm_main(
            [
                "plan",
                "--flops",
                "2e10",
                "--objective",
                objective,
                "--write",
                str(cfg),
                "--row-len",
                "128",
                "--rows-per-device",
                "4",
            ]
        )
        == 0
    )
    text = cfg.read_text()
    assert "max_steps" in text and ("CLMToMLMTransfer" in text) == (objective == "transfer")
    run = fit_tiny(
        tmp_path,
        "planned",
        "--config",
        str(cfg),
        "--trainer.precision",
        "32-true",
        "--trainer.enable_progress_bar",
        "false",
        "--run_name",
        "planned",
    )
    assert (run / "final" / "model.safetensors").is_file()


def test_plan_with_fitted_laws_gives_expected_loss(tmp_path, capsys):
    fitted = {
        "clm": {
            "n_opt": {"coef": 0.5, "exponent": 0.45, "ci": [0.4, 0.5]},
            "parametric": {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28},
        }
    }
    laws = tmp_path / "fit.json"
    laws.write_text(json.dumps(fitted))
    plan = _json(capsys, "--flops", "1e20", "--objective", "clm", "--laws", str(laws))
    assert plan["n_opt"] == pytest.approx(0.5 * 1e20**0.45)
    n, d = plan["n_params"], plan["tokens"]
    assert plan["expected_loss"] == pytest.approx(1.7 + 400 / n**0.34 + 410 / d**0.28)
    assert plm_main(["plan", "--flops", "1e20", "--objective", "clm", "--laws", str(laws)]) == 0
    assert "expected loss: " in capsys.readouterr().out
    assert plm_main(["plan", "--flops", "1e20", "--objective", "mlm", "--laws", str(laws)]) == 2
    assert "no 'mlm' entry" in capsys.readouterr().err
    laws.write_text("{not json")
    assert plm_main(["plan", "--flops", "1e20", "--objective", "clm", "--laws", str(laws)]) == 2
    assert "not readable JSON" in capsys.readouterr().err


def test_written_config_trains_on_the_manifest_it_was_planned_for(tmp_path):
    out = tmp_path / "prepared"
    assert (
        plm_main(
            [
                "data",
                "prepare",
                "--source",
                f"uni={REPO / 'tests/fixtures/uniprot_tiny500.fasta.gz'}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = tmp_path / "plan.yaml"
    assert (
        plm_main(
            [
                "plan",
                "--flops",
                "1e12",
                "--manifest",
                str(out / "manifest.json"),
                "--weights",
                "uni=1",
                "--write",
                str(cfg),
            ]
        )
        == 0
    )
    data = yaml.safe_load(cfg.read_text())["data"]
    assert data["sources"] == {"uni": str((out / "uni").resolve())} and data["weights"] == {"uni": 1.0}
