"""Accelerator facts the planner and the throughput monitor share.

Dense bf16 tensor-core peaks (FLOP/s) from vendor data sheets, without sparsity: the denominator of
MFU and of ``plm plan --gpu-hours``.
"""

from __future__ import annotations

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


def gpu_peak_bf16(name: str) -> float | None:
    """The data-sheet peak of a GPU whose name (``torch.cuda.get_device_name()`` or ``h100``) contains a
    known model, None when unknown."""
    name = name.lower()
    return next((peak for gpu, peak in GPU_PEAK_BF16.items() if gpu in name), None)
