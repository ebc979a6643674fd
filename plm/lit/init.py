"""Weights-only initialisation (``init_from``): a fresh run that starts from another run's weights.

Distinct from resuming: no optimizer state, no schedule position, no data position is taken over.
"""

from __future__ import annotations

import dataclasses

from plm.model.config import ModelConfig
from plm.model.io import CheckpointError, load_with_record
from plm.model.record import read_record
from plm.model.transformer import Transformer

#: fields that may differ between the source and the new run without changing any tensor's meaning
_FREE_FIELDS = {"name", "max_seq_len", "token_dropout"}


def check_compatible(source: ModelConfig, target: ModelConfig, where: str) -> None:
    diffs = [
        f"{k}: checkpoint {getattr(source, k)!r} vs run {getattr(target, k)!r}"
        for k in (f.name for f in dataclasses.fields(source))  # every field: to_dict leaves out preset values
        if k not in _FREE_FIELDS and getattr(source, k) != getattr(target, k)
    ]
    if diffs:
        raise CheckpointError(
            f"{where}: its architecture does not match this run ({'; '.join(diffs)}); "
            "set model.size / model.arch to the checkpoint's shape and flavour"
        )


def load_backbone_weights(model: Transformer, path: str) -> None:
    """Copy every tensor of a compatible checkpoint (plm export dir or ``.ckpt``) into ``model``.

    The shape is checked from the record before any weight is read, so a mismatch fails at once."""
    check_compatible(read_record(path).config, model.config, path)
    source, _ = load_with_record(path)
    model.load_state_dict(source.state_dict())
