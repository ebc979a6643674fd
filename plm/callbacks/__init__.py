"""Independent training extras: export, throughput, data monitoring (and later transfer, eval, generation)."""
