"""``make gpu-check``: what only a CUDA machine can show, in one command, under 10 minutes.

1. **Attention parity** (bf16, forward and backward): every CUDA varlen kernel plm can dispatch to (PyTorch's
   ``varlen_attn``, flash-attn when installed) against SDPA with a dense document mask on the same packed
   rows, both measured against an fp32 reference. Tolerance, as flash-attention's own tests state it: the
   kernel's error may be at most twice the bf16 dense path's error plus 1e-3 (bf16 keeps 8 bits of
   mantissa, so ~4e-3 relative per element is rounding, not a bug). Then the whole model: logits and
   gradients of ``PLM_ATTENTION=varlen`` vs the dense-mask path under bf16 autocast, same rule.
2. **FSDP2 on 2 GPUs** (when there are 2): ``plm fit`` of the 150m shape for 3 steps with
   ``plm.strategies.FSDP2`` (meta-device init, one unit per block, activation checkpointing, bf16 policy),
   NCCL; passes when it exits 0 with finite losses.
3. **Throughput**: real training steps (AdamW, clipping, bf16 autocast) of 150m and 650m on one GPU on
   packed 1024-token rows; real tokens/s and MFU = exact model FLOPs (``ModelConfig.training_flops``:
   attention on the documents' Σ len² pairs, the MLM head on masked positions) / time / the GPU's
   data-sheet bf16 peak (plm/hardware.py). Printed against the targets: ≥ 40% at 650m on H100-class GPUs
   (Megatron's ESM-2 reaches ≈ 43%), ≥ 30% at ≈ 150m.

Results go to ``benchmarks/results_gpu.json``. On a machine without CUDA it says so and exits 0 without
measuring anything.
    python -m benchmarks.gpu_check [--sizes 150m,650m] [--steps 20] [--skip-fsdp]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).with_name("results_gpu.json")
REPO = Path(__file__).resolve().parents[1]
TARGET_MFU = {"650m": 0.40, "150m": 0.30}
ROWS = {"150m": 16, "650m": 8}  # packed 1024-token rows per step: fits 40 GB and keeps the GPU busy


def no_cuda_line() -> str:
    return (
        f"gpu-check: no CUDA here (torch {torch.__version__} sees no GPU): nothing was measured; run "
        "`make gpu-check` on a machine with NVIDIA GPUs"
    )


# ---- 1. attention parity ------------------------------------------------------------------------------------
def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def packed_docs(rows: int, row_len: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, row_len) document ids with random lengths 20–600, the way packing fills rows."""
    docs = torch.empty(rows, row_len, dtype=torch.long)
    for r in range(rows):
        pos, d = 0, 0
        while pos < row_len:
            n = int(torch.randint(20, 600, (1,), generator=gen))
            docs[r, pos : pos + n] = d
            pos, d = pos + n, d + 1
    return docs


def attention_parity(
    device: torch.device, rows: int = 4, row_len: int = 1024, heads: int = 20, head_dim: int = 64
) -> list[dict[str, Any]]:
    """Each CUDA varlen backend vs dense-mask SDPA, forward output and q/k/v gradients, both against fp32."""
    from plm.model import attention as A

    gen = torch.Generator().manual_seed(0)
    docs = packed_docs(rows, row_len, gen).to(device)
    b, t = docs.shape
    seg = A.doc_segments(docs)
    base = [torch.randn(b * t, heads, head_dim, generator=gen).to(device) for _ in range(3)]
    grad_out = torch.randn(b * t, heads, head_dim, generator=gen).to(device)
    out = []
    for causal in (False, True):
        mask = A.attention_mask(docs, causal)

        def dense(q, k, v, mask=mask):
            split = lambda x: x.view(b, t, heads, head_dim).transpose(1, 2)
            y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
            return y.transpose(1, 2).reshape(b * t, heads, head_dim)

        ref = _run(dense, base, grad_out, torch.float32)
        bf16_dense = _run(dense, base, grad_out, torch.bfloat16)
        for backend in ("varlen", "flash"):
            if A.unusable(backend, "cuda", torch.bfloat16, head_dim):
                continue
            kernel = _run(
                lambda q, k, v, c=causal, be=backend: A.varlen_attention(q, k, v, seg, c, be),
                base,
                grad_out,
                torch.bfloat16,
            )
            for i, name in enumerate(("out", "dq", "dk", "dv")):
                err, allowed = rel_err(kernel[i], ref[i]), 2 * rel_err(bf16_dense[i], ref[i]) + 1e-3
                out.append(
                    {
                        "check": f"{backend} vs dense SDPA, {'causal' if causal else 'bidirectional'}, {name}",
                        "error": err,
                        "allowed": allowed,
                        "ok": err <= allowed,
                    }
                )
    return out


def _run(fn, base: list[torch.Tensor], grad_out: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    q, k, v = (x.detach().to(dtype, copy=True).requires_grad_() for x in base)
    y = fn(q, k, v)
    y.backward(grad_out.to(dtype))
    return [y.detach(), q.grad, k.grad, v.grad]


def model_parity(device: torch.device) -> list[dict[str, Any]]:
    """The 150m shape's logits and first-layer q,k,v gradient: PLM_ATTENTION=varlen vs the dense-mask path."""
    from plm.model import attention as A
    from plm.model.config import config_for
    from plm.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(config_for("150m", flavour="esm2")).to(device)
    gen = torch.Generator().manual_seed(1)
    docs = packed_docs(2, 1024, gen).to(device)
    tokens = torch.randint(4, 24, docs.shape, generator=gen).to(device)

    def run(dtype: torch.dtype | None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
            logits = model(tokens, docs, **kw).float()
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), model.blocks[0].attn.qkv.weight.grad.clone()

    dense_mask = A.attention_mask(docs, False)
    ref = run(None, attn_mask=dense_mask)  # fp32 dense
    dense = run(torch.bfloat16, attn_mask=dense_mask)
    out = []
    for backend in ("varlen", "flash"):
        if A.unusable(backend, "cuda", torch.bfloat16, model.config.head_dim):
            continue
        os.environ[A.ENV_VAR] = backend
        try:
            got = run(torch.bfloat16)
        finally:
            os.environ.pop(A.ENV_VAR, None)
        for i, name in enumerate(("logits", "qkv weight grad")):
            err, allowed = rel_err(got[i], ref[i]), 2 * rel_err(dense[i], ref[i]) + 1e-3
            out.append(
                {
                    "check": f"150m model, {backend} vs dense mask, {name}",
                    "error": err,
                    "allowed": allowed,
                    "ok": err <= allowed,
                }
            )
    return out


# ---- 2. FSDP2 on 2 GPUs ---------------------------------------------------------------------------------------
def fsdp_two_gpus() -> dict[str, Any]:
    """3 steps of the 150m shape under plm.strategies.FSDP2 on 2 GPUs, through ``plm fit`` as a user runs it."""
    if torch.cuda.device_count() < 2:
        return {
            "check": "FSDP2 on 2 GPUs",
            "ok": None,
            "note": f"skipped: {torch.cuda.device_count()} GPU(s)",
        }
    strategy = json.dumps(
        {"class_path": "plm.strategies.FSDP2", "init_args": {"activation_checkpointing": True}}
    )
    with tempfile.TemporaryDirectory(prefix="plm-gpu-check-") as root:
        cmd = [
            sys.executable,
            "-m",
            "plm.cli",
            "fit",
            "--config",
            str(REPO / "configs/train/mlm.yaml"),
            "--run_root",
            root,
            "--run_name",
            "fsdp2",
            "--model.init_args.size",
            "150m",
            "--model.init_args.meta_init",
            "true",
            "--trainer.accelerator",
            "gpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            strategy,
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.log_every_n_steps",
            "1",
            "--data.row_len",
            "1024",
            "--data.rows_per_batch",
            "4",
            "--data.val_rows",
            "4",
            "--checkpoint_every",
            "3",
            "--trainer.enable_progress_bar",
            "false",
        ]
        t0 = time.perf_counter()
        res = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=480,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        losses = _logged_losses(Path(root) / "fsdp2" / "csv" / "metrics.csv")
        sharded = sorted(p.name for p in (Path(root) / "fsdp2" / "ckpt" / "last.ckpt").glob("*.distcp"))
    ok = (
        res.returncode == 0
        and len(losses) == 3
        and all(math.isfinite(x) for x in losses)
        and len(sharded) == 2
    )
    return {
        "check": "FSDP2 on 2 GPUs (150m, 3 steps, sharded checkpoint)",
        "ok": ok,
        "losses": losses,
        "shards": sharded,
        "seconds": round(time.perf_counter() - t0, 1),
        **({} if ok else {"stderr": res.stderr[-3000:]}),
    }


def _logged_losses(path: Path) -> list[float]:
    import csv

    if not path.is_file():
        return []
    with open(path) as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


# ---- 3. throughput ------------------------------------------------------------------------------------------------
def throughput(size: str, steps: int, device: torch.device) -> dict[str, Any]:
    """Real tokens/s and MFU of full MLM training steps of ``size`` on one GPU."""
    from benchmarks.bench_train import data_module
    from plm.callbacks.monitor import attended_pairs
    from plm.hardware import gpu_peak_bf16
    from plm.lit import MaskedLM

    dm, data = data_module(ROWS[size])
    it = iter(dm.train_dataloader())
    batches = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(it).items()} for _ in range(steps + 3)
    ]
    torch.manual_seed(0)
    model = MaskedLM(size=size, total_steps=10_000).to(device)
    opt = model.configure_optimizers()["optimizer"]

    def step(batch) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, n_pred = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_real = int(batch["n_real"])
        return model.config.training_flops(
            n_real, attended_pairs(batch["tokens"].cpu(), batch["doc_ids"].cpu()), int(n_pred)
        )

    for batch in batches[:3]:  # warm-up: allocator, kernel selection
        step(batch)
    torch.cuda.synchronize()
    t0, flops = time.perf_counter(), 0.0
    for batch in batches[3:]:
        flops += step(batch)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    real = sum(int(b["n_real"]) for b in batches[3:])
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak_bf16(name)
    mfu = flops / dt / peak if peak else None
    target = TARGET_MFU[size] if peak and _h100_class(name) else None
    return {
        "size": size,
        "gpu": name,
        "rows_per_step": ROWS[size],
        "steps": steps,
        "data": data,
        "real_tokens_per_sec": real / dt,
        "model_tflops_per_sec": flops / dt / 1e12,
        "peak_tflops": (peak or 0) / 1e12,
        "mfu": mfu,
        "target_mfu": target,
        "ok": None if target is None or mfu is None else mfu >= target,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
    }


def _h100_class(name: str) -> bool:
    return any(g in name.lower() for g in ("h100", "h200", "gh200", "h800"))


# ---- driver --------------------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="150m,650m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-fsdp", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(no_cuda_line())
        return 0
    device = torch.device("cuda", 0)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device),
        "gpus": torch.cuda.device_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    report["parity"] = attention_parity(device) + model_parity(device)
    for row in report["parity"]:
        print(
            f"  {'ok ' if row['ok'] else 'BAD'} {row['check']}: error {row['error']:.2e} (allowed {row['allowed']:.2e})"
        )
    report["fsdp2"] = {"ok": None} if args.skip_fsdp else fsdp_two_gpus()
    print(
        f"  {_word(report['fsdp2']['ok'])} {report['fsdp2'].get('check', 'FSDP2')}: "
        f"{report['fsdp2'].get('losses', report['fsdp2'].get('note', 'skipped'))}"
    )
    report["throughput"] = []
    for size in args.sizes.split(","):
        row = throughput(size, args.steps, device)
        report["throughput"].append(row)
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (unknown GPU peak)"
        target = f" (target ≥ {row['target_mfu']:.0%} on H100-class)" if row["target_mfu"] else ""
        print(
            f"  {_word(row['ok'])} {size}: {row['real_tokens_per_sec']:,.0f} real tokens/s, "
            f"{row['model_tflops_per_sec']:.0f} TFLOP/s, MFU {mfu}{target}, peak memory {row['peak_memory_gb']:.1f} GB"
        )
    RESULTS.write_text(json.dumps(report, indent=2, default=float))
    print(f"gpu-check: written {RESULTS}")
    failed = [r for r in report["parity"] if not r["ok"]] + [r for r in [report["fsdp2"]] if r["ok"] is False]
    return 1 if failed else 0


def _word(ok: bool | None) -> str:
    return "ok " if ok else "---" if ok is None else "BAD"


if __name__ == "__main__":
    sys.exit(main())
