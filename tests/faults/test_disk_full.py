"""Issue 23: a full disk during a run is one plm line naming what to free, leaves no partial file and a
verified previous checkpoint, and the same command resumes once there is space. On a real (tmpfs)
filesystem, so every writer — checkpoints, exports, logs — meets the same ENOSPC."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plm.reliability import verify_checkpoint
from tests.helpers.runs import REPO, logged_steps, run_env, run_fit

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` at ``path``; skips the test where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(
            "needs root to mount a small tmpfs (the in-process ENOSPC tests in test_reliability.py "
            "cover the checkpoint writer without it)"
        )
    path.mkdir(parents=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_enospc_mid_run_is_one_line_and_the_same_command_resumes_after_freeing_space(tmp_path):
    args = ("--checkpoint_every", "1", "--keep_checkpoints", "1", "--trainer.max_steps", "8")
    with _small_filesystem(tmp_path / "disk", "3500k") as disk:
        full = run_fit(disk, "r", *args, expect=2)
        line = full.stderr.strip().splitlines()[-1]
        assert line.startswith("plm fit: ") and "no space left on the device" in line, full.stderr[-3000:]
        assert "Traceback" not in full.stderr, full.stderr[full.stderr.find("Traceback") - 300 :][:4000]
        assert "run the same command again" in line
        run = disk / "r"
        assert not [p for p in run.rglob("*") if ".tmp-" in p.name]  # no partial file left behind
        assert verify_checkpoint(run / "ckpt" / "last.ckpt")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        again = run_fit(disk, "r", *args)
        assert "resuming" in again.stderr and (run / "final" / "model.safetensors").is_file()
        assert logged_steps(run, "train/loss") == list(range(8))


def test_prepare_on_a_full_disk_leaves_no_temporary_and_the_same_command_completes(tmp_path):
    """Issue 23 item 2: shard temporaries carried the PID, so a rerun never removed them and the volume
    ended full of hidden files."""
    fasta = Path(__file__).resolve().parents[1] / "fixtures" / "uniprot_tiny500.fasta.gz"
    cmd = ["data", "prepare", "--source", f"u={fasta}", "--quiet", "--workers", "1"]
    with _small_filesystem(tmp_path / "disk", "150k") as disk:
        out = disk / "prepared"
        full = _plm(*cmd, "--out", str(out))
        assert full.returncode != 0 and "no space left on the device" in full.stderr, full.stderr[-2000:]
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        (out / ".shards" / "u").mkdir(parents=True, exist_ok=True)
        (out / ".shards" / "u" / "0000-000000000000000.tmp-999999").write_bytes(b"left by a killed run")
        done = _plm(*cmd, "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name]
        assert (out / "u" / "train").is_dir()


def _plm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plm.cli", *args],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
