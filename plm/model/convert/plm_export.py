"""plm's own export format: a directory ``plm.load`` and fine-tuning read, with ESM-2's contact
regression kept beside it."""

from __future__ import annotations

import os
from pathlib import Path

from plm.model.convert.core import CONTACT_REGRESSION_NAME, Converted, Report, _contact
from plm.model.convert.files import _load_safetensors
from plm.model.io import CheckpointError, load_with_record, save_safetensors, write_export
from plm.utils.atomic import atomic_directory


def load_plm(path: str | os.PathLike) -> Converted:
    """A plm export directory or Lightning checkpoint, with its contact regression when kept."""
    path = Path(path)
    model, record = load_with_record(path)
    report = Report(str(path), "plm", "plm")
    report.mapped = [(k, (k,)) for k in model.state_dict()]
    guessed = "" if record.objective_recorded else " (not recorded in the file: inferred from the flavour)"
    report.notes.append(f"objective {record.objective}{guessed}")
    contact = None
    regression = path / CONTACT_REGRESSION_NAME
    if path.is_dir() and regression.is_file():
        reg = _load_safetensors(regression)
        if set(reg) != {"weight", "bias"}:
            raise CheckpointError(f"{regression}: expected tensors weight and bias, got {sorted(reg)}")
        contact = _contact(reg["weight"], reg["bias"], model.config, str(regression))
    return Converted(model, record.objective, report, contact)


def save_plm(conv: Converted, output: str | os.PathLike) -> Path:
    """Write a plm export (what ``plm.load`` and fine-tuning read) plus the contact regression, all in
    one atomic directory."""
    with atomic_directory(output) as tmp:
        write_export(
            tmp,
            conv.model,
            objective=conv.objective,
            converted_from={"path": conv.report.source, "format": conv.report.source_format},
            contact_regression=CONTACT_REGRESSION_NAME if conv.contact_regression else None,
        )
        if conv.contact_regression:
            save_safetensors(
                conv.contact_regression,
                tmp / CONTACT_REGRESSION_NAME,
                {"format": "pt", "layout": "weight (1, n_layer*n_head), bias (1,)"},
            )
    return Path(output)
