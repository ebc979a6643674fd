"""The options one evaluation task runs with, as a frozen dataclass.

A field is an attribute, not a string key: a misspelling fails where it is written rather than in the
middle of a run (or, read with ``.get``, silently as the fallback), and each value has its type once, here.

Each task's options are layered once, before any model loads (:func:`layered`), lowest first:
the field defaults here, the task YAML's ``defaults:`` block, then the caller's overrides (``plm evaluate
--epochs/--max-train/--max-test/--seed/--layer``, a suite's seed, the DownstreamEval callback's caps).
Where each value came from is kept beside them, so a cap that applies can say who set it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: How a supervised task's backbone trains: not at all (a head on cached embeddings), LoRA adapters, or
#: every weight (``plm evaluate --mode``, a suite's ``mode``, FineTune's ``mode``).
Mode = Literal["frozen", "lora", "full"]
MODES: tuple[str, ...] = typing.get_args(Mode)

PLM_DEFAULTS = "plm's defaults"
OVERRIDE = "an override"


@dataclass(frozen=True)
class EvalOptions:
    """What one task runs with; the defaults are plm's (a task YAML's ``defaults:`` and the command line
    replace them)."""

    # Training epochs of MLP heads, LoRA and full fine-tuning (a frozen linear probe is instead fitted to
    # convergence by L-BFGS, see probe_max_iter).
    epochs: int = 10
    # Learning rate of the head (and of LoRA adapters).
    lr: float = 1e-3
    # Examples per training / prediction batch.
    batch_size: int = 32
    # Caps on training and test examples (zero-shot: variants), None = every example. A cap changes the
    # question (a DMS assay scored on a sample is another number), so it is never implicit: a task or the
    # command line sets it, and the run prints it whenever it applies.
    max_train: int | None = None
    max_test: int | None = None
    # Residues kept per sequence; also never more than the model's max_seq_len - 2 (<cls>, <eos>).
    max_len: int = 1022
    # Sampling (caps, splits by fraction), head initialisation and batch order.
    seed: int = 0
    # LoRA adapter rank and scale (mode lora).
    lora_rank: int = 8
    lora_alpha: int = 16
    # Learning rate of the backbone's own weights (modes lora and full): lower than the head's.
    backbone_lr: float = 1e-4
    # Representation probes read (ESM repr_layers numbering): 0 = embeddings, i = after block i,
    # -1 = final after the final norm.
    layer: int = -1
    # The frozen linear probe's inverse L2 strength (scikit-learn's C) and L-BFGS iterations
    # (heads.fit_linear_probe).
    probe_c: float = 1.0
    probe_max_iter: int = 200
    # Fit heads with a Lightning Trainer; False inside a running pre-training (the DownstreamEval
    # callback), where a second Trainer would fight the first. A property of the run, not of a task: no
    # task YAML sets it.
    use_trainer: bool = True


#: The options a task YAML's ``defaults:`` block may set (every field but the run's own ``use_trainer``).
TASK_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EvalOptions) if f.name != "use_trainer")
_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(EvalOptions)}


def _typed(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s type (YAML reads ``1e-3`` as a string); ValueError when it is not one."""
    kind = _TYPES[name]
    if value is None and kind.endswith("| None"):
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind.startswith("int"):
        if not isinstance(value, bool) and (
            isinstance(value, (int, str)) or (isinstance(value, float) and value.is_integer())
        ):
            try:
                return int(value)
            except ValueError:
                pass
    elif not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{name}: {value!r} is not {'an' if kind.startswith('int') else 'a'} {kind}")


def typed_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A task YAML's ``defaults:`` block with each value as its field's type; ValueError naming every unknown
    key and every value of the wrong type."""
    unknown = sorted(map(str, set(defaults) - set(TASK_KEYS)))
    if unknown:
        raise ValueError(f"unknown defaults {unknown} (allowed: {sorted(TASK_KEYS)})")
    typed, problems = {}, []
    for name, value in defaults.items():
        try:
            typed[name] = _typed(name, value)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("defaults: " + "; ".join(problems))
    return typed


def layered(
    defaults: Mapping[str, Any], source: str, max_seq_len: int, overrides: Mapping[str, Any] | None = None
) -> tuple[EvalOptions, dict[str, str]]:
    """A task's options (the field defaults < the YAML's ``defaults`` < ``overrides``, whose None values
    leave the option alone) and where each came from (``source``: the YAML's name).

    ``max_len`` is also capped at the model's ``max_seq_len - 2``. An override that names no field is a
    TypeError: it is the caller's mistake, never the user's.
    """
    unknown = sorted(set(overrides or {}) - {f.name for f in dataclasses.fields(EvalOptions)})
    if unknown:
        raise TypeError(f"overrides {unknown} name no EvalOptions field")
    values = typed_defaults(defaults)
    origins = {k: source if k in values else PLM_DEFAULTS for k in _TYPES}
    opts = EvalOptions(**values)
    opts = dataclasses.replace(opts, max_len=min(opts.max_len, max_seq_len - 2))
    given = {k: _typed(k, v) for k, v in (overrides or {}).items() if v is not None}
    origins.update(dict.fromkeys(given, OVERRIDE))
    return dataclasses.replace(opts, **given), origins
