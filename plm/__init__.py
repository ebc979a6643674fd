"""plm: train protein language models (ESM-2-style MLM, ProGen2-style CLM) the compute-optimal way."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, map_location: str = "cpu"):
    """Load a plm weights export directory or a plm Lightning checkpoint as an eval-mode ``Transformer``."""
    from plm.model.io import load_pretrained

    return load_pretrained(path, map_location)
