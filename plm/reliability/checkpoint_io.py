"""Atomic, checksummed Lightning checkpoints and a resume path that skips broken ones.

A checkpoint is written with ``plm.utils.atomic.atomic_file`` (a hidden temporary sibling, flushed,
``fsync``-ed, renamed over the target), so a kill or a full disk never leaves a half-written
``last.ckpt`` behind: readers see the old file or the new one. Beside each checkpoint sits
``<name>.sha256`` (``sha256sum -c`` format), computed while writing; loading verifies it first, so a
truncated or bit-rotted file is reported as such instead of failing deep inside ``torch.load``. Loading
always uses ``weights_only=True`` (through ``plm.model.io.read_lightning_checkpoint``): a checkpoint
never runs code.

Both files are complete on disk before either is renamed, and the checkpoint is renamed before its
checksum, so a kill between the two renames leaves a new checkpoint with the old checksum: it is then
treated as corrupt and the previous one is used — the safe direction.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from plm.model.io import CheckpointError, read_lightning_checkpoint
from plm.utils.atomic import atomic_file, remove_stale_temporaries

SIDECAR_SUFFIX = ".sha256"
#: where checkpoints that failed verification go (inside the checkpoint directory), so no resume retries them
QUARANTINE_DIR = "quarantine"
_CHUNK = 1 << 22
#: errors that mean "out of space": a full disk or an exhausted quota
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous checkpoint is untouched."""


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


class _HashingWriter:
    """File-like object for ``torch.save``: hashes bytes as they are written (no second read) and
    keeps the first ``OSError``, which torch's C++ zip writer would otherwise turn into a RuntimeError."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            n = self.fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise
        self.sha.update(memoryview(data)[:n] if n is not None else data)
        self.size += len(data) if n is None else n
        return len(data) if n is None else n

    def flush(self) -> None:
        self.fh.flush()


def _no_space_cause(err: BaseException) -> BaseException:
    """The ENOSPC/EDQUOT error behind ``err`` if any (torch re-raises write errors as RuntimeError)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


def write_checkpoint_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> str:
    """Write ``path`` through ``write(file_like)`` atomically with a sha256 sidecar; returns the digest.

    On any failure the temporaries are removed and whatever was at ``path`` before stays as it was;
    a full disk raises ``CheckpointWriteError`` saying so.
    """
    path = Path(path)
    writer: _HashingWriter | None = None
    try:
        # Nested so that the inner (checkpoint) rename happens first, and only once the checksum is on disk
        # too: a failure anywhere before the renames leaves both old files and removes both temporaries.
        with atomic_file(sidecar_path(path), "w") as side, atomic_file(path, "wb") as fh:
            writer = _HashingWriter(fh)
            write(writer)
            digest = writer.sha.hexdigest()
            side.write(f"{digest}  {path.name}\n")
            side.flush()
            os.fsync(side.fileno())
        return digest
    except BaseException as err:
        cause = writer.error if writer is not None and writer.error is not None else _no_space_cause(err)
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            previous = (
                f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
            )
            raise CheckpointWriteError(
                cause.errno,
                f"{path}: no space left on the device while writing the checkpoint ({os.strerror(cause.errno)}); "
                f"{previous} and no partial file was left. Free space under {path.parent} (or point --run_root "
                "at a larger disk, lower --keep_checkpoints), then run the same command again: it resumes from the "
                "last verified checkpoint",
            ) from cause
        raise


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """Raise ``CheckpointError`` if ``path`` is missing, truncated or corrupt.

    Returns True when a sha256 sidecar vouched for the bytes, False when there was none and only the
    zip structure and member CRCs (torch's format) could be checked.
    """
    path = Path(path)
    if path.is_dir():
        return verify_sharded_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    side = sidecar_path(path)
    key = _identity(path, side)
    if key in _VERIFIED:
        return _VERIFIED[key]
    _VERIFIED[key] = _verify_file(path, side)
    return _VERIFIED[key]


#: files already verified, by (path, size, mtime) of the file and its checksum: resolving the resume
#: checkpoint, the CLI's check of --ckpt_path and Lightning's load would otherwise hash it three times
_VERIFIED: dict[tuple, bool] = {}


def _identity(path: Path, side: Path) -> tuple:
    st = path.stat()
    side_st = side.stat() if side.is_file() else None
    return (
        str(path.resolve()),
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        side_st and (side_st.st_size, side_st.st_mtime_ns, side_st.st_ino),
    )


def _verify_file(path: Path, side: Path) -> bool:
    if side.is_file():
        text = side.read_text().split()
        expected = text[0].lower() if text else ""
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise CheckpointError(
                f"{side}: not a sha256 checksum file; delete it to load {path.name} unverified"
            )
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"{path}: checksum mismatch (sha256 {actual[:16]}… but {side.name} records {expected[:16]}…, "
                f"{path.stat().st_size:,} bytes on disk): the checkpoint is truncated or corrupt"
            )
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a complete torch checkpoint archive ({err}); the file is truncated or corrupt"
        ) from err
    if bad is not None:
        raise CheckpointError(f"{path}: member {bad!r} fails its CRC check; the checkpoint is corrupt")
    return False


def verify_sharded_checkpoint(path: Path) -> bool:
    """A sharded (FSDP2) checkpoint directory: published whole by a rename once every rank wrote its shard
    (plm.strategies.FSDP2), so a complete one has torch.distributed.checkpoint's ``.metadata`` and
    Lightning's ``meta.pt``; the latter is checked like a file checkpoint without a sidecar."""
    missing = [name for name in (".metadata", "meta.pt") if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{path}: sharded checkpoint without {', '.join(missing)}: incomplete or not a checkpoint"
        )
    verify_checkpoint(path / "meta.pt")
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes with sha256 sidecars, verified and code-free loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        write_checkpoint_atomic(path, lambda fh: torch.save(checkpoint, fh))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Verify, then ``torch.load(weights_only=True)`` whatever the caller asked: never unpickle code."""
        verify_checkpoint(path)
        return read_lightning_checkpoint(Path(path), map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        sidecar_path(path).unlink(missing_ok=True)


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """Every file (or sharded directory) in ``ckpt_dir`` that may be a checkpoint, in no particular order."""
    return [
        p
        for p in ckpt_dir.glob("*.ckpt")
        if (p.is_file() or (p / "meta.pt").is_file()) and not p.name.startswith(".")
    ]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint holds, read without reading its tensors (memory-mapped).

    Raises ``CheckpointError`` when the file does not load as a Lightning checkpoint."""
    path = Path(path)
    source = path / "meta.pt" if path.is_dir() else path
    state = read_lightning_checkpoint(source, mmap=True)
    step = state.get("global_step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or not ("state_dict" in state or path.is_dir()):
        raise CheckpointError(
            f"{path}: loads, but is not a Lightning checkpoint (no global_step and state_dict)"
        )
    return step


def quarantine(path: Path, reason: str) -> Path:
    """Move a checkpoint that failed verification (and its checksum) to ``quarantine/`` beside it, so no
    later resume tries it again, and keep it for inspection instead of deleting it."""
    target_dir = path.parent / QUARANTINE_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 1
    while target.exists() or sidecar_path(target).exists():
        target, n = target_dir / f"{path.name}.{n}", n + 1
    os.replace(path, target)
    if sidecar_path(path).exists():
        os.replace(sidecar_path(path), sidecar_path(target))
    (target_dir / f"{target.name}.why").write_text(reason + "\n")
    return target


def _by_step(ckpt_dir: Path, move_bad: bool) -> tuple[list[tuple[int, Path]], list[str], list[str]]:
    """(step, path) of every candidate that loads as a checkpoint, highest step first; the problems of
    files that failed verification (quarantined when ``move_bad``) and of files that are not checkpoints."""
    found: list[tuple[int, bool, int, Path]] = []
    bad: list[str] = []
    foreign: list[str] = []
    for path in resume_candidates(ckpt_dir):
        try:
            step = checkpoint_step(path)
        except CheckpointError as load_err:
            try:
                verify_checkpoint(path)
            except CheckpointError as err:
                bad.append(_set_aside(path, str(err), move_bad))
                continue
            foreign.append(str(load_err))  # a sound zip that is no checkpoint: not ours to move
            continue
        # same step: a step or last checkpoint (saved between steps) before best.ckpt (saved mid-validation)
        found.append((step, not path.stem.startswith("best"), path.stat().st_mtime_ns, path))
    found.sort(key=lambda t: t[:3], reverse=True)
    return [(step, path) for step, _, _, path in found], bad, foreign


def _set_aside(path: Path, reason: str, move_bad: bool) -> str:
    if not move_bad:
        return reason
    moved = quarantine(path, reason)
    return f"{reason} (moved to {moved})"


def find_resume_checkpoint(ckpt_dir: str | os.PathLike, move_bad: bool = True) -> tuple[str, int] | None:
    """(path, step) of the checkpoint to resume from: the highest recorded step among those that verify.

    The step recorded inside each checkpoint decides, not the file's modification time: a touched or
    copied older checkpoint must not win. A file that fails verification (checksum mismatch, truncated,
    corrupt) is moved to ``quarantine/`` when ``move_bad`` (rank zero only: other ranks just skip it); one
    that is a sound archive but no checkpoint is skipped and left where it is. None when the directory
    holds no checkpoint; ``CheckpointError`` listing every problem when it holds some but none is usable.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    stale = remove_stale_temporaries(ckpt_dir) if move_bad else []
    if stale:
        rank_zero_info(
            f"removed {len(stale)} partial checkpoint file(s) left by an interrupted write in {ckpt_dir}"
        )
    ranked, bad, foreign = _by_step(ckpt_dir, move_bad)
    for step, path in ranked:
        try:
            verified = verify_checkpoint(path)
        except CheckpointError as err:
            bad.append(_set_aside(path, str(err), move_bad))
            continue
        if bad or foreign:
            rank_zero_warn(
                "skipping unusable checkpoint(s): "
                + " | ".join(bad + foreign)
                + f"; resuming from the previous good checkpoint {path} (step {step})"
            )
        elif not verified:
            rank_zero_warn(
                f"{path}: no {SIDECAR_SUFFIX} checksum beside it; resuming after a zip/CRC check only"
            )
        return str(path), step
    if bad or foreign:
        raise CheckpointError(
            f"{ckpt_dir}: no usable checkpoint to resume from: "
            + " | ".join(bad + foreign)
            + "; restore a copy, or start a separate run under another --run_name"
        )
    return None


def resolve_resume_path(ckpt_dir: str | os.PathLike, move_bad: bool = True) -> str | None:
    """The checkpoint ``--ckpt_path last`` resumes from (:func:`find_resume_checkpoint`), or None when
    there is none yet: a first attempt started with ``--ckpt_path last`` starts from scratch, so one
    requeue command works for every attempt."""
    found = find_resume_checkpoint(ckpt_dir, move_bad)
    if found is None:
        rank_zero_info(f"--ckpt_path last: no checkpoint in {ckpt_dir} yet; starting from scratch")
        return None
    return found[0]
