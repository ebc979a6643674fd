"""Fault tolerance: atomic verified checkpoints, preemption handling, NaN/Inf step skipping."""

from plm.reliability.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    resolve_resume_path,
    verify_checkpoint,
)
from plm.reliability.nan_guard import NaNGuard, NumericalFaultError
from plm.reliability.signals import PreemptionCheckpoint, was_preempted

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "NaNGuard",
    "NumericalFaultError",
    "PreemptionCheckpoint",
    "resolve_resume_path",
    "verify_checkpoint",
    "was_preempted",
]
