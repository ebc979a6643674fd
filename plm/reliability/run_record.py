"""``<run>/run.json``: the configuration a run started with, and which changes a resume may take over."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plm.utils.atomic import atomic_write_text

RECORD_NAME = "run.json"
RECORD_FORMAT = 1

#: settings that change nothing about what is trained (how it is run, logged or checkpointed)
IGNORED = frozenset(
    {
        "config",
        "ckpt_path",
        "weights_only",
        "run_name",
        "run_root",
        "checkpoint_every",
        "keep_checkpoints",
        "max_bad_steps",
        "loggers",
        "data.num_workers",
        "trainer.logger",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
        "trainer.default_root_dir",
        "trainer.enable_checkpointing",
        "trainer.num_sanity_val_steps",
        "trainer.enable_autolog_hparams",
        "trainer.profiler",
        "trainer.model_registry",
    }
)
#: settings a resume can take over (listed and applied): the optimizer, the schedule's end, validation,
#: the hardware; everything else (model shape, objective, data, seeds) makes it another run
RESUMABLE = frozenset(
    {
        "model.init_args.lr",
        "model.init_args.min_lr_ratio",
        "model.init_args.warmup_fraction",
        "model.init_args.weight_decay",
        "model.init_args.betas",
        "model.init_args.total_steps",
        "model.init_args.compile",
        "data.eval_sets",
        "data.val_rows",
    }
)
#: ``trainer.*`` settings that change what one step trains on: another run, not a resume
TRAINER_NOT_RESUMABLE = frozenset(
    {
        "trainer.accumulate_grad_batches",
        "trainer.fast_dev_run",
        "trainer.overfit_batches",
        "trainer.limit_train_batches",
    }
)


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any

    @property
    def resumable(self) -> bool:
        if self.key in RESUMABLE:
            return True
        return self.key.startswith("trainer.") and self.key not in TRAINER_NOT_RESUMABLE

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.before)} → {_show(self.after)}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys → JSON values (tuples become lists, paths strings), so a record read back compares equal."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str, sort_keys=True))
    return flat


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """Settings that differ between two flattened configurations, ignoring :data:`IGNORED` ones."""
    keys = sorted((set(before) | set(after)) - IGNORED)
    return [Change(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def read_record(run: Path) -> dict[str, Any] | None:
    """The recorded configuration of ``run``, or None without (or with an unreadable) ``run.json``."""
    path = run / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else None


def write_record(run: Path, config: Mapping[str, Any], resumed_from_step: int | None) -> None:
    """Record ``config`` as the run's configuration (``resumed_from_step`` None: it started at step 0)."""
    record = {
        "format": RECORD_FORMAT,
        "config": dict(config),
        "command": command_line(),
        "started": utc_now(),
        "resumed_from_step": resumed_from_step,
    }
    atomic_write_text(run / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")


def command_line() -> str:
    """The command as typed (shortened), for the records that say who started what."""
    text = " ".join(["plm", *sys.argv[1:]]) if sys.argv else "plm"
    return text if len(text) <= 300 else text[:297] + "…"


def utc_now() -> str:
    """The time, in UTC, as the records show it."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"
