"""Throughput callback and FLOP accounting (issue #9): real vs padded tokens, exact attention pairs, MFU."""

import math
from types import SimpleNamespace

import pytest
import torch

from plm.callbacks.monitor import Throughput, attended_pairs, matmul_peak
from plm.model.config import config_for
from plm.tokenizer import PAD


def _batch():
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10, PAD, PAD], [5, 6, 7, 8, 9, 10, 11, 12]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0]])
    return {"tokens": tokens, "doc_ids": docs, "n_real": torch.tensor(14)}


def test_attended_pairs_are_same_document_real_pairs():
    b = _batch()
    assert attended_pairs(b["tokens"], b["doc_ids"]) == 3**2 + 3**2 + 0 + 8**2  # pads score nothing


def test_training_flops_match_the_per_token_formula_for_whole_rows():
    for size in ("tiny", "8m", "35m"):
        cfg = config_for(size)
        n, t = 4 * 1024, 1024
        assert math.isclose(cfg.training_flops(n, n * t), cfg.flops_per_token(t) * n, rel_tol=1e-12)
        # the MLM head on 15% of positions and packed attention both count less
        assert cfg.training_flops(n, n * t // 3, n_predicted=n // 7) < cfg.training_flops(n, n * t)


class _Module:
    def __init__(self):
        self.config = config_for("8m")
        self.device = torch.device("cpu")
        self.logged: list[dict] = []

    def log_dict(self, metrics):
        self.logged.append(metrics)


@pytest.mark.parametrize("peak", [None, 1e12, "measure"])
def test_throughput_logs_real_padded_flops_and_mfu(monkeypatch, peak):
    monkeypatch.setattr(
        "plm.callbacks.monitor.matmul_peak", lambda dtype, device: 2e12 if dtype == torch.bfloat16 else 0
    )
    cb, module = Throughput(log_every=2, peak_flops=peak), _Module()
    trainer = SimpleNamespace(world_size=1, precision="bf16-mixed")
    cb.on_fit_start(trainer, module)
    for i in range(2):
        cb.on_train_batch_start(trainer, module, _batch(), i)
        cb.on_train_batch_end(trainer, module, None, _batch(), i)
    (m,) = module.logged
    assert m["perf/packing_efficiency"] == 14 / 16
    assert m["perf/real_tokens_per_sec"] / m["perf/padded_tokens_per_sec"] == pytest.approx(14 / 16)
    flops = 2 * module.config.training_flops(14, 9 + 9 + 64)
    assert m["perf/model_flops_per_sec"] / m["perf/real_tokens_per_sec"] == pytest.approx(flops / 28)
    expected_peak = {None: None, 1e12: 1e12, "measure": 2e12}[peak]
    if expected_peak is None:
        assert "perf/mfu" not in m
    else:
        assert m["perf/mfu"] == pytest.approx(m["perf/model_flops_per_sec"] / expected_peak)


def test_auto_peak_is_none_without_a_gpu():
    cb = Throughput()
    cb.on_fit_start(SimpleNamespace(world_size=1, precision="bf16-mixed"), _Module())
    assert cb.peak_flops == "auto" and (cb._peak is None or torch.cuda.is_available())


def test_matmul_peak_is_a_rate():
    assert 1e6 < matmul_peak(torch.float32, sizes=(64,), reps=2) < 1e15
