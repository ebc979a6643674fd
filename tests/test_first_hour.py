"""What a new user sees in the first hour (issue 25): progress in steps, quiet output, clear refusals."""

import re
import subprocess
import sys

from tests.helpers.runs import REPO


def _run(tmp_path, *extra, check=True):
    cmd = [
        sys.executable,
        "-m",
        "plm.cli",
        "fit",
        "--config",
        str(REPO / "configs/train/tiny.yaml"),
        "--run_root",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "true",
        *extra,
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_progress_counts_optimizer_steps_in_plain_lines_and_across_a_resume(tmp_path):
    first = _run(
        tmp_path, "--run_name", "p", "--trainer.max_steps", "4", "--trainer.accumulate_grad_batches", "2"
    )
    out = first.stdout + first.stderr
    assert "steps 0 → 4" in out and "2 micro-batches per step" in out
    steps = [(int(a), int(b)) for a, b in re.findall(r"^step (\d+)/(\d+) ", out, re.MULTILINE)]
    assert steps and steps[-1] == (4, 4) and all(a <= b for a, b in steps)  # never 8/4 for 2 micro-batches
    again = _run(
        tmp_path,
        "--run_name",
        "p",
        "--trainer.max_steps",
        "6",
        "--trainer.accumulate_grad_batches",
        "2",
        "--ckpt_path",
        "last",
    )
    out = again.stdout + again.stderr
    assert "resumed at step 4" in out and "steps 4 → 6" in out
    steps = [(int(a), int(b)) for a, b in re.findall(r"^step (\d+)/(\d+) ", out, re.MULTILINE)]
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


def test_long_cpu_plans_ask_for_force(capsys, monkeypatch):
    from plm.cli import main as plm_main

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert plm_main(["train", "--size", "8m"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"needs ≈ [\d,.]+ days on this CPU", err) and "FORCE=1" in err
    assert plm_main(["train", "--size", "tiny", "--tokens", "1e5", "--dry-run"]) == 0  # seconds: no question
    assert "needs ≈" not in capsys.readouterr().err


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(tmp_path, monkeypatch):
    from plm import hardware
    from plm.lightning_cli import cpu_precision

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert not hardware.cpu_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert hardware.cpu_native_bf16(info)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: False)
    assert cpu_precision("bf16-mixed", "auto") == "32-true" == cpu_precision("bf16-mixed", "cpu")
    assert cpu_precision("bf16-mixed", "gpu") == "bf16-mixed" and cpu_precision("32-true", "cpu") == "32-true"
    monkeypatch.setenv("PLM_CPU_BF16", "1")
    assert cpu_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.delenv("PLM_CPU_BF16")
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)
    assert cpu_precision("bf16-mixed", "cpu") == "bf16-mixed"
