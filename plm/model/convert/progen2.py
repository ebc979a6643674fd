"""ProGen2 (official checkpoints, model_type ``progen``) and Hugging Face GPT-J ⇄ plm progen2.

* ``qkv_proj`` is packed for ``mp_num = 8`` model-parallel shards: its output features read as
  (mp_num, [q | v | k], local_dim) with local_dim = h / mp_num, each local block holding n_head / mp_num
  whole heads (note the q, v, k order).
* GPT-J rotary is *interleaved* (channel pairs (2i, 2i+1) share frequency i) on the first rotary_dim
  channels of a head; plm uses rotate-half (pairs (i, i + r/2)). Permuting the q and k rows of every head
  by [0, 2, …, r-2, 1, 3, …, r-1] maps one onto the other exactly: q·k is unchanged.
* ProGen2's 30 tokens map onto plm's 33 (:data:`PROGEN2_TO_PLM`): ``1`` → ``<cls>``, ``2`` → ``<eos>``,
  ``<|pad|>`` → ``<pad>``, letters → letters. ``<|bos|>``/``<|eos|>`` are never used by ProGen2 and are
  dropped; plm ids with no source get a zero embedding and a bias of :data:`UNMAPPED_LOGIT_BIAS`, so they
  are never sampled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from plm.model.config import ModelConfig
from plm.model.convert.core import (
    Converted,
    Report,
    Rule,
    _apply,
    _build,
    _expand,
    _layout_hint,
    _renames,
    to_source,
)
from plm.model.convert.files import _load_safetensors, _read_json, read_hf_weights, torch_load_safe
from plm.model.io import CheckpointError
from plm.model.transformer import Transformer
from plm.tokenizer import EOS, PAD, TOKENS, VOCAB_SIZE

#: Model-parallel shards ProGen2's fused qkv_proj was packed for (official checkpoints: 8).
MP_NUM = 8
#: Output bias of plm tokens that have no ProGen2 source: exp(-1e4) is 0 in every float type.
UNMAPPED_LOGIT_BIAS = -1e4
#: ProGen2's tokenizer.json vocabulary in id order (salesforce/progen tokenizer.json).
PROGEN2_VOCAB: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "1", "2", *"ABCDEFGHIKLMNOPQRSTUVWXYZ")
#: ProGen2 token → plm token. Terminals: ``1`` (N-terminus) → <cls>, ``2`` (C-terminus) → <eos>.
PROGEN2_TO_PLM: dict[str, str] = {
    "<|pad|>": "<pad>",
    "1": "<cls>",
    "2": "<eos>",
    **{a: a for a in "ABCDEFGHIKLMNOPQRSTUVWXYZ"},
}

VocabChoice = Literal["auto", "progen2", "plm"]


@dataclass(frozen=True)
class VocabMap:
    """Source token ids → plm ids for the rows of an embedding or output layer."""

    pairs: tuple[tuple[int, int], ...]  # (source id, plm id)
    name: str

    @classmethod
    def identity(cls) -> VocabMap:
        return cls(tuple((i, i) for i in range(VOCAB_SIZE)), "plm")

    @classmethod
    def progen2(cls) -> VocabMap:
        return cls(
            tuple((PROGEN2_VOCAB.index(s), TOKENS.index(d)) for s, d in PROGEN2_TO_PLM.items()), "progen2"
        )

    def _index(self) -> tuple[Tensor, Tensor]:
        src, dst = zip(*self.pairs)
        return torch.tensor(src), torch.tensor(dst)

    def rows(self, w: Tensor) -> Tensor:
        src, dst = self._index()
        out = w.new_zeros(VOCAB_SIZE, w.shape[1])
        out[dst] = w[src]
        return out

    def bias(self, b: Tensor) -> Tensor:
        src, dst = self._index()
        out = b.new_full((VOCAB_SIZE,), UNMAPPED_LOGIT_BIAS)
        out[dst] = b[src]
        return out

    def describe(self) -> str:
        if self.name == "plm":
            return "token ids unchanged (plm / ESM-2 alphabet)"
        mapped = {PROGEN2_VOCAB[s]: TOKENS[d] for s, d in self.pairs}
        dropped = [t for t in PROGEN2_VOCAB if t not in mapped]
        unmapped = [t for i, t in enumerate(TOKENS) if i not in {d for _, d in self.pairs}]
        return (
            f"ProGen2 vocabulary mapped: '1'→<cls>, '2'→<eos>, <|pad|>→<pad>, 25 letters→same letters; "
            f"dropped {dropped}; plm tokens without a source {unmapped} get zero rows and bias "
            f"{UNMAPPED_LOGIT_BIAS:g}"
        )


GPTJ_IGNORED = {r"\.attn\.(bias|masked_bias)$": "causal-mask buffers"}


def rotary_permutation(head_dim: int, rotary_dim: int) -> Tensor:
    """Index list p with plm channel c = GPT-J channel p[c] (interleaved → rotate-half), per head."""
    rot = list(range(0, rotary_dim, 2)) + list(range(1, rotary_dim, 2))
    return torch.tensor(rot + list(range(rotary_dim, head_dim)))


def _permute_heads(w: Tensor, n_head: int, perm: Tensor) -> Tensor:
    """Reorder the rows of a (n_head·head_dim, h) projection inside every head."""
    return w.view(n_head, -1, w.shape[-1])[:, perm].reshape(w.shape).contiguous()


def unpack_progen2_qkv(w: Tensor, n_head: int, mp_num: int = MP_NUM) -> tuple[Tensor, Tensor, Tensor]:
    """ProGen2 ``qkv_proj.weight`` (3h, h) → separate q, k, v (h, h), head-major, GPT-J rotary layout."""
    three_h, h = w.shape
    if three_h != 3 * h or n_head % mp_num or h % mp_num:
        raise ValueError(f"qkv_proj {tuple(w.shape)} cannot be unpacked for n_head={n_head}, mp_num={mp_num}")
    blocks = w.view(mp_num, 3, h // mp_num, h)  # (mp, [q, v, k], local_dim, h)
    q, v, k = (blocks[:, j].reshape(h, h) for j in range(3))
    return q, k, v


def pack_progen2_qkv(q: Tensor, k: Tensor, v: Tensor, mp_num: int = MP_NUM) -> Tensor:
    """Inverse of :func:`unpack_progen2_qkv`: what an official ProGen2 checkpoint stores."""
    h = q.shape[0]
    parts = [t.reshape(mp_num, h // mp_num, -1) for t in (q, v, k)]  # each (mp, local_dim, h)
    return torch.stack(parts, dim=1).reshape(3 * h, -1).contiguous()  # (mp, 3, local_dim, h) → (3h, h)


def _gptj_rules(cfg: ModelConfig, fused_progen2: bool, vocab_map: VocabMap) -> tuple[list[Rule], list[Rule]]:
    perm = rotary_permutation(cfg.head_dim, cfg.rotary)
    inv = torch.argsort(perm)
    nh = cfg.n_head

    def qkv_in(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.cat((_permute_heads(q, nh, perm), _permute_heads(k, nh, perm), v), dim=0)

    def qkv_out(w: Tensor) -> tuple[Tensor, ...]:
        q, k, v = w.chunk(3, dim=0)
        return _permute_heads(q, nh, inv), _permute_heads(k, nh, inv), v.contiguous()

    layer = _renames(
        {
            "blocks.{i}.attn_norm.": "transformer.h.{i}.ln_1.",
            "blocks.{i}.attn.out.weight": "transformer.h.{i}.attn.out_proj.weight",
            "blocks.{i}.mlp.fc_in.": "transformer.h.{i}.mlp.fc_in.",
            "blocks.{i}.mlp.fc_out.": "transformer.h.{i}.mlp.fc_out.",
        }
    )
    if fused_progen2:
        layer.append(
            Rule(
                "blocks.{i}.attn.qkv.weight",
                ("transformer.h.{i}.attn.qkv_proj.weight",),
                lambda w: qkv_in(*unpack_progen2_qkv(w, nh)),
                lambda w: (pack_progen2_qkv(*qkv_out(w)),),
            )
        )
    else:
        layer.append(
            Rule(
                "blocks.{i}.attn.qkv.weight",
                tuple(f"transformer.h.{{i}}.attn.{x}_proj.weight" for x in "qkv"),
                qkv_in,
                qkv_out,
            )
        )
    glob = _renames({"final_norm.": "transformer.ln_f."}) + [
        Rule("embed.weight", ("transformer.wte.weight",), vocab_map.rows, None),
        Rule("head.weight", ("lm_head.weight",), vocab_map.rows, None),
        Rule("head.bias", ("lm_head.bias",), vocab_map.bias, None),
    ]
    return glob, layer


def _read_gptj_source(path: Path) -> tuple[dict[str, Any], dict[str, Tensor], Path]:
    """A ProGen2 / GPT-J directory (config.json + weights) or a weights file with config.json beside it."""
    if path.is_dir():
        return _read_json(path / "config.json"), read_hf_weights(path), path
    conf = _read_json(path.parent / "config.json")
    state = _load_safetensors(path) if path.suffix == ".safetensors" else torch_load_safe(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return conf, state, path


def load_progen2(path: str | os.PathLike, vocab: VocabChoice = "auto", progress: bool = True) -> Converted:
    """Official ProGen2 (fused ``qkv_proj``, model_type ``progen``) or HF GPT-J → plm progen2 model.

    ``vocab='auto'`` takes the ProGen2 token mapping when the embedding has fewer rows than plm's 33
    (ProGen2: 30, padded to 32), and plm ids unchanged when it has exactly 33 (a plm GPT-J export).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    conf, state, source = _read_gptj_source(path)
    report = Report(str(source), "", "progen2")
    fused = any(k.endswith(".attn.qkv_proj.weight") for k in state)
    report.source_format = "ProGen2 (mp_num=8 fused qkv)" if fused else "GPT-J (Hugging Face)"
    problems = []
    if conf.get("model_type") not in ("progen", "gptj"):
        problems.append(f"model_type={conf.get('model_type')!r} (expected 'progen' or 'gptj')")
    if conf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(
            f"activation_function={conf.get('activation_function')!r} (plm progen2 uses tanh-GELU)"
        )
    if "transformer.wte.weight" not in state:
        problems.append(f"missing tensor transformer.wte.weight. {_layout_hint(state)}")
    if problems:
        raise CheckpointError(f"{source}: not a ProGen2/GPT-J causal LM: " + "; ".join(problems))
    rows = state["transformer.wte.weight"].shape[0]
    if vocab == "auto":
        vocab = "plm" if rows == VOCAB_SIZE else "progen2"
    if vocab == "progen2" and rows < len(PROGEN2_VOCAB):
        raise CheckpointError(
            f"{source}: transformer.wte.weight has {rows} rows; the ProGen2 vocabulary needs "
            f"{len(PROGEN2_VOCAB)}"
        )
    vocab_map = VocabMap.progen2() if vocab == "progen2" else VocabMap.identity()
    n_embd, n_head = conf.get("n_embd"), conf.get("n_head")
    head_dim = n_embd // n_head
    cfg = ModelConfig(
        n_layer=conf["n_layer"],
        n_embd=n_embd,
        n_head=n_head,
        flavour="progen2",
        ffn_hidden=conf.get("n_inner") or 4 * n_embd,
        rotary_dim=conf.get("rotary_dim") or head_dim,
        vocab_size=VOCAB_SIZE,
        max_seq_len=conf.get("n_positions", 2048),
        layer_norm_eps=conf.get("layer_norm_epsilon", 1e-5),
        name=path.stem if path.is_file() else path.name,
    )
    if fused and n_head % MP_NUM:
        raise CheckpointError(
            f"{source}: n_head={n_head} is not a multiple of mp_num={MP_NUM}; "
            "the fused qkv_proj cannot be unpacked"
        )
    glob, layer = _gptj_rules(cfg, fused, vocab_map)
    rules = glob + _expand(layer, cfg.n_layer, True)
    model = _build(cfg, _apply(state, rules, GPTJ_IGNORED, report, progress), report)
    report.notes.append(vocab_map.describe())
    report.notes.append(f"rotary: interleaved (GPT-J) → rotate-half on {cfg.rotary} of {head_dim} head dims")
    return Converted(model, "clm", report)


def gptj_hf_state(model: Transformer, progress: bool = True) -> dict[str, Tensor]:
    """plm progen2 state → ``GPTJForCausalLM`` state with plm's 33 token ids."""
    glob, layer = _gptj_rules(model.config, False, VocabMap.identity())
    return to_source(
        model, glob + _expand(layer, model.config.n_layer, True), "mapping to HF GPT-J", progress
    )


def gptj_hf_config(cfg: ModelConfig):
    from transformers import GPTJConfig

    return GPTJConfig(
        vocab_size=VOCAB_SIZE,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        rotary_dim=cfg.rotary,
        n_inner=cfg.ffn,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=cfg.layer_norm_eps,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
        architectures=["GPTJForCausalLM"],
    )
