"""Weights conversion between plm and fair-esm ESM-2, Hugging Face ESM, ProGen2 and Hugging Face GPT-J.

Every format is a key-map table of :class:`Rule` (plm name ⇄ source names, plus the tensor transform in
each direction); one generic routine applies a table with a strict missing/unexpected-key report, so
the format quirks live here and nowhere else (as torchtitan's ``state_dict_adapter.py`` does):

* ESM-2 (fair-esm ``.pt`` and HF ``EsmForMaskedLM``): separate q/k/v with biases are concatenated into
  plm's fused ``qkv`` (rows [q; k; v], head-major); rotary is rotate-half in both, so no permutation.
  The LM head is tied to the embedding (checked, not assumed). Contact-regression weights are kept
  beside the export as ``contact_regression.safetensors`` (``weight`` (1, L·H), ``bias`` (1,)).
* ProGen2 (official checkpoints, model_type ``progen``): ``qkv_proj`` is packed for ``mp_num = 8``
  model-parallel shards. Output features of ``qkv_proj`` read as (mp_num, [q | v | k], local_dim) with
  local_dim = h / mp_num, and each local block holds n_head / mp_num whole heads, so head
  ``s·(n_head/mp_num) + j`` of q is rows ``s·3·local_dim + j·head_dim …`` (note the q, v, k order).
* GPT-J / ProGen2 rotary is *interleaved* (channel pairs (2i, 2i+1) share frequency i) on the first
  rotary_dim channels of a head; plm uses rotate-half (pairs (i, i + r/2)). Permuting the q and k rows
  of every head by [0, 2, …, r-2, 1, 3, …, r-1] maps one onto the other exactly: q·k is unchanged
  because q and k get the same permutation.
* ProGen2 vocabulary (30 tokens) → plm ids (33, identical to ESM-2): see :data:`PROGEN2_TO_PLM`.
  ProGen2 frames proteins as ``1 … 2``: ``1`` → ``<cls>``, ``2`` → ``<eos>``, ``<|pad|>`` → ``<pad>``,
  the 25 letters → the same letters. ``<|bos|>``/``<|eos|>`` are never used by ProGen2's sampling or
  likelihood code and are dropped; plm ids with no ProGen2 source (``<unk> . - <null_1> <mask>``) get a
  zero embedding and an output bias of :data:`UNMAPPED_LOGIT_BIAS`, so they are never sampled.
* A Hugging Face export follows the objective the weights were saved under, not only the flavour: an
  esm2 MLM becomes ``EsmForMaskedLM``; an esm2 CLM (plm's default CLM recipe) the same class with
  ``is_decoder=true``, which makes HF ESM attention causal (HF has no ``EsmForCausalLM``); a progen2 CLM
  becomes ``GPTJForCausalLM``; a progen2 MLM is refused, since GPT-J attention is always causal.

Loading never unpickles code: safetensors, or ``torch.load(weights_only=True)`` with only
``argparse.Namespace`` (fair-esm's stored config) allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from plm.model.config import ModelConfig
from plm.model.io import CheckpointError, load_state_into, load_with_record, save_safetensors, write_export
from plm.model.transformer import ROTARY_BASE, Transformer
from plm.tokenizer import EOS, MASK, PAD, TOKENS, VOCAB_SIZE, hf_tokenizer_files
from plm.utils.atomic import atomic_directory

#: Model-parallel shards ProGen2's fused qkv_proj was packed for (official checkpoints: 8).
MP_NUM = 8
#: File beside a plm export holding ESM-2's contact-regression logistic layer.
CONTACT_REGRESSION_NAME = "contact_regression.safetensors"
#: Output bias of plm tokens that have no ProGen2 source: exp(-1e4) is 0 in every float type.
UNMAPPED_LOGIT_BIAS = -1e4
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
#: ProGen2's tokenizer.json vocabulary in id order (salesforce/progen tokenizer.json).
PROGEN2_VOCAB: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "1", "2", *"ABCDEFGHIKLMNOPQRSTUVWXYZ")
#: ProGen2 token → plm token. Terminals: ``1`` (N-terminus) → <cls>, ``2`` (C-terminus) → <eos>.
PROGEN2_TO_PLM: dict[str, str] = {
    "<|pad|>": "<pad>",
    "1": "<cls>",
    "2": "<eos>",
    **{a: a for a in "ABCDEFGHIKLMNOPQRSTUVWXYZ"},
}

SourceFormat = Literal["esm2", "hf-esm", "progen2", "plm"]
TargetFormat = Literal["plm", "hf"]
VocabChoice = Literal["auto", "progen2", "plm"]


# ---- tables ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One plm tensor ⇄ one or more source tensors. ``{i}`` in names stands for the layer index."""

    plm: str
    src: tuple[str, ...]
    to_plm: Callable[..., Tensor] | None = None
    """Source tensors → plm tensor; None = the single source tensor unchanged."""
    from_plm: Callable[[Tensor], tuple[Tensor, ...]] | None = None
    """plm tensor → source tensors (export); None = unchanged."""


def _cat(*ts: Tensor) -> Tensor:
    return torch.cat(ts, dim=0)


def _split3(t: Tensor) -> tuple[Tensor, ...]:
    return tuple(x.contiguous() for x in t.chunk(3, dim=0))


def _renames(pairs: dict[str, str]) -> list[Rule]:
    """plm name → source name, for both ``.weight`` and ``.bias`` when the key ends with '.'."""
    rules = []
    for ours, theirs in pairs.items():
        if ours.endswith("."):
            rules += [Rule(ours + p, (theirs + p,)) for p in ("weight", "bias")]
        else:
            rules.append(Rule(ours, (theirs,)))
    return rules


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


# ---- report ---------------------------------------------------------------------------------------
@dataclass
class Report:
    """What a conversion did, for the CLI summary and for tests."""

    source: str
    source_format: str
    flag: str = ""
    """The ``--from`` value of this format (so error hints never suggest the format already chosen)."""
    mapped: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n_src = sum(len(s) for _, s in self.mapped)
        lines = [
            f"read {self.source} ({self.source_format}): mapped {len(self.mapped)} plm tensors from {n_src} source tensors"
        ]
        lines += [f"  not mapped: {n} × {why}" for why, n in self.ignored.items()]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Converted:
    """A plm model read from some format, with what the plm export keeps beside it."""

    model: Transformer
    objective: str
    report: Report
    contact_regression: dict[str, Tensor] | None = None


def _expand(rules: list[Rule], n_layer: int, layered: bool) -> list[Rule]:
    if not layered:
        return rules
    return [
        Rule(r.plm.format(i=i), tuple(s.format(i=i) for s in r.src), r.to_plm, r.from_plm)
        for i in range(n_layer)
        for r in rules
    ]


def _apply(
    state: dict[str, Tensor], rules: list[Rule], ignored: dict[str, str], report: Report, progress: bool
) -> dict[str, Tensor]:
    """Source state → plm state with one error listing every missing and unexpected source tensor."""
    used = {s for r in rules for s in r.src}
    missing = [s for r in rules for s in r.src if s not in state]
    unexpected = []
    for key in state:
        why = next((w for pat, w in ignored.items() if re.search(pat, key)), None)
        if why is not None:
            report.ignored[why] = report.ignored.get(why, 0) + 1
        elif key not in used:
            unexpected.append(key)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        hint = _layout_hint(state)
        raise CheckpointError(
            f"{report.source}: does not match the {report.source_format} layout: "
            + "; ".join(parts)
            + ("" if report.flag and f"--from {report.flag})" in hint else f". {hint}")
        )
    out = {}
    for r in tqdm(rules, desc=f"mapping {report.source_format} tensors", unit="tensor", disable=not progress):
        tensors = [state[s] for s in r.src]
        try:
            out[r.plm] = r.to_plm(*tensors) if r.to_plm else tensors[0]
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{report.source}: tensor {', '.join(r.src)} "
                f"{[tuple(t.shape) for t in tensors]} cannot become {r.plm}: {err}"
            ) from err
        report.mapped.append((r.plm, r.src))
    return out


def _layout_hint(state: dict[str, Tensor]) -> str:
    """Name the layout a state dict looks like, so a wrong --from gets a useful message."""
    keys = list(state)
    looks = [
        ("an official ProGen2 checkpoint (use --from progen2)", lambda k: ".attn.qkv_proj." in k),
        ("a GPT-J checkpoint (use --from progen2)", lambda k: k.startswith("transformer.h.")),
        ("a Hugging Face ESM checkpoint (use --from hf-esm)", lambda k: k.startswith("esm.encoder.")),
        ("a fair-esm ESM checkpoint (use --from esm2)", lambda k: ".self_attn.q_proj." in k),
        ("a plm export (use --from plm)", lambda k: k.startswith("blocks.")),
    ]
    for what, test in looks:
        if any(test(k) for k in keys):
            return f"The file looks like {what}."
    return f"First keys: {keys[:4]}."


def _build(cfg: ModelConfig, state: dict[str, Tensor], report: Report) -> Transformer:
    """Instantiate plm's model and load ``state``; shape errors name the source tensors too."""
    model = Transformer(cfg)
    expected = model.state_dict()
    origin = {dst: src for dst, src in report.mapped}
    bad = [
        f"{k} ← {', '.join(origin.get(k, ('?',)))}: file {tuple(v.shape)} vs expected {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if bad:
        raise CheckpointError(
            f"{report.source}: shape mismatches (config {cfg.n_layer}×{cfg.n_embd}×{cfg.n_head}): "
            + "; ".join(bad[:8])
        )
    load_state_into(model, state, report.source)
    return model.eval()


# ---- reading files --------------------------------------------------------------------------------
def torch_load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)``; only argparse.Namespace (fair-esm's config) is allowed in."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except Exception as err:
        text = str(err)
        kind = (
            "refused unsafe pickle content"
            if "Unsupported global" in text or "weights_only" in text
            else "unreadable, truncated or corrupt"
        )
        fix = (
            ". Only tensors, containers and argparse.Namespace are read; re-save the state dict alone "
            "(torch.save({'model': sd}, f)) in an environment you trust"
            if kind.startswith("refused")
            else ""
        )
        raise CheckpointError(
            f"{path}: {kind} ({type(err).__name__}: {text.strip().splitlines()[0][:200]}){fix}"
        ) from err


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({err})") from err


_LEGACY_NORM = re.compile(r"\.(gamma|beta)$")


def _hf_key(key: str) -> str:
    """transformers writes some LayerNorm tensors as ``.gamma``/``.beta`` and reads them as weight/bias."""
    return _LEGACY_NORM.sub(lambda m: ".weight" if m.group(1) == "gamma" else ".bias", key)


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Weights of a Hugging Face model directory (legacy gamma/beta names normalised to weight/bias)."""
    return {_hf_key(k): v for k, v in _read_hf_files(directory).items()}


def _read_hf_files(directory: Path) -> dict[str, Tensor]:
    """Single or sharded safetensors, or pytorch_model.bin."""
    single, index, binary = (
        directory / "model.safetensors",
        directory / "model.safetensors.index.json",
        directory / "pytorch_model.bin",
    )
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in tqdm(shards, desc="reading shards", unit="file"):
            state.update(_load_safetensors(directory / shard))
        return state
    if binary.is_file():
        state = torch_load_safe(binary)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{binary}: not a state dict of tensors")
        return state
    raise CheckpointError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a Hugging Face model directory holds config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _field(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _check_tied(state: dict[str, Tensor], head: str, embed: str, source: str) -> None:
    if head in state and embed in state and not torch.equal(state[head], state[embed]):
        raise CheckpointError(
            f"{source}: {head} differs from {embed}; ESM-2's LM head is tied to the embedding "
            "and plm's esm2 flavour cannot hold an untied one"
        )


def _contact(weight: Tensor, bias: Tensor, cfg: ModelConfig, source: str) -> dict[str, Tensor]:
    want = (1, cfg.n_layer * cfg.n_head)
    if tuple(weight.shape) != want or tuple(bias.shape) != (1,):
        raise CheckpointError(
            f"{source}: contact regression weight {tuple(weight.shape)} / bias {tuple(bias.shape)} "
            f"does not fit {cfg.n_layer} layers × {cfg.n_head} heads (expected {want} and (1,))"
        )
    return {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}


def _n_layers(state: dict[str, Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


# ---- ESM-2 ----------------------------------------------------------------------------------------
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
    ours = model.state_dict()
    state: dict[str, Tensor] = {}
    for r in tqdm(
        HF_ESM_GLOBAL + _expand(HF_ESM_LAYER, cfg.n_layer, True),
        desc="mapping to HF ESM",
        unit="tensor",
        disable=not progress,
    ):
        outs = r.from_plm(ours[r.plm]) if r.from_plm else (ours[r.plm],)
        state.update({s: t.detach().float().contiguous() for s, t in zip(r.src, outs)})
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


# ---- ProGen2 / GPT-J ------------------------------------------------------------------------------
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
    ours = model.state_dict()
    state: dict[str, Tensor] = {}
    for r in tqdm(
        glob + _expand(layer, model.config.n_layer, True),
        desc="mapping to HF GPT-J",
        unit="tensor",
        disable=not progress,
    ):
        outs = r.from_plm(ours[r.plm]) if r.from_plm else (ours[r.plm],)
        state.update({s: t.detach().float().contiguous() for s, t in zip(r.src, outs)})
    return state


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


# ---- plm exports ----------------------------------------------------------------------------------
def load_plm(path: str | os.PathLike) -> Converted:
    """A plm export directory or Lightning checkpoint, with its contact regression when kept."""
    path = Path(path)
    model, record = load_with_record(path)
    report = Report(str(path), "plm", "plm")
    report.mapped = [(k, (k,)) for k in model.state_dict()]
    guessed = "" if record.objective_recorded else " (not recorded in the file: inferred from the flavour)"
    report.notes.append(f"objective {record.objective}{guessed}")
    contact = None
    regression = path / CONTACT_REGRESSION_NAME
    if path.is_dir() and regression.is_file():
        reg = _load_safetensors(regression)
        if set(reg) != {"weight", "bias"}:
            raise CheckpointError(f"{regression}: expected tensors weight and bias, got {sorted(reg)}")
        contact = _contact(reg["weight"], reg["bias"], model.config, str(regression))
    return Converted(model, record.objective, report, contact)


def save_plm(conv: Converted, output: str | os.PathLike) -> Path:
    """Write a plm export (what ``plm.load`` and fine-tuning read) plus the contact regression, all in
    one atomic directory."""
    with atomic_directory(output) as tmp:
        write_export(
            tmp,
            conv.model,
            objective=conv.objective,
            converted_from={"path": conv.report.source, "format": conv.report.source_format},
            contact_regression=CONTACT_REGRESSION_NAME if conv.contact_regression else None,
        )
        if conv.contact_regression:
            save_safetensors(
                conv.contact_regression,
                tmp / CONTACT_REGRESSION_NAME,
                {"format": "pt", "layout": "weight (1, n_layer*n_head), bias (1,)"},
            )
    return Path(output)


def hf_target(conv: Converted) -> tuple[str, bool]:
    """The Hugging Face class a model exports to and whether its attention is causal, or a
    ``CheckpointError`` saying why there is none and what to do instead."""
    cfg, source = conv.model.config, conv.report.source
    if cfg.flavour == "progen2":
        if conv.objective == "mlm":
            raise CheckpointError(
                f"{source}: an MLM with the progen2 flavour has no Hugging Face equivalent: GPT-J attention "
                "is always causal, so GPTJForCausalLM would run it as a CLM. Use the plm export instead "
                "(plm.load, plm evaluate), or train the MLM with the esm2 flavour to export EsmForMaskedLM"
            )
        return "GPTJForCausalLM", True
    if cfg.rotary != cfg.head_dim:
        raise CheckpointError(
            f"{source}: rotary_dim={cfg.rotary} < head_dim={cfg.head_dim}; HF ESM rotates whole heads, so "
            "this model has no EsmForMaskedLM equivalent; use the plm export instead"
        )
    return "EsmForMaskedLM", conv.objective == "clm"


def save_hf(conv: Converted, output: str | os.PathLike, progress: bool = True) -> tuple[Path, str]:
    """plm model → Hugging Face directory, following the objective (see the module docstring).

    Weights, config.json and plm's tokenizer (``model_max_length`` = the model's ``max_seq_len``);
    ``from_pretrained`` needs no custom code. Written in a temporary sibling and swapped in, so no stale
    shard of an older export survives. Returns the directory and the architecture name.
    """
    arch, causal = hf_target(conv)
    cfg = conv.model.config
    if arch == "GPTJForCausalLM":
        state, hf_cfg = gptj_hf_state(conv.model, progress), gptj_hf_config(cfg)
    else:
        state, hf_cfg = esm_hf_state(conv.model, conv.contact_regression, progress), esm_hf_config(cfg, causal)
    with atomic_directory(output) as tmp:
        save_safetensors(state, tmp / "model.safetensors", {"format": "pt"})
        hf_cfg.save_pretrained(tmp)
        for name, text in hf_tokenizer_files(cfg.max_seq_len).items():
            (tmp / name).write_text(text)
    return Path(output), arch


def convert(
    src: SourceFormat,
    dst: TargetFormat,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    n_head: int | None = None,
    contact_regression: str | os.PathLike | None = None,
    vocab: VocabChoice = "auto",
    progress: bool = True,
) -> tuple[Converted, str]:
    """Read ``input_path`` in format ``src``, write ``output`` as ``dst``; returns the model and a summary."""
    if src == "plm" and dst == "plm":
        raise ValueError("--from plm --to plm would copy the export unchanged; choose --to hf")
    if src == "plm" and dst == "hf" and (Path(input_path) / "finetune.json").is_file():
        from plm.evaluation.kept_hf import export_hf  # a kept fine-tuned model: backbone, adapter and head

        return export_hf(input_path, output, progress)
    if src == "esm2":
        conv = load_esm2_pt(input_path, contact_regression, n_head, progress)
    elif src == "hf-esm":
        conv = load_hf_esm(input_path, progress)
    elif src == "progen2":
        conv = load_progen2(input_path, vocab, progress)
    elif src == "plm":
        conv = load_plm(input_path)
    else:
        raise ValueError(f"unknown source format {src!r}; choose esm2, hf-esm, progen2 or plm")
    cfg = conv.model.config
    n_params = sum(p.numel() for p in conv.model.parameters())
    if dst == "plm":
        written, what = save_plm(conv, output), f"plm export ({conv.objective}; load with plm.load)"
    elif dst == "hf":
        written, arch = save_hf(conv, output, progress)
        what = f"Hugging Face {arch} directory with plm's tokenizer (33 ids, at most {cfg.max_seq_len} tokens)"
        if arch == "EsmForMaskedLM" and conv.objective == "clm":
            what += (
                "; a CLM: is_decoder=true makes its attention causal "
                "(load with AutoModelForMaskedLM: HF has no EsmForCausalLM)"
            )
    else:
        raise ValueError(f"unknown target format {dst!r}; choose plm or hf")
    contact = conv.contact_regression
    lines = [
        conv.report.summary(),
        f"model: {cfg.flavour} {cfg.n_layer} layers × {cfg.n_embd} hidden × {cfg.n_head} heads "
        f"(head {cfg.head_dim}, rotary {cfg.rotary}, ffn {cfg.ffn}), {n_params:,} parameters"
        + (f", token_dropout={cfg.token_dropout}" if cfg.flavour == "esm2" else ""),
        f"wrote {written}: {what}",
    ]
    if cfg.flavour == "esm2":
        where = (
            (CONTACT_REGRESSION_NAME if dst == "plm" else "esm.contact_head.regression.*")
            if contact
            else None
        )
        lines.append(
            f"contact regression: {'kept in ' + where if where else 'none in the source'}"
            + (" (HF gets zeros: contacts need a fitted regression)" if not contact and dst == "hf" else "")
        )
    return conv, "\n".join(lines)


__all__ = [
    "CONTACT_REGRESSION_NAME",
    "MP_NUM",
    "PROGEN2_TO_PLM",
    "PROGEN2_VOCAB",
    "UNMAPPED_LOGIT_BIAS",
    "Converted",
    "Report",
    "Rule",
    "VocabMap",
    "convert",
    "load_esm2_pt",
    "load_hf_esm",
    "load_plm",
    "load_progen2",
    "pack_progen2_qkv",
    "rotary_permutation",
    "save_hf",
    "save_plm",
    "unpack_progen2_qkv",
]
