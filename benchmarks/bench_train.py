"""MLM training throughput (real tokens/s) of plm vs transformers EsmForMaskedLM with padded batches at
8m and 35m, MFU at 35m in bf16 against this machine's measured matmul peak, and packing efficiency.

Same shape, same optimizer (foreach AdamW, β = (0.9, 0.95), weight decay 0.1, clipping 1.0), same
dtype choice (bf16 autocast), same real sequences ($PLM_DATA_ROOT/pretrain, default
/work/shared/data/pretrain, when present, else the bundled sample drawn from it), same script, interleaved
rounds replaying the same batches (best kept). The peer gets its standard recipe: random whole sequences (cropped to 1024) until the same number of real
tokens as plm's step, padded to the longest of them,
with ESM-2's own dropout of 0 (as plm; EsmConfig's default 0.1 would add work plm does not do and push
its SDPA onto the memory-hungry math path). plm packs rows of 1024 tokens with document ids.

MFU = model FLOP/s / peak. Model FLOPs are exact for the batches trained (``ModelConfig.training_flops``:
6 per matmul parameter per real token, attention on the Σ len² same-document pairs, the LM head on the
masked positions only); the peak is the best large bf16 ``torch.matmul`` measured around the training
rounds. Diagnostics at 35m: the same step in fp32, and in bf16 with one dense (B, 1, T, T) document
mask per layer instead of per-document attention (the attention layout before issue #9).
    nice -n -10 python -m benchmarks.bench_train [--steps 4] [--sizes 8m,35m] [--rows 4] [--compile]
    PLM_DATA_ROOT=DIR nice -n -10 python -m benchmarks.bench_train   # reads DIR/pretrain/{uniprot,metagenomic}
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import record
from plm.callbacks.monitor import attended_pairs, matmul_peak
from plm.data.datamodule import ProteinDataModule
from plm.lit import MaskedLM
from plm.lit.objectives import IGNORE
from plm.model.attention import attention_mask
from plm.model.config import config_for
from plm.tokenizer import CLS, EOS, MASK, PAD

ROW_LEN = 1024
DATA_ROOT_ENV = "PLM_DATA_ROOT"  # the data root `plm evaluate` reads too (plm.evaluation.tasks.DATA_ROOT_ENV)
DEFAULT_DATA_ROOT = "/work/shared/data"  # the development machine's, when the variable is unset


def pretrain_sources() -> tuple[Path, dict[str, Path]]:
    """``$PLM_DATA_ROOT/pretrain`` (default ``/work/shared/data/pretrain``) and its two mixture files."""
    root = Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT) / "pretrain"
    return root, {
        "uniprot": root / "uniprot" / "uniprot_mix.fasta.gz",
        "metagenomic": root / "metagenomic" / "metagenomic_mix.fasta.gz",
    }


#: One optimizer step on the i-th batch of a fixed list → (real tokens, computed tokens, model FLOPs). Every
#: round replays the same batches, so keeping the best round filters out the shared machine's noise, not the
#: luck of a draw (best-of-rounds over fresh random batches had favoured the peer by ~10%).
Step = Callable[[int], tuple[int, int, float]]


def data_module(rows: int) -> tuple[ProteinDataModule, str]:
    root, files = pretrain_sources()
    if all(p.exists() for p in files.values()):
        sources, name = {k: str(v) for k, v in files.items()}, str(root)
    else:
        sources, name = None, "bundled sample (data/sample)"
    dm = ProteinDataModule(sources=sources, row_len=ROW_LEN, rows_per_batch=rows)
    dm.setup()
    return dm, name


def plm_step_fn(
    size: str,
    dm: ProteinDataModule,
    n_batches: int,
    bf16: bool = True,
    dense_mask: bool = False,
    compile: bool = False,
) -> Step:
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(n_batches)]
    torch.manual_seed(0)
    model = MaskedLM(size=size, total_steps=10_000, compile=compile)
    opt = model.configure_optimizers()["optimizer"]
    cfg = model.config

    def loss_dense(batch):  # the pre-#9 attention: one SDPA call per layer with a (B, 1, T, T) mask
        inputs, labels = model.objective_inputs(batch)
        hidden, _ = model.model.hidden(
            inputs, batch["doc_ids"], attn_mask=attention_mask(batch["doc_ids"], False)
        )
        sel = labels != IGNORE
        return F.cross_entropy(model.model.head(hidden[sel]).float(), labels[sel]), sel.sum()

    def step(i: int) -> tuple[int, int, float]:
        batch = batches[i]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, n_pred = loss_dense(batch) if dense_mask else model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_real = int(batch["n_real"])
        flops = cfg.training_flops(n_real, attended_pairs(batch["tokens"], batch["doc_ids"]), int(n_pred))
        return n_real, batch["tokens"].numel(), flops

    return step


def peer_batches(
    dm: ProteinDataModule, tokens_per_step: int, n_batches: int, seed: int = 0
) -> list[list[np.ndarray]]:
    """The peer's standard recipe: whole random sequences (cropped to the row length) until the same number
    of real tokens as plm's step, one list per step."""
    stores, rng = dm.train_stores, np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        seqs, n = [], 0
        while n < tokens_per_step:
            s = stores[rng.integers(len(stores))]
            r = s.get(int(rng.integers(len(s))))[: ROW_LEN - 2]
            seqs.append(r)
            n += len(r) + 2
        batches.append(seqs)
    return batches


def representative_peer_batches(
    dm: ProteinDataModule, tokens_per_step: int, steps: int, pool: int = 300, seed: int = 0
) -> tuple[list[list[np.ndarray]], float]:
    """Warm-up batch + ``steps`` timed peer batches that pad like the recipe does on average, and the pool's
    real fraction. A few random batches do not: the real fraction of 3-step draws ranged 0.29-0.55 around
    0.40, so the peer's rate would be the luck of the draw. Stratified instead: of ``pool`` draws sorted by
    real fraction, the timed batches are the evenly spaced quantiles (i + 0.5) / steps, the warm-up the median.
    """
    drawn = peer_batches(dm, tokens_per_step, pool, seed)
    order = np.argsort([real_fraction([b]) for b in drawn], kind="stable")
    timed = [drawn[order[int((i + 0.5) / steps * pool)]] for i in range(steps)]
    return [drawn[order[pool // 2]], *timed], real_fraction(drawn)


def real_fraction(batches: list[list[np.ndarray]]) -> float:
    """Real / computed tokens of these peer batches when each is padded to its longest sequence."""
    real = sum(len(r) + 2 for seqs in batches for r in seqs)
    return real / sum(len(seqs) * (max(len(r) for r in seqs) + 2) for seqs in batches)


def peer_step_fn(size: str, batches: list[list[np.ndarray]], micro_batch: int) -> Step:
    from transformers import EsmConfig, EsmForMaskedLM

    cfg = config_for(size)
    torch.manual_seed(0)
    hf = EsmForMaskedLM(
        EsmConfig(
            vocab_size=33,
            hidden_size=cfg.n_embd,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            intermediate_size=cfg.ffn,
            pad_token_id=PAD,
            mask_token_id=MASK,
            position_embedding_type="rotary",
            token_dropout=True,
            max_position_embeddings=ROW_LEN + 2,
            attn_implementation="sdpa",
            attention_probs_dropout_prob=0.0,
            hidden_dropout_prob=0.0,
        )
    )  # as ESM-2, as plm
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

    def padded(seqs):
        width = max(len(r) for r in seqs) + 2
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, r in enumerate(seqs):
            ids[i, : len(r) + 2] = torch.tensor([CLS, *r.tolist(), EOS])
        real = ids != PAD
        sel = real & (torch.rand(ids.shape) < 0.15) & (ids != CLS) & (ids != EOS)
        labels = torch.where(sel, ids, torch.full_like(ids, -100))
        inputs = torch.where(sel, torch.full_like(ids, MASK), ids)
        return inputs, real.long(), labels, int(real.sum()), ids.numel()

    def step(i: int) -> tuple[int, int, float]:
        seqs = batches[i]
        n = sum(len(r) + 2 for r in seqs)
        n_real = n_all = 0
        # micro-batches of `micro_batch` sequences, each padded to its longest, gradients accumulated
        mb = micro_batch or len(seqs)
        for start in range(0, len(seqs), mb):
            inputs, attn, labels, r, a = padded(seqs[start : start + mb])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = hf(input_ids=inputs, attention_mask=attn, labels=labels).loss
            (loss * r / n).backward()
            n_real, n_all = n_real + r, n_all + a
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return n_real, n_all, float("nan")

    return step


WARMUP = 1


def measure(step: Step, steps: int) -> dict[str, float]:
    """Batch 0 warms up (allocator, kernel selection); batches 1..steps are timed."""
    for i in range(WARMUP):
        step(i)
    real = total = 0
    flops = 0.0
    t0 = time.perf_counter()
    for i in range(WARMUP, WARMUP + steps):
        r, a, f = step(i)
        real, total, flops = real + r, total + a, flops + f
    dt = time.perf_counter() - t0
    return {"real": real / dt, "computed": total / dt, "flops": flops / dt}


def best_of(results: list[dict[str, float]]) -> dict[str, float]:
    return max(results, key=lambda r: r["real"])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"data: ${DATA_ROOT_ENV}/pretrain (default {DEFAULT_DATA_ROOT}/pretrain) when it has "
        "uniprot/uniprot_mix.fasta.gz and metagenomic/metagenomic_mix.fasta.gz, else the "
        "bundled sample",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=4,
        help="optimizer steps timed per round (after 1 warm-up); the same batches every round",
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    p.add_argument("--sizes", default="8m,35m")
    p.add_argument("--rows", type=int, default=4, help="packed rows of 1024 per plm step")
    p.add_argument(
        "--peer-micro-batch",
        type=int,
        default=0,
        help="split the peer's batch into padded micro-batches of this many sequences (0: one batch)",
    )
    p.add_argument("--compile", action="store_true", help="plm with compile=True (torch.compile per block)")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the 35m fp32 and dense-mask runs")
    args = p.parse_args()
    dm, data_name = data_module(args.rows)
    common = {
        "data": data_name,
        "rows": args.rows,
        "row_len": ROW_LEN,
        "steps": args.steps,
        "rounds": args.rounds,
        "compile": args.compile,
        "peer_micro_batch": args.peer_micro_batch,
    }
    for size in args.sizes.split(","):
        load_before = os.getloadavg()[0]
        n_batches = WARMUP + args.steps
        plm_step = plm_step_fn(size, dm, n_batches, compile=args.compile)
        batches, expected = representative_peer_batches(dm, args.rows * ROW_LEN, args.steps)
        peer_step = peer_step_fn(size, batches, args.peer_micro_batch)
        padding = {
            "peer_real_fraction_timed": real_fraction(batches[WARMUP:]),
            "peer_real_fraction_pool": expected,
        }
        runs: dict[str, list[dict[str, float]]] = {"plm": [], "peer": []}
        peaks: list[float] = []
        if size == "35m":
            peaks.append(matmul_peak(torch.bfloat16))
        for _ in range(args.rounds):  # interleaved: plm, peer, plm, peer
            runs["plm"].append(measure(plm_step, args.steps))
            runs["peer"].append(measure(peer_step, args.steps))
            if size == "35m":
                peaks.append(matmul_peak(torch.bfloat16))
        ours, peer = best_of(runs["plm"]), best_of(runs["peer"])
        load = {
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        }
        suffix = "_compiled" if args.compile else ""
        record(
            f"train_mlm_{size}{suffix}",
            ours["real"],
            peer["real"],
            "real tokens/s",
            note="bf16 autocast, foreach AdamW, packed rows of 1024 vs padded random batches",
            plm_computed_tokens_per_s=ours["computed"],
            peer_computed_tokens_per_s=peer["computed"],
            rounds_real_tokens_per_s={k: [round(r["real"], 1) for r in v] for k, v in runs.items()},
            **padding,
            **load,
            **common,
        )
        if size != "35m":
            continue
        diagnostics = {}
        if not args.no_diagnostics:
            for name, kw in (("fp32", {"bf16": False}), ("bf16_dense_mask", {"dense_mask": True})):
                diagnostics[name] = round(
                    measure(plm_step_fn(size, dm, n_batches, **kw), args.steps)["real"], 1
                )
            peaks.append(matmul_peak(torch.bfloat16))
        peak = max(peaks)
        record(
            f"mfu_35m_bf16{suffix}",
            ours["flops"],
            peak,
            "FLOP/s (ratio = MFU)",
            note="exact model FLOPs (matmuls on real tokens, attention on Σ len² same-document pairs, "
            "LM head on masked positions) / best large bf16 torch.matmul measured in this run",
            peak_measurements=[round(x / 1e9, 1) for x in peaks],
            real_tokens_per_s=ours["real"],
            palm_formula_flops_per_s=config_for(size).flops_per_token(ROW_LEN) * ours["computed"],
            diagnostics_real_tokens_per_s={"bf16": round(ours["real"], 1), **diagnostics},
            load_average_after=round(os.getloadavg()[0], 2),
            **common,
        )
    big, _ = data_module(64)
    b = next(iter(big.train_dataloader()))
    record(
        "packing",
        int(b["n_real"]) / b["tokens"].numel(),
        1.0,
        "real / computed tokens",
        note="64 packed rows of 1024",
        data=data_name,
        attended_pairs_fraction=attended_pairs(b["tokens"], b["doc_ids"]) / (b["tokens"].numel() * ROW_LEN),
    )


if __name__ == "__main__":
    main()
