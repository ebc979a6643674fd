"""Reading checkpoint files without ever unpickling code: safetensors, or ``torch.load(weights_only=True)``
with only ``argparse.Namespace`` (fair-esm's stored config) allowed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from plm.model.io import CheckpointError


def torch_load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)``; only argparse.Namespace (fair-esm's config) is allowed in."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except Exception as err:
        text = str(err)
        kind = (
            "refused unsafe pickle content"
            if "Unsupported global" in text or "weights_only" in text
            else "unreadable, truncated or corrupt"
        )
        fix = (
            ". Only tensors, containers and argparse.Namespace are read; re-save the state dict alone "
            "(torch.save({'model': sd}, f)) in an environment you trust"
            if kind.startswith("refused")
            else ""
        )
        raise CheckpointError(
            f"{path}: {kind} ({type(err).__name__}: {text.strip().splitlines()[0][:200]}){fix}"
        ) from err


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({err})") from err


_LEGACY_NORM = re.compile(r"\.(gamma|beta)$")


def _hf_key(key: str) -> str:
    """transformers writes some LayerNorm tensors as ``.gamma``/``.beta`` and reads them as weight/bias."""
    return _LEGACY_NORM.sub(lambda m: ".weight" if m.group(1) == "gamma" else ".bias", key)


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Weights of a Hugging Face model directory (legacy gamma/beta names normalised to weight/bias)."""
    return {_hf_key(k): v for k, v in _read_hf_files(directory).items()}


def _read_hf_files(directory: Path) -> dict[str, Tensor]:
    """Single or sharded safetensors, or pytorch_model.bin."""
    single, index, binary = (
        directory / "model.safetensors",
        directory / "model.safetensors.index.json",
        directory / "pytorch_model.bin",
    )
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in tqdm(shards, desc="reading shards", unit="file"):
            state.update(_load_safetensors(directory / shard))
        return state
    if binary.is_file():
        state = torch_load_safe(binary)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{binary}: not a state dict of tensors")
        return state
    raise CheckpointError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a Hugging Face model directory holds config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
