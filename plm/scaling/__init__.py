"""Scaling-law toolkit: published laws as data, `plm plan`, `plm sweep` (IsoFLOP runs) and `plm fit-laws`."""
