"""plm: train protein language models (ESM-2-style MLM, ProGen2-style CLM) the compute-optimal way."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, map_location: str = "cpu", with_record: bool = False):
    """Load a plm weights export directory or a plm Lightning checkpoint as an eval-mode ``Transformer``.

    ``with_record=True`` returns ``(model, record)``: the :class:`plm.model.record.CheckpointRecord` says
    which objective the weights were saved under (after a CLM→MLM switch: MLM), the step and tokens seen.
    """
    from plm.model.io import load_with_record

    model, record = load_with_record(path, map_location)
    return (model, record) if with_record else model


def read_record(path: str):
    """What a checkpoint is (config, objective, step, tokens seen) without loading its weights."""
    from plm.model.record import read_record as _read_record

    return _read_record(path)


def load_finetuned(path: str, map_location: str = "cpu"):
    """Load a kept fine-tuned model (the ``final/`` directory ``plm finetune`` writes) in eval mode.

    ``model.predict(sequences)`` returns one array per sequence: class probabilities, per-label
    probabilities or a value (per residue for residue tasks); ``model.classes`` names the columns.
    """
    from plm.evaluation.kept import load_finetuned as _load_finetuned

    return _load_finetuned(path, map_location)
