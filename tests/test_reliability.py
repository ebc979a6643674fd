"""Fault tolerance: kill/resume exactness, preemption, atomic verified checkpoints, NaN/Inf skipping,
safe loading and a full disk. Subprocess tests run the real ``plm fit`` on the tiny preset (CPU)."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import random
import re
import signal
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

import plm
from plm.model.io import CheckpointError
from plm.reliability import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    NaNGuard,
    NumericalFaultError,
    PreemptionCheckpoint,
    checkpoint_io,
    resolve_resume_path,
    verify_checkpoint,
)
from plm.reliability.checkpoint_io import sidecar_path
from plm.utils.atomic import atomic_file
from tests.helpers.runs import fit_inprocess, logged_steps, losses, run_fit, start_fit

pytestmark = pytest.mark.reliability

MAX_STEPS = 12


# ---- helpers: the real CLI in a subprocess (tests.helpers.runs), a checkpoint every step --------------------
RUN_ARGS = ("--checkpoint_every", "1", "--trainer.max_steps", str(MAX_STEPS))


def _run(root: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run_fit(root, name, *RUN_ARGS, *extra)


def _start_and_wait(root: Path, name: str, step: int, *extra: str) -> subprocess.Popen:
    """Start a fit and return once the checkpoint of ``step`` (and its checksum) is on disk."""
    return start_fit(root, name, *RUN_ARGS, *extra, step=step)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 12-step run: the ground truth every interrupted run must reproduce."""
    root = tmp_path_factory.mktemp("ref")
    _run(root, "ref")
    return root / "ref"


@pytest.mark.slow
def test_reference_run_keeps_last_k_and_best_with_checksums(reference):
    ckpt = reference / "ckpt"
    names = sorted(p.name for p in ckpt.iterdir())
    # --keep_checkpoints 2 (tiny default): the two newest step checkpoints, last and best; each verified
    assert names == sorted(
        ["best.ckpt", "last.ckpt", "step00000011.ckpt", "step00000012.ckpt"]
        + [n + ".sha256" for n in ("best.ckpt", "last.ckpt", "step00000011.ckpt", "step00000012.ckpt")]
    )
    assert all(verify_checkpoint(ckpt / n) for n in names if n.endswith(".ckpt"))
    with open(reference / "csv" / "metrics.csv") as fh:
        vals = {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")}
    best_step = min(vals, key=vals.get)
    assert len(vals) == 4 and _load(ckpt / "best.ckpt")["global_step"] == best_step + 1


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_matches_uninterrupted_run(reference, tmp_path):
    kill_after = random.randint(2, 8)
    proc = _start_and_wait(tmp_path, "killed", kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"killed after step {kill_after}"
    run = tmp_path / "killed"
    res = _run(tmp_path, "killed", "--ckpt_path", "last")
    # the newest verified checkpoint, at or after the one we waited for
    resumed_from = int(re.search(r"resuming \S+ from step (\d+)", res.stderr).group(1))
    assert kill_after <= resumed_from < MAX_STEPS
    want, got = losses(reference), losses(run)
    logged = logged_steps(run, "train/loss")
    assert len(logged) == len(set(logged)), (
        f"a step logged twice: {logged}"
    )  # the CSV continues, each step once
    # every step from the resume point on; before it the killed segment's rows (the row of the step whose
    # checkpoint the SIGKILL followed may be lost: Lightning logs it just after the save)
    assert set(range(resumed_from, MAX_STEPS)) <= set(logged)
    assert set(range(MAX_STEPS)) - set(logged) <= {resumed_from - 1}, f"kill after {kill_after}: {logged}"
    assert all(got[s] == want[s] for s in got), f"kill after step {kill_after}"
    # data position and weights: the final states are identical
    a, b = _load(reference / "ckpt" / "last.ckpt"), _load(run / "ckpt" / "last.ckpt")
    assert a["ProteinDataModule"] == b["ProteinDataModule"] and a["plm_tokens_seen"] == b["plm_tokens_seen"]
    wa, wb = (
        load_file(reference / "final" / "model.safetensors"),
        load_file(run / "final" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not [p for p in (run / "ckpt").iterdir() if ".tmp-" in p.name]  # partial writes cleaned up


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    proc = _start_and_wait(tmp_path, "term", 3, "--trainer.max_steps", "100000", "--checkpoint_every", "3")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    log = out + err
    assert "SIGTERM received: saved" in log and "--ckpt_path last" in log
    state = _load(tmp_path / "term" / "ckpt" / "last.ckpt")
    assert f"at step {state['global_step']};" in log and 3 <= state["global_step"] < 1000
    assert verify_checkpoint(tmp_path / "term" / "ckpt" / "last.ckpt")
    assert state["ProteinDataModule"]["cursor"] > 0


# ---- in-process training on a small real FASTA --------------------------------------------------------
class _Inject(pl.Callback):
    """Makes chosen optimizer steps numerically bad: a NaN loss or an Inf gradient."""

    def __init__(self, loss_steps=(), grad_steps=()):
        self.loss_steps, self.grad_steps = set(loss_steps), set(grad_steps)

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step in self.loss_steps:
            loss.data.fill_(float("nan"))  # gradients stay finite: only the loss check can catch this

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.grad_steps:
            next(pl_module.parameters()).grad.view(-1)[0] = float("inf")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_nan_loss_and_inf_grad_skip_the_step_count_and_log(tmp_path, uniprot_fasta):
    guard = NaNGuard(max_bad_steps=3)
    snapshots: dict[int, dict] = {}

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *a):
            snapshots[trainer.global_step] = _weights(pl_module)

    trainer, model = fit_inprocess(
        tmp_path, uniprot_fasta, 6, [_Inject(loss_steps={1}, grad_steps={3}), guard, Snap()]
    )
    assert guard.skipped == 2 and guard.consecutive == 0
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2.0
    for bad in (1, 3):  # step index → weights after it equal the weights before it
        assert all(torch.equal(snapshots[bad][k], snapshots[bad + 1][k]) for k in snapshots[bad])
    assert not all(torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])  # good steps update
    assert all(torch.isfinite(v).all() for v in _weights(model).values())
    assert _load(tmp_path / "ckpt" / "last.ckpt")["callbacks"]["NaNGuard"]["skipped"] == 2


def test_k_consecutive_bad_steps_stop_with_clear_error_and_good_checkpoint(tmp_path, uniprot_fasta):
    with pytest.raises(
        NumericalFaultError, match=r"3 consecutive optimizer steps .* non-finite loss.*--ckpt_path last"
    ):
        fit_inprocess(
            tmp_path, uniprot_fasta, 10, [_Inject(loss_steps={2, 3, 4, 5, 6}), NaNGuard(max_bad_steps=3)]
        )
    last = tmp_path / "ckpt" / "last.ckpt"
    assert verify_checkpoint(last)
    state = _load(last)
    assert state["global_step"] == 4  # steps 0, 1 good; 2, 3 skipped; the 3rd bad one (index 4) stopped it
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_nan_guard_rejects_nonsense_limit():
    with pytest.raises(ValueError, match="max_bad_steps=0: must be >= 1"):
        NaNGuard(0)


def test_sigusr1_in_process_saves_and_stops_cleanly(tmp_path, uniprot_fasta):
    class Signal(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *a):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    pre = PreemptionCheckpoint(tmp_path / "ckpt")
    trainer, _ = fit_inprocess(tmp_path, uniprot_fasta, 50, [Signal(), pre])
    assert pre.preempted and trainer.global_step == 2  # the signal arrived during step 2's hooks
    assert _load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handler restored after fit


# ---- atomic, verified checkpoints -------------------------------------------------------------------------
def test_truncated_last_checkpoint_is_detected_and_previous_good_one_used(tmp_path, uniprot_fasta):
    fit_inprocess(tmp_path, uniprot_fasta, 3)
    last = tmp_path / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt: checksum mismatch .* truncated or corrupt"):
        verify_checkpoint(last)
    with pytest.warns(
        UserWarning, match=r"last\.ckpt: checksum mismatch.*previous good checkpoint .*step00000003\.ckpt"
    ):
        assert resolve_resume_path(tmp_path / "ckpt") == str(tmp_path / "ckpt" / "step00000003.ckpt")
    # the bad file is set aside (not retried by the next resume), with its checksum and the reason
    moved = tmp_path / "ckpt" / "quarantine" / "last.ckpt"
    assert not last.exists() and moved.is_file() and sidecar_path(moved).is_file()
    assert "checksum mismatch" in (moved.parent / "last.ckpt.why").read_text()
    # loading it directly says what is wrong instead of a torch traceback
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        AtomicCheckpointIO().load_checkpoint(moved)
    # without a checksum beside it, the zip structure still exposes the truncation
    sidecar_path(moved).unlink()
    with pytest.raises(CheckpointError, match="not a complete torch checkpoint archive"):
        verify_checkpoint(moved)
    # and resuming from the resolved path continues to the end
    trainer, _ = fit_inprocess(tmp_path, uniprot_fasta, 5, ckpt_path=resolve_resume_path(tmp_path / "ckpt"))
    assert trainer.global_step == 5 and verify_checkpoint(last)


def test_no_usable_checkpoint_is_a_clear_error_and_empty_dir_starts_fresh(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert resolve_resume_path(ckpt) is None
    ckpt.mkdir()
    (ckpt / ".last.ckpt.tmp-123").write_bytes(b"partial")
    assert resolve_resume_path(ckpt) is None and not list(ckpt.iterdir())  # stale temporary removed
    (ckpt / "last.ckpt").write_bytes(b"garbage")
    (ckpt / "step00000004.ckpt").write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"no usable checkpoint to resume from: .*step00000004\.ckpt"
    ) as err:
        resolve_resume_path(ckpt)
    assert "last.ckpt: not a complete torch checkpoint archive" in str(
        err.value
    )  # every problem, one message


def test_pruned_checkpoints_take_their_checksums_with_them(tmp_path, uniprot_fasta):
    fit_inprocess(tmp_path, uniprot_fasta, 4, keep=2)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [
        "last.ckpt",
        "last.ckpt.sha256",
        "step00000003.ckpt",
        "step00000003.ckpt.sha256",
        "step00000004.ckpt",
        "step00000004.ckpt.sha256",
    ]


# ---- safe loading ------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs_for_plm_load_or_resume(tmp_path, uniprot_fasta):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt" / "last.ckpt"
    evil.parent.mkdir()
    torch.save({"state_dict": {}, "plm_model_config": {}, "payload": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: refused unsafe pickle content"):
        plm.load(evil)
    with pytest.raises(CheckpointError, match="refused unsafe pickle content"):
        fit_inprocess(tmp_path / "run", uniprot_fasta, 2, ckpt_path=str(evil))
    # even with a checksum that vouches for the bytes, loading never unpickles code
    sidecar_path(evil).write_text(f"{checkpoint_io.file_sha256(evil)}  last.ckpt\n")
    with pytest.raises(CheckpointError, match="refused unsafe pickle content"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


# ---- disk full -----------------------------------------------------------------------------------------------
class _FullDisk:
    """The real file, on a disk that fills up after ``budget`` bytes."""

    budget = 50_000

    def __init__(self, fh, path):
        self.fh, self.path, self.written = fh, str(path), 0

    def write(self, data):
        if self.written + len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        self.written += len(data)
        return self.fh.write(data)

    def __getattr__(self, name):  # flush, fileno, … of the real file
        return getattr(self.fh, name)


@contextlib.contextmanager
def _atomic_file_on_full_disk(path, mode="wb", **kwargs):
    with atomic_file(path, mode, **kwargs) as fh:
        yield _FullDisk(fh, path) if "b" in mode else fh


def test_disk_full_while_checkpointing_keeps_previous_state_and_rerun_completes(
    tmp_path, uniprot_fasta, monkeypatch
):
    class FullAfterStep2(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            if trainer.global_step == 2:  # the step-3 checkpoint hits a full disk part-way through
                monkeypatch.setattr(checkpoint_io, "atomic_file", _atomic_file_on_full_disk)

    with pytest.raises(
        CheckpointWriteError, match=r"step00000003\.ckpt: no space left on the device .* no partial file"
    ):
        fit_inprocess(tmp_path, uniprot_fasta, 5, [FullAfterStep2()])
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256",
        "step00000001.ckpt",
        "step00000001.ckpt.sha256",
        "step00000002.ckpt",
        "step00000002.ckpt.sha256",
    ]
    assert verify_checkpoint(ckpt / "last.ckpt") and _load(ckpt / "last.ckpt")["global_step"] == 2
    monkeypatch.undo()  # space freed
    trainer, _ = fit_inprocess(tmp_path, uniprot_fasta, 5, ckpt_path=resolve_resume_path(ckpt))
    assert trainer.global_step == 5 and _load(ckpt / "last.ckpt")["global_step"] == 5


@pytest.mark.reliability
def test_disk_full_during_prepare_keeps_state_and_rerun_completes(tmp_path, capsys, monkeypatch):
    """ENOSPC while a source is finalised: clear error, no partial store published, rerun completes."""
    import errno

    import plm.data.prepare.command as prep
    from plm.data.store import TokenStore

    fasta = Path(__file__).parent / "fixtures" / "uniprot_tiny500.fasta.gz"
    out = tmp_path / "prepared"
    real_finalize = prep.finalize_source

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep, "finalize_source", full_disk)
    assert (
        prep.main(
            ["--source", f"u={fasta}", "--out", str(out), "--on-invalid", "skip", "--quiet", "--workers", "1"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "re-run the same command" in err
    assert not (out / "u" / "train").exists()  # nothing that looks like a finished store
    monkeypatch.setattr(prep, "finalize_source", real_finalize)
    assert (
        prep.main(
            ["--source", f"u={fasta}", "--out", str(out), "--on-invalid", "skip", "--quiet", "--workers", "1"]
        )
        == 0
    )
    store = TokenStore.open(out / "u" / "train", verify=True)
    assert len(store) > 400
