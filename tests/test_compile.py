"""The ``compile`` switch of the LightningModule (issue #9): same loss and gradients, same checkpoint keys."""

import functools

import pytest
import torch

from plm.lit import MaskedLM


def _batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 24, (2, 32), generator=g)
    docs = torch.tensor([[0] * 10 + [1] * 22, [0] * 32])  # a packed row (varlen path) and a full one
    return {"tokens": tokens, "doc_ids": docs, "cursor_start": torch.tensor(0), "n_real": torch.tensor(64)}


def _compare(compiled: MaskedLM) -> None:
    eager = MaskedLM(size="tiny")
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and exports unchanged
    assert all(b._compiled_call_impl is not None for b in compiled.model.blocks)
    for objective in ("mlm", "clm"):  # the transfer callback flips the objective in place
        eager.objective = compiled.objective = objective
        le, _ = eager.loss(_batch())
        lc, _ = compiled.loss(_batch())
        torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
        ge = torch.autograd.grad(le, list(eager.parameters()))
        gc = torch.autograd.grad(lc, list(compiled.parameters()))
        for a, b in zip(gc, ge):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_switch_traces_the_blocks(monkeypatch):
    """Dynamo traces each block (graph break at the varlen attention included); the eager backend keeps
    this fast, the inductor run is the slow test below."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    _compare(MaskedLM(size="tiny", compile=True))
    assert not MaskedLM(size="tiny").model.blocks[0]._compiled_call_impl


@pytest.mark.slow
def test_compile_switch_with_inductor_on_cpu():
    torch._dynamo.reset()
    _compare(MaskedLM(size="tiny", compile=True))
