"""bf16 attention over packed documents on CPUs with AVX512-BF16: plm's own kernel (issue #9).

PyTorch's CPU flash attention computes in fp32 at small head sizes (its bf16 path is slower still),
so at ESM-2's head sizes attention took 40-60 % of a bf16-mixed training step while the matrix
products around it ran at three times the rate. ``kernels/cpu_attention.cpp`` runs every product of
the forward and the backward on bf16 pairs with fp32 accumulation (as flash-attention does on GPUs)
and the softmax and its gradient in fp32, one (document, head) per task. For packed training rows it also
applies the rotary embedding itself (``varlen_rotary_attention_bf16``): it takes the q, k, v projection's
output unrotated, rotates q and k in fp32 as it packs them, recomputes that in the backward and returns
one gradient in the projection's layout, so the rotary and the q/k/v split cost no extra pass or copy.

The kernel is plain C++ with no Python or torch headers: it is compiled with the system ``g++`` on first
use (about two seconds) into ``$PLM_CACHE`` (default ``~/.cache/plm``), keyed by the source's hash, and
called through ctypes. Used when all of these hold, else the SDPA path runs and nothing changes:
CPU tensors in bf16, an even head size ≤ 64, a CPU with avx512f/bw/vl/bf16, a working ``g++``, and
``PLM_CPU_ATTENTION`` not set to ``sdpa``. A failed build warns once, naming the compiler's error. Whether it
runs is decided with the other kernels in ``plm.model.attention.choose_backend`` (``PLM_ATTENTION``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from plm import hardware
from plm.utils.atomic import atomic_write_bytes

SOURCE = Path(__file__).parent / "kernels" / "cpu_attention.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
COMPILE_FLAGS = (
    "-O3",
    "-std=c++17",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512bf16",
    "-mfma",
    "-fPIC",
    "-shared",
    "-pthread",
)
ENV_SWITCH = "PLM_CPU_ATTENTION"  # "auto" (default) or "sdpa" to keep PyTorch's kernel

_i64, _i32, _f32, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p


def cpu_has_flags(flags: tuple[str, ...] = CPU_FLAGS, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU advertises every instruction-set flag the kernel is compiled for (Linux only)."""
    return hardware.cpu_has_flags(flags, cpuinfo)


def cache_dir() -> Path:
    return Path(os.environ.get("PLM_CACHE", Path.home() / ".cache" / "plm")) / "kernels"


def build(source: Path = SOURCE, out_dir: Path | None = None) -> Path:
    """Compile ``source`` to a shared library named by the hash of its text and flags; reuse it if built.

    Compiled in a private scratch directory and published with ``atomic_write_bytes``, so concurrent
    ranks never load a half-written library and a failed build leaves nothing in the cache.
    Raises RuntimeError with the compiler's message if the build fails.
    """
    out_dir = out_dir or cache_dir()
    key = hashlib.sha256(source.read_bytes() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    lib = out_dir / f"cpu_attention-{key}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(prefix="plm-kernel-") as scratch:
        built = Path(scratch) / lib.name
        try:
            proc = subprocess.run(
                ["g++", *COMPILE_FLAGS, "-o", str(built), str(source)],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError as e:
            raise RuntimeError(f"no g++ to build {source} ({e})") from e
        if proc.returncode != 0:
            raise RuntimeError(f"g++ could not build {source}: {proc.stderr.strip()[-2000:]}")
        return atomic_write_bytes(lib, built.read_bytes())


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.plm_attention_supports.argtypes = [_i32]
    lib.plm_attention_forward.argtypes = [
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _i64,
        _i64,
        _ptr,
        _ptr,
        _ptr,
        _i32,
        _i32,
        _i32,
        _i32,
        _f32,
        _i32,
        _ptr,
        _ptr,
        _i32,
        _i64,
    ]
    lib.plm_attention_backward.argtypes = [
        _ptr,
        _ptr,
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _i64,
        _i64,
        _i64,
        _i64,
        _ptr,
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _ptr,
        _i32,
        _i32,
        _i32,
        _i32,
        _f32,
        _i32,
        _ptr,
        _ptr,
        _i32,
        _i64,
    ]
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning saying why) when this machine cannot use it."""
    if os.environ.get(ENV_SWITCH, "auto").lower() == "sdpa":
        return None
    if not cpu_has_flags():
        return None  # an ordinary CPU, nothing to warn about
    try:
        return _bind(build())
    except (RuntimeError, OSError) as e:
        warnings.warn(
            f"plm's bf16 CPU attention is unavailable, using PyTorch SDPA instead: {e}. "
            f"Set {ENV_SWITCH}=sdpa to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def supports_head_dim(hd: int) -> bool:
    """The kernel works on bf16 pairs and keeps a row of up to 64 channels in registers."""
    return hd % 2 == 0 and 2 <= hd <= 64


def supports(q: Tensor) -> bool:
    """Whether ``q`` (N, nh, hd) can go to the kernel: CPU bf16, even head size ≤ 64, kernel available."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return False
    return supports_head_dim(q.shape[-1]) and library() is not None


def _rows(x: Tensor) -> Tensor:
    """(N, nh, hd) with heads and channels contiguous (any row stride): the kernel's input layout."""
    hd = x.shape[-1]
    return x if x.stride(2) == 1 and x.stride(1) == hd else x.contiguous()


Rotary = tuple[Tensor, Tensor] | None  # (cos, sin) fp32 (max document length, rotary_dim / 2), or none


def rotary_tables(inv_freq: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """cos and sin of position · inv_freq for positions 0 … max_len - 1: (max_len, len(inv_freq)) fp32 each,
    the angles ``plm.model.transformer.Rotary`` uses for a token at that index of its document."""
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq.float()[None]
    return angles.cos().contiguous(), angles.sin().contiguous()


def _rotary_args(rotary: Rotary) -> tuple:
    """The kernel's last four arguments: cos, sin, rotary width / 2, table rows (null, null, 0, 0 without)."""
    if rotary is None:
        return None, None, 0, 0
    cos, sin = rotary
    return cos.data_ptr(), sin.data_ptr(), cos.shape[1], cos.shape[0]


def _rejected(hd: int, rotary: Rotary) -> str:
    if rotary is None:
        return f"plm CPU attention takes even head sizes from 2 to 64, not {hd}"
    return (
        f"plm CPU attention rejected head size {hd} with rotary tables {tuple(rotary[0].shape)}: the tables "
        f"need at least the longest document's length rows and at most head size / 2 columns"
    )


def _forward(
    q: Tensor, k: Tensor, v: Tensor, cu: Tensor, causal: bool, rotary: Rotary
) -> tuple[Tensor, Tensor]:
    n, nh, hd = q.shape
    out = torch.empty(n, nh, hd, dtype=q.dtype)
    lse = torch.empty(n, nh, dtype=torch.float32)
    rc = library().plm_attention_forward(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        q.stride(0),
        k.stride(0),
        v.stride(0),
        out.data_ptr(),
        lse.data_ptr(),
        cu.data_ptr(),
        cu.numel() - 1,
        nh,
        hd,
        int(causal),
        1.0 / math.sqrt(hd),
        torch.get_num_threads(),
        *_rotary_args(rotary),
    )
    if rc:
        raise ValueError(_rejected(hd, rotary))
    return out, lse


def _backward(
    saved: tuple[Tensor, ...], dout: Tensor, causal: bool, rotary: Rotary, grads: tuple[Tensor, ...]
) -> None:
    """Writes dq, dk, dv into ``grads`` (three (N, nh, hd) views sharing one row stride)."""
    q, k, v, out, lse, cu = saved
    dout = _rows(dout.to(out.dtype))
    _, nh, hd = q.shape
    dq, dk, dv = grads
    rc = library().plm_attention_backward(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        dout.data_ptr(),
        q.stride(0),
        k.stride(0),
        v.stride(0),
        out.stride(0),
        dout.stride(0),
        lse.data_ptr(),
        dq.data_ptr(),
        dk.data_ptr(),
        dv.data_ptr(),
        dq.stride(0),
        cu.data_ptr(),
        cu.numel() - 1,
        nh,
        hd,
        int(causal),
        1.0 / math.sqrt(hd),
        torch.get_num_threads(),
        *_rotary_args(rotary),
    )
    if rc:
        raise ValueError(_rejected(hd, rotary))


class _VarlenAttention(torch.autograd.Function):
    """q, k, v given separately (already rotated, or no rotary): three gradients."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool) -> Tensor:
        q, k, v = _rows(q), _rows(k), _rows(v)
        cu = cu_seqlens.to(torch.int32).contiguous()
        out, lse = _forward(q, k, v, cu, causal, None)
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q = ctx.saved_tensors[0]
        grads = tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))
        _backward(ctx.saved_tensors, dout, ctx.causal, None, grads)
        return *grads, None, None


class _VarlenRotaryAttention(torch.autograd.Function):
    """The fused q, k, v projection output (N, 3, nh, hd), rotary applied inside the kernel: one gradient in
    the same layout, so neither the rotary nor the split into q, k, v costs a pass or a copy either way."""

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Tensor, sin: Tensor, cu_seqlens: Tensor, causal: bool) -> Tensor:
        if qkv.stride(3) != 1 or qkv.stride(2) != qkv.shape[3]:
            qkv = qkv.contiguous()
        q, k, v = qkv.unbind(1)
        cu = cu_seqlens.to(torch.int32).contiguous()
        out, lse = _forward(q, k, v, cu, causal, (cos, sin))
        ctx.save_for_backward(q, k, v, out, lse, cu, cos, sin)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        *saved, cos, sin = ctx.saved_tensors
        n, nh, hd = saved[0].shape
        dqkv = torch.empty(n, 3, nh, hd, dtype=saved[0].dtype)
        _backward(tuple(saved), dout, ctx.causal, (cos, sin), dqkv.unbind(1))
        return dqkv, None, None, None, None


def varlen_attention_bf16(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, causal: bool) -> Tensor:
    """Attention within each document: q, k, v (N, nh, hd) bf16 on CPU, documents given by ``cu_seqlens``
    (n_docs + 1 first indices, the last = N) → (N, nh, hd) bf16. Check ``supports(q)`` first."""
    return _VarlenAttention.apply(q, k, v, cu_seqlens, causal)


def varlen_rotary_attention_bf16(
    qkv: Tensor, cos: Tensor, sin: Tensor, cu_seqlens: Tensor, causal: bool
) -> Tensor:
    """Rotary + attention within each document from the unrotated projections ``qkv`` (N, 3, nh, hd) bf16 on
    CPU → (N, nh, hd) bf16. A token's rotary position is its index in its document, with angles from
    ``rotary_tables`` (at least the longest document's length rows); channels past 2 · cos.shape[1] are not
    rotated (partial rotary). Check ``supports(qkv[:, 0])`` first."""
    if (
        cos.dtype != torch.float32
        or sin.dtype != torch.float32
        or sin.shape != cos.shape
        or not cos.is_contiguous()
        or not sin.is_contiguous()
    ):
        raise ValueError(
            f"rotary tables must be contiguous fp32 of one shape; got {tuple(cos.shape)} {cos.dtype}, "
            f"{tuple(sin.shape)} {sin.dtype}"
        )
    return _VarlenRotaryAttention.apply(qkv, cos, sin, cu_seqlens, causal)
