"""Issue 23 item 8 and issue 25 items 3-4: one process per run directory, one configuration per run name,
and re-running a command never restarts a trained run from step 0 silently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from plm.reliability.checkpoint_io import write_checkpoint_atomic
from plm.reliability.run_dir import RunComplete, RunDirectory, RunDirError
from plm.reliability.run_record import RECORD_NAME, flatten
from tests.helpers.runs import REPO, fit_cmd, run_env, run_fit, start_fit

pytestmark = pytest.mark.reliability

CONFIG = flatten(
    {
        "model": {
            "class_path": "plm.lit.MaskedLM",
            "init_args": {"size": "tiny", "lr": None, "betas": (0.9, 0.95)},
        },
        "trainer": {"max_steps": 10, "enable_progress_bar": False},
        "data": {"row_len": 128, "num_workers": 0},
        "run_name": "r",
        "ckpt_path": None,
    }
)


def _with(**changes) -> dict:
    return {**CONFIG, **changes}


def _trained(run: Path, steps=(2, 4)) -> Path:
    """A run directory as plm fit leaves it: run.json and checkpoints of ``steps`` (last.ckpt = the last)."""
    RunDirectory(run).start_fit(CONFIG, None, 10)
    for step in steps:
        for name in (f"step{step:08d}.ckpt", "last.ckpt"):
            state = {"global_step": step, "state_dict": {}}
            write_checkpoint_atomic(run / "ckpt" / name, lambda fh, s=state: torch.save(s, fh))
    return run


# ---- the lock ------------------------------------------------------------------------------------------------
def test_a_second_process_on_a_run_directory_fails_at_once_naming_the_first(tmp_path):
    first, second = RunDirectory(tmp_path / "r"), RunDirectory(tmp_path / "r")
    first.lock()
    with pytest.raises(RunDirError, match=rf"in use by process {os.getpid()} on .*another --run_name"):
        second.lock()
    first.release()
    second.lock()  # free again once the holder is done
    second.release()


def test_other_ranks_do_not_lock(tmp_path):
    rank0, rank1 = RunDirectory(tmp_path / "r"), RunDirectory(tmp_path / "r", primary=False)
    rank0.lock()
    rank1.lock()  # rank 1 of the same run: no error
    rank0.release()


# ---- what a re-run does ------------------------------------------------------------------------------------------
def test_a_new_run_name_starts_at_step_0_and_records_its_configuration(tmp_path):
    run = tmp_path / "r"
    start = RunDirectory(run).start_fit(CONFIG, None, 10)
    assert start.ckpt_path is None and start.step == 0
    assert json.loads((run / RECORD_NAME).read_text())["config"] == CONFIG


def test_the_same_command_again_resumes_from_the_newest_checkpoint_and_says_so(tmp_path, capsys):
    run = _trained(tmp_path / "r")
    start = RunDirectory(run).start_fit(CONFIG, None, 10)
    assert start.step == 4 and Path(start.ckpt_path).parent == run / "ckpt"
    assert f"resuming {run} from step 4" in capsys.readouterr().err


def test_the_same_command_on_a_finished_run_does_nothing(tmp_path):
    run = _trained(tmp_path / "r", steps=(5, 10))
    with pytest.raises(RunComplete, match=r"already trained to step 10 .*Nothing to do.*--ckpt_path last"):
        RunDirectory(run).start_fit(CONFIG, None, 10)


def test_another_configuration_under_a_trained_run_name_is_refused_with_both_commands(tmp_path):
    run = _trained(tmp_path / "r")
    with pytest.raises(
        RunDirError, match=r"trainer\.max_steps: 10 → 20.*add --ckpt_path last.*--run_name r-2"
    ) as err:
        RunDirectory(run).start_fit(_with(**{"trainer.max_steps": 20}), None, 20)
    assert "overwrite its model" in str(err.value)
    assert json.loads((run / RECORD_NAME).read_text())["config"] == CONFIG  # the record is untouched


def test_settings_that_do_not_change_the_training_are_not_another_configuration(tmp_path):
    run = _trained(tmp_path / "r")
    quieter = _with(**{"data.num_workers": 2, "trainer.enable_progress_bar": True})
    assert RunDirectory(run).start_fit(quieter, None, 10).step == 4


def test_an_explicit_resume_may_change_the_optimizer_and_says_what_changed(tmp_path, capsys):
    run = _trained(tmp_path / "r")
    start = RunDirectory(run).start_fit(_with(**{"model.init_args.lr": 1e-4}), "last", 10)
    assert start.step == 4
    assert "with changed settings: model.init_args.lr: null → 0.0001" in capsys.readouterr().err


def test_an_explicit_resume_may_not_change_the_model_or_data(tmp_path):
    run = _trained(tmp_path / "r")
    with pytest.raises(
        RunDirError, match=r"another model, data or seed \(model\.init_args\.size: tiny → 8m\)"
    ):
        RunDirectory(run).start_fit(_with(**{"model.init_args.size": "8m"}), "last", 10)


def test_a_trained_run_without_a_record_is_not_restarted(tmp_path):
    run = _trained(tmp_path / "r")
    (run / RECORD_NAME).unlink()  # a run started by a plm without run.json
    with pytest.raises(RunDirError, match=r"no run\.json .*--ckpt_path last.*--run_name r-2"):
        RunDirectory(run).start_fit(CONFIG, None, 10)
    assert RunDirectory(run).start_fit(CONFIG, "last", 10).step == 4


# ---- through plm fit ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_runs_with_one_name_the_second_fails_at_once(tmp_path):
    first = start_fit(tmp_path, "same", "--trainer.max_steps", "100000", "--checkpoint_every", "2", step=2)
    try:
        second = subprocess.run(
            fit_cmd(tmp_path, "same"),
            cwd=REPO,
            env=run_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert first.poll() is None  # the second gave up while the first still ran
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert second.returncode == 2
    assert f"in use by process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0


@pytest.mark.slow
def test_rerunning_with_other_args_is_refused_and_the_trained_model_is_kept(tmp_path):
    """The README's ``make train ARGS='--trainer.max_steps 10'`` after a finished ``make train``."""
    run_fit(tmp_path, "demo", "--trainer.max_steps", "4")
    final = (tmp_path / "demo" / "final" / "model.safetensors").read_bytes()
    again = run_fit(tmp_path, "demo", "--trainer.max_steps", "4")
    assert "Nothing to do" in again.stderr
    other = run_fit(tmp_path, "demo", "--trainer.max_steps", "2", expect=2)
    assert "trainer.max_steps: 4 → 2" in other.stderr and "--run_name demo-2" in other.stderr
    assert "Traceback" not in other.stderr
    assert (tmp_path / "demo" / "final" / "model.safetensors").read_bytes() == final
