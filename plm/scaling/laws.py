"""Published compute-optimal laws as data, with provenance (docs/reference.md, "Compute and scaling laws").

The only place their coefficients live: the planner, ``plm train``, the sweep and the transfer callback
all read them from here (through :mod:`plm.scaling.recipe`).

Cheng et al. 2024, "Training Compute-Optimal Protein Language Models" (arXiv 2411.02142), fitted by
IsoFLOP profiles on UniMeta200B: N_opt = A·C^a and D_opt = B·C^b with C = 6·N·D and N the
non-embedding parameters. The exponents are known to about ±0.1 (bootstrap), so treat plans as a
starting point for a sweep on your own data, not as exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Objective = Literal["mlm", "clm"]
SOURCE = "Cheng et al. 2024 (arXiv 2411.02142), IsoFLOP fits on UniMeta200B"


@dataclass(frozen=True)
class PowerLaw:
    coef: float
    exponent: float

    def __call__(self, c: float) -> float:
        return self.coef * c**self.exponent

    def inverse(self, y: float) -> float:
        """The compute at which the law gives ``y``."""
        return (y / self.coef) ** (1.0 / self.exponent)


@dataclass(frozen=True)
class ComputeOptimalLaw:
    n_opt: PowerLaw
    d_opt: PowerLaw
    source: str = SOURCE


LAWS: dict[str, ComputeOptimalLaw] = {
    "clm": ComputeOptimalLaw(PowerLaw(1.26e-3, 0.578), PowerLaw(1.23e2, 0.422)),
    "mlm": ComputeOptimalLaw(PowerLaw(6.19e-8, 0.776), PowerLaw(2.02e6, 0.230)),
}


def law(objective: str) -> ComputeOptimalLaw:
    if objective not in LAWS:
        raise ValueError(f"no published law for objective {objective!r}; use one of {sorted(LAWS)}")
    return LAWS[objective]


def compute_optimal_flops(n_non_embedding: float, objective: str) -> float:
    """The budget at which ``n_non_embedding`` is the law's optimum: C(N) = (N / A)^(1/a).

    For ``transfer`` the released runs give each stage its own compute-optimal budget for the shared
    size, so the whole run costs C_CLM(N) + C_MLM(N)."""
    if objective == "transfer":
        return LAWS["clm"].n_opt.inverse(n_non_embedding) + LAWS["mlm"].n_opt.inverse(n_non_embedding)
    return law(objective).n_opt.inverse(n_non_embedding)


def clm_share_of_transfer(n_non_embedding: float) -> float:
    """Share of a transfer run's compute spent in the CLM stage for size N: C_CLM(N) / (C_CLM + C_MLM)."""
    clm = LAWS["clm"].n_opt.inverse(n_non_embedding)
    return clm / (clm + LAWS["mlm"].n_opt.inverse(n_non_embedding))


def transfer_split(flops: float) -> tuple[float, float, float]:
    """CLM→MLM transfer: the shared size N whose compute-optimal budgets C_CLM(N) + C_MLM(N) add up to
    ``flops`` (the released runs' recipe); returns (N, C_CLM, C_MLM). Solved by bisection in log N."""
    lo, hi = 1e3, 1e13
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if compute_optimal_flops(mid, "transfer") < flops else (lo, mid)
    n = math.sqrt(lo * hi)
    return n, LAWS["clm"].n_opt.inverse(n), LAWS["mlm"].n_opt.inverse(n)
