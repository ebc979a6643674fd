"""Attention over packed rows: the documents as segments, dense masks, and the one choice of kernel.

Packed rows carry ``doc_ids``; attention must never cross a document boundary. They run as
variable-length sequences (:class:`DocSegments`, the ``cu_seqlens`` layout of flash-attention), so only
the Σ len² same-document pairs are scored instead of the T² of a dense document mask (issue #9: Σ len² ≈
0.4 T² on the bundled data). Dense masks remain for attention maps, KV-cache decoding and caller-given
masks (:func:`dense_attention`).

Which kernel runs packed rows is decided in one place, :func:`choose_backend`, in this order:

1. ``flash``: ``flash_attn.flash_attn_varlen_func``: CUDA, fp16/bf16, flash-attn importable. It is an
   optional extra (``pip install plm[flash]``); someone who installed it asked for it.
2. ``varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (torch ≥ 2.10): CUDA, fp16/bf16.
   The same FlashAttention-2 kernel, shipped inside torch, so a CUDA run needs no extra package.
3. ``cpu_kernel``: plm's AVX512-BF16 kernel (:mod:`plm.model.cpu_attention`): CPU, bf16, even head size
   ≤ 64, a CPU with the instructions and a ``g++``. It can also apply the rotary embedding itself.
4. ``sdpa``: one unmasked ``scaled_dot_product_attention`` per document: everything else (fp32, CPUs
   without AVX512-BF16, CUDA fp32).

``PLM_ATTENTION=auto|flash|varlen|cpu_kernel|sdpa`` overrides the order. A forced backend that cannot
run the tensors at hand is an error (silently running another kernel would defeat the point of forcing
it). The older ``PLM_CPU_ATTENTION=sdpa`` still keeps plm's CPU kernel off. Training logs the choice
once at start (``LanguageModel.configure_model``); the first call of each choice is logged here too.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from plm.model import cpu_attention

ENV_VAR = "PLM_ATTENTION"
#: the automatic order; ``auto`` takes the first that can run the tensors
BACKENDS: tuple[str, ...] = ("flash", "varlen", "cpu_kernel", "sdpa")
HALF = (torch.float16, torch.bfloat16)

log = logging.getLogger(__name__)


# ---- documents of packed rows ------------------------------------------------------------------------
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

    ``cu_seqlens`` (n_docs + 1,) int32 holds each document's first flat index and then B·T, as the
    varlen kernels expect; ``lengths`` is the same on the host for the SDPA loop.
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


# ---- the optional kernels, imported on first use --------------------------------------------------------
@functools.cache
def _flash_varlen() -> Callable[..., Tensor] | None:
    """``flash_attn.flash_attn_varlen_func`` if importable (imported on first use, never at module load)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except (ImportError, OSError):  # not installed, or installed without a usable CUDA runtime
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen() -> Callable[..., Tensor] | None:
    """``torch.nn.attention.varlen.varlen_attn`` if this torch has it (2.10 and later)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


# ---- the choice ---------------------------------------------------------------------------------------
def requested_backend() -> str:
    """``PLM_ATTENTION`` (default ``auto``); an unknown value is an error naming the valid ones."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not a backend; use auto or one of {', '.join(BACKENDS)}")
    return value


def unusable(backend: str, device_type: str, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why ``backend`` cannot run attention on these tensors, or None when it can."""
    if backend in ("flash", "varlen"):
        if device_type != "cuda" or dtype not in HALF:
            return f"needs CUDA fp16/bf16 tensors, got {device_type} {dtype}"
        probe = _flash_varlen if backend == "flash" else _torch_varlen
        if probe() is None:
            return (
                "flash-attn is not importable (pip install 'plm[flash]')"
                if backend == "flash"
                else f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn (needs ≥ 2.10)"
            )
        return None
    if backend == "cpu_kernel":
        if device_type != "cpu" or dtype != torch.bfloat16:
            return f"needs CPU bf16 tensors, got {device_type} {dtype}"
        if not cpu_attention.supports_head_dim(head_dim):
            return f"takes even head sizes from 2 to 64, not {head_dim}"
        if cpu_attention.library() is None:
            return (
                "not available on this machine (needs avx512f/bw/vl/bf16 and g++; or PLM_CPU_ATTENTION=sdpa)"
            )
        return None
    if backend == "sdpa":
        return None
    raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")


def choose_backend(device_type: str, dtype: torch.dtype, head_dim: int, requested: str | None = None) -> str:
    """The kernel for packed rows of this device, dtype and head size (order in the module docstring).

    ``requested`` (default: ``PLM_ATTENTION``) forces one backend; it must be able to run these tensors."""
    requested = requested or requested_backend()
    if requested == "auto":
        return next(b for b in BACKENDS if unusable(b, device_type, dtype, head_dim) is None)
    why = unusable(requested, device_type, dtype, head_dim)
    if why is not None:
        raise RuntimeError(
            f"{ENV_VAR}={requested}: {why}. Unset {ENV_VAR} (auto) or choose one of "
            f"{', '.join(b for b in BACKENDS if unusable(b, device_type, dtype, head_dim) is None)}"
        )
    return requested


def describe_choice(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """One line for the start of a run: the backend packed rows will use, and why the earlier ones don't."""
    backend = choose_backend(device_type, dtype, head_dim)
    skipped = []
    for b in BACKENDS[: BACKENDS.index(backend)]:
        skipped.append(f"{b}: {unusable(b, device_type, dtype, head_dim)}")
    how = f"forced by {ENV_VAR}" if requested_backend() != "auto" else "auto"
    tail = f" (not {'; '.join(skipped)})" if skipped and how == "auto" else ""
    return (
        f"attention on packed rows: {backend} [{how}] for {device_type} {str(dtype).removeprefix('torch.')}, "
        f"head size {head_dim}{tail}"
    )


@functools.cache
def _announce(backend: str, device_type: str, dtype: torch.dtype) -> None:
    log.info("plm attention: %s for %s %s packed rows", backend, device_type, dtype)


def backend_for(q: Tensor) -> str:
    """``choose_backend`` for a (…, nh, hd) query tensor; logs each new choice once."""
    backend = choose_backend(q.device.type, q.dtype, q.shape[-1])
    _announce(backend, q.device.type, q.dtype)
    return backend


# ---- the kernels ----------------------------------------------------------------------------------------
@torch.compiler.disable  # data-dependent document lengths: keep them out of compiled graphs
def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, segments: DocSegments, causal: bool, backend: str | None = None
) -> Tensor:
    """Attention within each document: q, k, v (N, nh, hd) with N = B·T flat tokens → (N, nh, hd)."""
    backend = backend or backend_for(q)
    cu, n = segments.cu_seqlens, segments.max_seqlen
    if backend == "flash":
        return _flash_varlen()(q, k, v, cu, cu, n, n, causal=causal)
    if backend == "varlen":
        return torch_varlen(q, k, v, segments, causal)
    if backend == "cpu_kernel":
        return cpu_attention.varlen_attention_bf16(q, k, v, cu, causal)
    return sdpa_varlen(q, k, v, segments.lengths, causal)


def torch_varlen(q: Tensor, k: Tensor, v: Tensor, segments: DocSegments, causal: bool) -> Tensor:
    """PyTorch's varlen attention (causal is the window (-1, 0): everything before, nothing after)."""
    cu, n = segments.cu_seqlens, segments.max_seqlen
    return _torch_varlen()(q, k, v, cu, cu, n, n, window_size=(-1, 0) if causal else (-1, -1))


@torch.compiler.disable
def rotary_varlen_attention(
    qkv: Tensor, tables: tuple[Tensor, Tensor], segments: DocSegments, causal: bool
) -> Tensor:
    """Rotary and attention within each document in one kernel: qkv (N, 3, nh, hd) unrotated → (N, nh, hd).
    Only where :func:`fuses_rotary`; saves the rotary's passes and the q, k, v split's copies forward and
    backward (issue #9: 9% of a 35m CPU training step). ``tables``: cos, sin by position in a document."""
    cos, sin = tables
    return cpu_attention.varlen_rotary_attention_bf16(qkv, cos, sin, segments.cu_seqlens, causal)


def fuses_rotary(backend: str, segments: DocSegments) -> bool:
    """Whether the backend applies rotary itself: plm's CPU kernel, when each token's position is its index
    in its document."""
    return backend == "cpu_kernel" and segments.positions_restart


def sdpa_varlen(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], causal: bool) -> Tensor:
    """The fallback: one unmasked SDPA call per document, (N, nh, hd) → (N, nh, hd)."""
    dtype, work = q.dtype, sdpa_dtype(q)
    q, k, v = q.to(work), k.to(work), v.to(work)  # once for all documents
    # split, not slicing: its backward is one cat, where each slice's backward would zero-fill all N
    outs = [
        F.scaled_dot_product_attention(
            qd.transpose(0, 1)[None], kd.transpose(0, 1)[None], vd.transpose(0, 1)[None], is_causal=causal
        )[0].transpose(0, 1)  # (1, nh, L, hd) → (L, nh, hd)
        for qd, kd, vd in zip(q.split(lengths), k.split(lengths), v.split(lengths))
    ]
    return torch.cat(outs).to(dtype)  # (N, nh, hd)


def sdpa_dtype(x: Tensor) -> torch.dtype:
    """The dtype SDPA computes in: fp32 for half-precision inputs on CPU, else the input dtype.

    PyTorch's CPU flash-attention backward is slower in bf16 than in fp32 at ESM-2's small head sizes
    (measured in docs/performance.md), so under bf16-mixed on CPU the attention core runs in fp32, which
    is also the more accurate choice. GPUs keep the input dtype.
    """
    return torch.float32 if x.device.type == "cpu" and x.dtype in HALF else x.dtype


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, need_weights: bool
) -> tuple[Tensor, Tensor | None]:
    """Batched attention with an optional dense mask: q (B, nh, Tq, hd), k, v (B, nh, Tk, hd) → (B, nh, Tq, hd)
    and, with ``need_weights``, the (B, nh, Tq, Tk) probabilities (an explicit softmax: contact prediction
    reads the maps, SDPA cannot return them). Rows of one whole document, KV-cache steps, maps."""
    if need_weights:
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, nh, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif causal:
            scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
        weights = scores.softmax(dim=-1)
        return weights.to(v.dtype) @ v, weights
    if causal and mask is None and q.shape[2] != k.shape[2] and q.shape[2] > 1:
        raise ValueError("several new tokens after a non-empty KV cache need an explicit attn_mask")
    # SDPA's is_causal aligns top-left: right only when queries and keys start together
    is_causal = causal and mask is None and q.shape[2] == k.shape[2]
    work = sdpa_dtype(q)
    y = F.scaled_dot_product_attention(
        q.to(work), k.to(work), v.to(work), attn_mask=mask, is_causal=is_causal
    )
    return y.to(q.dtype), None
