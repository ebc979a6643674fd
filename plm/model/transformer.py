"""The one Transformer behind both objectives (MLM and CLM), its architecture read from config fields.

Notation: B batch rows, T tokens per row, h hidden, nh heads, hd = h / nh head size, V vocabulary.

The model reads ``ModelConfig``'s fields and never the flavour name; a flavour is a preset of those fields
(``plm.model.config.FLAVOURS``). The two released ones:

* ``esm2``: x += Attn(LN(x)); x += FFN(LN(x)) with erf-GELU; biases everywhere; final LayerNorm;
  RoBERTa-style LM head (dense → GELU → LN → decoder tied to the embedding). Optional ESM-2 token
  dropout. This is ``esm/model/esm2.py`` re-expressed.
* ``progen2``: GPT-J block, x += Attn(LN(x)) + MLP(LN(x)) with one shared LayerNorm, tanh-GELU, no
  attention biases, partial rotary, untied LM head with bias.

Fields: ``parallel_block`` (GPT-J's block), ``attn_bias`` / ``mlp_bias``, ``activation`` (gelu, gelu_tanh,
geglu), ``norm`` (pre-LN or DeepNorm post-LN), ``tied_head`` and ``head_transform`` (the RoBERTa head),
``rotary_dim``, ``token_dropout``.

MLM and CLM differ only in ``causal``; packed rows carry ``doc_ids`` so attention never crosses a
sequence boundary and rotary positions restart at every sequence. How packed rows are attended (which
kernel, the document segments, dense masks) lives in :mod:`plm.model.attention`. Rotary uses the "rotate
half" layout everywhere; checkpoints whose layout interleaves pairs (GPT-J / ProGen2) are permuted by the
converter, so no format quirk lives here.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plm.model import attention as A
from plm.model import cpu_attention
from plm.model.attention import DocSegments, attention_mask, doc_segments, positions_from_doc_ids
from plm.model.config import ModelConfig
from plm.tokenizer import MASK, PAD
from plm.utils.hashing import mix64

#: ESM-2 was trained with 15% masking of which 80% became <mask>: token dropout rescales to this ratio.
ESM_MASK_RATIO_TRAIN = 0.15 * 0.8
ROTARY_BASE = 10000.0
INIT_STD = 0.02


class KVCache(Protocol):
    """Anything that stores keys/values per layer during incremental decoding (see plm.generate)."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


class Rotary(nn.Module):
    """Rotary position embedding on the first ``dim`` channels of each head (rotate-half layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self._tables: tuple[Tensor, Tensor] | None = None

    def _inv_freq(self, device: torch.device | str | None = None) -> Tensor:
        return 1.0 / (
            ROTARY_BASE ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim)
        )

    def reset_parameters(self) -> None:
        """Recompute the frequencies in place: a module built on the meta device and then given storage
        (``to_empty``) has an uninitialised buffer, and it is not in any state dict to load it from."""
        with torch.no_grad():
            self.inv_freq.copy_(self._inv_freq(self.inv_freq.device))
        self._tables = None

    def tables(self, max_len: int) -> tuple[Tensor, Tensor]:
        """cos, sin (≥ max_len, dim/2) fp32 by position in a document, for the kernel that rotates itself.
        Kept and grown on demand, so the layers of one forward (and later steps) share one computation."""
        if (
            self._tables is None
            or self._tables[0].shape[0] < max_len
            or self._tables[0].device != self.inv_freq.device
        ):
            self._tables = cpu_attention.rotary_tables(self.inv_freq, max_len)
        return self._tables

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """positions (B, T) → cos, signed sin (B, T, 1, 1, dim), broadcast over [q, k] and heads of a
        (B, T, 2, nh, hd) tensor and cast once per forward, not once per layer. The sine's first half is
        negated so that ``apply`` needs a roll instead of rotate_half's chunk, neg and cat (same bits, fewer
        passes; docs/performance.md)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, None]
        sign = torch.ones(self.dim, device=emb.device)
        sign[: self.dim // 2] = -1.0
        return emb.cos().to(dtype), (emb.sin() * sign).to(dtype)

    def apply(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # x (B, T, ..., hd); only the first self.dim channels rotate: x·cos + rotate_half(x)·sin, where
        # rotate_half(x) = [-x2, x1] = roll(x, dim/2) with the sign already in ``sin``
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        out = rot * cos + rot.roll(self.dim // 2, dims=-1) * sin
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


class Attention(nn.Module):
    """Multi-head self-attention with a fused q,k,v projection (rows ordered [q; k; v], head-major)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        bias = cfg.attn_bias
        self.layer, self.n_head, self.head_dim = layer, cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)
        self.out = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)

    def forward(
        self,
        x: Tensor,
        rotary: Rotary,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | DocSegments | None,
        causal: bool,
        kv_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        b, t, h = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim)  # (B, T, 3, nh, hd)
        if isinstance(mask, DocSegments):  # packed rows, no cache, no maps: documents as varlen sequences
            return self.out(self._packed(qkv, rotary, cos, sin, mask, causal).view(b, t, h)), None
        # split, not qkv[:, :, :2] and qkv[:, :, 2]: the backward is one cat instead of two zero-filled
        # copies of the whole qkv gradient plus their sum
        qk, v = qkv.split([2, 1], dim=2)  # (B, T, 2, nh, hd), (B, T, 1, nh, hd)
        qk = rotary.apply(qk, cos, sin)  # q and k rotated in one pass: (B, T, 2, nh, hd)
        q, k = qk.transpose(1, 3).unbind(2)  # 2×(B, nh, T, hd)
        v = v.squeeze(2).transpose(1, 2)  # (B, nh, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, T_past + T, hd)
        y, weights = A.dense_attention(q, k, v, mask, causal, need_weights)
        y = y.transpose(1, 2).reshape(b, t, h)  # (B, T, h)
        return self.out(y), weights

    def _packed(
        self, qkv: Tensor, rotary: Rotary, cos: Tensor, sin: Tensor, segments: DocSegments, causal: bool
    ) -> Tensor:
        """(B, T, 3, nh, hd) projections of packed rows → (B·T, nh, hd), attention within each document."""
        n = qkv.shape[0] * qkv.shape[1]
        backend = A.backend_for(qkv)
        if A.fuses_rotary(backend, segments):
            tables = rotary.tables(segments.max_seqlen)
            return A.rotary_varlen_attention(
                qkv.view(n, 3, self.n_head, self.head_dim), tables, segments, causal
            )
        qk, v = qkv.split([2, 1], dim=2)
        q, k = rotary.apply(qk, cos, sin).view(n, 2, self.n_head, self.head_dim).unbind(1)  # 2×(B·T, nh, hd)
        v = v.reshape(n, self.n_head, self.head_dim)  # (B·T, nh, hd), a view
        return A.varlen_attention(q, k, v, segments, causal, backend)


class MLP(nn.Module):
    """fc_in → GELU → fc_out; with ``activation='geglu'`` fc_in is twice as wide and its halves are
    [value; gate] (value · GELU(gate), as GLM's GEGLU), so the parameter names stay the same."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.activation == "geglu"
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.fc_in = nn.Linear(cfg.n_embd, cfg.ffn_in, bias=cfg.mlp_bias)
        self.fc_out = nn.Linear(cfg.ffn, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc_in(x)
        if self.gated:
            value, gate = x.chunk(2, dim=-1)
            return self.fc_out(value * F.gelu(gate, approximate=self.approximate))
        return self.fc_out(F.gelu(x, approximate=self.approximate))


class Block(nn.Module):
    """One layer, sequential (ESM-2) or parallel (GPT-J: one LN, attention and MLP side by side), with the
    LayerNorm before each sublayer (pre-LN) or after the residual sum (DeepNorm). Unit of activation
    checkpointing."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.post_norm = cfg.norm == "deepnorm"
        self.alpha = cfg.deepnorm_alpha
        self.attn_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = None if self.parallel else nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rotary, cos, sin, mask, causal, kv_cache=None, need_weights=False):
        if self.post_norm:
            return self._post_norm(x, rotary, cos, sin, mask, causal, kv_cache, need_weights)
        normed = self.attn_norm(x)
        a, weights = self.attn(normed, rotary, cos, sin, mask, causal, kv_cache, need_weights)
        if self.parallel:
            return x + a + self.mlp(normed), weights
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), weights

    def _post_norm(self, x, rotary, cos, sin, mask, causal, kv_cache, need_weights):
        """DeepNorm: x = LN(α·x + f(x)); the up-weighted residual bounds each update of a post-LN stack."""
        a, weights = self.attn(x, rotary, cos, sin, mask, causal, kv_cache, need_weights)
        if self.parallel:
            return self.attn_norm(self.alpha * x + a + self.mlp(x)), weights
        x = self.attn_norm(self.alpha * x + a)
        return self.mlp_norm(self.alpha * x + self.mlp(x)), weights


class LMHead(nn.Module):
    """Hidden states → logits: optionally RoBERTa's dense → GELU → LN (``head_transform``, ESM-2), then a
    decoder that is the embedding (``tied_head``, ESM-2) or its own matrix (ProGen2), plus a bias."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.transform = cfg.head_transform
        self.tied = cfg.tied_head  # read by plm.callbacks.transfer (re-initialising the head at the switch)
        if self.transform:
            self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
            self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        if cfg.tied_head:
            self.weight = embedding.weight  # shared Parameter: one tensor in the state dict's eyes
        else:
            self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        if self.transform:
            x = self.norm(F.gelu(self.dense(x)))
        return F.linear(x, self.weight, self.bias)


def init_weights(named: Iterable[tuple[str, nn.Parameter]], seed: int, n_layer: int) -> None:
    """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2L), zero biases, unit norms.

    Each matrix is drawn in fp32 on the CPU from its own generator keyed by (seed, parameter name), so the
    values do not depend on the order, the device, or which other parameters exist yet: a model built whole
    and one materialised block by block on the ranks of a sharded run start from the same weights."""
    for name, p in named:
        if p.is_meta:
            continue
        with torch.no_grad():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name else 0.0)
                continue
            std = (
                INIT_STD / math.sqrt(2 * n_layer)
                if name.endswith(("attn.out.weight", "fc_out.weight"))
                else INIT_STD
            )
            g = torch.Generator().manual_seed(int(mix64(seed, zlib.crc32(name.encode())) >> 1))
            p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=g))


class Transformer(nn.Module):
    """Embedding → blocks → final norm → LM head. ``forward`` returns logits; ``hidden`` stops before the head."""

    def __init__(self, cfg: ModelConfig, init_seed: int | None = None) -> None:
        """``init_seed`` keys every parameter's initial values (default: drawn from torch's global RNG, so
        ``torch.manual_seed`` before construction decides them). Under ``torch.device("meta")`` nothing is
        allocated; ``init_weights`` fills any part later with the same values (FSDP2 materialises block by
        block)."""
        super().__init__()
        self.config = cfg
        # drawn on the CPU explicitly: the same number under a meta-device context as without one
        self.init_seed = int(torch.randint(0, 2**62, (), device="cpu")) if init_seed is None else init_seed
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=PAD)
        self.rotary = Rotary(cfg.rotary)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.final_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.head = LMHead(cfg, self.embed)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init (see ``init_weights``); nothing to do on the meta device."""
        init_weights(self.named_parameters(), self.init_seed, self.config.n_layer)

    def embed_tokens(self, tokens: Tensor, doc_ids: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, T, h)
        if self.config.token_dropout:
            # ESM-2: zero <mask> embeddings and rescale each sequence by its observed mask ratio,
            # per document so packed rows behave like ESM's one-sequence rows.
            is_mask = tokens == MASK
            x = x.masked_fill(is_mask[..., None], 0.0)
            n_docs = int(doc_ids.max()) + 1
            ones = torch.ones_like(doc_ids, dtype=x.dtype)
            real = (tokens != PAD).to(x.dtype)
            length = torch.zeros(doc_ids.shape[0], n_docs, dtype=x.dtype, device=x.device).scatter_add_(
                1, doc_ids, real
            )
            masked = torch.zeros_like(length).scatter_add_(1, doc_ids, is_mask.to(x.dtype) * ones)
            observed = (masked / length.clamp(min=1)).gather(1, doc_ids)  # (B, T)
            x = x * ((1 - ESM_MASK_RATIO_TRAIN) / (1 - observed))[..., None].to(x.dtype)
            x = x * real[..., None].to(x.dtype)
        return x

    def hidden(
        self,
        tokens: Tensor,
        doc_ids: Tensor | None = None,
        positions: Tensor | None = None,
        causal: bool = False,
        kv_cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Final-norm hidden states (B, T, h) and, if ``need_weights``, each layer's (B, nh, T, T) attention.

        ``doc_ids`` None means one sequence per row with ``<pad>`` as padding. With a ``kv_cache`` the
        caller passes ``positions`` and ``attn_mask`` (or None for a plain causal step). Goes through
        ``__call__`` so that module hooks run (FSDP2 gathers the embedding and final norm in them).
        """
        return self(
            tokens,
            doc_ids,
            causal,
            positions=positions,
            kv_cache=kv_cache,
            attn_mask=attn_mask,
            need_weights=need_weights,
            return_hidden=True,
        )

    def forward(
        self,
        tokens: Tensor,
        doc_ids: Tensor | None = None,
        causal: bool = False,
        select: Tensor | None = None,
        return_hidden: bool = False,
        **kwargs,
    ) -> Tensor | tuple:
        """Logits (B, T, V), or (n, V) at the positions of a boolean (B, T) ``select`` only (the LM head is
        the largest matmul of a small model's MLM step and only 15% of positions have labels).
        ``return_hidden``: what ``hidden`` returns instead. One call for all of it, so that a sharded model
        gathers the LM head's weights inside its forward."""
        hidden, maps = self._hidden(tokens, doc_ids, causal=causal, **kwargs)
        if return_hidden:
            return hidden, maps
        return self.head(hidden if select is None else hidden[select])

    def _hidden(
        self,
        tokens: Tensor,
        doc_ids: Tensor | None = None,
        positions: Tensor | None = None,
        causal: bool = False,
        kv_cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        if doc_ids is None:
            doc_ids = (tokens == PAD).to(torch.long)  # real tokens doc 0, padding its own doc 1
            single_doc = not bool(doc_ids.any())
        else:
            single_doc = False
        positions_restart = positions is None
        if positions is None:
            positions = positions_from_doc_ids(doc_ids)
        mask: Tensor | DocSegments | None = attn_mask
        if attn_mask is None and kv_cache is None and not single_doc:
            if need_weights:  # the maps are (B, nh, T, T): a dense mask
                mask = attention_mask(doc_ids, causal)
            else:
                segments = doc_segments(doc_ids, positions_restart)
                # every row one whole document: batched SDPA without any mask is the fastest path
                mask = None if min(segments.lengths) == tokens.shape[1] else segments
        x = self.embed_tokens(tokens, doc_ids)
        dtype = (
            torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        )
        cos, sin = self.rotary.cos_sin(positions, dtype)
        maps: list[Tensor] = []
        for block in self.blocks:
            x, w = block(x, self.rotary, cos, sin, mask, causal, kv_cache, need_weights)
            if w is not None:
                maps.append(w)
        return self.final_norm(x), maps
