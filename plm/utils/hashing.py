"""A counter-based hash of integers, shared by the data order and the training step's seeds.

Data order, crops, validation splits and per-step masking seeds are all pure functions of a few
integers (seed, sample index, rank…) so that a resumed run reproduces them without replaying anything.
They need one well-mixed, vectorised hash rather than a stateful RNG; it lives here, below both the data
pipeline and the LightningModule, so neither has to import the other for it.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2⁶⁴ / φ)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def mix64(*parts: np.ndarray | int) -> np.ndarray:
    """SplitMix64-style hash of several integers (vectorised; wraps modulo 2⁶⁴ on purpose).

    Each part is folded into the running state with SplitMix64's finaliser, so (a, b) and (b, a) hash
    differently and arrays broadcast like numpy arithmetic.
    """
    with np.errstate(over="ignore"):
        h = _GOLDEN
        for p in parts:
            x = np.asarray(p).astype(np.uint64) + h
            x = (x ^ (x >> np.uint64(30))) * _MUL1
            x = (x ^ (x >> np.uint64(27))) * _MUL2
            h = x ^ (x >> np.uint64(31))
        return h
