"""The one Transformer behind both objectives (MLM and CLM), in two flavours.

Notation: B batch rows, T tokens per row, h hidden, nh heads, hd = h / nh head size, V vocabulary.

* ``esm2``: x += Attn(LN(x)); x += FFN(LN(x)) with erf-GELU; biases everywhere; final LayerNorm;
  RoBERTa-style LM head (dense → GELU → LN → decoder tied to the embedding). Optional ESM-2 token
  dropout. This is ``esm/model/esm2.py`` re-expressed.
* ``progen2``: GPT-J block, x += Attn(LN(x)) + MLP(LN(x)) with one shared LayerNorm, tanh-GELU, no
  attention biases, partial rotary, untied LM head with bias.

MLM and CLM differ only in ``causal``; packed rows carry ``doc_ids`` so attention never crosses a
sequence boundary and rotary positions restart at every sequence. Packed rows run as variable-length
sequences (``DocSegments``, flash-attention's ``cu_seqlens`` layout): ``flash_attn_varlen_func`` when
flash-attn is installed and the tensors are CUDA fp16/bf16, plm's own bf16 kernel on CPUs with AVX512-BF16
(``plm.model.cpu_attention``, which also applies the rotary embedding), else one unmasked SDPA call per
document.
Either way only the Σ len² same-document pairs are scored, not the T² of a dense document mask (issue
#9: Σ len² ≈ 0.4 T² on the bundled data). Dense masks remain for attention maps, KV-cache decoding and
caller-given masks. Rotary uses the "rotate half" layout everywhere; checkpoints whose layout
interleaves pairs (GPT-J / ProGen2) are permuted by the converter, so no format quirk lives here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plm.model import cpu_attention
from plm.model.config import ModelConfig
from plm.tokenizer import MASK, PAD

#: ESM-2 was trained with 15% masking of which 80% became <mask>: token dropout rescales to this ratio.
ESM_MASK_RATIO_TRAIN = 0.15 * 0.8
ROTARY_BASE = 10000.0


class KVCache(Protocol):
    """Anything that stores keys/values per layer during incremental decoding (see plm.generate)."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


def positions_from_doc_ids(doc_ids: Tensor) -> Tensor:
    """Position of each token inside its own document: (B, T) → (B, T), restarting at 0 per document."""
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


def attention_mask(doc_ids: Tensor, causal: bool) -> Tensor:
    """Boolean (B, 1, T, T) mask, True = may attend: same document (and not in the future if causal).

    Padding carries a document id of its own, so pad queries attend to pads (never NaN) and real
    tokens never see them.
    """
    same = doc_ids[:, None, :, None] == doc_ids[:, None, None, :]
    if causal:
        t = doc_ids.shape[1]
        same = same & torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return same


@dataclass(frozen=True)
class DocSegments:
    """The documents of packed rows as variable-length sequences over the flattened B·T tokens.

    ``cu_seqlens`` (n_docs + 1,) int32 holds each document's first flat index and then B·T, as
    ``flash_attn_varlen_func`` expects; ``lengths`` is the same on the host for the SDPA loop.
    ``positions_restart``: every token's rotary position is its index in its document (positions derived
    from the document ids), so a kernel may rotate q and k itself.
    """

    cu_seqlens: Tensor
    lengths: tuple[int, ...]
    max_seqlen: int
    positions_restart: bool = True


def doc_segments(doc_ids: Tensor, positions_restart: bool = True) -> DocSegments:
    """(B, T) document ids → DocSegments. A document starts at every row start and every id change,
    so equal ids in two rows (all rows use 0, 1, …) are still separate documents."""
    b, t = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = starts.flatten().nonzero().squeeze(1)  # (n_docs,)
    end = torch.tensor([b * t], device=doc_ids.device)
    cu_seqlens = torch.cat([first, end]).to(torch.int32)
    lengths = tuple(cu_seqlens.diff().tolist())  # one host sync per forward, not per layer
    return DocSegments(cu_seqlens, lengths, max(lengths), positions_restart)


@functools.cache
def _flash_varlen() -> Callable[..., Tensor] | None:
    """``flash_attn.flash_attn_varlen_func`` if importable (imported on first use, never at module load)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except (ImportError, OSError):  # not installed, or installed without a usable CUDA runtime
        return None
    return flash_attn_varlen_func


def use_flash_varlen(device_type: str, dtype: torch.dtype) -> bool:
    """Whether varlen attention goes to flash-attn: CUDA, fp16/bf16, and flash-attn importable."""
    return device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash_varlen() is not None


@torch.compiler.disable  # data-dependent document lengths: keep them out of compiled graphs
def varlen_attention(q: Tensor, k: Tensor, v: Tensor, segments: DocSegments, causal: bool) -> Tensor:
    """Attention within each document: q, k, v (N, nh, hd) with N = B·T flat tokens → (N, nh, hd)."""
    if use_flash_varlen(q.device.type, q.dtype):
        cu, n = segments.cu_seqlens, segments.max_seqlen
        return _flash_varlen()(q, k, v, cu, cu, n, n, causal=causal)
    if cpu_attention.supports(q):
        return cpu_attention.varlen_attention_bf16(q, k, v, segments.cu_seqlens, causal)
    return sdpa_varlen(q, k, v, segments.lengths, causal)


@torch.compiler.disable
def rotary_varlen_attention(qkv: Tensor, rotary: Rotary, segments: DocSegments, causal: bool) -> Tensor:
    """Rotary and attention within each document in one kernel: qkv (N, 3, nh, hd) unrotated → (N, nh, hd).
    Only for ``fuses_rotary``; saves the rotary's passes and the q, k, v split's copies forward and backward
    (issue #9: 9% of a 35m CPU training step)."""
    cos, sin = rotary.tables(segments.max_seqlen)
    return cpu_attention.varlen_rotary_attention_bf16(qkv, cos, sin, segments.cu_seqlens, causal)


def fuses_rotary(qkv: Tensor, segments: DocSegments) -> bool:
    """Whether ``rotary_varlen_attention`` serves these packed rows: plm's CPU bf16 kernel is usable and each
    token's position is its index in its document."""
    return segments.positions_restart and cpu_attention.supports(qkv[..., 0, :, :])


def sdpa_varlen(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], causal: bool) -> Tensor:
    """The fallback: one unmasked SDPA call per document, (N, nh, hd) → (N, nh, hd)."""
    dtype, work = q.dtype, sdpa_dtype(q)
    q, k, v = q.to(work), k.to(work), v.to(work)  # once for all documents
    # split, not slicing: its backward is one cat, where each slice's backward would zero-fill all N
    outs = [
        F.scaled_dot_product_attention(qd.transpose(0, 1)[None], kd.transpose(0, 1)[None], vd.transpose(0, 1)[None],
                                       is_causal=causal)[0].transpose(0, 1)  # (1, nh, L, hd) → (L, nh, hd)
        for qd, kd, vd in zip(q.split(lengths), k.split(lengths), v.split(lengths))
    ]
    return torch.cat(outs).to(dtype)  # (N, nh, hd)


def sdpa_dtype(x: Tensor) -> torch.dtype:
    """The dtype SDPA computes in: fp32 for half-precision inputs on CPU, else the input dtype.

    PyTorch's CPU flash-attention backward is much slower in bf16 than in fp32 at small head sizes
    and ESM-like lengths (issue #9, 35m, head size 24, 2 threads, real packed batches: 156–237 ms vs
    279–309 ms per layer for forward + backward including the casts; per document of 256 tokens
    3.0 vs 4.9 ms backward), so under bf16-mixed on CPU the attention core runs in fp32, which is
    also the more accurate choice. GPUs keep the input dtype.
    """
    return torch.float32 if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) else x.dtype


class Rotary(nn.Module):
    """Rotary position embedding on the first ``dim`` channels of each head (rotate-half layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._tables: tuple[Tensor, Tensor] | None = None

    def tables(self, max_len: int) -> tuple[Tensor, Tensor]:
        """cos, sin (≥ max_len, dim/2) fp32 by position in a document, for the kernel that rotates itself.
        Kept and grown on demand, so the layers of one forward (and later steps) share one computation."""
        if self._tables is None or self._tables[0].shape[0] < max_len or self._tables[0].device != self.inv_freq.device:
            self._tables = cpu_attention.rotary_tables(self.inv_freq, max_len)
        return self._tables

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """positions (B, T) → cos, signed sin (B, T, 1, 1, dim), broadcast over [q, k] and heads of a
        (B, T, 2, nh, hd) tensor and cast once per forward, not once per layer. The sine's first half is
        negated so that ``apply`` needs a roll instead of rotate_half's chunk, neg and cat (issue #9:
        rotary forward + backward 13.5 → 9.8 ms per 35m layer, same bits)."""
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
        bias = cfg.flavour == "esm2"
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
        if isinstance(mask, DocSegments) and fuses_rotary(qkv, mask):
            y = rotary_varlen_attention(qkv.view(b * t, 3, self.n_head, self.head_dim), rotary, mask, causal)
            return self.out(y.view(b, t, h)), None
        # split, not qkv[:, :, :2] and qkv[:, :, 2]: the backward is one cat instead of two zero-filled
        # copies of the whole qkv gradient plus their sum
        qk, v = qkv.split([2, 1], dim=2)  # (B, T, 2, nh, hd), (B, T, 1, nh, hd)
        qk = rotary.apply(qk, cos, sin)  # q and k rotated in one pass: (B, T, 2, nh, hd)
        if isinstance(mask, DocSegments):  # packed rows, no cache, no maps: documents as varlen sequences
            q, k = qk.view(b * t, 2, self.n_head, self.head_dim).unbind(1)  # 2×(B·T, nh, hd)
            v = v.reshape(b * t, self.n_head, self.head_dim)  # (B·T, nh, hd), a view
            y = varlen_attention(q, k, v, mask, causal).view(b, t, h)  # (B, T, h)
            return self.out(y), None
        q, k = qk.transpose(1, 3).unbind(2)  # 2×(B, nh, T, hd)
        v = v.squeeze(2).transpose(1, 2)  # (B, nh, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, T_past + T, hd)
        weights = None
        if need_weights:  # explicit softmax: contact prediction reads the maps, SDPA cannot return them
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, nh, T, T_k)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            elif causal:
                scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
            weights = scores.softmax(dim=-1)
            y = weights.to(v.dtype) @ v
        else:
            if causal and mask is None and q.shape[2] != k.shape[2] and q.shape[2] > 1:
                raise ValueError("several new tokens after a non-empty KV cache need an explicit attn_mask")
            # SDPA's is_causal aligns top-left: right only when queries and keys start together
            is_causal = causal and mask is None and q.shape[2] == k.shape[2]
            work = sdpa_dtype(q)
            y = F.scaled_dot_product_attention(q.to(work), k.to(work), v.to(work), attn_mask=mask, is_causal=is_causal)
            y = y.to(q.dtype)
        y = y.transpose(1, 2).reshape(b, t, h)  # (B, T, h)
        return self.out(y), weights


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.n_embd, cfg.ffn)
        self.fc_out = nn.Linear(cfg.ffn, cfg.n_embd)
        self.approximate = "none" if cfg.flavour == "esm2" else "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate=self.approximate))


class Block(nn.Module):
    """One layer: sequential pre-LN (esm2) or GPT-J parallel (progen2). Unit of activation checkpointing."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.parallel = cfg.flavour == "progen2"
        self.attn_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = None if self.parallel else nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rotary, cos, sin, mask, causal, kv_cache=None, need_weights=False):
        normed = self.attn_norm(x)
        a, weights = self.attn(normed, rotary, cos, sin, mask, causal, kv_cache, need_weights)
        if self.parallel:
            return x + a + self.mlp(normed), weights
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), weights


class LMHead(nn.Module):
    """Hidden states → logits. esm2: RoBERTa head tied to the embedding; progen2: one untied Linear."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.tied = cfg.tied_head
        if self.tied:
            self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
            self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
            self.weight = embedding.weight  # shared Parameter: one tensor in the state dict's eyes
        else:
            self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        if self.tied:
            x = self.norm(F.gelu(self.dense(x)))
        return F.linear(x, self.weight, self.bias)


class Transformer(nn.Module):
    """Embedding → blocks → final norm → LM head. ``forward`` returns logits; ``hidden`` stops before the head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=PAD)
        self.rotary = Rotary(cfg.rotary)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.final_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.head = LMHead(cfg, self.embed)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2L), zero biases."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if "norm" in name else nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "fc_out.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=std)

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
            length = torch.zeros(doc_ids.shape[0], n_docs, dtype=x.dtype, device=x.device).scatter_add_(1, doc_ids, real)
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
        caller passes ``positions`` and ``attn_mask`` (or None for a plain causal step).
        """
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
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        cos, sin = self.rotary.cos_sin(positions, dtype)
        maps: list[Tensor] = []
        for block in self.blocks:
            x, w = block(x, self.rotary, cos, sin, mask, causal, kv_cache, need_weights)
            if w is not None:
                maps.append(w)
        return self.final_norm(x), maps

    def forward(self, tokens: Tensor, doc_ids: Tensor | None = None, causal: bool = False, **kwargs) -> Tensor:
        """Logits (B, T, V)."""
        hidden, _ = self.hidden(tokens, doc_ids, causal=causal, **kwargs)
        return self.head(hidden)
