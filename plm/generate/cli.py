"""``plm generate``: sample proteins from a CLM checkpoint into a FASTA file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from plm.errors import add_debug_argument, one_line_errors
from plm.generate.sampling import Sample, SamplingConfig, generate
from plm.utils.atomic import atomic_file


def checkpoint_objective(path: str | os.PathLike) -> str:
    """The objective the weights were saved under (a ``.ckpt`` after a CLM→MLM switch says 'mlm')."""
    from plm.model.record import read_record

    return read_record(path).objective


def write_fasta(samples: list[Sample], path: str | os.PathLike, header: str = "") -> Path:
    """One record per sample; the header carries how it ended and its perplexity under the CLM."""
    path = Path(path)
    with atomic_file(path, "w") as fh:  # an interrupted run never leaves a truncated FASTA
        fh.writelines(f">sample_{i} length={len(s.sequence)} stop={s.stop} ppl={s.perplexity:.3f}{header}\n"
                      f"{s.sequence}\n" for i, s in enumerate(samples))
    return path


@one_line_errors("plm generate", expected=(ValueError, FileNotFoundError))  # CheckpointError is a ValueError
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="plm generate", description="Sample proteins from a causal plm model.")
    p.add_argument("--checkpoint", required=True, help="plm export directory or Lightning .ckpt of a CLM")
    p.add_argument("--num", type=int, default=100, help="number of sequences")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed + settings + batch size = same samples")
    p.add_argument("--out", required=True, help="FASTA file to write")
    d = SamplingConfig()  # the defaults live there (ProGen2's released example)
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="softmax temperature (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p,
                   help="nucleus sampling mass (1 = off; default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help="CTRL penalty on residues already present (> 1)")
    p.add_argument("--min-length", type=int, default=d.min_length,
                   help="residues (prompt included) before <eos> is allowed")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="most residues per sequence (prompt included)")
    p.add_argument("--prompt", default="", help="N-terminal residues every sample starts with (e.g. M)")
    p.add_argument("--greedy", action="store_true", help="arg-max decoding instead of sampling")
    p.add_argument("--batch-size", type=int, default=32, help="sequences decoded together")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    add_debug_argument(p)
    a = p.parse_args(argv)
    if a.num < 1:
        p.error(f"--num {a.num}: must be >= 1")
    try:
        cfg = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                             repetition_penalty=a.repetition_penalty, min_length=a.min_length,
                             max_length=a.max_length, greedy=a.greedy)
    except ValueError as err:
        p.error(str(err))
    from plm.model.io import load_with_record
    from plm.model.record import read_record, require_objective

    require_objective(read_record(a.checkpoint), "clm", "generation")  # before any weight is read
    model, _ = load_with_record(a.checkpoint)
    samples = generate(model, a.num, cfg, prompts=a.prompt, seed=a.seed, batch_size=a.batch_size, device=a.device)
    info = f" seed={a.seed} T={a.temperature} top_p={a.top_p} top_k={a.top_k}"
    write_fasta(samples, a.out, info)
    n_eos = sum(s.stop == "eos" for s in samples)
    print(f"wrote {len(samples)} sequences to {a.out} ({n_eos} ended with <eos>, {len(samples) - n_eos} hit --max-length)")
    return 0
