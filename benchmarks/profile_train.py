"""torch.profiler breakdown of one plm MLM training step (forward, backward, clip, AdamW) on CPU.

Not part of `make bench` (no peer, no figure): the tool behind issue #9's choices. Per op it keeps the
smallest self time over ``--profiles`` profiled steps of the same batch (the least disturbed by other
jobs on a shared machine), groups ops into attention / matmul / rest, and prints the FLOP/s attention
and matmuls reach (attention on the Σ len² same-document pairs, matmuls 6 FLOPs per weight per token).
    nice -n -10 python -m benchmarks.profile_train [--size 35m] [--rows 4] [--precision bf16|fp32] [--top 20]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import profile

from benchmarks.bench_train import data_module
from plm.callbacks.monitor import attended_pairs
from plm.lit import MaskedLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="35m")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--profiles", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    dm, _ = data_module(args.rows)
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = MaskedLM(size=args.size, total_steps=10_000)
    opt = model.configure_optimizers()["optimizer"]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, _ = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    best: dict[str, float] = defaultdict(lambda: float("inf"))
    calls: dict[str, int] = {}
    walls = []
    for _ in range(args.profiles):
        t0 = time.perf_counter()
        with profile() as prof:
            step()
        walls.append(time.perf_counter() - t0)
        for e in prof.key_averages():
            best[e.key] = min(best[e.key], e.self_cpu_time_total / 1e6)
            calls[e.key] = e.count
    total = sum(best.values())
    cfg, n = model.config, batch["tokens"].numel()
    groups = {
        "attention": lambda k: (
            "scaled_dot_product" in k or k.lstrip("_").startswith("Varlen")
        ),  # plm's kernels
        "matmul": lambda k: k in ("aten::mm", "aten::addmm"),
    }
    flops = {
        "attention": 12.0 * cfg.n_layer * cfg.n_embd * attended_pairs(batch["tokens"], batch["doc_ids"]),
        "matmul": cfg.training_flops(n, 0),
    }
    print(
        f"{args.size} {args.precision}, {n} tokens, {torch.get_num_threads()} threads; step wall "
        f"{min(walls):.2f}s (best of {args.profiles}), sum of per-op minima {total:.2f}s"
    )
    for name, match in groups.items():
        t = sum(v for k, v in best.items() if match(k))
        print(
            f"  {name:<10} {t:6.2f}s {100 * t / total:5.1f}%  {flops[name] / max(t, 1e-9) / 1e9:7.1f} GFLOP/s"
        )
    rest = total - sum(sum(v for k, v in best.items() if m(k)) for m in groups.values())
    print(f"  {'rest':<10} {rest:6.2f}s {100 * rest / total:5.1f}%")
    for k in sorted(best, key=lambda k: -best[k])[: args.top]:
        print(f"    {k[:60]:<60} {best[k]:7.3f}s {100 * best[k] / total:5.1f}%  {calls[k]:5d} calls")


if __name__ == "__main__":
    main()
