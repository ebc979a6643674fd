"""The learning-rate schedule of every run: linear warm-up, then cosine to a floor exactly at the end.

Defined once so the planner's printed warm-up and the optimizer's real one cannot differ
(docs/reference.md, "Architecture and training": 2.5% warm-up, cosine to lr/10).
"""

from __future__ import annotations

import math

WARMUP_FRACTION = 0.025
MIN_LR_RATIO = 0.1


def warmup_steps(total_steps: int, fraction: float = WARMUP_FRACTION) -> int:
    """Optimizer steps of linear warm-up for a schedule of ``total_steps`` (at least one)."""
    return max(1, round(fraction * total_steps))


def cosine_schedule(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, cosine down to ``min_ratio`` exactly at ``total_steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
