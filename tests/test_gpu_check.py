"""``make gpu-check`` (benchmarks/gpu_check.py) on a machine without CUDA, and its parity rule exercised here
with CPU stand-ins for the CUDA kernels: a correct kernel passes, one that ignores causality fails."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from plm.model import attention as A
from tests.helpers.runs import REPO


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA: make gpu-check measures instead"
)
def test_no_cuda_says_so_and_exits_0():
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0
    assert res.stdout.startswith("gpu-check: no CUDA here") and "nothing was measured" in res.stdout


def _stand_in(ignore_causal: bool):
    def varlen(q, k, v, cu, cu_k, max_q, max_k, *, window_size=(-1, -1)):
        causal = window_size == (-1, 0) and not ignore_causal
        return A.sdpa_varlen(q, k, v, tuple(cu.diff().tolist()), causal)

    return varlen


@pytest.mark.parametrize("broken", [False, True])
def test_parity_rule_passes_a_correct_kernel_and_catches_a_wrong_one(monkeypatch, broken):
    monkeypatch.setattr(A, "unusable", lambda backend, *a: None if backend == "varlen" else "not here")
    monkeypatch.setattr(A, "_torch_varlen", lambda: _stand_in(ignore_causal=broken))
    rows = gpu_check.attention_parity(torch.device("cpu"), rows=2, row_len=96, heads=2, head_dim=16)
    assert len(rows) == 8 and {r["check"].split(",")[0] for r in rows} == {"varlen vs dense SDPA"}
    bidirectional = [r["ok"] for r in rows if "bidirectional" in r["check"]]
    causal = [r["ok"] for r in rows if ", causal" in r["check"]]
    assert all(bidirectional)
    assert all(causal) != broken
