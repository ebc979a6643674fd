"""Weights export and safe loading.

An export is a directory with ``model.safetensors`` (the unwrapped module's state) and ``config.json``
(the ModelConfig plus the objective); loading builds the architecture from that config, then the
weights. Nothing here unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``
for Lightning checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from plm.model.config import ModelConfig
from plm.model.transformer import Transformer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the architecture."""


def _state_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tied_head:
        state.pop("head.weight", None)  # same storage as embed.weight; rebuilt by tying on load
    return state


def save_pretrained(model: Transformer, directory: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``directory`` atomically: a temporary sibling is filled, then renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(_state_for_saving(model), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        config = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), **metadata}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a plm export holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-export the weights") from err


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


def load_pretrained(path: str | os.PathLike, map_location: str = "cpu") -> Transformer:
    """Load a plm export directory or a Lightning ``.ckpt`` written by plm into a ``Transformer``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        meta = read_config(path)
        cfg = ModelConfig.from_dict(meta["model"], source=str(path / CONFIG_NAME))
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: not found")
        try:
            state = load_file(weights, device=map_location)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{weights}: unreadable or truncated safetensors file ({err})") from err
        model = Transformer(cfg)
        load_state_into(model, state, str(weights))
        return model.eval()
    return load_lightning_checkpoint(path, map_location)


def read_lightning_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a pickle that tries to run code is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        kind = "refused unsafe pickle content" if "weights_only" in str(err) or "Unsupported global" in str(err) else "unreadable, truncated or corrupt"
        raise CheckpointError(f"{path}: {kind} ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


def load_lightning_checkpoint(path: Path, map_location: str = "cpu") -> Transformer:
    ckpt = read_lightning_checkpoint(path, map_location)
    model_cfg = ckpt.get("plm_model_config")
    if model_cfg is None:
        raise CheckpointError(f"{path}: not a plm checkpoint (no 'plm_model_config' entry)")
    cfg = ModelConfig.from_dict(model_cfg, source=str(path))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    state.pop("head.weight", None) if cfg.tied_head else None
    model = Transformer(cfg)
    load_state_into(model, state, str(path))
    return model.eval()
