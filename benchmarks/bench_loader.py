"""Data-loader throughput vs what training consumes: the loader must never be the bottleneck.

plm: tokens/s of packed micro-batches produced by ``ProteinDataModule.train_dataloader()`` (in the main
process, ``num_workers=0``: the worst case) from a ``plm data prepare`` directory of the bundled
sample. Peer: tokens/s that full training steps of ``MaskedLM(size="35m")`` consume on this CPU with the
same rows (forward, backward, clip, AdamW), the faster of fp32 and bf16 autocast. ratio = headroom.
    nice -n 10 python -m benchmarks.bench_loader [--batches 40] [--steps 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import record
from plm.data.datamodule import ProteinDataModule
from plm.data.prepare import prepare
from plm.lit import MaskedLM

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def loader_rate(dm: ProteinDataModule, batches: int) -> float:
    it = iter(dm.train_dataloader())
    next(it)  # warm-up (first plan, page-in)
    tokens, t0 = 0, time.perf_counter()
    for _ in range(batches):
        tokens += next(it)["tokens"].numel()
    return tokens / (time.perf_counter() - t0)


def train_rate(dm: ProteinDataModule, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = MaskedLM(size="35m", total_steps=10_000)
    opt = model.configure_optimizers()["optimizer"]
    batches = iter(dm.train_dataloader())

    def step() -> int:
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch["tokens"].numel()

    step()  # warm-up
    tokens, t0 = 0, time.perf_counter()
    for _ in range(steps):
        tokens += step()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=40, help="loader batches timed")
    p.add_argument("--steps", type=int, default=3, help="35m training steps timed per precision")
    p.add_argument("--row-len", type=int, default=1024)
    p.add_argument("--rows", type=int, default=4, help="packed rows per micro-batch")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plm_bench_loader_"))
    try:
        prepare(
            {"uniprot": [SAMPLE / "uniprot.fasta.gz"], "metagenomic": [SAMPLE / "metagenomic.fasta.gz"]},
            tmp,
            on_invalid="skip",
            progress=False,
        )
        dm = ProteinDataModule(
            sources={"uniprot": str(tmp / "uniprot"), "metagenomic": str(tmp / "metagenomic")},
            row_len=args.row_len,
            rows_per_batch=args.rows,
        )
        dm.setup()
        load = max(loader_rate(dm, args.batches) for _ in range(2))
        rates = {prec: train_rate(dm, args.steps, prec == "bf16") for prec in ("fp32", "bf16")}
        best = max(rates, key=rates.get)
        print(f"loader {load:,.0f} tokens/s; 35m training consumes {rates} tokens/s")
        record(
            "loader",
            load,
            rates[best],
            "tokens/s (computed tokens)",
            row_len=args.row_len,
            rows=args.rows,
            consumer=f"MaskedLM 35m {best} train step on {torch.get_num_threads()} CPU threads",
            consumer_rates={k: round(v, 1) for k, v in rates.items()},
            note="loader: ProteinDataModule train loader from a prepared dir, num_workers=0",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
