"""Data: FASTA reading, token stores, the mixture sampler, packing, the LightningDataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plm.data.datamodule import ProteinDataModule

__all__ = ["ProteinDataModule"]


def __getattr__(name: str) -> Any:
    # lazy: `plm data prepare` and its worker processes must not pay for importing torch/lightning
    if name == "ProteinDataModule":
        from plm.data.datamodule import ProteinDataModule

        return ProteinDataModule
    raise AttributeError(f"module 'plm.data' has no attribute {name!r}")
