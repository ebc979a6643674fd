"""Issue 23 item 3 and issue 25 item 3: a signal to the whole process group (SLURM, Ctrl-C in a terminal)
saves a checkpoint with data-loader workers running; re-running the same command resumes, and the
metrics log holds every step once across the interruptions."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from plm.reliability import verify_checkpoint
from plm.reliability.signals import INTERRUPTED_EXIT_CODE
from tests.helpers.runs import logged_steps, run_fit, start_fit

pytestmark = pytest.mark.reliability


def _signal_group_and_wait(proc, sig: int) -> tuple[str, str]:
    """Send ``sig`` to the fit's whole process group; return its output once every process of the group
    (workers included) is gone."""
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=300)
    deadline = time.monotonic() + 60
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return out, err
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("processes of the fit outlived it by 60 s")
        time.sleep(0.2)


@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_sigterm_to_the_process_group_saves_and_exits_zero(tmp_path, workers):
    proc = start_fit(
        tmp_path,
        "pg",
        "--trainer.max_steps",
        "100000",
        "--checkpoint_every",
        "2",
        "--data.num_workers",
        str(workers),
        step=2,
        new_session=True,
    )
    out, err = _signal_group_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM received: saved" in out + err
    assert "exited unexpectedly" not in err and "killed by signal" not in err
    last = tmp_path / "pg" / "ckpt" / "last.ckpt"
    assert verify_checkpoint(last) and torch.load(last, weights_only=True)["global_step"] >= 2


@pytest.mark.slow
def test_interrupted_twice_then_the_same_command_finishes_with_every_step_logged_once(tmp_path):
    args = (
        "--checkpoint_every",
        "1",
        "--keep_checkpoints",
        "-1",
        "--trainer.max_steps",
        "12",
        "--data.num_workers",
        "2",
    )
    first = start_fit(tmp_path, "run", *args, step=3, new_session=True)
    out, err = _signal_group_and_wait(first, signal.SIGINT)  # Ctrl-C in a terminal
    assert first.returncode == INTERRUPTED_EXIT_CODE, err[-3000:]
    assert "Ctrl-C: saving a checkpoint" in err and "SIGINT received: saved" in out + err
    second = start_fit(tmp_path, "run", *args, step=7, new_session=True)  # the very same command
    out, err = _signal_group_and_wait(second, signal.SIGTERM)
    assert second.returncode == 0 and "resuming" in err, err[-3000:]
    third = run_fit(tmp_path, "run", *args)
    assert "resuming" in third.stderr and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    run = tmp_path / "run"
    assert logged_steps(run, "train/loss") == list(range(12))
    val = logged_steps(
        run, "val/loss"
    )  # every 3 steps, and where a segment stopped (Lightning validates then)
    assert val == sorted(set(val)) and {2, 5, 8, 11} <= set(val)
