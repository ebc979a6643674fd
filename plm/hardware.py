"""Hardware facts the planner, the trainer and the throughput monitor share.

Dense bf16 tensor-core peaks (FLOP/s) from vendor data sheets, without sparsity: the denominator of
MFU and of ``plm plan --gpu-hours``. CPU instruction-set flags: bf16 matrix products are ≈3.5× faster
than fp32 on CPUs with AVX512-BF16 or AMX, and ≈40× *slower* on CPUs without them (measured: 0.45 vs
19 GFLOP/s on an AVX2-only EPYC), so the precision of a CPU run depends on them.
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

GPU_PEAK_BF16: dict[str, float] = {
    "v100": 125e12,  # fp16 tensor cores (no bf16 on V100)
    "a10g": 125e12,
    "a100": 312e12,
    "l40s": 362e12,
    "h100": 989e12,  # SXM
    "h200": 989e12,
    "b200": 2250e12,
    "mi250x": 383e12,
    "mi300x": 1307e12,
}


#: memory per GPU (GB, data sheets; the larger variant where there are two: A100 80 GB, V100 32 GB) for
#: ``plm train --dry-run``'s memory plan (plm/scaling/memory.py); a real run reads the device's own size
GPU_MEMORY_GB: dict[str, float] = {
    "v100": 32,
    "a10g": 24,
    "a100": 80,
    "l40s": 48,
    "h100": 80,
    "h200": 141,
    "b200": 192,
    "mi250x": 128,
    "mi300x": 192,
}


def gpu_peak_bf16(name: str) -> float | None:
    """The data-sheet peak of a GPU whose name (``torch.cuda.get_device_name()`` or ``h100``) contains a
    known model, None when unknown."""
    name = name.lower()
    return next((peak for gpu, peak in GPU_PEAK_BF16.items() if gpu in name), None)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags the CPU advertises (empty where /proc/cpuinfo does not exist)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_flags(flags: tuple[str, ...], cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU advertises every flag in ``flags`` (Linux only; False elsewhere)."""
    have = cpu_flags(cpuinfo)
    return bool(have) and all(f in have for f in flags)


def cpu_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX)."""
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))
