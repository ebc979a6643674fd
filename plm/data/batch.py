"""The typed hand-off from the data module to the LightningModule: one packed micro-batch.

A dataclass (not a dict read by string keys) so a misspelt field fails at once. Lightning moves it to
the device like any collection (``apply_to_collection`` rebuilds dataclasses field by field: the tensors
move, the ints and the set name stay Python values, so reading them never syncs with the GPU). It must
stay unfrozen for that reason.

The masking seed is a field of its own. The objective seeds its generator from (model seed,
``mask_seed``, rank), so masks are a pure function of the data position, like the data itself:

* training batches: ``mask_seed`` is the global sample cursor at the batch's start;
* held-out batches: :func:`heldout_mask_seed`, fixed per (set, batch, rank) so validation losses are
  comparable over a run; these count down from the top of the 62-bit range and never meet a cursor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from plm.tokenizer import PAD

#: mask seeds are 62-bit (``mix64`` takes them as unsigned words; the top bits stay free)
SEED_BITS = 62
SEED_MASK = (1 << SEED_BITS) - 1
#: held-out set i's batches take seeds i·HELDOUT_SET_STRIDE + … below the top of the range
HELDOUT_SET_STRIDE = 1_000_003


def heldout_mask_seed(set_index: int, first_row: int, world_size: int, rank: int) -> int:
    """The fixed masking seed of one held-out batch: set ``set_index``, starting at row ``first_row`` of
    this rank's share, on ``rank`` of ``world_size``. (Earlier versions stored it as the negative cursor
    ``-(1 + key)``, masked to 62 bits; this is the same number, so masks and val losses are unchanged.)"""
    return SEED_MASK - (set_index * HELDOUT_SET_STRIDE + first_row * world_size + rank)


#: seed of the filler batches that even out ranks' held-out batch counts (they score nothing)
FILLER_MASK_SEED = SEED_MASK


@dataclass
class Batch:
    """One packed micro-batch of one rank."""

    tokens: Tensor
    """(rows, row_len) token ids, padded with PAD."""
    doc_ids: Tensor
    """(rows, row_len) index of the document each token belongs to, within its row."""
    n_real: int
    """Real (non-pad) tokens in ``tokens``."""
    mask_seed: int
    """What the objective's random masks are seeded from (with the model seed and the rank); 0 ≤ it < 2**62."""
    set: str = "train"
    """'train' or the name of the held-out set the batch belongs to."""
    cursor_end: int | None = None
    """Training batches: the global sample cursor after this batch (the data module's resume position)."""

    def __post_init__(self) -> None:
        if not 0 <= self.mask_seed <= SEED_MASK:
            raise ValueError(f"Batch.mask_seed={self.mask_seed} must be in [0, 2**{SEED_BITS})")

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def __getitem__(self, key: str) -> Any:
        """Read access by the old dict keys (``batch["tokens"]``), for scripts written against dict batches."""
        if key == "cursor_start":
            return self.mask_seed if self.set == "train" else self.mask_seed - (1 << SEED_BITS)
        if key in _FIELDS:
            return getattr(self, key)
        raise KeyError(key)

    @classmethod
    def from_mapping(cls, batch: Mapping[str, Any]) -> Batch:
        """A dict batch of earlier versions (``cursor_start`` was the masking seed, negative for held-out
        batches): the same seed, so the same masks."""
        tokens = batch["tokens"]
        n_real = batch.get("n_real")
        cursor_end = batch.get("cursor_end")
        return cls(
            tokens=tokens,
            doc_ids=batch["doc_ids"],
            n_real=int(n_real) if n_real is not None else int((tokens != PAD).sum()),
            mask_seed=int(batch.get("cursor_start", 0)) & SEED_MASK,
            set=batch.get("set", "train"),
            cursor_end=int(cursor_end) if cursor_end is not None else None,
        )


_FIELDS = frozenset(f.name for f in fields(Batch))


def as_batch(batch: Batch | Mapping[str, Any]) -> Batch:
    """``batch`` as a :class:`Batch` (dict batches of earlier versions are converted)."""
    return batch if isinstance(batch, Batch) else Batch.from_mapping(batch)
