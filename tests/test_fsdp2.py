"""FSDP2 in one process (a world of 1 over gloo, fast): a meta-built model is materialised one block at a time
as it is sharded, never whole; it starts from the weights a whole build has; the gathered export equals the
model. The 2-process runs are in tests/test_multiprocess.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import plm.strategies as S
from plm.lit.language_model import LanguageModel
from plm.model.config import config_for
from plm.model.transformer import Transformer


@pytest.fixture
def one_rank_mesh(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_meta_init_materialised_whole_equals_an_eager_build(flavour):
    arch = {"flavour": flavour, "n_layer": 3}
    eager = LanguageModel(size="tiny", arch=arch, seed=7).model
    meta = LanguageModel(size="tiny", arch=arch, seed=7, meta_init=True).model
    assert all(p.is_meta for p in meta.parameters())
    S.materialize_whole(meta, torch.device("cpu"))
    assert meta.head.weight is meta.embed.weight or flavour == "progen2"  # the tie survives to_empty
    a, b = _state(eager), _state(meta)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(eager.rotary.inv_freq, meta.rotary.inv_freq)


def test_meta_model_is_sharded_block_by_block_never_whole(one_rank_mesh, monkeypatch):
    """At every fully_shard call, the parameters that are neither meta nor sharded are at most one block's
    (or, for the root call, the root's): the whole model never exists unsharded."""
    from torch.distributed import fsdp

    cfg = dataclasses.replace(config_for("tiny"), n_layer=4)
    block_params = cfg.n_params_block()
    root_params = cfg.n_params() - cfg.n_layer * block_params
    torch.manual_seed(3)
    eager = Transformer(cfg)
    with torch.device("meta"):
        torch.manual_seed(3)
        model = Transformer(cfg)
    seen: list[int] = []
    real = fsdp.fully_shard

    def spy(module, **kw):
        plain = sum(p.numel() for p in model.parameters() if not p.is_meta and not isinstance(p, DTensor))
        seen.append(plain)
        return real(module, **kw)

    monkeypatch.setattr(fsdp, "fully_shard", spy)
    S.shard_transformer(model, one_rank_mesh, torch.device("cpu"), activation_checkpointing=True)
    assert seen[:-1] == [block_params] * cfg.n_layer and seen[-1] == root_params
    assert S.is_sharded(model) and all(isinstance(p, DTensor) for p in model.parameters())
    S.shard_transformer(model, one_rank_mesh, torch.device("cpu"))  # idempotent: Lightning calls it again
    assert len(seen) == cfg.n_layer + 1
    whole = S.full_model(model)  # what final/ is written from
    a, b = _state(eager), _state(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = torch.randint(4, 24, (2, 16))
    docs = torch.zeros_like(tokens)
    docs[:, 9:] = 1
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, docs), eager(tokens, docs), rtol=0, atol=0)


def test_init_from_with_meta_init_is_refused():
    with pytest.raises(ValueError, match="init_from with model.meta_init"):
        LanguageModel(size="tiny", init_from="somewhere", meta_init=True)
