"""Hugging Face ``EsmForMaskedLM`` ⇄ plm esm2: the same layout as fair-esm under HF names. A plm CLM
exports as the same class with ``is_decoder=true`` (HF has no ``EsmForCausalLM``); contact-regression
weights travel as ``esm.contact_head.regression.*``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from plm.model.config import ModelConfig
from plm.model.convert.core import (
    Converted,
    Report,
    Rule,
    _apply,
    _build,
    _cat,
    _check_tied,
    _contact,
    _expand,
    _renames,
    _split3,
    to_source,
)
from plm.model.convert.esm_fair import ESM2_MAX_POSITIONS
from plm.model.convert.files import _read_json, read_hf_weights
from plm.model.io import CheckpointError
from plm.model.transformer import ROTARY_BASE, Transformer
from plm.tokenizer import EOS, MASK, PAD, TOKENS, VOCAB_SIZE

HF_ESM_GLOBAL = _renames(
    {
        "embed.weight": "esm.embeddings.word_embeddings.weight",
        "final_norm.": "esm.encoder.emb_layer_norm_after.",
        "head.dense.": "lm_head.dense.",
        "head.norm.": "lm_head.layer_norm.",
        "head.bias": "lm_head.bias",
    }
)
_HF_L = "esm.encoder.layer.{i}."
HF_ESM_LAYER = _renames(
    {
        "blocks.{i}.attn_norm.": _HF_L + "attention.LayerNorm.",
        "blocks.{i}.attn.out.": _HF_L + "attention.output.dense.",
        "blocks.{i}.mlp_norm.": _HF_L + "LayerNorm.",
        "blocks.{i}.mlp.fc_in.": _HF_L + "intermediate.dense.",
        "blocks.{i}.mlp.fc_out.": _HF_L + "output.dense.",
    }
) + [
    Rule(
        f"blocks.{{i}}.attn.qkv.{p}",
        tuple(f"{_HF_L}attention.self.{x}.{p}" for x in ("query", "key", "value")),
        _cat,
        _split3,
    )
    for p in ("weight", "bias")
]
HF_ESM_IGNORED = {
    r"rotary_embeddings\.inv_freq$": "rotary frequency buffers (recomputed)",
    r"^esm\.embeddings\.position_ids$": "position id buffer",
    r"^lm_head\.decoder\.weight$": "LM-head weight (tied to word_embeddings; checked equal)",
    r"^esm\.contact_head\.regression\.(weight|bias)$": "contact regression (kept separately)",
}


def _hf_esm_config_problems(conf: dict[str, Any]) -> list[str]:
    problems = []
    if conf.get("model_type") != "esm":
        problems.append(f"model_type={conf.get('model_type')!r} (expected 'esm')")
    if conf.get("position_embedding_type", "absolute") != "rotary":
        problems.append(
            f"position_embedding_type={conf.get('position_embedding_type')!r} (ESM-2 uses 'rotary')"
        )
    if conf.get("emb_layer_norm_before"):
        problems.append("emb_layer_norm_before=true (an ESM-1b layout)")
    if conf.get("is_folding_model"):
        problems.append("is_folding_model=true (ESMFold, not a language model)")
    if conf.get("vocab_size") != VOCAB_SIZE or (
        conf.get("vocab_list") and list(conf["vocab_list"]) != list(TOKENS)
    ):
        problems.append(f"vocabulary of {conf.get('vocab_size')} tokens differs from the ESM-2 alphabet")
    return problems


def load_hf_esm(directory: str | os.PathLike, progress: bool = True) -> Converted:
    """Hugging Face ``EsmForMaskedLM`` directory → plm esm2 model (+ contact regression if trained)."""
    directory = Path(directory)
    conf = _read_json(directory / "config.json")
    problems = _hf_esm_config_problems(conf)
    if problems:
        raise CheckpointError(f"{directory / 'config.json'}: not an ESM-2 masked LM: " + "; ".join(problems))
    state = read_hf_weights(directory)
    report = Report(str(directory), "Hugging Face EsmForMaskedLM", "hf-esm")
    cfg = ModelConfig(
        n_layer=conf["num_hidden_layers"],
        n_embd=conf["hidden_size"],
        n_head=conf["num_attention_heads"],
        flavour="esm2",
        ffn_hidden=conf["intermediate_size"],
        vocab_size=VOCAB_SIZE,
        max_seq_len=conf.get("max_position_embeddings", ESM2_MAX_POSITIONS),
        token_dropout=bool(conf.get("token_dropout", False)),
        layer_norm_eps=conf.get("layer_norm_eps", 1e-12),
        name=directory.name,
    )
    _check_tied(state, "lm_head.decoder.weight", "esm.embeddings.word_embeddings.weight", str(directory))
    rules = HF_ESM_GLOBAL + _expand(HF_ESM_LAYER, cfg.n_layer, True)
    model = _build(cfg, _apply(state, rules, HF_ESM_IGNORED, report, progress), report)
    w, b = state.get("esm.contact_head.regression.weight"), state.get("esm.contact_head.regression.bias")
    # plm writes zeros when it has no regression to export: all-zero means "never trained", not a model
    contact = (
        _contact(w, b, cfg, str(directory))
        if w is not None and b is not None and (w.any() or b.any())
        else None
    )
    objective = "clm" if conf.get("is_decoder") else "mlm"
    report.notes.append(
        f"token_dropout={cfg.token_dropout}; contact regression {'kept' if contact else 'not present'}"
        + ("; is_decoder=true: causal attention, imported as a CLM" if objective == "clm" else "")
    )
    return Converted(model, objective, report, contact)


def esm_hf_state(
    model: Transformer, contact: dict[str, Tensor] | None, progress: bool = True
) -> dict[str, Tensor]:
    """plm esm2 state → ``EsmForMaskedLM`` state (decoder weight omitted: HF ties it on load)."""
    cfg = model.config
    rules = HF_ESM_GLOBAL + _expand(HF_ESM_LAYER, cfg.n_layer, True)
    state = to_source(model, rules, "mapping to HF ESM", progress)
    state["esm.rotary_embeddings.inv_freq"] = model.rotary.inv_freq.detach().float().clone()
    n = cfg.n_layer * cfg.n_head
    state["esm.contact_head.regression.weight"] = contact["weight"] if contact else torch.zeros(1, n)
    state["esm.contact_head.regression.bias"] = contact["bias"] if contact else torch.zeros(1)
    return state


def esm_hf_config(cfg: ModelConfig, causal: bool = False):
    """``is_decoder`` is what makes HF ESM attention causal; a CLM exported without it would be scored
    bidirectionally by every HF user without any error."""
    from transformers import EsmConfig

    return EsmConfig(
        is_decoder=causal,
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.ffn,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=cfg.max_seq_len,
        position_embedding_type="rotary",
        rope_theta=ROTARY_BASE,
        layer_norm_eps=cfg.layer_norm_eps,
        emb_layer_norm_before=False,
        token_dropout=cfg.token_dropout,
        pad_token_id=PAD,
        mask_token_id=MASK,
        eos_token_id=EOS,
        vocab_list=list(TOKENS),
        tie_word_embeddings=True,
        architectures=["EsmForMaskedLM"],
    )
