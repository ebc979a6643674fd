"""What a checkpoint is: one record written at save time and one reader for every consumer.

A plm export directory (``config.json`` + ``model.safetensors``) and a Lightning ``.ckpt`` carry the same
record: the model config, the objective, the optimizer step and the tokens seen, as they were when the
weights were saved. The objective in particular must come from save time, not from the hyper-parameters
saved when the run started: the CLM→MLM transfer switches the objective in the middle of a run, so a
checkpoint taken after the switch holds an MLM even though the run was launched as a CLM.

Everything that asks "what is this checkpoint?" (``plm.load``, ``plm evaluate``, ``plm generate``,
``plm score``, ``plm convert``, ``init_from``) calls :func:`read_record`; nothing else parses these files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from plm.model.config import ModelConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
#: Key of the record inside a Lightning checkpoint (written by ``LanguageModel.on_save_checkpoint``).
RECORD_KEY = "plm_record"
#: Record fields, as written both in a Lightning checkpoint and at the top level of ``config.json``.
#: ``global_step`` is Lightning's name for the optimizer step; exports have always used it.
RECORD_FIELDS = ("format_version", "model", "objective", "global_step", "tokens_seen")

Objective = Literal["mlm", "clm"]
OBJECTIVES: tuple[str, ...] = ("mlm", "clm")
Kind = Literal["export", "lightning"]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the architecture."""


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint as it was when saved; ``flavour`` is the config's (never stored twice)."""

    config: ModelConfig
    objective: Objective
    kind: Kind
    path: Path
    step: int | None = None
    """Optimizer steps taken (None for imported weights)."""
    tokens_seen: int | None = None
    """Real (non-pad) training tokens seen (None for imported weights)."""
    objective_recorded: bool = True
    """False for files written before the objective was recorded: it is then inferred from the flavour."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """The export's other ``config.json`` entries (e.g. ``converted_from``, ``contact_regression``)."""

    @property
    def flavour(self) -> str:
        return self.config.flavour

    @property
    def causal(self) -> bool:
        return self.objective == "clm"

    def describe(self) -> str:
        """One line for messages: what, where, and whether the objective was recorded or guessed."""
        how = "" if self.objective_recorded else " (not recorded; inferred from the flavour)"
        return f"{self.path}: {self.kind} of a {self.flavour} {self.objective.upper()}{how}"


def record_dict(
    config: ModelConfig, objective: str | None, step: int | None = None, tokens_seen: int | None = None
) -> dict[str, Any]:
    """The record as written: the same dict goes into a ``.ckpt`` and at the top of ``config.json``."""
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: use 'mlm' or 'clm'")
    return {
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "objective": objective,
        "global_step": None if step is None else int(step),
        "tokens_seen": None if tokens_seen is None else int(tokens_seen),
    }


def stored_record(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The record dict of a loaded Lightning checkpoint; older plm checkpoints kept its fields as
    separate ``plm_*`` keys, and the step is Lightning's own ``global_step``."""
    record = checkpoint.get(RECORD_KEY)
    if isinstance(record, Mapping):
        return dict(record)
    return {
        "format_version": FORMAT_VERSION,
        "model": checkpoint.get("plm_model_config"),
        "objective": checkpoint.get("plm_objective"),
        "global_step": checkpoint.get("global_step"),
        "tokens_seen": checkpoint.get("plm_tokens_seen"),
    }


# ---- reading -------------------------------------------------------------------------------------
def read_record(path: str | os.PathLike) -> CheckpointRecord:
    """The record of a plm export directory or a plm Lightning ``.ckpt``; a ``CheckpointError`` naming
    the file and the fix otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; pass a plm export directory (config.json + "
            f"{WEIGHTS_NAME}) or a Lightning .ckpt written by plm"
        )
    if path.is_dir():
        return read_export_record(path)
    return lightning_record(read_lightning_checkpoint(path, mmap=True), path)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a plm export, as a dict (errors name the file and the fix)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; a plm export holds {CONFIG_NAME} and {WEIGHTS_NAME}: point at the export "
            "directory (e.g. <run>/final) or write one with plm convert / plm.model.io.save_pretrained"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: not valid JSON ({err}); the file is damaged: re-export the weights "
            "(the run's final export, or plm convert)"
        ) from err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {type(data).__name__}, not an object; re-export the weights"
        )
    return data


def read_export_record(directory: Path) -> CheckpointRecord:
    meta = read_config(directory)
    source = directory / CONFIG_NAME
    if not isinstance(meta.get("model"), dict):
        hint = (
            "; it looks like a Hugging Face directory: convert it with plm convert --from hf-esm|progen2 --to plm"
            if "model_type" in meta
            else "; re-export the weights"
        )
        raise CheckpointError(f"{source}: not a plm export config (no 'model' entry){hint}")
    if not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME}: not found beside {CONFIG_NAME}; copy the whole export directory"
        )
    extra = {k: v for k, v in meta.items() if k not in RECORD_FIELDS}
    return _build(meta, "export", directory, str(source), extra)


def lightning_record(checkpoint: Any, path: Path) -> CheckpointRecord:
    """The record of an already loaded Lightning checkpoint (so loading weights reads the file once)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    fields = stored_record(checkpoint)
    if not isinstance(fields.get("model"), Mapping):
        raise CheckpointError(
            f"{path}: not a plm checkpoint (no '{RECORD_KEY}' or 'plm_model_config' entry); only checkpoints "
            "written by plm's LanguageModel carry the model config (for other formats see plm convert)"
        )
    return _build(fields, "lightning", path, str(path), {})


def _build(fields: Mapping[str, Any], kind: Kind, path: Path, source: str, extra: dict) -> CheckpointRecord:
    version = fields.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format_version={version!r}, this plm reads up to {FORMAT_VERSION}; "
            "upgrade plm to load it"
        )
    try:
        config = ModelConfig.from_dict(dict(fields["model"]), source=source)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model config ({err}); re-export the weights") from err
    objective = fields.get("objective")
    recorded = objective is not None
    if not recorded:
        objective = "clm" if config.flavour == "progen2" else "mlm"
    if objective not in OBJECTIVES:
        raise CheckpointError(
            f"{source}: objective={objective!r} is neither 'mlm' nor 'clm'; set it to the objective "
            "the weights were trained with"
        )
    return CheckpointRecord(
        config=config,
        objective=objective,
        kind=kind,
        path=path,
        step=_optional_int(fields.get("global_step"), "global_step", source),
        tokens_seen=_optional_int(fields.get("tokens_seen"), "tokens_seen", source),
        objective_recorded=recorded,
        extra=extra,
    )


def _optional_int(value: Any, name: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise CheckpointError(
            f"{source}: {name}={value!r} is not a non-negative integer; re-export the weights"
        )
    return int(value)


def read_lightning_checkpoint(path: Path, map_location: str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a pickle that tries to run code is refused.

    ``mmap`` maps tensors instead of reading them, for callers that only want the record."""
    try:
        return _torch_load(path, map_location, mmap)
    except Exception as err:  # torch raises many types for bad files
        text = str(err)
        refused = "weights_only" in text or "Unsupported global" in text
        kind = "refused unsafe pickle content" if refused else "unreadable, truncated or corrupt"
        fix = (
            "; only tensors and plain containers are read: re-save it in an environment you trust"
            if refused
            else "; resume from or load an earlier checkpoint, or the run's final export"
        )
        if path.suffix == ".safetensors":
            fix = f"; pass the export directory that holds {path.name}, not the weights file"
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        if (
            refused
        ):  # torch's first line advises weights_only=False, i.e. running the file's code: never say that
            found = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global):? ?([\w.]+)", text)
            first = f"it names {found.group(1)}" if found else "it holds objects other than tensors"
        raise CheckpointError(f"{path}: {kind} ({type(err).__name__}: {first}){fix}") from err


def _torch_load(path: Path, map_location: str, mmap: bool) -> Any:
    if not mmap:
        return torch.load(path, map_location=map_location, weights_only=True)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location=map_location, weights_only=True)  # legacy non-zip format


def require_objective(record: CheckpointRecord, wanted: Objective, purpose: str) -> None:
    """Refuse weights saved under the other objective (an inferred objective is only a guess: let it
    pass, as before the record existed)."""
    if record.objective_recorded and record.objective != wanted:
        what = "export" if record.kind == "export" else "checkpoint"
        step = f", step {record.step}" if record.step is not None else ""
        raise CheckpointError(
            f"{record.path}: {_AN[record.objective]} {what} (objective {record.objective!r} when saved{step}); "
            f"{purpose} needs {'a causal LM' if wanted == 'clm' else 'a masked LM'}: pass {_AN[wanted]} checkpoint"
            + (" (for a CLM→MLM transfer run, one saved before the switch)" if wanted == "clm" else "")
        )


_AN = {"mlm": "an MLM", "clm": "a CLM"}


__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "RECORD_KEY",
    "WEIGHTS_NAME",
    "CheckpointError",
    "CheckpointRecord",
    "lightning_record",
    "read_config",
    "read_lightning_checkpoint",
    "read_record",
    "record_dict",
    "require_objective",
    "stored_record",
]
