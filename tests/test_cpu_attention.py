"""plm's bf16 CPU attention kernel (issue #9): same results as fp32 SDPA within bf16 rounding, for every
head size and layout the model produces, and a clean fallback where it cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from plm.model import cpu_attention
from plm.model.attention import ENV_VAR, doc_segments, sdpa_varlen
from plm.model.config import ModelConfig
from plm.model.transformer import Rotary, Transformer

needs_kernel = pytest.mark.skipif(
    cpu_attention.library() is None, reason="CPU without avx512_bf16, no g++, or PLM_CPU_ATTENTION=sdpa"
)

LENGTHS = (1, 5, 33, 100, 17, 64, 2)


def cu_of(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def reference(q, k, v, g, lengths, causal):
    """fp32 SDPA per document on the same bf16 values: output and q, k, v gradients."""
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    y = sdpa_varlen(qf, kf, vf, tuple(lengths), causal)
    y.backward(g.float())
    return y.detach(), qf.grad, kf.grad, vf.grad


def kernel(q, k, v, g, lengths, causal):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    y = cpu_attention.varlen_attention_bf16(q, k, v, cu_of(lengths), causal)
    y.backward(g)
    return y.detach(), q.grad, k.grad, v.grad


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max() / b.detach().float().abs().max())


def random_qkvg(lengths, n_head, head_dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return [torch.randn(n, n_head, head_dim, generator=gen).bfloat16() for _ in range(4)]


@needs_kernel
@pytest.mark.parametrize("head_dim", [16, 24, 6, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_fp32_sdpa_forward_and_gradients(head_dim, causal):
    q, k, v, g = random_qkvg(LENGTHS, 3, head_dim)
    for ours, ref, name in zip(
        kernel(q, k, v, g, LENGTHS, causal), reference(q, k, v, g, LENGTHS, causal), ("out", "dq", "dk", "dv")
    ):
        assert rel_err(ours, ref) < 0.02, (name, rel_err(ours, ref))


@needs_kernel
def test_error_is_bf16_rounding_not_a_bug():
    """The kernel's error against an fp64 reference is of the order of bf16's epsilon (2^-8), and a
    deliberately wrong answer (one key of every document dropped) is far outside it."""
    q, k, v, g = random_qkvg(LENGTHS, 2, 24, seed=1)
    ours = kernel(q, k, v, g, LENGTHS, False)[0]
    ref = sdpa_varlen(q.double(), k.double(), v.double(), LENGTHS, False)
    assert rel_err(ours, ref) < 4 * 2**-8
    starts = cu_of(LENGTHS)[:-1].long()
    k2 = k.clone()
    k2[starts[torch.tensor(LENGTHS) > 1]] = 10.0  # a key that dominates its document's softmax
    wrong = kernel(q, k2, v, g, LENGTHS, False)[0]
    assert rel_err(wrong, ref) > 0.1


@needs_kernel
def test_documents_never_see_each_other():
    q, k, v, g = random_qkvg((40, 30), 2, 16)
    base = kernel(q, k, v, g, (40, 30), False)
    k[40:], v[40:] = -k[40:], v[40:] * 3  # change only the second document
    changed = kernel(q, k, v, g, (40, 30), False)
    assert torch.equal(base[0][:40], changed[0][:40])  # first document's outputs and q gradients untouched
    assert torch.equal(base[1][:40], changed[1][:40])
    assert not torch.equal(base[0][40:], changed[0][40:])


@needs_kernel
def test_strided_views_give_the_same_bits_as_contiguous_copies():
    """The model passes q, k as views of one (N, 2, nh, hd) tensor and v of the fused qkv output."""
    n, nh, hd = sum(LENGTHS), 4, 24
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(n, 3, nh, hd, generator=gen).bfloat16()
    g = torch.randn(n, nh, hd, generator=gen).bfloat16()
    q, k, v = qkv.unbind(1)
    assert q.stride(0) == 3 * nh * hd
    strided = kernel(q, k, v, g, LENGTHS, True)
    contiguous = kernel(q.contiguous(), k.contiguous(), v.contiguous(), g, LENGTHS, True)
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


@needs_kernel
def test_results_do_not_depend_on_thread_count():
    q, k, v, g = random_qkvg(LENGTHS, 5, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel(q, k, v, g, LENGTHS, False)
        torch.set_num_threads(2)
        two = kernel(q, k, v, g, LENGTHS, False)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("flavour,causal", [("esm2", False), ("progen2", True)])
def test_model_under_bf16_autocast_uses_the_kernel_and_agrees_with_sdpa(monkeypatch, flavour, causal):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_embd=64, n_head=4, flavour=flavour))  # head size 16
    tokens = torch.randint(4, 24, (2, 48))
    doc_ids = torch.tensor([[0] * 20 + [1] * 28, [0] * 48])
    doc_ids[1, 30:] = 1

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(tokens, doc_ids, causal=causal).float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), model.blocks[0].attn.qkv.weight.grad.clone()

    calls = []
    real = cpu_attention.varlen_rotary_attention_bf16
    monkeypatch.setattr(cpu_attention, "varlen_rotary_attention_bf16", lambda *a: calls.append(1) or real(*a))
    ours = run()
    assert len(calls) == model.config.n_layer
    monkeypatch.setenv(ENV_VAR, "sdpa")
    sdpa = run()
    assert abs(float(ours[0] - sdpa[0])) < 0.02 * abs(float(sdpa[0]))
    assert rel_err(ours[1], sdpa[1]) < 0.05


def test_fp32_and_odd_head_sizes_stay_on_sdpa():
    assert not cpu_attention.supports(torch.zeros(4, 2, 16))  # fp32: SDPA
    assert not cpu_attention.supports(torch.zeros(4, 2, 15, dtype=torch.bfloat16))  # odd: no bf16 pairs
    assert not cpu_attention.supports(torch.zeros(4, 2, 80, dtype=torch.bfloat16))  # beyond 64


def test_env_switch_turns_the_kernel_off(monkeypatch):
    cpu_attention.library.cache_clear()
    monkeypatch.setenv(cpu_attention.ENV_SWITCH, "sdpa")
    try:
        assert cpu_attention.library() is None
        assert not cpu_attention.supports(torch.zeros(4, 2, 16, dtype=torch.bfloat16))
    finally:
        monkeypatch.delenv(cpu_attention.ENV_SWITCH)
        cpu_attention.library.cache_clear()


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512vl avx512_bf16 fma\n")
    assert cpu_attention.cpu_has_flags(cpuinfo=info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert not cpu_attention.cpu_has_flags(cpuinfo=info)
    assert not cpu_attention.cpu_has_flags(cpuinfo=tmp_path / "missing")


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path: Path):
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    build = cpu_attention.build
    monkeypatch.setattr(cpu_attention, "build", lambda: build(bad, tmp_path))
    monkeypatch.setattr(cpu_attention, "cpu_has_flags", lambda: True)
    cpu_attention.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="broken.cpp"):
            assert cpu_attention.library() is None
        assert [p.name for p in tmp_path.iterdir()] == ["broken.cpp"]  # nothing half-written left behind
    finally:
        cpu_attention.library.cache_clear()


@pytest.mark.skipif(not os.path.exists("/usr/bin/g++"), reason="no g++")
def test_build_is_reused_by_hash(tmp_path: Path):
    first = cpu_attention.build(out_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_attention.build(out_dir=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def rotary_reference(qkv, lengths, rotary_dim, causal, g):
    """fp64: rotate q and k with the model's own Rotary at positions restarting per document, then SDPA per
    document; output and the gradient with respect to the unrotated qkv."""
    x = qkv.detach().double().requires_grad_()
    rotary = Rotary(rotary_dim)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]  # (1, N)
    cos, sin = rotary.cos_sin(positions, torch.float64)  # (1, N, 1, 1, dim)
    qk = rotary.apply(x[None, :, :2], cos, sin)[0]  # (N, 2, nh, hd)
    y = sdpa_varlen(qk[:, 0], qk[:, 1], x[:, 2], tuple(lengths), causal)
    y.backward(g.double())
    return y.detach(), x.grad, rotary


@needs_kernel
@pytest.mark.parametrize("head_dim,rotary_dim", [(24, 24), (16, 8), (6, 6), (64, 32)])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_rotary_matches_rotating_first(head_dim, rotary_dim, causal):
    """The kernel that rotates q and k itself (and turns dq, dk back) gives what rotating first and then
    attending gives, gradients included, within bf16 rounding; full and partial rotary."""
    gen = torch.Generator().manual_seed(3)
    n = sum(LENGTHS)
    qkv = torch.randn(n, 3, 2, head_dim, generator=gen).bfloat16()
    g = torch.randn(n, 2, head_dim, generator=gen).bfloat16()
    ref_y, ref_grad, rotary = rotary_reference(qkv, LENGTHS, rotary_dim, causal, g)
    x = qkv.clone().requires_grad_()
    cos, sin = cpu_attention.rotary_tables(rotary.inv_freq, max(LENGTHS))
    y = cpu_attention.varlen_rotary_attention_bf16(x, cos, sin, cu_of(LENGTHS), causal)
    y.backward(g)
    assert rel_err(y, ref_y) < 0.02
    for slot, name in enumerate(("dq", "dk", "dv")):
        assert rel_err(x.grad[:, slot], ref_grad[:, slot]) < 0.03, name
    without = cpu_attention.varlen_attention_bf16(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_of(LENGTHS), causal)
    assert rel_err(without, ref_y) > 0.05  # the rotation is really applied


@needs_kernel
def test_fused_rotary_refuses_short_tables():
    rotary = Rotary(16)
    qkv = torch.zeros(sum(LENGTHS), 3, 2, 16, dtype=torch.bfloat16)
    cos, sin = cpu_attention.rotary_tables(rotary.inv_freq, max(LENGTHS) - 1)
    with pytest.raises(ValueError, match="longest document"):
        cpu_attention.varlen_rotary_attention_bf16(qkv, cos, sin, cu_of(LENGTHS), False)
    with pytest.raises(ValueError, match="fp32"):
        cpu_attention.varlen_rotary_attention_bf16(qkv, cos.double(), sin.double(), cu_of(LENGTHS), False)
    wide_cos, wide_sin = cpu_attention.rotary_tables(Rotary(20).inv_freq, max(LENGTHS))  # 10 > 16 / 2 columns
    with pytest.raises(ValueError, match="head size / 2"):
        cpu_attention.varlen_rotary_attention_bf16(qkv, wide_cos, wide_sin, cu_of(LENGTHS), False)


def test_rotary_tables_are_computed_once_and_grown_on_demand():
    rotary = Rotary(16)
    first = rotary.tables(10)
    assert rotary.tables(5) is first  # shorter documents reuse the longer tables
    grown = rotary.tables(40)
    assert grown[0].shape == (40, 8) and grown is not first
    expected = cpu_attention.rotary_tables(rotary.inv_freq, 40)
    assert torch.equal(grown[0], expected[0]) and torch.equal(grown[1], expected[1])
    positions = torch.arange(40)[None]
    cos, sin = rotary.cos_sin(positions)  # the model's own angles, signed sine in the first half
    assert torch.allclose(cos[0, :, 0, 0, :8], grown[0]) and torch.allclose(sin[0, :, 0, 0, 8:], grown[1])


@needs_kernel
def test_explicit_positions_keep_rotary_outside_the_kernel(monkeypatch):
    """The kernel assumes positions restart at every document; positions a caller passes may not, so those
    calls rotate first and use the plain kernel."""
    model = Transformer(ModelConfig(n_layer=1, n_embd=64, n_head=4, flavour="esm2"))
    tokens = torch.randint(4, 24, (1, 40))
    doc_ids = torch.tensor([[0] * 15 + [1] * 25])
    assert doc_segments(doc_ids).positions_restart and not doc_segments(doc_ids, False).positions_restart
    fused, plain = [], []
    real_fused, real_plain = cpu_attention.varlen_rotary_attention_bf16, cpu_attention.varlen_attention_bf16
    monkeypatch.setattr(
        cpu_attention, "varlen_rotary_attention_bf16", lambda *a: fused.append(1) or real_fused(*a)
    )
    monkeypatch.setattr(cpu_attention, "varlen_attention_bf16", lambda *a: plain.append(1) or real_plain(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model.hidden(tokens, doc_ids)
        assert (len(fused), len(plain)) == (1, 0)
        model.hidden(tokens, doc_ids, positions=torch.arange(40)[None])
        assert (len(fused), len(plain)) == (1, 1)
