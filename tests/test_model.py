import pytest
import torch

from plm.model.config import SIZES, ModelConfig, config_for
from plm.model.io import CheckpointError, load_pretrained, save_pretrained
from plm.model.transformer import Rotary, Transformer, attention_mask, positions_from_doc_ids
from plm.tokenizer import CLS, EOS, PAD
from tests.conftest import tiny_model


def _packed(n_tokens=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (2, n_tokens), generator=g)
    docs = torch.tensor([[0] * 10 + [1] * 8 + [2] * 6, [0] * 20 + [1] * 4])
    return tokens, docs


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_causal_no_position_sees_the_future(flavour):
    model = tiny_model(flavour, rotary_dim=6 if flavour == "progen2" else None)
    tokens, docs = _packed()
    base = model(tokens, docs, causal=True)
    changed = tokens.clone()
    changed[:, 15:] = (changed[:, 15:] + 3) % 20 + 4
    out = model(changed, docs, causal=True)
    torch.testing.assert_close(out[:, :15], base[:, :15])
    assert not torch.allclose(out[:, 15:], base[:, 15:])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_packed_documents_never_attend_across(flavour, causal):
    """Each packed document gives the same logits as that sequence alone in its own row."""
    model = tiny_model(flavour, rotary_dim=6 if flavour == "progen2" else None)
    tokens, docs = _packed()
    packed = model(tokens, docs, causal=causal)
    for row in range(2):
        for d in docs[row].unique():
            idx = (docs[row] == d).nonzero().squeeze(1)
            alone = model(tokens[row, idx][None], causal=causal)
            torch.testing.assert_close(packed[row, idx], alone[0], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens():
    model = tiny_model("esm2")
    seq = torch.tensor([[CLS, 5, 6, 7, 8, EOS]])
    padded = torch.cat([seq, torch.full((1, 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded)[:, :6], model(seq), atol=1e-5, rtol=1e-5)


def test_positions_restart_per_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert positions_from_doc_ids(docs).tolist() == [[0, 1, 2, 0, 1, 0]]
    mask = attention_mask(docs, causal=True)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False]


@pytest.mark.parametrize("head_dim,rotary_dim", [(16, 16), (24, 8)])
def test_rotary_is_the_rotate_half_formula(head_dim, rotary_dim):
    """x·cos + [-x2, x1]·sin on the first rotary_dim channels (RoFormer / ESM-2 / GPT-J after the
    converter's permutation), the rest untouched: the roll with a signed sine must be that exactly."""
    rotary = Rotary(rotary_dim)
    positions = positions_from_doc_ids(torch.tensor([[0] * 5 + [1] * 7]))
    x = torch.randn(1, 12, 2, 3, head_dim, dtype=torch.float64)
    cos, sin = rotary.cos_sin(positions, torch.float64)
    angle = positions[0, :, None].double() * rotary.inv_freq.double()  # (T, dim/2)
    c, s = angle.cos()[None, :, None, None], angle.sin()[None, :, None, None]
    x1, x2, rest = x[..., : rotary_dim // 2], x[..., rotary_dim // 2 : rotary_dim], x[..., rotary_dim:]
    expected = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, rest), dim=-1)
    torch.testing.assert_close(rotary.apply(x, cos, sin), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [s for s in SIZES if s in ("tiny", "8m", "35m", "150m", "650m")])
@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_parameter_counts_match_module(size, flavour):
    cfg = config_for(size, flavour=flavour)
    with torch.device("meta"):
        model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == cfg.n_params()
    # N ≈ 12·L·h² (the papers' approximation) within a few percent for ladder shapes
    if size != "tiny":
        approx = 12 * cfg.n_layer * cfg.n_embd**2
        assert abs(cfg.n_params_non_embedding() - approx) / approx < 0.03


def test_ladder_1b_is_paper_1b():
    n = config_for("1b").n_params_non_embedding()
    assert 1.15e9 < n < 1.25e9
    assert 7.0e9 < config_for("7b").n_params_non_embedding() < 7.4e9
    assert 10.4e9 < config_for("10b").n_params_non_embedding() < 11.0e9


def test_flops_per_token():
    cfg = config_for("8m")
    assert cfg.flops_per_token(attention=False) == 6 * cfg.n_params_non_embedding()
    assert cfg.flops_per_token(1024) > cfg.flops_per_token(512) > cfg.flops_per_token(attention=False)


def test_invalid_config_lists_all_problems():
    with pytest.raises(ValueError, match=r"not divisible.*rotary_dim"):
        ModelConfig(n_embd=50, n_head=4, rotary_dim=7)
    with pytest.raises(ValueError, match="unknown size 'huge'; valid sizes: tiny, 8m"):
        config_for("huge")


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_save_load_identical_logits(tmp_path, flavour):
    model = tiny_model(flavour, token_dropout=flavour == "esm2")
    tokens, docs = _packed()
    save_pretrained(model, tmp_path / "export", objective="mlm")
    loaded = load_pretrained(tmp_path / "export")
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(tokens, docs), model(tokens, docs), rtol=0, atol=0)


def test_load_errors_name_file_and_tensor(tmp_path):
    model = tiny_model("esm2")
    out = save_pretrained(model, tmp_path / "export")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable or truncated"):
        load_pretrained(out)
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained(tmp_path / "missing")
    other = save_pretrained(tiny_model("esm2", n_embd=64), tmp_path / "other")
    import json

    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["n_embd"] = 48
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatches embed.weight"):
        load_pretrained(other)
