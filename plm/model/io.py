"""Weights export and safe loading.

An export is a directory with ``model.safetensors`` (the unwrapped module's state) and ``config.json``
(the checkpoint record of :mod:`plm.model.record`: model config, objective, step, tokens seen); loading
reads the record, builds the architecture from it, then the weights. Nothing here unpickles arbitrary
objects: safetensors, or ``torch.load(weights_only=True)`` for Lightning checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from plm.model.record import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointRecord,
    lightning_record,
    read_config,
    read_lightning_checkpoint,
    read_record,
    record_dict,
)
from plm.model.transformer import Transformer
from plm.utils.atomic import atomic_directory

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "load_pretrained",
    "load_state_into",
    "load_with_record",
    "read_config",
    "read_lightning_checkpoint",
    "save_pretrained",
    "save_safetensors",
    "write_export",
]


def _state_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tied_head:
        state.pop("head.weight", None)  # same storage as embed.weight; rebuilt by tying on load
    return state


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``os.umask`` must set it to
    read it, which briefly affects files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.save_file`` with the umask's permissions: it writes through its own owner-only
    temporary, so the weights came out 0600 while every other file of an export followed the umask.
    Call it inside an ``atomic_directory``: the directory, not this file, is what appears atomically."""
    save_file(state, path, metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def write_export(
    directory: Path,
    model: Transformer,
    objective: str | None = None,
    step: int | None = None,
    tokens_seen: int | None = None,
    **metadata: Any,
) -> None:
    """Fill ``directory`` (a temporary one from ``atomic_directory``) with weights and the record."""
    save_safetensors(_state_for_saving(model), directory / WEIGHTS_NAME, {"format": "pt"})
    config = {**metadata, **record_dict(model.config, objective, step, tokens_seen)}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))


def save_pretrained(
    model: Transformer,
    directory: str | os.PathLike,
    objective: str | None = None,
    step: int | None = None,
    tokens_seen: int | None = None,
    **metadata: Any,
) -> Path:
    """Write ``directory`` atomically: the record (``objective``, ``step`` — also accepted as Lightning's
    ``global_step`` — and ``tokens_seen``) goes in ``config.json`` with the same fields a ``.ckpt`` holds;
    other keyword arguments are kept there as they are."""
    step = metadata.pop("global_step", step)
    with atomic_directory(directory) as tmp:
        write_export(tmp, model, objective, step, tokens_seen, **metadata)
    return Path(directory)


def load_state_into(model: Transformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with one message listing every missing, unexpected and mis-shaped tensor."""
    expected = _state_for_saving(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{source}: does not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)  # strictness checked above; tied head absent on purpose


def load_with_record(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[Transformer, CheckpointRecord]:
    """An eval-mode ``Transformer`` and the record it was saved with (a ``.ckpt`` is read once)."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        record = read_record(path)
        state = _read_export_weights(path / WEIGHTS_NAME, map_location)
        source = str(path / WEIGHTS_NAME)
    else:
        ckpt = read_lightning_checkpoint(path, map_location)
        record = lightning_record(ckpt, path)
        state = _lightning_model_state(ckpt, record)
        source = str(path)
    model = Transformer(record.config)
    load_state_into(model, state, source)
    return model.eval(), record


def load_pretrained(path: str | os.PathLike, map_location: str = "cpu") -> Transformer:
    """Load a plm export directory or a Lightning ``.ckpt`` written by plm into a ``Transformer``."""
    return load_with_record(path, map_location)[0]


def _read_export_weights(weights: Path, map_location: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(weights, device=map_location)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{weights}: unreadable or truncated safetensors file ({err}); re-export the weights"
        ) from err


def _lightning_model_state(ckpt: dict[str, Any], record: CheckpointRecord) -> dict[str, torch.Tensor]:
    prefix = "model."
    full = ckpt.get("state_dict")
    if not isinstance(full, dict):
        raise CheckpointError(f"{record.path}: no 'state_dict' entry; not a complete Lightning checkpoint")
    state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    if record.config.tied_head:
        state.pop("head.weight", None)
    return state


def load_lightning_checkpoint(path: Path, map_location: str = "cpu") -> Transformer:
    """Kept for callers of the older API: ``load_pretrained`` handles ``.ckpt`` files too."""
    return load_with_record(path, map_location)[0]
