"""Data: FASTA reading, token stores, the mixture sampler, packing, the LightningDataModule."""

from plm.data.datamodule import ProteinDataModule

__all__ = ["ProteinDataModule"]
