import json
import math

import pytest

from plm.cli import main as plm_main
from plm.data.datamodule import ProteinDataModule
from plm.lightning_cli import PlmCLI
from plm.lit.language_model import LanguageModel
from tests.helpers.runs import REPO, fit_tiny, losses

TRAIN_CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))


class _ParseOnly(PlmCLI):
    def instantiate_classes(self) -> None:  # parse and type-check, build nothing (GPU strategies)
        pass


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_train_config_instantiates(config, tmp_path):
    cli = PlmCLI(
        LanguageModel,
        ProteinDataModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(config), "--run_root", str(tmp_path)],
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )
    assert cli.model.hparams.total_steps == cli.trainer.max_steps  # linked, never duplicated


@pytest.mark.parametrize("size", ["8m", "650m", "1b", "10b"])
def test_every_size_plan_parses_as_a_gpu_fit_config(size):
    from plm.model.config import SIZES
    from plm.scaling.recipe import Layout, overrides_as_args, plan_for_size

    plan = plan_for_size(size, "transfer", Layout(devices=8, num_nodes=2))
    args = overrides_as_args(plan.fit_overrides(gpu=True))
    cli = _ParseOnly(
        LanguageModel,
        ProteinDataModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(REPO / "configs/train/transfer.yaml"), *args],
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )
    cfg = cli.config
    assert cfg.model.init_args.size == size and cfg.trainer.max_steps == plan.steps
    assert cfg.trainer.accelerator == "gpu" and str(cfg.trainer.devices) == "8" and cfg.trainer.num_nodes == 2
    strategy = cfg.trainer.strategy
    assert (
        (strategy == "ddp")
        if SIZES[size].strategy == "ddp"
        else strategy.class_path == "plm.strategies.FSDP2"
    )
    assert cfg.model.init_args.meta_init == (SIZES[size].strategy == "fsdp")  # never whole on one rank
    (callback,) = cfg.trainer.callbacks  # the plan's switch replaces the demo's 20% share
    assert (
        callback.init_args.switch_flops == pytest.approx(plan.clm_flops)
        and callback.init_args.clm_share is None
    )


def test_train_refuses_big_size_on_cpu_and_unknown_size(capsys):
    assert plm_main(["train", "--size", "1b"]) == 2
    out, err = capsys.readouterr()
    assert "non-embedding N = 1,212,803,072" in out and "plan:" in out and "C = 6·N·D" in out
    assert "refusing size 1b" in err and "GB" in err and "sbatch" in err and "--force" in err
    assert plm_main(["train", "--size", "nonexistent"]) == 2
    assert "valid sizes: tiny, 8m, 35m" in capsys.readouterr().err


def test_train_dry_run_plans_compute_optimal_tokens(capsys):
    assert plm_main(["train", "--size", "8m", "--objective", "clm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--model.init_args.lr 0.0006" in out


@pytest.mark.slow
@pytest.mark.reliability  # CI runs every reliability check in full, outside make test's time budget
def test_stop_and_go_resume_is_exact_even_with_other_worker_count(tmp_path):
    """Resume from the step-3 checkpoint of an uninterrupted 6-step run: steps 4–6 must match exactly,
    with a different num_workers in the second half."""
    full = fit_tiny(tmp_path, "full", "--checkpoint_every", "3", "--keep_checkpoints", "-1")
    ckpt = full / "ckpt" / "step00000003.ckpt"
    resumed = fit_tiny(tmp_path, "resumed", "--ckpt_path", str(ckpt), "--data.num_workers", "2")
    a, b = losses(full), losses(resumed)
    assert set(b) == {3, 4, 5}  # steps logged after the resume (0-based step index)
    assert [a[s] for s in (3, 4, 5)] == [b[s] for s in (3, 4, 5)]
    state = __import__("torch").load(ckpt, weights_only=True)
    assert state["ProteinDataModule"]["cursor"] > 0 and set(
        state["ProteinDataModule"]["seen_per_source"]
    ) == {"uniprot", "metagenomic"}


def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "digests"
    out.mkdir()
    fit_tiny(
        tmp_path,
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.callbacks+=tests.helpers.callbacks.WeightDigest",
        env={"PLM_TEST_OUT": str(out)},
    )
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]
    assert all(math.isfinite(x) and abs(x) < 100 for x in r0["losses"] + r1["losses"])
    assert r0["losses"] != r1["losses"]  # each rank trained on its own rows


@pytest.mark.parametrize("name,objective", [("mlm", "mlm"), ("clm", "clm"), ("transfer", "clm")])
def test_shipped_configs_train_the_objective_they_name(name, objective, tmp_path):
    cli = PlmCLI(
        LanguageModel,
        ProteinDataModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(REPO / f"configs/train/{name}.yaml"), "--run_root", str(tmp_path)],
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )
    assert cli.model.objective == objective


@pytest.mark.parametrize("name", ["mlm", "clm", "transfer"])
def test_shipped_configs_train_two_steps_with_their_precision(name, tmp_path):
    """The real configs (bf16-mixed, gradient clipping, callbacks), shrunk to the tiny shape."""
    run = fit_tiny(
        tmp_path,
        name,
        "--config",
        str(REPO / f"configs/train/{name}.yaml"),
        "--model.init_args.size",
        "tiny",
        "--data.row_len",
        "128",
        "--data.rows_per_batch",
        "2",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--data.val_rows",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    )
    assert (run / "final" / "model.safetensors").is_file()


def test_fit_validate_test_and_finetune_are_one_entry_point(monkeypatch):
    """plm fit / validate / test and plm finetune all run through plm.lightning_cli.run_cli, each with its
    own CLI class, model and data (pre-training keeps its module's own optimizer and schedule)."""
    from plm import finetune_cli, lightning_cli
    from plm.evaluation.downstream_data import DownstreamDataModule
    from plm.evaluation.finetune import FineTune

    assert finetune_cli.run_cli is lightning_cli.run_cli
    calls = []

    def run_cli(cli_class, model_class, datamodule_class, prog, args, **cli_kwargs):
        calls.append((cli_class, model_class, datamodule_class, prog, args, cli_kwargs))
        return 7

    monkeypatch.setattr(lightning_cli, "run_cli", run_cli)
    monkeypatch.setattr(finetune_cli, "run_cli", run_cli)
    for sub in ("fit", "validate", "test"):
        assert plm_main([sub, "--config", "a.yaml"]) == 7
        assert calls.pop() == (
            PlmCLI,
            LanguageModel,
            ProteinDataModule,
            f"plm {sub}",
            [sub, "--config", "a.yaml"],
            {"auto_configure_optimizers": False},
        )
    assert plm_main(["finetune", "--config", "t.yaml", "--debug"]) == 7
    assert calls.pop() == (
        finetune_cli.FinetuneCLI,
        FineTune,
        DownstreamDataModule,
        "plm finetune",
        ["fit", "--config", "t.yaml", "--debug"],
        {},
    )


def test_run_cli_exit_codes_one_line_errors_and_argv(tmp_path, monkeypatch, capsys):
    """What every LightningCLI command shares: LightningCLI sees the command line without --debug and with
    shipped --config files found from anywhere; sys.argv is restored; a finished run exits 0 saying so; an
    expected error is one line with exit code 2; a bug keeps its traceback."""
    import sys

    from plm.errors import PlmError
    from plm.lightning_cli import run_cli
    from plm.reliability.run_dir import RunComplete

    seen = {}

    def cli_raising(err):
        class FakeCLI:
            def __init__(self, model_class, datamodule_class, **kwargs):
                seen.update(argv=sys.argv[1:], classes=(model_class, datamodule_class), kwargs=kwargs)
                if err is not None:
                    raise err
                self.trainer = None

        return FakeCLI

    monkeypatch.chdir(tmp_path)
    argv = sys.argv
    args = ["fit", "--config", "configs/train/tiny.yaml", "--debug", "--trainer.max_steps", "3"]
    assert run_cli(cli_raising(None), "M", "D", "plm fit", args, run=False) == 0
    assert seen["argv"] == [
        "fit",
        "--config",
        str(REPO / "configs/train/tiny.yaml"),
        "--trainer.max_steps",
        "3",
    ]
    assert seen["classes"] == ("M", "D") and seen["kwargs"]["run"] is False and sys.argv is argv
    assert seen["kwargs"]["subclass_mode_model"] is True

    assert run_cli(cli_raising(RunComplete("already at step 3 of 3")), "M", "D", "plm x", ["fit"]) == 0
    assert capsys.readouterr().err == "plm x: already at step 3 of 3\n"
    assert run_cli(cli_raising(PlmError("the run directory is busy")), "M", "D", "plm x", ["fit"]) == 2
    assert capsys.readouterr().err == "plm x: the run directory is busy\n"  # no traceback without --debug
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(cli_raising(RuntimeError("a bug")), "M", "D", "plm x", ["fit"])
    assert sys.argv is argv
