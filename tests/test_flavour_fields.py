"""Architecture flavour as fields, not branches (issue #22).

A flavour name is only a preset row of ``plm.model.config.FLAVOURS``; the model, the parameter and FLOP
counts and the memory plan read the fields (tests/test_memory_plan.py measures the latter for new
combinations too). The presets must rebuild exactly the models the flavour
branches built (the reference numbers below were computed by the code before the fields existed, commit
047fa12), and files written before the fields existed must still load.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from plm.model.config import FLAVOURS, ModelConfig, config_for
from plm.model.convert.core import Converted, Report
from plm.model.convert.hf_writer import hf_target
from plm.model.io import CheckpointError, load_pretrained, save_pretrained
from plm.model.transformer import Transformer

TOKENS = torch.tensor([[0, 5, 9, 13, 32, 7, 20, 11, 6, 2], [0, 18, 4, 4, 25, 9, 2, 1, 1, 1]])

#: computed at 047fa12 (flavour branches) for ModelConfig(n_layer=2, n_embd=32, n_head=4, **kw) built with
#: init_seed=2024: sha256 over (name, bytes) of the state dict, Σ MLM logits, MLM logits [0, 1, :4],
#: Σ CLM logits, CLM logits [1, 3, :4]
LEGACY = {
    "esm2": (
        {"token_dropout": True},
        "6e416710666fd66af492fa692c7dc070c2066f09288481747f66011975206817",
        6.841761250757656,
        [0.04836641997098923, -0.1571037620306015, -0.1352453976869583, 0.08909191191196442],
        7.212526921357494,
        [0.05411634221673012, -0.07558191567659378, -0.1245255246758461, 0.19084572792053223],
    ),
    "progen2": (
        {"rotary_dim": 4},
        "a088269449297e610febf7a7f11454720996c5edbf67d94535a73b2acd47c7e0",
        -3.0496045393811073,
        [-0.0996251329779625, -0.15923163294792175, 0.23439739644527435, -0.08589807897806168],
        -2.2946193075331394,
        [0.06193575635552406, -0.2129935622215271, 0.022853054106235504, -0.005144508555531502],
    ),
}
LEGACY_KEYS = {  # state dict of layer 0 and outside the blocks, in order, at 047fa12
    "esm2": [
        "embed.weight",
        "blocks.0.attn_norm.weight",
        "blocks.0.attn_norm.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.out.weight",
        "blocks.0.attn.out.bias",
        "blocks.0.mlp_norm.weight",
        "blocks.0.mlp_norm.bias",
        "blocks.0.mlp.fc_in.weight",
        "blocks.0.mlp.fc_in.bias",
        "blocks.0.mlp.fc_out.weight",
        "blocks.0.mlp.fc_out.bias",
        "final_norm.weight",
        "final_norm.bias",
        "head.weight",
        "head.bias",
        "head.dense.weight",
        "head.dense.bias",
        "head.norm.weight",
        "head.norm.bias",
    ],
    "progen2": [
        "embed.weight",
        "blocks.0.attn_norm.weight",
        "blocks.0.attn_norm.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.out.weight",
        "blocks.0.mlp.fc_in.weight",
        "blocks.0.mlp.fc_in.bias",
        "blocks.0.mlp.fc_out.weight",
        "blocks.0.mlp.fc_out.bias",
        "final_norm.weight",
        "final_norm.bias",
        "head.weight",
        "head.bias",
    ],
}
#: a config.json ``model`` entry as plm wrote it before the fields existed
LEGACY_RECORD_KEYS = {
    "ffn_hidden",
    "flavour",
    "layer_norm_eps",
    "max_seq_len",
    "n_embd",
    "n_head",
    "n_layer",
    "name",
    "rotary_dim",
    "token_dropout",
    "vocab_size",
}

#: new combinations: no preset has them, the model needs no new branch for them
NEW_COMBINATIONS = [
    {"flavour": "xtrimopglm"},
    {
        "flavour": "esm2",
        "parallel_block": True,
        "norm": "deepnorm",
        "activation": "geglu",
        "attn_bias": False,
        "mlp_bias": False,
        "tied_head": False,
        "head_transform": True,
    },
    {"flavour": "progen2", "activation": "gelu", "attn_bias": True, "tied_head": True, "rotary_dim": 4},
]


def _tiny(**kw) -> ModelConfig:
    return ModelConfig(n_layer=2, n_embd=32, n_head=4, **kw)


def _state_hash(model: Transformer) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_presets_build_the_models_the_flavour_branches_built(flavour):
    """Same parameter names, same initial values and the same outputs as before the fields existed."""
    kw, digest, mlm_sum, mlm_row, clm_sum, clm_row = LEGACY[flavour]
    model = Transformer(_tiny(flavour=flavour, **kw), init_seed=2024).eval()
    assert [k for k in model.state_dict() if not k.startswith("blocks.1.")] == LEGACY_KEYS[flavour]
    assert _state_hash(model) == digest
    with torch.no_grad():
        mlm, clm = model(TOKENS), model(TOKENS, causal=True)
    # bit-for-bit on the machine the references came from; 1e-6 leaves room for another CPU's kernels
    assert mlm.double().sum().item() == pytest.approx(mlm_sum, abs=1e-5)
    assert clm.double().sum().item() == pytest.approx(clm_sum, abs=1e-5)
    torch.testing.assert_close(mlm[0, 1, :4], torch.tensor(mlm_row), rtol=0, atol=1e-6)
    torch.testing.assert_close(clm[1, 3, :4], torch.tensor(clm_row), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_exports_written_before_the_fields_still_load(tmp_path, flavour):
    """A preset writes the record it wrote before (older plm reads it), and such a record loads the same
    model: the ``model`` entry names only the flavour, and its preset fills the fields in."""
    kw = LEGACY[flavour][0]
    model = Transformer(_tiny(flavour=flavour, **kw), init_seed=2024).eval()
    save_pretrained(model, tmp_path / "w", objective="mlm")
    record = json.loads((tmp_path / "w" / "config.json").read_text())
    assert set(record["model"]) == LEGACY_RECORD_KEYS
    loaded = load_pretrained(tmp_path / "w").eval()
    assert loaded.config == model.config and _state_hash(loaded) == _state_hash(model)
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS), model(TOKENS))


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_the_model_reads_fields_not_the_flavour_name(flavour):
    """Another flavour's name with this flavour's fields written out builds the same tensors and outputs."""
    other = "progen2" if flavour == "esm2" else "esm2"
    named = _tiny(flavour=flavour, rotary_dim=4)
    spelled = _tiny(flavour=other, rotary_dim=4, **FLAVOURS[flavour])
    assert spelled.preset() == flavour and spelled.architecture() == named.architecture()
    a, b = Transformer(named, init_seed=5).eval(), Transformer(spelled, init_seed=5).eval()
    assert _state_hash(a) == _state_hash(b)
    with torch.no_grad():
        assert torch.equal(a(TOKENS, causal=True), b(TOKENS, causal=True))
    assert (named.n_params(), named.training_flops(20, 60, 5)) == (
        spelled.n_params(),
        spelled.training_flops(20, 60, 5),
    )


def test_changing_the_flavour_of_a_preset_dict_takes_the_new_preset():
    """``plm.lit`` builds ``config_for(size).to_dict()`` and updates it with ``model.arch``: a new flavour
    there must bring its own fields, not keep the ladder's esm2 ones."""
    cfg = ModelConfig.from_dict({**config_for("tiny").to_dict(), "flavour": "progen2"})
    assert cfg.architecture() == FLAVOURS["progen2"] and cfg.preset() == "progen2"
    override = ModelConfig.from_dict({**config_for("tiny").to_dict(), "activation": "geglu"})
    assert override.to_dict()["activation"] == "geglu" and override.preset() is None
    assert ModelConfig.from_dict(override.to_dict()) == override
    with pytest.raises(ValueError, match="flavour='gpt5' must be one of 'esm2', 'progen2', 'xtrimopglm'"):
        ModelConfig(flavour="gpt5")
    with pytest.raises(ValueError, match="activation='swiglu' must be one of gelu, gelu_tanh, geglu"):
        ModelConfig(activation="swiglu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields", NEW_COMBINATIONS, ids=["xtrimopglm", "parallel-deepnorm-geglu", "progen2-variant"]
)
def test_a_new_combination_builds_counts_and_trains_a_step(tmp_path, fields):
    cfg = _tiny(**fields)
    torch.manual_seed(0)
    model = Transformer(cfg, init_seed=3)
    unique = {id(p): p for p in model.parameters()}
    assert cfg.n_params() == sum(p.numel() for p in unique.values())
    assert cfg.n_params_block() == sum(p.numel() for p in model.blocks[0].parameters())
    embedding = (
        model.embed.weight.numel()
        + model.head.bias.numel()
        + (0 if cfg.tied_head else model.head.weight.numel())
    )
    assert cfg.n_params_non_embedding() == cfg.n_params() - embedding
    n = TOKENS.numel()
    assert cfg.training_flops(n, TOKENS.shape[0] * TOKENS.shape[1] ** 2) == pytest.approx(
        cfg.flops_per_token(10) * n
    )

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = TOKENS.roll(-1, dims=1)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(TOKENS, causal=True).flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unique.values())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    save_pretrained(model, tmp_path / "w", objective="clm")
    loaded = load_pretrained(tmp_path / "w").eval()
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS, causal=True), model(TOKENS, causal=True))
    with pytest.raises(CheckpointError, match="neither the esm2 nor the progen2 preset"):
        hf_target(Converted(model, "clm", Report("w", "plm")))


def test_hugging_face_export_follows_the_fields():
    """The writer picks its key map by the preset the fields match, not by the name."""
    gptj = Transformer(_tiny(flavour="esm2", rotary_dim=4, **FLAVOURS["progen2"]))
    assert hf_target(Converted(gptj, "clm", Report("w", "plm"))) == ("GPTJForCausalLM", True)
    esm = Transformer(_tiny(flavour="progen2", **FLAVOURS["esm2"]))
    assert hf_target(Converted(esm, "mlm", Report("w", "plm"))) == ("EsmForMaskedLM", False)


def test_init_from_compares_every_field_not_only_the_saved_ones():
    """``to_dict`` leaves out preset values, so a comparison over its keys missed an overridden field."""
    from plm.lit.init import check_compatible

    plain = config_for("tiny")
    check_compatible(plain, config_for("tiny"), "src")
    with pytest.raises(CheckpointError, match=r"src: .*activation: checkpoint 'gelu' vs run 'geglu'"):
        check_compatible(plain, ModelConfig.from_dict({**plain.to_dict(), "activation": "geglu"}), "src")


@pytest.mark.parametrize("flavour", ["esm2", "progen2", "xtrimopglm"])
def test_a_random_head_at_the_switch_resets_what_the_fields_say(flavour):
    """The CLM→MLM switch with head_init='random' re-draws the transform when there is one and an untied
    decoder; a tied decoder is the embedding and stays."""
    from types import SimpleNamespace

    from plm.callbacks.transfer import CLMToMLMTransfer

    torch.manual_seed(0)
    model = Transformer(config_for("tiny", flavour=flavour))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = SimpleNamespace(
        model=model, objective="clm", tokens_seen=0, config=model.config, log_dict=lambda *a, **k: None
    )
    trainer = SimpleNamespace(
        global_step=5, max_steps=10, loggers=[], strategy=SimpleNamespace(setup_optimizers=lambda t: None)
    )
    CLMToMLMTransfer(head_init="random").switch(trainer, module)
    assert module.objective == "mlm"
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = model.head
    assert ("head.dense.weight" in changed) == head.transform
    assert ("head.weight" in changed) == (not head.tied)
    assert not any(k.startswith(("blocks", "layers", "embed")) for k in changed)
