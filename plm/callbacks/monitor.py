"""Throughput (real vs padded tokens/s, MFU) and data-position logging.

Lightning's ``ThroughputMonitor`` counts one length per batch; packed rows need two (real tokens and
computed tokens) to show what padding costs, so this callback measures both itself.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class Throughput(pl.Callback):
    """Logs real and padded tokens/s, packing efficiency and, with ``peak_flops``, MFU."""

    def __init__(self, log_every: int = 10, peak_flops: float | None = None) -> None:
        self.log_every, self.peak_flops = log_every, peak_flops
        self._t0: float | None = None
        self._real = self._padded = 0

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self._real += int(batch["n_real"]) * trainer.world_size
        self._padded += batch["tokens"].numel() * trainer.world_size
        if (batch_idx + 1) % self.log_every or self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        cfg = pl_module.config
        metrics = {
            "perf/real_tokens_per_sec": self._real / dt,
            "perf/padded_tokens_per_sec": self._padded / dt,
            "perf/packing_efficiency": self._real / max(1, self._padded),
        }
        flops = cfg.flops_per_token(batch["tokens"].shape[1], attention=True) * self._padded / dt
        metrics["perf/model_flops_per_sec"] = flops
        if self.peak_flops:
            metrics["perf/mfu"] = flops / self.peak_flops
        pl_module.log_dict(metrics)
        self._t0, self._real, self._padded = time.perf_counter(), 0, 0


class DataMonitor(pl.Callback):
    """Sequences and epochs seen per source; the datamodule warns once a source repeats."""

    def __init__(self, log_every: int = 50) -> None:
        self.log_every = log_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "data_stats") or (batch_idx + 1) % self.log_every:
            return
        pl_module.log_dict(dm.data_stats())
