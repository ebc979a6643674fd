"""Conversion parity: reference models with random weights (fair-esm ESM2, HF EsmForMaskedLM, HF GPT-J and
an official-layout ProGen2 state dict packed from it) are saved in their native formats, converted, and
compared on real sequences: max |Δ logits| ≤ 1e-4 in fp32. Round trips plm → HF → plm are exact."""

from __future__ import annotations

import json
import os
import stat
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import plm
from plm.cli import main as plm_main
from plm.model.convert import (
    CONTACT_REGRESSION_NAME,
    MP_NUM,
    PROGEN2_TO_PLM,
    PROGEN2_VOCAB,
    UNMAPPED_LOGIT_BIAS,
    VocabMap,
    convert,
    load_esm2_pt,
    load_hf_esm,
    load_plm,
    load_progen2,
    pack_progen2_qkv,
    save_hf,
    save_plm,
    unpack_progen2_qkv,
)
from plm.model.io import CheckpointError, save_pretrained
from plm.tokenizer import CLS, EOS, HF_SPECIAL_TOKENS, MASK, PAD, TOKENS, encode
from tests.conftest import tiny_model

TOL = 1e-4


# ---- helpers --------------------------------------------------------------------------------------
def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norms around 1), so a wrongly mapped tensor cannot hide behind an init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(
                1 + 0.1 * noise if ("norm" in name.lower() or "ln_" in name) and p.dim() == 1 else 0.2 * noise
            )
    return module.eval()


def batch(seqs: list[str], mask_every: int = 0) -> torch.Tensor:
    """<cls> seq <eos> rows padded with <pad>; optionally every n-th residue replaced by <mask>."""
    rows = [encode(s) for s in seqs]
    if mask_every:
        rows = [
            [MASK if 0 < i < len(r) - 1 and i % mask_every == 0 else t for i, t in enumerate(r)] for r in rows
        ]
    width = max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


def max_diff(a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor) -> float:
    real = tokens != PAD
    return (a[real] - b[real]).abs().max().item()


def fair_esm_checkpoint(tmp_path: Path, n_layer: int, h: int, heads: int, token_dropout: bool, seed: int = 0):
    """A fair-esm ESM2 with random weights saved like esm2_t*_UR50D.pt + its -contact-regression.pt."""
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    ref = randomize(
        ESM2(
            num_layers=n_layer,
            embed_dim=h,
            attention_heads=heads,
            alphabet="ESM-1b",
            token_dropout=token_dropout,
        ),
        seed,
    )
    raw = {}
    for k, v in ref.state_dict().items():
        if k.startswith("contact_head."):
            continue
        raw[("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k] = v.clone()
    path = tmp_path / f"esm2_t{n_layer}_test.pt"
    cfg = Namespace(
        encoder_layers=n_layer,
        encoder_embed_dim=h,
        encoder_attention_heads=heads,
        token_dropout=token_dropout,
    )
    torch.save({"model": raw, "cfg": {"model": cfg}, "args": None}, path)
    reg = {k: v.clone() for k, v in ref.state_dict().items() if k.startswith("contact_head.")}
    torch.save({"model": reg}, tmp_path / f"esm2_t{n_layer}_test-contact-regression.pt")
    return ref, path


def hf_esm_dir(tmp_path: Path, n_layer: int, h: int, heads: int, token_dropout: bool, seed: int = 0):
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(seed)
    conf = EsmConfig(
        vocab_size=33,
        hidden_size=h,
        num_hidden_layers=n_layer,
        num_attention_heads=heads,
        intermediate_size=4 * h,
        position_embedding_type="rotary",
        token_dropout=token_dropout,
        pad_token_id=PAD,
        mask_token_id=MASK,
        max_position_embeddings=1026,
        layer_norm_eps=1e-5,
        emb_layer_norm_before=False,
        vocab_list=list(TOKENS),
    )
    ref = randomize(EsmForMaskedLM(conf), seed)
    ref.save_pretrained(tmp_path / "hf_esm")
    return ref, tmp_path / "hf_esm"


def gptj_reference(n_layer: int, h: int, heads: int, rotary_dim: int, vocab: int = 32, seed: int = 0):
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(seed)
    conf = GPTJConfig(
        vocab_size=vocab,
        n_positions=256,
        n_embd=h,
        n_layer=n_layer,
        n_head=heads,
        rotary_dim=rotary_dim,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return randomize(GPTJForCausalLM(conf), seed)


def progen2_dir(tmp_path: Path, ref) -> Path:
    """An official-layout ProGen2 directory: q/k/v packed into qkv_proj with mp_num = 8."""
    conf = ref.config
    state = {}
    for k, v in ref.state_dict().items():
        if ".attn.q_proj." in k:
            stem = k.split(".attn.")[0]
            q, kk, vv = (ref.state_dict()[f"{stem}.attn.{x}_proj.weight"] for x in "qkv")
            state[f"{stem}.attn.qkv_proj.weight"] = pack_progen2_qkv(q, kk, vv)
            n = conf.n_positions
            state[f"{stem}.attn.bias"] = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
            state[f"{stem}.attn.masked_bias"] = torch.tensor(-1e9)
        elif ".attn.k_proj." not in k and ".attn.v_proj." not in k:
            state[k] = v.clone()
    out = tmp_path / "progen2-test"
    out.mkdir()
    torch.save(state, out / "pytorch_model.bin")
    (out / "config.json").write_text(
        json.dumps(
            {
                "model_type": "progen",
                "vocab_size": conf.vocab_size,
                "n_positions": conf.n_positions,
                "n_ctx": conf.n_positions,
                "n_embd": conf.n_embd,
                "n_layer": conf.n_layer,
                "n_head": conf.n_head,
                "rotary_dim": conf.rotary_dim,
                "n_inner": None,
                "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5,
                "bos_token_id": 1,
                "eos_token_id": 2,
            }
        )
    )
    return out


def progen2_ids(seqs: list[str]) -> torch.Tensor:
    """ProGen2 framing '1' + seq + '2', right-padded with <|pad|> (causal: padding never reaches real rows)."""
    rows = [[PROGEN2_VOCAB.index(c) for c in "1" + s + "2"] for s in seqs]
    width = max(map(len, rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


# ---- ESM-2 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layer,h,heads,token_dropout", [(3, 40, 4, True), (1, 48, 3, False)])
def test_fair_esm_parity(tmp_path, real_sequences, n_layer, h, heads, token_dropout):
    ref, path = fair_esm_checkpoint(tmp_path, n_layer, h, heads, token_dropout)
    conv = load_esm2_pt(path, progress=False)
    assert conv.model.config.head_dim != 64 and conv.model.config.token_dropout == token_dropout
    tokens = batch(real_sequences, mask_every=6)
    with torch.no_grad():
        want = ref(tokens)["logits"]
        got = conv.model(tokens)
    assert max_diff(got, want, tokens) <= TOL
    assert torch.equal(conv.contact_regression["weight"], ref.contact_head.regression.weight)
    assert "contact regression read from" in conv.report.summary()


def test_fair_esm_without_cfg_needs_n_head(tmp_path, real_sequences, monkeypatch):
    ref, path = fair_esm_checkpoint(tmp_path, 1, 40, 4, True)  # released ESM-2 all use token dropout
    torch.save({"model": torch.load(path, weights_only=False)["model"]}, path)
    with pytest.raises(
        CheckpointError, match=r"esm2_t1_test\.pt: no cfg.*1×40 is not a released ESM-2 shape.*--n-head"
    ):
        load_esm2_pt(path, progress=False)
    import plm.model.convert as convert_module

    monkeypatch.setitem(convert_module.ESM2_RELEASED_HEADS, (1, 40), 4)
    assert "4 heads taken from the released ESM-2" in load_esm2_pt(path, progress=False).report.summary()
    conv = load_esm2_pt(path, n_head=4, progress=False)
    assert "token_dropout assumed" in conv.report.summary()
    tokens = batch(real_sequences[:3], mask_every=4)
    with torch.no_grad():
        assert max_diff(conv.model(tokens), ref(tokens)["logits"], tokens) <= TOL


@pytest.mark.parametrize("n_layer,h,heads,token_dropout", [(3, 40, 4, True), (2, 36, 2, False)])
def test_hf_esm_parity(tmp_path, real_sequences, n_layer, h, heads, token_dropout):
    ref, directory = hf_esm_dir(tmp_path, n_layer, h, heads, token_dropout)
    conv = load_hf_esm(directory, progress=False)
    tokens = batch(real_sequences, mask_every=5)
    with torch.no_grad():
        want = ref(input_ids=tokens, attention_mask=(tokens != PAD).long()).logits
        got = conv.model(tokens)
    assert max_diff(got, want, tokens) <= TOL
    assert conv.contact_regression is not None  # random (non-zero) regression counts as trained


def test_fair_esm_straight_to_hf_via_cli(tmp_path, real_sequences, capsys):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    ref, path = fair_esm_checkpoint(tmp_path, 3, 40, 4, True)
    out = tmp_path / "hf_out"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"stale export")  # replaced, never mixed in
    assert plm_main(["convert", "--from", "esm2", "--to", "hf", str(path), str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mapped 44 plm tensors from 56 source tensors" in printed
    assert "contact regression: kept in esm.contact_head.regression.*" in printed
    assert not (out / "pytorch_model.bin").exists()
    hf, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "EsmForMaskedLM" and not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(real_sequences[0])["input_ids"] == encode(real_sequences[0])
    tokens = batch(real_sequences, mask_every=7)
    with torch.no_grad():
        want = ref(tokens)["logits"]
        got = hf.eval()(input_ids=tokens, attention_mask=(tokens != PAD).long()).logits
    assert max_diff(got, want, tokens) <= TOL
    assert torch.equal(hf.esm.contact_head.regression.weight, ref.contact_head.regression.weight)


def test_esm2_round_trip_plm_hf_plm_is_exact(tmp_path, real_sequences):
    _, path = fair_esm_checkpoint(tmp_path, 3, 40, 4, True)
    convert("esm2", "plm", path, tmp_path / "plm1", progress=False)
    convert("plm", "hf", tmp_path / "plm1", tmp_path / "hf", progress=False)
    convert("hf-esm", "plm", tmp_path / "hf", tmp_path / "plm2", progress=False)
    a, b = load_plm(tmp_path / "plm1"), load_plm(tmp_path / "plm2")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert {k: v for k, v in a.model.config.to_dict().items() if k != "name"} == {
        k: v for k, v in b.model.config.to_dict().items() if k != "name"
    }
    assert all(torch.equal(a.contact_regression[k], b.contact_regression[k]) for k in ("weight", "bias"))
    assert (tmp_path / "plm2" / CONTACT_REGRESSION_NAME).is_file()


def test_plm_esm2_without_regression_exports_zeros_and_reimports_none(tmp_path, real_sequences):
    from transformers import AutoModelForMaskedLM

    model = randomize(tiny_model("esm2", n_layer=3, n_embd=40, n_head=4, token_dropout=True), 3)
    save_plm(load_plm_like(model), tmp_path / "plm")
    convert("plm", "hf", tmp_path / "plm", tmp_path / "hf", progress=False)
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    tokens = batch(real_sequences, mask_every=4)
    with torch.no_grad():
        assert (
            max_diff(
                hf(input_ids=tokens, attention_mask=(tokens != PAD).long()).logits, model(tokens), tokens
            )
            <= TOL
        )
    assert load_hf_esm(tmp_path / "hf", progress=False).contact_regression is None


def load_plm_like(model, objective: str = "mlm"):
    from plm.model.convert import Converted, Report

    return Converted(model, objective, Report("memory", "plm"))


def test_imported_checkpoint_works_with_evaluation_loader(tmp_path):
    from plm.evaluation.runner import load_backbone, read_objective

    _, path = fair_esm_checkpoint(tmp_path, 1, 40, 4, True)
    convert("esm2", "plm", path, tmp_path / "plm", progress=False)
    assert read_objective(tmp_path / "plm") == "mlm"
    backbone, _ = load_backbone(tmp_path / "plm")
    assert backbone.config.token_dropout and backbone.config.n_head == 4


@pytest.mark.parametrize("source", ["esm2", "progen2"])
def test_imported_weights_evaluate_and_init_training_like_plm_ones(tmp_path, source, capsys):
    """`plm evaluate` (a probe and zero-shot DMS) and weights-only init of a new run take converted weights."""
    import csv

    from plm.lit import CausalLM, MaskedLM

    if source == "esm2":
        _, path = fair_esm_checkpoint(tmp_path, 1, 40, 4, True)
    else:
        path = progen2_dir(tmp_path, gptj_reference(1, 48, 8, 4))
    assert (
        plm_main(
            ["convert", "--from", source, "--to", "plm", str(path), str(tmp_path / "w"), "--no-progress"]
        )
        == 0
    )
    out = tmp_path / "eval"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "w"),
                "--tasks",
                "ss3,dms_blat",
                "--out",
                str(out),
                "--small",
                "--epochs",
                "1",
                "--max-train",
                "8",
                "--max-test",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = {(r["task"], r["metric"]) for r in csv.DictReader((out / "results.csv").open())}
    assert {("ss3", "accuracy"), ("dms_blat", "spearman")} <= rows
    cls = MaskedLM if source == "esm2" else CausalLM
    flavour = "esm2" if source == "esm2" else "progen2"
    arch = {
        k: v
        for k, v in json.loads((tmp_path / "w" / "config.json").read_text())["model"].items()
        if k != "name"
    }
    assert arch["flavour"] == flavour
    module = cls(size="tiny", arch=arch, init_from=str(tmp_path / "w"))
    ref = plm.load(tmp_path / "w")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in module.model.state_dict().items())


# ---- ProGen2 / GPT-J ------------------------------------------------------------------------------
def test_progen2_vocab_mapping_is_explicit():
    pairs = dict(VocabMap.progen2().pairs)
    assert pairs[PROGEN2_VOCAB.index("1")] == CLS and pairs[PROGEN2_VOCAB.index("2")] == EOS
    assert pairs[PROGEN2_VOCAB.index("<|pad|>")] == PAD
    assert all(TOKENS[pairs[PROGEN2_VOCAB.index(a)]] == a for a in "ACDEFGHIKLMNPQRSTVWYXBUZO")
    assert len(PROGEN2_VOCAB) == 30 and set(PROGEN2_VOCAB) - set(PROGEN2_TO_PLM) == {"<|bos|>", "<|eos|>"}


def test_progen2_packing_matches_progen_forward_split():
    """ProGen2 reads qkv_proj output as (…, mp_num, [q | v | k] × local_dim), heads in order: check the
    packed weight reproduces GPT-J's separate projections under that reading."""
    h, heads = 48, 8
    q, k, v = (torch.randn(h, h) for _ in range(3))
    x = torch.randn(5, h)
    qkv = x @ pack_progen2_qkv(q, k, v).T  # (5, 3h)
    local = h // MP_NUM
    split = qkv.reshape(5, MP_NUM, 3 * local)
    pq, pv, pk = (split[..., j * local : (j + 1) * local].reshape(5, h) for j in range(3))
    assert torch.allclose(pq, x @ q.T, atol=1e-5) and torch.allclose(pk, x @ k.T, atol=1e-5)
    assert torch.allclose(pv, x @ v.T, atol=1e-5)
    assert all(
        torch.equal(a, b) for a, b in zip(unpack_progen2_qkv(pack_progen2_qkv(q, k, v), heads), (q, k, v))
    )


@pytest.mark.parametrize("n_layer,h,heads,rotary_dim", [(3, 48, 8, 4), (1, 64, 8, 8)])
def test_progen2_official_layout_parity(tmp_path, real_sequences, n_layer, h, heads, rotary_dim):
    ref = gptj_reference(n_layer, h, heads, rotary_dim)
    conv = load_progen2(progen2_dir(tmp_path, ref), progress=False)
    assert conv.objective == "clm" and conv.model.config.rotary == rotary_dim
    ids_progen = progen2_ids(real_sequences)
    tokens = batch(real_sequences)
    src, dst = map(list, zip(*VocabMap.progen2().pairs))
    with torch.no_grad():
        want = ref(input_ids=ids_progen).logits[..., src]
        logits = conv.model(tokens, causal=True)
    assert max_diff(logits[..., dst], want, tokens) <= TOL
    unmapped = [i for i in range(len(TOKENS)) if i not in dst]
    assert (conv.model.head.bias[unmapped] == UNMAPPED_LOGIT_BIAS).all()
    assert "'1'→<cls>, '2'→<eos>" in conv.report.summary()


def test_progen2_to_hf_gptj_and_round_trip(tmp_path, real_sequences, capsys):
    from transformers import AutoModelForCausalLM

    ref = gptj_reference(3, 48, 8, 4)
    src_dir = progen2_dir(tmp_path, ref)
    assert (
        plm_main(
            [
                "convert",
                "--from",
                "progen2",
                "--to",
                "plm",
                str(src_dir),
                str(tmp_path / "plm1"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "ProGen2 (mp_num=8 fused qkv)" in capsys.readouterr().out
    convert("plm", "hf", tmp_path / "plm1", tmp_path / "hf", progress=False)
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(hf).__name__ == "GPTJForCausalLM" and not info["missing_keys"] and not info["unexpected_keys"]
    plm1 = load_plm(tmp_path / "plm1").model
    tokens = batch(real_sequences)
    with torch.no_grad():
        assert max_diff(hf.eval()(input_ids=tokens).logits, plm1(tokens, causal=True), tokens) <= TOL
    convert("progen2", "plm", tmp_path / "hf", tmp_path / "plm2", progress=False)  # 33 rows: ids unchanged
    plm2 = load_plm(tmp_path / "plm2")
    sa, sb = plm1.state_dict(), plm2.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and plm2.objective == "clm"
    assert plm2.model.config.max_seq_len == plm1.config.max_seq_len


def test_plm_progen2_to_gptj_parity_full_and_partial_rotary(tmp_path, real_sequences):
    from transformers import AutoModelForCausalLM

    for i, rotary in enumerate((6, None)):
        model = randomize(tiny_model("progen2", n_layer=3, n_embd=36, n_head=3, rotary_dim=rotary), i)
        out, _ = save_hf(load_plm_like(model, "clm"), tmp_path / f"hf{i}", progress=False)
        hf = AutoModelForCausalLM.from_pretrained(out).eval()
        tokens = batch(real_sequences)
        with torch.no_grad():
            assert max_diff(hf(input_ids=tokens).logits, model(tokens, causal=True), tokens) <= TOL


# ---- Hugging Face export: objective, tokenizer, length, permissions --------------------------------
def test_esm2_clm_exports_a_causal_hf_esm(tmp_path, real_sequences, capsys):
    """Bug: an esm2-flavour CLM (the default CLM recipe) was exported as a bidirectional EsmForMaskedLM."""
    from transformers import AutoModelForMaskedLM

    model = randomize(tiny_model("esm2", n_layer=2, n_embd=40, n_head=4), 5)
    save_pretrained(model, tmp_path / "clm", objective="clm")
    args = [
        "convert",
        "--from",
        "plm",
        "--to",
        "hf",
        str(tmp_path / "clm"),
        str(tmp_path / "hf"),
        "--no-progress",
    ]
    assert plm_main(args) == 0
    assert "is_decoder=true makes its attention causal" in capsys.readouterr().out
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.is_decoder
    tokens = batch(real_sequences)
    with torch.no_grad():
        got = hf(input_ids=tokens, attention_mask=(tokens != PAD).long()).logits
        causal, bidirectional = model(tokens, causal=True), model(tokens, causal=False)
    assert max_diff(got, causal, tokens) <= TOL
    assert max_diff(got, bidirectional, tokens) > 100 * TOL  # the comparison can tell the two apart
    convert("hf-esm", "plm", tmp_path / "hf", tmp_path / "back", progress=False)
    assert plm.read_record(tmp_path / "back").objective == "clm"


def test_progen2_mlm_has_no_hf_export(tmp_path, capsys):
    """Bug: an MLM with the progen2 flavour became GPTJForCausalLM, whose attention is always causal."""
    save_pretrained(tiny_model("progen2", rotary_dim=6), tmp_path / "mlm", objective="mlm")
    args = [
        "convert",
        "--from",
        "plm",
        "--to",
        "hf",
        str(tmp_path / "mlm"),
        str(tmp_path / "hf"),
        "--no-progress",
    ]
    assert plm_main(args) == 2
    err = capsys.readouterr().err
    assert "mlm: an MLM with the progen2 flavour has no Hugging Face equivalent" in err
    assert "Use the plm export instead" in err and "esm2 flavour" in err
    assert not (tmp_path / "hf").exists()


def test_hf_tokenizer_names_a_class_every_supported_transformers_has(tmp_path, real_sequences):
    """Bug: tokenizer_config.json named TokenizersBackend, a class only transformers 5 has (the floor is
    tested in tests/test_hf_floor.py)."""
    from transformers import AutoTokenizer

    save_hf(load_plm_like(tiny_model("esm2")), tmp_path / "hf", progress=False)
    conf = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert {k: conf[k] for k in HF_SPECIAL_TOKENS} == HF_SPECIAL_TOKENS
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(real_sequences[2])
    assert enc["input_ids"] == encode(real_sequences[2]) and set(enc) == {"input_ids", "attention_mask"}
    assert tok.convert_tokens_to_ids("<mask>") == MASK and tok.pad_token_id == PAD and tok.eos_token_id == EOS


@pytest.mark.parametrize("flavour, objective", [("progen2", "clm"), ("esm2", "mlm"), ("esm2", "clm")])
def test_tokenizer_max_length_is_the_model_positions(tmp_path, flavour, objective):
    """Bug: the tokenizer allowed 1026 tokens whatever the model (plm: 1024, GPT-J n_positions), so
    ``truncation=True`` let long sequences through and GPT-J failed with an IndexError."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    rotary = 6 if flavour == "progen2" else None
    model = randomize(tiny_model(flavour, rotary_dim=rotary, max_seq_len=40), 1)
    save_hf(load_plm_like(model, objective), tmp_path / "hf", progress=False)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.model_max_length == 40
    ids = tok("MKTAYIAKQRQISFVKSHFSRQ" * 5, truncation=True, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 40)
    auto = AutoModelForCausalLM if flavour == "progen2" else AutoModelForMaskedLM
    hf = auto.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert max_diff(hf(input_ids=ids).logits, model(ids, causal=objective == "clm"), ids) <= TOL


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exports_follow_the_umask(tmp_path, umask):
    """Bug: weights were written 0600 and convert outputs were 0700 directories, while every other file
    followed the umask; a lab sharing a weights folder could not read them."""
    _, pt = fair_esm_checkpoint(tmp_path, 1, 40, 4, True)  # with a contact regression: one more file
    previous = os.umask(umask)
    try:
        for _ in range(2):  # a fresh directory, then one replacing the first
            save_pretrained(tiny_model(), tmp_path / "export", objective="mlm")
            convert("esm2", "plm", pt, tmp_path / "plm", progress=False)
            convert("plm", "hf", tmp_path / "plm", tmp_path / "hf", progress=False)
    finally:
        os.umask(previous)
    for name in ("export", "plm", "hf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o777 & ~umask
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / name).iterdir()}
        assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes
    assert (tmp_path / "plm" / CONTACT_REGRESSION_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


# ---- errors ---------------------------------------------------------------------------------------
def test_wrong_architecture_is_named(tmp_path):
    src_dir = progen2_dir(tmp_path, gptj_reference(1, 48, 8, 4))
    with pytest.raises(
        CheckpointError, match=r"pytorch_model\.bin: missing tensor embed_tokens\.weight.*--from progen2"
    ):
        load_esm2_pt(src_dir / "pytorch_model.bin", progress=False)
    _, hf_dir = hf_esm_dir(tmp_path, 1, 40, 4, False)
    with pytest.raises(CheckpointError, match=r"not a ProGen2/GPT-J causal LM: model_type='esm'"):
        load_progen2(hf_dir, progress=False)
    with pytest.raises(
        CheckpointError,
        match=r"hf_esm: not a ProGen2/GPT-J.*missing tensor transformer\.wte\.weight.*--from hf-esm",
    ):
        load_progen2_as_esm_layout(hf_dir)


def load_progen2_as_esm_layout(hf_dir: Path):
    """An HF ESM directory whose config claims GPT-J: the key check must then name the real layout."""
    conf = json.loads((hf_dir / "config.json").read_text())
    conf.update(model_type="gptj", n_embd=40, n_layer=1, n_head=4, rotary_dim=10)
    (hf_dir / "config.json").write_text(json.dumps(conf))
    return load_progen2(hf_dir, progress=False)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    _, path = fair_esm_checkpoint(tmp_path, 2, 40, 4, False)
    data = torch.load(path, weights_only=False)
    del data["model"]["encoder.sentence_encoder.layers.1.fc2.bias"]
    data["model"]["encoder.sentence_encoder.layers.0.extra.weight"] = torch.zeros(1)
    torch.save(data, path)
    with pytest.raises(
        CheckpointError,
        match=r"esm2_t2_test\.pt: .*missing tensors \['layers\.1\.fc2\.bias'\]"
        r".*unexpected tensors \['layers\.0\.extra\.weight'\]",
    ) as err:
        load_esm2_pt(path, progress=False)
    assert "use --from" not in str(err.value)  # the hint never suggests the format already chosen
    _, path = fair_esm_checkpoint(tmp_path, 2, 40, 4, False)
    data = torch.load(path, weights_only=False)
    data["model"]["encoder.sentence_encoder.layers.1.fc1.weight"] = torch.zeros(100, 40)
    torch.save(data, path)
    with pytest.raises(
        CheckpointError,
        match=r"esm2_t2_test\.pt: shape mismatches.*blocks\.1\.mlp\.fc_in\.weight ← "
        r"layers\.1\.fc1\.weight: file \(100, 40\) vs expected \(160, 40\)",
    ):
        load_esm2_pt(path, progress=False)


def test_truncated_and_unsafe_files(tmp_path):
    _, path = fair_esm_checkpoint(tmp_path, 1, 40, 4, False)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"esm2_t1_test\.pt: unreadable, truncated or corrupt"):
        load_esm2_pt(path, progress=False)
    _, hf_dir = hf_esm_dir(tmp_path, 1, 40, 4, False)
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable or truncated"):
        load_hf_esm(hf_dir, progress=False)
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": Path("/etc")}, path)
    with pytest.raises(CheckpointError, match=r"esm2_t1_test\.pt: refused unsafe pickle content"):
        load_esm2_pt(path, progress=False)


def test_cli_error_exit_code_and_message(tmp_path, capsys, monkeypatch):
    """Expected errors exit 2 in one line like every other command (issue 25); --debug adds the traceback."""
    monkeypatch.delenv("PLM_DEBUG", raising=False)
    args = ["convert", "--from", "hf-esm", "--to", "plm", str(tmp_path / "nope"), str(tmp_path / "o")]
    assert plm_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("plm convert: ") and "nope/config.json: not found" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert plm_main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("plm convert: ")
    assert plm_main(["convert", "--from", "plm", "--to", "plm", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "choose --to hf" in capsys.readouterr().err
    assert (
        plm_main(["convert", "--from", "esm2", "--to", "plm", str(tmp_path / "no.pt"), str(tmp_path / "o")])
        == 2
    )
    assert capsys.readouterr().err == f"plm convert: {tmp_path / 'no.pt'}: no such file\n"


def test_library_convert_sends_a_kept_fine_tune_to_its_own_exporter(tmp_path):
    """plm.model.convert does not import evaluation code: a kept fine-tuned model (finetune.json) is
    refused with the call that exports it (`plm convert` makes that call itself)."""
    from plm.model.convert import convert

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "finetune.json").write_text("{}")
    with pytest.raises(ValueError, match="kept fine-tuned model.*export_hf"):
        convert("plm", "hf", tmp_path / "final", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
