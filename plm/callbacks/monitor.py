"""Throughput (real vs padded tokens/s, model FLOP/s, MFU) and data-position logging.

Lightning's ``ThroughputMonitor`` counts one length per batch; packed rows need two (real tokens and
computed tokens) to show what padding costs, and exact model FLOPs need the documents' lengths
(attention scores Σ len² pairs per row, not T²), so this callback measures them itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from plm.data.batch import Batch, as_batch
from plm.data.protocol import TrainingData, training_data
from plm.model.attention import doc_segments
from plm.tokenizer import PAD

PRECISION_DTYPE = {"bf16": torch.bfloat16, "16": torch.float16, "32": torch.float32}


def attended_pairs(tokens: Tensor, doc_ids: Tensor) -> int:
    """Σ len² over the documents of each row, counting real (non-pad) tokens only: the (query, key)
    pairs that attention has to score for the model's outputs."""
    cu = doc_segments(doc_ids).cu_seqlens.long()
    real = torch.zeros(tokens.numel() + 1, dtype=torch.long)
    real[1:] = (tokens != PAD).flatten().cpu().cumsum(0)
    per_doc = real[cu[1:].cpu()] - real[cu[:-1].cpu()]  # real tokens in each document
    return int((per_doc * per_doc).sum())


def matmul_peak(
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    sizes: tuple[int, ...] = (2048, 4096),
    reps: int = 5,
) -> float:
    """Measured matrix-multiply peak (FLOP/s): the best of ``reps`` square ``torch.matmul`` per size."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up: kernel selection, page-in
        for _ in range(reps):
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def datasheet_peak() -> float | None:
    """Dense bf16 peak of the current GPU (plm.hardware's table), None if unknown or no GPU."""
    if not torch.cuda.is_available():
        return None
    from plm.hardware import gpu_peak_bf16

    return gpu_peak_bf16(torch.cuda.get_device_name())


class Throughput(pl.Callback):
    """Logs real and padded tokens/s, packing efficiency, model FLOP/s and, given a peak, MFU.

    Model FLOPs are ``ModelConfig.training_flops`` on the real tokens with the documents' own
    attention pairs (the LM head counted on every token, which overstates an MLM's by < 1% at 8m+).
    ``peak_flops``: a number (FLOP/s per device); ``"auto"``: the data-sheet bf16 peak of known GPUs,
    none on CPU; ``"measure"``: time a large matmul in the run's precision once at the start of fit.
    """

    def __init__(
        self, log_every: int = 10, peak_flops: float | Literal["auto", "measure"] | None = "auto"
    ) -> None:
        self.log_every, self.peak_flops = log_every, peak_flops
        self._peak: float | None = None
        self._t0: float | None = None
        self._real = self._padded = 0
        self._flops = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.peak_flops == "auto":
            self._peak = datasheet_peak()
        elif self.peak_flops == "measure":
            dtype = PRECISION_DTYPE.get(str(trainer.precision).split("-")[0], torch.float32)
            self._peak = matmul_peak(dtype, pl_module.device.type)
        else:
            self._peak = self.peak_flops

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer, pl_module, outputs, batch: Batch | Mapping[str, Any], batch_idx: int
    ) -> None:
        batch = as_batch(batch)
        n_real = batch.n_real
        self._real += n_real * trainer.world_size
        self._padded += batch.tokens.numel() * trainer.world_size
        pairs = attended_pairs(batch.tokens, batch.doc_ids)
        self._flops += pl_module.config.training_flops(n_real, pairs) * trainer.world_size
        if (batch_idx + 1) % self.log_every or self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        metrics = {
            "perf/real_tokens_per_sec": self._real / dt,
            "perf/padded_tokens_per_sec": self._padded / dt,
            "perf/packing_efficiency": self._real / max(1, self._padded),
            "perf/model_flops_per_sec": self._flops / dt,
        }
        if self._peak:
            metrics["perf/mfu"] = self._flops / dt / (self._peak * trainer.world_size)
        pl_module.log_dict(metrics)
        self._t0, self._real, self._padded, self._flops = time.perf_counter(), 0, 0, 0.0


class DataMonitor(pl.Callback):
    """Sequences and epochs seen per source; the datamodule warns once a source repeats."""

    def __init__(self, log_every: int = 50) -> None:
        self.log_every = log_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        dm: TrainingData | None = training_data(trainer)
        if dm is None or (batch_idx + 1) % self.log_every:
            return
        pl_module.log_dict(dm.data_stats())
