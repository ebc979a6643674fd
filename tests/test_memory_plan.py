"""The per-GPU memory plan of ``plm train --dry-run`` (plm/scaling/memory.py) against numbers worked out by
hand for two sizes, the activation bytes against what plm's block really saves for its backward, and the
dry-run's table and refusal."""

from __future__ import annotations

import pytest
import torch

from plm.cli import main as plm_main
from plm.model import attention as A
from plm.model.config import ModelConfig, config_for
from plm.model.transformer import Transformer
from plm.scaling.memory import (
    block_activation_bytes,
    gpu_facts,
    layout_flags,
    memory_plan,
    smallest_fitting,
    step_seconds,
)


def test_1b_fsdp_on_32_gpus_by_hand():
    """1b: 24 × 2048, FFN 8192, V 33, tied head. Block: 2 LNs 4·2048 = 8,192; q,k,v,out 4·2048² + 4·2048 =
    16,785,408; FFN 2·2048·8192 + 8192 + 2048 = 33,564,672 → 50,358,272. N = 24 · 50,358,272 + final LN 4,096 +
    head dense 2048² + 2048 + head LN 4,096 = 1,212,803,072; P = N + 33·2048 + 33 = 1,212,870,689.
    Root = P − 24 · block = 4,272,161."""
    plan = memory_plan(config_for("1b"), "fsdp", world=32, rows=8, row_len=1024)
    p, block, root, tokens = 1_212_870_689, 50_358_272, 4_272_161, 8 * 1024
    assert config_for("1b").n_params() == p and config_for("1b").n_params_block() == block
    assert plan.params == pytest.approx(4 * p / 32) and plan.grads == pytest.approx(
        4 * p / 32
    )  # 0.1516 GB each
    assert plan.optimizer == pytest.approx(8 * p / 32)  # 0.3032 GB
    assert plan.working == pytest.approx(2 * root + 10 * block)  # 512,127,042 B
    # per token: 24 layers × (24·2048 + 4·8192 + 2 LNs' stats 16 + log-sum-exp 4·32 = 82,064) + outside
    # 8·2048 + 10·33 = 16,714
    assert plan.activations == pytest.approx((24 * 82_064 + 16_714) * tokens)  # 16.271 GB
    # checkpointed: 24 layer inputs of 4·2048 + one layer recomputed + outside
    assert plan.activations_ac == pytest.approx((24 * 8_192 + 82_064 + 16_714) * tokens)  # 2.4198 GB
    assert plan.checkpointing and plan.total() == pytest.approx(3_538_364_498.5)
    # 6·(N + 33·2048) + 12·24·2048·1024 = 7,881,203,712 FLOPs per token; 2²⁰ tokens; 32 × 989e12 × 0.4
    assert step_seconds(config_for("1b"), 2**20, 32, 989e12, 0.4) == pytest.approx(
        7_881_203_712 * 2**20 / 1.26592e16
    )


def test_650m_ddp_on_8_gpus_by_hand():
    """650m: 33 × 1280, FFN 5120. Block 4·1280 + 4·1280² + 4·1280 + 2·1280·5120 + 5120 + 1280 = 19,677,440;
    N = 33 · 19,677,440 + 2,560 + 1280² + 1,280 + 2,560 = 651,000,320; P = N + 33·1280 + 33 = 651,042,593."""
    plan = memory_plan(config_for("650m"), "ddp", world=8, rows=8, row_len=1024)
    p = 651_042_593
    assert config_for("650m").n_params() == p
    assert (plan.params, plan.grads, plan.optimizer, plan.working) == pytest.approx(
        (4 * p, 8 * p, 8 * p, 2 * p)
    )
    assert not plan.checkpointing  # DDP does not recompute
    # 33 × (24·1280 + 4·5120 + 16 + 4·20 = 51,296) + 8·1280 + 330 = 1,703,338 per token × 8192
    assert plan.activations == pytest.approx(13_953_744_896)
    assert plan.total() == pytest.approx(22 * p + 13_953_744_896)  # 28.28 GB: fits an 80 GB H100
    assert plan.fits(gpu_facts("h100")[1]) and not plan.fits(gpu_facts("a10g")[1])


def test_10b_on_one_gpu_needs_four():
    """10b (47 × 4352, P = 10,703,870,241): 16P alone is 171 GB. On 4 GPUs: 16P/4 = 42.82 GB + in flight
    2,311,564,866 B + checkpointed activations (47·4·4352 + 24·4352 + 4·17408 + 16 + 4·34 + 8·4352 + 330)
    · 8192 = 8,417,722,368 B = 53.54 GB ≤ 68 GB usable; on 2: 85.6 GB of state alone."""
    memory = gpu_facts("h100")[1]
    one = memory_plan(config_for("10b"), "fsdp", world=1, rows=8, row_len=1024)
    assert not one.fits(memory)
    best = smallest_fitting(one, memory)
    assert (best.strategy, best.world, best.rows, best.checkpointing) == ("fsdp", 4, 8, True)
    assert best.total() == pytest.approx(16 * 10_703_870_241 / 4 + 2_311_564_866 + 8_417_722_368)
    assert (
        layout_flags(4) == "--devices 4 --num-nodes 1" and layout_flags(128) == "--devices 8 --num-nodes 16"
    )


def test_a_replica_that_cannot_fit_is_sent_to_fsdp():
    """7b under DDP: 22 bytes per parameter is 158 GB on every GPU, whatever the micro-batch."""
    plan = memory_plan(config_for("7b"), "ddp", world=8, rows=8, row_len=1024)
    best = smallest_fitting(plan, gpu_facts("a100")[1])
    assert best.strategy == "fsdp" and best.checkpointing and best.fits(gpu_facts("a100")[1])
    assert not memory_plan(config_for("7b"), "fsdp", best.world // 2, 1, 1024).fits(gpu_facts("a100")[1])


class _FlashLike(torch.autograd.Function):
    """What a varlen kernel saves: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.zeros_like(q)
        ctx.save_for_backward(q, k, v, out, torch.zeros(q.shape[:2]))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _saved_bytes_per_token(cfg: ModelConfig, monkeypatch) -> float:
    monkeypatch.setattr(A, "backend_for", lambda q: "flash")
    monkeypatch.setattr(A, "_flash_varlen", lambda: lambda q, k, v, *a, **kw: _FlashLike.apply(q, k, v))
    model = Transformer(cfg)
    weights = {
        s for p in model.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])
    }  # linear saves W.t()
    tokens = torch.randint(4, 24, (2, 64))
    docs = torch.zeros_like(tokens)
    docs[:, 40:] = 1
    storages: dict[int, int] = {}

    def pack(t):  # activations only: autocast's bf16 weight copies are counted apart from activations
        if not isinstance(t, torch.nn.Parameter) and tuple(t.shape) not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model.hidden(tokens, docs)
    return sum(storages.values()) / tokens.numel()


@pytest.mark.parametrize(
    "fields",
    [
        {"flavour": "esm2"},
        {"flavour": "progen2", "rotary_dim": 8},
        # the formula reads the fields (issue #22): DeepNorm and GeGLU need no new case
        {"flavour": "xtrimopglm"},
        {"flavour": "progen2", "norm": "deepnorm", "rotary_dim": 8},
        {"flavour": "esm2", "activation": "geglu"},
    ],
    ids=["esm2", "progen2", "xtrimopglm", "progen2-deepnorm", "esm2-geglu"],
)
def test_block_activation_bytes_are_what_the_block_saves(fields, monkeypatch):
    """One more layer adds exactly ``block_activation_bytes`` per token to what autograd keeps."""
    shape = {"n_embd": 64, "n_head": 4, **fields}
    one = _saved_bytes_per_token(ModelConfig(n_layer=1, **shape), monkeypatch)
    three = _saved_bytes_per_token(ModelConfig(n_layer=3, **shape), monkeypatch)
    assert (three - one) / 2 == block_activation_bytes(ModelConfig(n_layer=1, **shape))


def test_dry_run_prints_the_table_for_1b_on_4_nodes(capsys):
    assert plm_main(["train", "--size", "1b", "--gpus", "8", "--nodes", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "memory per GPU (FSDP2: full shard over 32 × H100, bf16-mixed, micro-batch 8 rows × 1024 tokens)"
        in out
    )
    assert "optimizer state (AdamW, fp32)          0.30 GB          0.30 GB" in out
    assert "total                                 17.39 GB          3.54 GB" in out
    assert "at 40% MFU" in out and "days" in out and "plm.strategies.FSDP2" in out


def test_dry_run_refuses_10b_on_one_gpu_with_the_smallest_layout(capsys):
    assert plm_main(["train", "--size", "10b", "--devices", "1", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "does NOT fit     does NOT fit" in out
    assert "refusing: size 10b needs 182.0 GB per GPU on 1 × H100" in err
    assert "Smallest layout that fits: --devices 4 --num-nodes 1 --rows-per-device 8" in err
