"""Issue 23 item 9: resume picks the checkpoint with the highest recorded step that verifies — not the newest
file — skips files that are no checkpoint, and sets aside files that fail verification."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from plm.model.io import CheckpointError
from plm.reliability.checkpoint_io import (
    find_resume_checkpoint,
    resolve_resume_path,
    sidecar_path,
    write_checkpoint_atomic,
)
from tests.helpers.runs import logged_steps, run_fit

pytestmark = pytest.mark.reliability


def _checkpoint(path: Path, step: int) -> Path:
    state = {"global_step": step, "state_dict": {"w": torch.full((4,), float(step))}, "epoch": 0}
    write_checkpoint_atomic(path, lambda fh: torch.save(state, fh))
    return path


def _age(path: Path, seconds_ago: float) -> None:
    t = path.stat().st_mtime - seconds_ago
    os.utime(path, (t, t))


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """step 2 and step 4 checkpoints and last.ckpt (step 4), written in that order."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for name, step in (("step00000002.ckpt", 2), ("step00000004.ckpt", 4), ("last.ckpt", 4)):
        _age(_checkpoint(d / name, step), 100 - step)
    return d


STEP_4 = ("last.ckpt", "step00000004.ckpt")


def test_a_touched_older_checkpoint_does_not_win(ckpt):
    os.utime(ckpt / "step00000002.ckpt")  # newest file now, older step
    assert Path(resolve_resume_path(ckpt)).name in STEP_4
    assert find_resume_checkpoint(ckpt)[1] == 4


def test_a_copied_older_checkpoint_does_not_win(ckpt):
    shutil.copy(ckpt / "step00000002.ckpt", ckpt / "backup.ckpt")
    shutil.copy(sidecar_path(ckpt / "step00000002.ckpt"), sidecar_path(ckpt / "backup.ckpt"))
    assert Path(resolve_resume_path(ckpt)).name in STEP_4


def test_a_sound_zip_that_is_no_checkpoint_is_skipped_and_left_alone(ckpt):
    notes = ckpt / "notes.ckpt"
    with zipfile.ZipFile(notes, "w") as zf:
        zf.writestr("readme.txt", "not a checkpoint")
    torch.save([torch.zeros(2)], ckpt / "tensors.ckpt")  # loads, but holds no global_step/state_dict
    with pytest.warns(UserWarning, match=r"notes\.ckpt.*tensors\.ckpt|tensors\.ckpt.*notes\.ckpt"):
        assert Path(resolve_resume_path(ckpt)).name in STEP_4
    assert notes.is_file() and (ckpt / "tensors.ckpt").is_file()  # not ours to move


def test_a_corrupt_checkpoint_is_quarantined_and_not_tried_again(ckpt):
    for name in ("step00000004.ckpt", "last.ckpt"):
        data = bytearray((ckpt / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum no longer matches
        (ckpt / name).write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        assert find_resume_checkpoint(ckpt)[1] == 2
    moved = sorted(p.name for p in (ckpt / "quarantine").iterdir())
    assert moved == [
        "last.ckpt",
        "last.ckpt.sha256",
        "last.ckpt.why",
        "step00000004.ckpt",
        "step00000004.ckpt.sha256",
        "step00000004.ckpt.why",
    ]
    assert sorted(p.name for p in ckpt.glob("*.ckpt")) == ["step00000002.ckpt"]
    assert find_resume_checkpoint(ckpt)[1] == 2  # no warning, nothing left to retry


def test_other_ranks_skip_bad_files_without_moving_them(ckpt):
    (ckpt / "last.ckpt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"last\.ckpt: checksum mismatch"):
        assert find_resume_checkpoint(ckpt, move_bad=False)[1] == 4
    assert (ckpt / "last.ckpt").is_file() and not (ckpt / "quarantine").exists()


def test_only_unusable_files_is_one_error_naming_each(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "last.ckpt").write_bytes(b"garbage")
    with zipfile.ZipFile(d / "notes.ckpt", "w") as zf:
        zf.writestr("x", "y")
    with pytest.raises(
        CheckpointError, match=r"no usable checkpoint.*last\.ckpt.*notes\.ckpt.*another --run_name"
    ):
        resolve_resume_path(d)


@pytest.mark.slow
def test_resume_of_a_real_run_ignores_touched_and_foreign_files(tmp_path):
    run = tmp_path / "r"
    run_fit(tmp_path, "r", "--checkpoint_every", "2", "--keep_checkpoints", "-1", "--trainer.max_steps", "4")
    os.utime(run / "ckpt" / "step00000002.ckpt")
    with zipfile.ZipFile(run / "ckpt" / "zz.ckpt", "w") as zf:
        zf.writestr("x", "y")
    res = run_fit(
        tmp_path,
        "r",
        "--checkpoint_every",
        "2",
        "--keep_checkpoints",
        "-1",
        "--trainer.max_steps",
        "6",
        "--ckpt_path",
        "last",
    )
    assert "resuming" in res.stderr and "from step 4" in res.stderr
    assert logged_steps(run, "train/loss") == list(range(6))  # every step once, 4 and 5 from the resume
