"""Metrics: torchmetrics for the standard ones, contact precision (ESM/trRosetta convention) here.

Contact precision@L/k: among residue pairs i < j whose separation falls in the range, take the L/k
pairs with the highest predicted score and report the share that are true contacts (Cβ < 8 Å).
Pairs with unknown truth (missing coordinates, marked -1) are excluded before ranking.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional import (
    accuracy,
    f1_score,
    mean_squared_error,
    spearman_corrcoef,
)
from torchmetrics.functional.classification import binary_auroc

RANGES: dict[str, tuple[int, int | None]] = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
FRACTIONS: dict[str, int] = {"L": 1, "L/2": 2, "L/5": 5}


def contact_precision(
    scores: Tensor | np.ndarray,
    contacts: Tensor | np.ndarray,
    min_sep: int = 24,
    max_sep: int | None = None,
    divisor: int = 5,
) -> float:
    """Precision of the top L/``divisor`` predicted pairs with ``min_sep <= j - i <= max_sep``.

    ``scores`` and ``contacts`` are (L, L); contacts 1/0, -1 = unknown. Returns NaN when no pair in
    range has a known label (so a caller can tell 'undefined' from 0)."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    c = torch.as_tensor(np.asarray(contacts)).to(torch.int64)
    if s.shape != c.shape or s.dim() != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(
            f"contact_precision: scores {tuple(s.shape)} and contacts {tuple(c.shape)} must be equal (L, L)"
        )
    length = s.shape[0]
    i, j = torch.triu_indices(length, length, offset=min_sep)
    sep = j - i
    keep = c[i, j] >= 0
    if max_sep is not None:
        keep &= sep <= max_sep
    i, j = i[keep], j[keep]
    if i.numel() == 0:
        return float("nan")
    k = max(1, length // divisor)
    top = torch.argsort(s[i, j], descending=True, stable=True)[:k]
    return float(c[i[top], j[top]].float().mean())


def contact_metrics(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Mean over chains of precision at L, L/2, L/5 for short, medium and long range."""
    out: dict[str, float] = {}
    for rname, (lo, hi) in RANGES.items():
        for fname, div in FRACTIONS.items():
            vals = [contact_precision(p, t, lo, hi, div) for p, t in zip(preds, truths)]
            vals = [v for v in vals if not np.isnan(v)]
            out[f"P@{fname}_{rname}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def regression_metrics(preds: Tensor, targets: Tensor) -> dict[str, float]:
    preds, targets = preds.float().flatten(), targets.float().flatten()
    return {
        "spearman": float(spearman_corrcoef(preds, targets)),
        "rmse": float(mean_squared_error(preds, targets, squared=False)),
    }


def classification_metrics(logits: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy (micro: Q3/Q8 for per-residue tasks), macro-F1, and AUROC for two classes."""
    targets = targets.long().flatten()
    logits = logits.reshape(-1, num_classes).float()
    out = {
        "accuracy": float(
            accuracy(logits, targets, task="multiclass", num_classes=num_classes, average="micro")
        ),
        "macro_f1": float(
            f1_score(logits, targets, task="multiclass", num_classes=num_classes, average="macro")
        ),
    }
    if num_classes == 2:
        out["auroc"] = float(binary_auroc(logits.softmax(-1)[:, 1], targets))
    return out
