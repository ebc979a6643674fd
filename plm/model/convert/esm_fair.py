"""fair-esm ESM-2 ``.pt`` → plm esm2: separate q/k/v with biases are concatenated into plm's fused ``qkv``
(rows [q; k; v], head-major); rotary is rotate-half in both, so no permutation. The LM head is tied to
the embedding (checked, not assumed)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

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
    _layout_hint,
    _renames,
    _split3,
)
from plm.model.convert.files import torch_load_safe
from plm.model.io import CheckpointError
from plm.tokenizer import VOCAB_SIZE

#: ESM-2 positions: 1024 residues + <cls> + <eos> (fair-esm max_positions, HF max_position_embeddings).
ESM2_MAX_POSITIONS = 1026
#: Attention heads of the released ESM-2 models by (layers, hidden): the weights do not reveal the head
#: count, so a .pt whose stored cfg is absent still converts (esm/pretrained.py model list).
ESM2_RELEASED_HEADS: dict[tuple[int, int], int] = {
    (6, 320): 20,
    (12, 480): 20,
    (30, 640): 20,
    (33, 1280): 20,
    (36, 2560): 40,
    (48, 5120): 40,
}

ESM_FAIR_GLOBAL = _renames(
    {
        "embed.weight": "embed_tokens.weight",
        "final_norm.": "emb_layer_norm_after.",
        "head.dense.": "lm_head.dense.",
        "head.norm.": "lm_head.layer_norm.",
        "head.bias": "lm_head.bias",
    }
)
ESM_FAIR_LAYER = _renames(
    {
        "blocks.{i}.attn_norm.": "layers.{i}.self_attn_layer_norm.",
        "blocks.{i}.attn.out.": "layers.{i}.self_attn.out_proj.",
        "blocks.{i}.mlp_norm.": "layers.{i}.final_layer_norm.",
        "blocks.{i}.mlp.fc_in.": "layers.{i}.fc1.",
        "blocks.{i}.mlp.fc_out.": "layers.{i}.fc2.",
    }
) + [
    Rule(
        f"blocks.{{i}}.attn.qkv.{p}",
        tuple(f"layers.{{i}}.self_attn.{x}_proj.{p}" for x in "qkv"),
        _cat,
        _split3,
    )
    for p in ("weight", "bias")
]
#: Source keys the fair-esm table deliberately does not map (with the reason shown in the summary).
ESM_FAIR_IGNORED = {
    r"\.rot_emb\.inv_freq$": "rotary frequency buffers (recomputed)",
    r"^lm_head\.weight$": "LM-head weight (tied to embed_tokens; checked equal)",
    r"^contact_head\.regression\.(weight|bias)$": "contact regression (kept separately)",
}


def _field(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _n_layers(state: dict[str, Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


_FAIR_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")


def _fair_contact_regression(
    path: Path, state: dict[str, Tensor], cfg: ModelConfig, explicit: str | os.PathLike | None, report: Report
) -> dict[str, Tensor] | None:
    """fair-esm keeps the regression in ``<name>-contact-regression.pt`` beside the model (or inside it)."""
    keys = ("contact_head.regression.weight", "contact_head.regression.bias")
    reg_path = Path(explicit) if explicit else Path(str(path.with_suffix("")) + "-contact-regression.pt")
    source = path
    if explicit or reg_path.is_file():
        reg = torch_load_safe(reg_path)
        reg = reg.get("model", reg) if isinstance(reg, dict) else {}
        state, source = {_FAIR_PREFIX.sub("", k): v for k, v in reg.items()}, reg_path
        if not all(k in state for k in keys):
            raise CheckpointError(f"{reg_path}: missing tensors {[k for k in keys if k not in state]}")
        report.notes.append(f"contact regression read from {reg_path}")
    if not all(k in state for k in keys):
        return None
    return _contact(state[keys[0]], state[keys[1]], cfg, str(source))


def load_esm2_pt(
    path: str | os.PathLike,
    contact_regression: str | os.PathLike | None = None,
    n_head: int | None = None,
    progress: bool = True,
) -> Converted:
    """fair-esm ESM-2 ``.pt`` (``{"model": state, "cfg": {"model": Namespace}}``) → plm esm2 model.

    The contact regression is read from ``contact_regression`` or, as fair-esm does, from
    ``<name>-contact-regression.pt`` beside the checkpoint, or from the checkpoint itself.
    """
    path = Path(path)
    data = torch_load_safe(path)
    raw = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(
            f"{path}: not a fair-esm checkpoint (expected a dict with a 'model' state dict)"
        )
    state = {_FAIR_PREFIX.sub("", k): v for k, v in raw.items()}
    source = str(path)
    report = Report(source, "fair-esm ESM-2 .pt", "esm2")
    if any(k.startswith("emb_layer_norm_before") for k in state):
        raise CheckpointError(
            f"{path}: has emb_layer_norm_before (an ESM-1/ESM-1b layout); only ESM-2 is supported"
        )
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: missing tensor embed_tokens.weight. {_layout_hint(state)}")
    cfg_ns = _field(data.get("cfg") or {}, "model") or data.get("args")
    n_layer = _n_layers(state, r"layers\.(\d+)\.")
    embed = state["embed_tokens.weight"]
    heads = n_head or _field(cfg_ns, "encoder_attention_heads")
    if heads is None and (n_layer, embed.shape[1]) in ESM2_RELEASED_HEADS:
        heads = ESM2_RELEASED_HEADS[(n_layer, embed.shape[1])]
        report.notes.append(f"no stored cfg: {heads} heads taken from the released ESM-2 of this shape")
    if heads is None:
        raise CheckpointError(
            f"{path}: no cfg/args with encoder_attention_heads and {n_layer}×{embed.shape[1]} is "
            "not a released ESM-2 shape; pass the head count (--n-head)"
        )
    declared = _field(cfg_ns, "encoder_layers")
    if declared is not None and declared != n_layer:
        raise CheckpointError(
            f"{path}: cfg says {declared} layers but the state dict holds layers 0..{n_layer - 1} "
            "(truncated or edited file?)"
        )
    if embed.shape[0] != VOCAB_SIZE:
        raise CheckpointError(
            f"{path}: embed_tokens.weight has {embed.shape[0]} rows; the ESM-2 alphabet has {VOCAB_SIZE}"
        )
    ffn = state.get("layers.0.fc1.weight", embed).shape[0]
    cfg = ModelConfig(
        n_layer=n_layer,
        n_embd=embed.shape[1],
        n_head=int(heads),
        flavour="esm2",
        ffn_hidden=ffn,
        vocab_size=VOCAB_SIZE,
        max_seq_len=ESM2_MAX_POSITIONS,
        token_dropout=bool(_field(cfg_ns, "token_dropout", True)),
        name=path.stem,
    )
    if _field(cfg_ns, "token_dropout") is None:
        report.notes.append(
            "no stored cfg.token_dropout: token_dropout assumed True, as in every released ESM-2"
        )
    _check_tied(state, "lm_head.weight", "embed_tokens.weight", source)
    rules = ESM_FAIR_GLOBAL + _expand(ESM_FAIR_LAYER, n_layer, True)
    model = _build(cfg, _apply(state, rules, ESM_FAIR_IGNORED, report, progress), report)
    contact = _fair_contact_regression(path, state, cfg, contact_regression, report)
    report.notes.append(
        f"token_dropout={cfg.token_dropout}; contact regression {'kept' if contact else 'not present'}"
    )
    return Converted(model, "mlm", report, contact)
