"""One recipe: `plm train`, `plm plan`, `plm sweep` and the transfer callback plan the same run."""

import json
import re
import shlex
from types import SimpleNamespace

import pytest

from plm.callbacks.transfer import CLMToMLMTransfer
from plm.cli import main as plm_main
from plm.model.config import SIZES, batch_tokens_for, config_for, strategy_for
from plm.scaling.laws import LAWS, compute_optimal_flops
from plm.scaling.recipe import Layout, plan_for_budget, plan_for_size
from plm.scaling.sweep import make_jobs


def _train_fit_args(capsys, *argv: str) -> dict[str, str]:
    """The `plm fit` flags `plm train … --dry-run` would run, as {flag: value}."""
    assert plm_main(["train", *argv, "--dry-run", "--force"]) == 0
    command = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("plm fit"))
    words = shlex.split(command)[2:]
    return {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}


def _plan_json(capsys, flops: float, objective: str) -> dict:
    assert plm_main(["plan", "--flops", repr(flops), "--objective", objective, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("objective", ["mlm", "clm", "transfer"])
@pytest.mark.parametrize("size", list(SIZES))
def test_train_plan_sweep_and_callback_agree_for_every_size(size, objective, capsys):
    fit = _train_fit_args(capsys, "--size", size, "--objective", objective)
    expected = plan_for_size(size, objective)
    n = config_for(size).n_params_non_embedding()
    assert expected.flops == pytest.approx(compute_optimal_flops(n, objective), rel=1e-12)
    assert int(fit["--trainer.max_steps"]) == expected.steps
    assert int(fit["--trainer.accumulate_grad_batches"]) == expected.accumulate
    assert float(fit["--model.init_args.lr"]) == expected.peak_lr == SIZES[size].peak_lr

    plan = _plan_json(capsys, expected.flops, objective)  # the same budget through `plm plan`
    assert plan["size"] == size
    assert (plan["steps"], plan["accumulate"], plan["peak_lr"], plan["strategy"]) == (
        expected.steps,
        expected.accumulate,
        expected.peak_lr,
        expected.strategy,
    )

    if objective == "transfer":
        switch = json.loads(fit["--trainer.callbacks"])[0]["init_args"]["switch_flops"]
        default = CLMToMLMTransfer().budget(None, SimpleNamespace(config=config_for(size)))
        assert switch == pytest.approx(plan["clm_flops"], rel=1e-9) == pytest.approx(default, rel=1e-9)
        assert default == pytest.approx(LAWS["clm"].n_opt.inverse(n), rel=1e-12)
    else:  # an IsoFLOP sweep job at the same budget and batch trains the same steps at the same LR
        rows = expected.batch_tokens // 1024
        (job,), _ = make_jobs(objective, [expected.flops], size, _tmp(), 1024, rows, None, 1)
        assert (job.steps, job.lr, job.n_params) == (expected.steps, expected.peak_lr, expected.n_params)


def _tmp():
    from pathlib import Path

    return Path("/nonexistent-sweep-dir")  # make_jobs only names config paths under it


@pytest.mark.parametrize("objective", ["mlm", "clm", "transfer"])
@pytest.mark.parametrize("flops", [3e17, 1e19, 1e21, 1.15e22])
def test_a_budget_plans_the_run_train_makes_of_its_size(flops, objective, capsys):
    plan = plan_for_budget(flops, objective)
    if plan.size is None:  # generated shape: only the planner reaches it
        assert plan.steps == pytest.approx(flops / (6 * plan.n_params) / plan.step_tokens, abs=1)
        return
    fit = _train_fit_args(
        capsys, "--size", plan.size, "--objective", objective, "--tokens", repr(plan.tokens)
    )
    assert int(fit["--trainer.max_steps"]) == plan.steps
    assert float(fit["--model.init_args.lr"]) == plan.peak_lr
    if objective == "transfer":
        switch = json.loads(fit["--trainer.callbacks"])[0]["init_args"]["switch_flops"]
        assert switch == pytest.approx(plan.clm_flops, rel=1e-9)


def test_presets_follow_the_batch_and_strategy_rules():
    for name, preset in SIZES.items():
        n = config_for(name).n_params_non_embedding()
        assert preset.strategy == strategy_for(n)
        if name != "tiny":  # the CPU-demo shape keeps the demo's 8k-token batch
            assert preset.batch_tokens == batch_tokens_for(n)


def test_layout_sets_accumulation_and_whole_steps():
    plan = plan_for_size("1b", "mlm", Layout(row_len=1024, rows_per_device=4, devices=8, num_nodes=4))
    assert plan.accumulate == 8 and plan.step_tokens == 8 * 4 * 32 * 1024 == plan.batch_tokens
    assert plan.train_tokens >= plan.tokens > plan.train_tokens - plan.step_tokens
    assert plan.warmup_steps == round(0.025 * plan.steps)


def test_off_range_budgets_say_so_or_refuse(capsys):
    small = plan_for_budget(3e13, "mlm")
    assert small.notes and re.search(r"\d+× above N_opt", small.notes[0])
    assert plm_main(["plan", "--flops", "3e13"]) == 0
    assert "not compute-optimal" in capsys.readouterr().out
    with pytest.raises(ValueError, match="beyond the shapes plm generates"):
        plan_for_budget(1e25, "mlm")
    assert plm_main(["plan", "--flops", "1e25", "--objective", "mlm"]) == 2
    assert "beyond the shapes plm generates" in capsys.readouterr().err


def test_law_coefficients_live_in_one_module():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = subprocess.run(
        ["grep", "-rlE", r"1\.26e-3|6\.19e-8|1\.23e2|2\.02e6", "plm"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert hits == ["plm/scaling/laws.py"]


def test_a_small_budget_keeps_at_least_min_steps_and_says_the_batch_was_reduced():
    """Bug: a 2e10-FLOP plan put 16× its planned tokens into one step of the recipe's 524k-token batch."""
    from plm.scaling.recipe import MIN_STEPS

    plan = plan_for_budget(2e10, "mlm", Layout(row_len=128, rows_per_device=4))
    assert plan.steps >= MIN_STEPS and plan.steps * plan.step_tokens <= 1.1 * plan.tokens + plan.step_tokens
    assert any("batch reduced" in note for note in plan.notes)
    big = plan_for_size("35m", "mlm")  # a compute-optimal ladder run keeps the preset's batch
    assert big.batch_tokens == SIZES["35m"].batch_tokens and not any("batch reduced" in n for n in big.notes)
