"""MLM training throughput (real tokens/s) of plm vs transformers EsmForMaskedLM with padded batches,
MFU at 35m in bf16 against this machine's measured matmul peak, and packing efficiency.

Same shape, same optimizer (AdamW), same dtype choice (bf16 autocast), same real sequences, same
script. The peer gets its standard recipe: random batches of whole sequences (cropped to 1024)
padded to the longest one. plm packs rows of 1024 tokens with document masks.
    python benchmarks/bench_train.py [--steps 6] [--sizes 8m,35m]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import interleaved, record
from plm.data.datamodule import ProteinDataModule
from plm.lit import MaskedLM
from plm.model.config import config_for
from plm.tokenizer import CLS, EOS, MASK, PAD

ROW_LEN = 1024


def plm_step_fn(size: str, rows: int):
    dm = ProteinDataModule(row_len=ROW_LEN, rows_per_batch=rows)
    dm.setup()
    it = iter(dm.train_dataloader())
    model = MaskedLM(size=size, total_steps=10_000)
    opt = model.configure_optimizers()["optimizer"]

    def step() -> tuple[int, int]:
        batch = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(batch["n_real"]), batch["tokens"].numel()

    return step, dm


def peer_step_fn(size: str, dm: ProteinDataModule, tokens_per_step: int):
    from transformers import EsmConfig, EsmForMaskedLM

    cfg = config_for(size)
    hf = EsmForMaskedLM(EsmConfig(vocab_size=33, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                   num_attention_heads=cfg.n_head, intermediate_size=cfg.ffn, pad_token_id=PAD,
                                   mask_token_id=MASK, position_embedding_type="rotary", token_dropout=True,
                                   max_position_embeddings=ROW_LEN + 2, attn_implementation="sdpa"))
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    stores = dm.train_stores
    rng = np.random.default_rng(0)

    def batch():
        seqs, n = [], 0
        while n < tokens_per_step:  # whole sequences until the same real-token budget as plm
            s = stores[rng.integers(len(stores))]
            r = s.get(int(rng.integers(len(s))))[: ROW_LEN - 2]
            seqs.append(r)
            n += len(r) + 2
        width = max(len(r) for r in seqs) + 2
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, r in enumerate(seqs):
            ids[i, : len(r) + 2] = torch.tensor([CLS, *r.tolist(), EOS])
        real = ids != PAD
        sel = real & (torch.rand(ids.shape) < 0.15) & (ids != CLS) & (ids != EOS)
        labels = torch.where(sel, ids, torch.full_like(ids, -100))
        inputs = torch.where(sel, torch.full_like(ids, MASK), ids)
        return inputs, real.long(), labels, int(real.sum()), ids.numel()

    def step() -> tuple[int, int]:
        inputs, attn, labels, n_real, n_all = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = hf(input_ids=inputs, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return n_real, n_all

    return step


def measure(step, steps: int, warmup: int = 2):
    for _ in range(warmup):
        step()
    real = total = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        r, a = step()
        real, total = real + r, total + a
    dt = time.perf_counter() - t0
    return real / dt, total / dt


def matmul_peak(dtype=torch.bfloat16, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sizes", default="8m,35m")
    p.add_argument("--rows", type=int, default=4, help="packed rows of 1024 per plm step")
    args = p.parse_args()
    torch.manual_seed(0)
    for size in args.sizes.split(","):
        plm_step, dm = plm_step_fn(size, args.rows)
        peer_step = peer_step_fn(size, dm, args.rows * ROW_LEN)
        res = interleaved({
            "plm": lambda: measure(plm_step, args.steps)[0],
            "peer": lambda: measure(peer_step, args.steps)[0],
        }, rounds=2)
        record(f"train_mlm_{size}", res["plm"], res["peer"], "real tokens/s",
               note="bf16 autocast, AdamW, packed rows of 1024 vs padded random batches")
        if size == "35m":
            peak = max(matmul_peak() for _ in range(3))
            _, computed = measure(plm_step, args.steps)
            flops = config_for(size).flops_per_token(ROW_LEN, attention=True) * computed
            record("mfu_35m_bf16", flops, peak, "FLOP/s (ratio = MFU)",
                   note="model FLOPs incl. attention (PaLM formula) vs best large bf16 torch.matmul")
    dm = ProteinDataModule(row_len=ROW_LEN, rows_per_batch=64)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    eff = int(b["n_real"]) / b["tokens"].numel()
    record("packing", eff, 1.0, "real / computed tokens", note="bundled sample, rows of 1024")


if __name__ == "__main__":
    main()
