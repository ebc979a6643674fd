"""The run directory ``<run_root>/<run_name>/``: one process at a time, one configuration, no silent restart.

Checked before anything is written there (:class:`RunDirectory`, used by ``plm fit``, ``validate``, ``test``
and ``predict`` through :mod:`plm.lightning_cli`):

* **One process.** The run holds an exclusive ``flock`` on ``<run>/.lock`` for its whole life; a second
  process given the same run name fails at once, naming the holder. Two runs in one directory would
  interleave rows of one ``metrics.csv`` and prune each other's checkpoints. The kernel drops the lock
  when its holder dies, even by SIGKILL (data-loader workers inherit it and exit within seconds after).
* **One configuration.** ``<run>/run.json`` records the resolved configuration a run was started with
  (:mod:`plm.reliability.run_record`). A ``plm fit`` whose configuration differs from it, under a name
  that already holds a trained model, is refused with the two commands that work: resume the run as it
  was, or give the new one its own ``--run_name``. Otherwise the new run would write over ``final/`` and
  mix two runs' checkpoints. Only with an explicit ``--ckpt_path`` may settings that a resume can honour
  change (learning rate and the rest of the optimizer, ``trainer.*`` such as ``max_steps``): they are
  listed and applied.
* **No silent restart.** Re-running the same command on a run that has a checkpoint resumes it from its
  newest verified checkpoint and says so; a run that already reached ``trainer.max_steps`` is left as it
  is (exit 0, nothing to do). Only a run name with nothing trained yet starts from step 0.

Multi-process runs: only the launching rank (rank 0) locks, checks and writes; the other ranks make the
same resume decision from the files without moving or writing any.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from plm.errors import PlmError
from plm.model.io import CheckpointError
from plm.reliability.checkpoint_io import checkpoint_step, find_resume_checkpoint, resume_candidates
from plm.reliability.run_record import (
    RECORD_NAME,
    Change,
    changes,
    command_line,
    read_record,
    utc_now,
    write_record,
)
from plm.utils.atomic import atomic_write_text

LOCK_NAME = ".lock"
#: what the FASTA reader kept and skipped for each source of a fit (prepare keeps it in manifest.json)
DATA_REPORT_NAME = "data.json"
#: seconds to wait for a lock whose recorded holder has exited (its forked data-loader workers keep the
#: lock until they notice, within about 5 s)
ORPHAN_WAIT = 20.0
#: Lightning's own ``ckpt_path`` keywords besides "last", passed through untouched
LIGHTNING_CKPT_KEYWORDS = ("hpc", "best", "registry")


class RunDirError(PlmError):
    """The run directory is busy, or holds another run: the message says which, and the commands that work."""


class RunComplete(Exception):
    """The run already reached ``trainer.max_steps``: nothing to train (``plm fit`` exits 0 saying so)."""


@dataclass(frozen=True)
class FitStart:
    """What ``plm fit`` does in this run directory: resume from ``ckpt_path`` (its step, when known) or
    start from step 0 (``ckpt_path`` None, ``step`` 0)."""

    ckpt_path: str | None
    step: int | None


# ---- the directory ---------------------------------------------------------------------------------------
class RunDirectory:
    def __init__(self, path: str | os.PathLike, primary: bool = True) -> None:
        """
        Args:
            path: ``<run_root>/<run_name>``.
            primary: this process launches the run (rank 0): it locks, checks, quarantines and writes.
        """
        self.path = Path(path)
        self.primary = primary
        self._fd: int | None = None

    # -- lock --
    def lock(self) -> None:
        """Hold ``<run>/.lock`` until :meth:`release` or exit; :class:`RunDirError` if another process has it."""
        if not self.primary or self._fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._wait_for_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": utc_now(),
                    "command": command_line(),
                }
            ).encode(),
        )
        self._fd = fd

    def _wait_for_lock(self, fd: int) -> None:
        deadline = time.monotonic() + ORPHAN_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = _holder(fd)
                if _holder_alive(holder) or time.monotonic() > deadline:
                    raise RunDirError(self._busy_message(holder)) from None
                time.sleep(0.2)  # the holder exited; its data-loader workers release the lock shortly

    def _busy_message(self, holder: dict[str, Any]) -> str:
        who = (
            f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')}: "
            f"{holder.get('command')})"
            if holder
            else "another process"
        )
        gone = (
            ""
            if _holder_alive(holder)
            else "; that process has exited, but processes it started still hold it"
        )
        return (
            f"{self.path} is in use by {who}{gone}. Two runs in one directory would mix their logs and "
            "checkpoints: wait for it to finish (or stop it), or give this run another --run_name"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    # -- what plm fit does here --
    def start_fit(self, config: Mapping[str, Any], ckpt_path: str | None, max_steps: int) -> FitStart:
        """Decide between resuming and starting at step 0 (see the module docstring); the primary process
        records ``config`` as the run's configuration once the decision is made."""
        start = self._decide(config, ckpt_path, max_steps)
        if self.primary:
            write_record(self.path, config, start.step if start.ckpt_path else None)
        return start

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    def trained(self) -> bool:
        """Something a restart would destroy: a checkpoint or a final export."""
        return (self.ckpt_dir.is_dir() and bool(resume_candidates(self.ckpt_dir))) or (
            self.path / "final"
        ).is_dir()

    def _decide(self, config: Mapping[str, Any], ckpt_path: str | None, max_steps: int) -> FitStart:
        trained = self.trained()
        recorded = read_record(self.path) if trained and self.primary else None
        diff = changes(recorded, config) if recorded is not None else []
        if ckpt_path is None:
            if not trained:
                return FitStart(None, 0)
            if self.primary:
                self._refuse_implicit(recorded, diff)
            return self._resume_newest(max_steps)
        if self.primary and trained:
            self._refuse_other_run([c for c in diff if not c.resumable])
        start = self._explicit(ckpt_path)
        resumed = [str(c) for c in diff if c.resumable]
        if self.primary and start.ckpt_path:
            changed = f" with changed settings: {'; '.join(resumed)}" if resumed else ""
            _say(f"resuming {self.path} from step {start.step} ({start.ckpt_path}){changed}")
        return start

    def _refuse_implicit(self, recorded: Mapping[str, Any] | None, diff: list[Change]) -> None:
        if recorded is None:
            raise RunDirError(
                f"{self.path} holds a trained run but no {RECORD_NAME} (started by an older plm), so this command "
                f"cannot tell it is the same run. To resume it, add --ckpt_path last; {self._separate()}"
            )
        if diff:
            shown = "; ".join(str(c) for c in diff[:6]) + (
                f"; … {len(diff) - 6} more" if len(diff) > 6 else ""
            )
            resume = (
                "To continue it with the new settings, add --ckpt_path last (a resume applies them)"
                if all(c.resumable for c in diff)
                else f"To resume it, use its own settings (in {self.path / RECORD_NAME}) and add --ckpt_path last"
            )
            raise RunDirError(
                f"{self.path} holds a run trained with another configuration ({shown}): starting this one there "
                f"would overwrite its model and mix both runs' checkpoints. {resume}; {self._separate()}"
            )

    def _refuse_other_run(self, blocking: list[Change]) -> None:
        if blocking:
            shown = "; ".join(str(c) for c in blocking[:6])
            raise RunDirError(
                f"{self.path} was trained with another model, data or seed ({shown}): a resume cannot change "
                f"these. Resume it with its own settings (in {self.path / RECORD_NAME}); {self._separate()} "
                f"(--model.init_from <checkpoint> starts it from this run's weights)"
            )

    def _separate(self) -> str:
        other = f"{self.path.name}-2"
        return f"to start a separate run, give it another name: --run_name {other} (make train: ARGS='--run_name {other}')"

    def _resume_newest(self, max_steps: int) -> FitStart:
        found = find_resume_checkpoint(self.ckpt_dir, move_bad=self.primary)
        if found is None or found[1] >= max_steps:
            step = found[1] if found else "its last"
            raise RunComplete(
                f"{self.path} already trained to step {step} (trainer.max_steps {max_steps}); its model is in "
                f"{self.path / 'final'}. Nothing to do. To train it again, give another --run_name; to train "
                f"it further, raise --trainer.max_steps and add --ckpt_path last"
            )
        path, step = found
        if self.primary:
            _say(
                f"resuming {self.path} from step {step} ({Path(path).name}): this run name holds a checkpoint "
                f"of the same configuration. To start from step 0 instead, give another --run_name"
            )
        return FitStart(path, step)

    def _explicit(self, ckpt_path: str) -> FitStart:
        if ckpt_path == "last":
            found = find_resume_checkpoint(self.ckpt_dir, move_bad=self.primary)
            return FitStart(*found) if found else FitStart(None, 0)
        if ckpt_path in LIGHTNING_CKPT_KEYWORDS:
            return FitStart(ckpt_path, None)
        return FitStart(ckpt_path, checkpoint_step(ckpt_path))


class DataReport(pl.Callback):
    """Writes the data module's FASTA counts (kept, skipped by reason, examples) to ``<run>/data.json``
    when fit starts, beside the warning the data module prints: a skip is never silent, and stays on
    record after the log has scrolled away."""

    def __init__(self, run: str | os.PathLike) -> None:
        self.run = Path(run)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        report = getattr(datamodule, "fasta_report", None)
        if report is None or not trainer.is_global_zero:
            return
        text = json.dumps(
            {"on_invalid": getattr(datamodule, "on_invalid", None), "sources": report},
            indent=2,
            sort_keys=True,
        )
        atomic_write_text(self.run / DATA_REPORT_NAME, text + "\n")


def check_ckpt_path(ckpt_path: str | None) -> None:
    """An explicit ``--ckpt_path`` must name a checkpoint: say what is wrong before Lightning or torch does."""
    from plm.reliability.checkpoint_io import verify_checkpoint

    if not ckpt_path or ckpt_path == "last" or ckpt_path in LIGHTNING_CKPT_KEYWORDS:
        return
    path = Path(ckpt_path)
    if path.is_dir() and not ((path / ".metadata").is_file() or (path / "meta.pt").is_file()):
        inside = [
            p
            for pattern in ("last.ckpt", "*.ckpt", "ckpt/last.ckpt", "ckpt/*.ckpt")
            for p in path.glob(pattern)
        ]
        hint = f"e.g. {inside[0]}" if inside else "e.g. checkpoints/<run>/ckpt/last.ckpt"
        raise CheckpointError(
            f"{path}: a directory, not a checkpoint: pass a .ckpt file ({hint}), or "
            "--ckpt_path last to resume the run named by --run_name"
        )
    verify_checkpoint(path)
    checkpoint_step(path)


def is_primary_process() -> bool:
    """Rank 0 of the launch, decided from the environment before Lightning sets anything up: torchrun
    (RANK), SLURM (SLURM_PROCID) and Lightning's own launcher (LOCAL_RANK, NODE_RANK / GROUP_RANK)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        value = os.environ.get(name, "0").strip() or "0"
        if value != "0":
            return False
    return True


# ---- small helpers ---------------------------------------------------------------------------------------
def _holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_alive(holder: Mapping[str, Any]) -> bool:
    """False only when the holder ran on this host and its pid is gone (unknown holders count as alive)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(message: str) -> None:
    print(f"plm fit: {message}", file=sys.stderr, flush=True)
