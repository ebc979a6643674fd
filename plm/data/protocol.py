"""What the LightningModule and the callbacks ask of the trainer's data module, declared once.

They reach the data module through ``trainer.datamodule``; typing against this protocol (not the
concrete :class:`plm.data.datamodule.ProteinDataModule`) names every method they rely on, so a change
to the data module that breaks one of them shows up here and in a type checker rather than as an
``AttributeError`` mid-run. :func:`training_data` is how they get it: ``None`` when the trainer has no
data module of this kind (a run on bare loaders, a test's stand-in trainer).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TrainingData(Protocol):
    """The data module as the training callbacks and ``LanguageModel`` see it."""

    @property
    def is_set_up(self) -> bool:
        """Sources read and the mixture built (``setup`` ran): the statistics below are available."""
        ...

    @property
    def heldout_names(self) -> list[str]:
        """The in-distribution held-out sets (what ``val/loss`` averages over); external eval sets excluded."""
        ...

    def unigram_probs(self) -> np.ndarray:
        """Residue frequencies of the training mixture by token id (validation's context-free baseline)."""
        ...

    def data_stats(self) -> dict[str, float]:
        """Sequences and epochs seen per source at the current position, as metrics (``DataMonitor``)."""
        ...

    def planned_tokens(self, steps: int, accumulate: int = 1) -> int:
        """Tokens (padding included) that ``steps`` optimizer steps consume on all ranks (``CLMToMLMTransfer``)."""
        ...


def training_data(trainer: Any) -> TrainingData | None:
    """The trainer's data module when it provides :class:`TrainingData`, else ``None``."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    return dm if isinstance(dm, TrainingData) else None
