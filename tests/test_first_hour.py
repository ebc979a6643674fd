"""What a new user sees in the first hour (issue 25): progress in steps, quiet output, clear refusals."""

import re
import subprocess
import sys

from tests.test_cli import REPO


def _run(tmp_path, *extra, check=True):
    cmd = [sys.executable, "-m", "plm.cli", "fit", "--config", str(REPO / "configs/train/tiny.yaml"),
           "--run_root", str(tmp_path), "--trainer.enable_progress_bar", "true", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_progress_counts_optimizer_steps_in_plain_lines_and_across_a_resume(tmp_path):
    first = _run(tmp_path, "--run_name", "p", "--trainer.max_steps", "4", "--trainer.accumulate_grad_batches", "2")
    out = first.stdout + first.stderr
    assert "steps 0 → 4" in out and "2 micro-batches per step" in out
    steps = [(int(a), int(b)) for a, b in re.findall(r"^step (\d+)/(\d+) ", out, re.M)]
    assert steps and steps[-1] == (4, 4) and all(a <= b for a, b in steps)  # never 8/4 for 2 micro-batches
    again = _run(tmp_path, "--run_name", "p", "--trainer.max_steps", "6", "--trainer.accumulate_grad_batches", "2",
                 "--ckpt_path", "last")
    out = again.stdout + again.stderr
    assert "resumed at step 4" in out and "steps 4 → 6" in out
    steps = [(int(a), int(b)) for a, b in re.findall(r"^step (\d+)/(\d+) ", out, re.M)]
    assert steps[0][0] > 4 and steps[-1] == (6, 6)


def test_first_run_output_has_no_lightning_noise(tmp_path):
    res = _run(tmp_path, "--run_name", "q", "--trainer.max_steps", "3")
    out = res.stdout + res.stderr
    for noise in ("litlogger", "Total FLOPs", "weights_only", "LeafSpec", "Epoch 0/-", "model summary"):
        assert noise not in out, noise
    assert "final validation loss" in out


def test_unbounded_max_steps_is_refused(tmp_path):
    res = _run(tmp_path, "--run_name", "r", "--trainer.max_steps", "-1", check=False)
    assert res.returncode != 0
    assert "trainer.max_steps=-1" in res.stderr and "positive step count" in res.stderr
