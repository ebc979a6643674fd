"""``plm generate``: sample proteins from a CLM checkpoint into a FASTA file."""

from __future__ import annotations

import os
from pathlib import Path

from plm.command import command
from plm.errors import PlmError
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
        fh.writelines(
            f">sample_{i} length={len(s.sequence)} stop={s.stop} ppl={s.perplexity:.3f}{header}\n"
            f"{s.sequence}\n"
            for i, s in enumerate(samples)
        )
    return path


def generate_fasta(
    checkpoint: str,
    out: str,
    num: int = 100,
    seed: int = 0,
    temperature: float = SamplingConfig.temperature,
    top_p: float = SamplingConfig.top_p,
    top_k: int = SamplingConfig.top_k,
    repetition_penalty: float = SamplingConfig.repetition_penalty,
    min_length: int = SamplingConfig.min_length,
    max_length: int = SamplingConfig.max_length,
    prompt: str = "",
    greedy: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
) -> int:
    """Sample proteins from a CLM checkpoint into a FASTA (temperature, top-p, prompts, seed).

    The sampling defaults are plm.generate.sampling.SamplingConfig's (ProGen2's released example).

    Args:
        checkpoint: plm export directory or Lightning .ckpt of a CLM
        out: FASTA file to write
        num: number of sequences
        seed: seed; same seed + settings + batch size = same samples
        temperature: softmax temperature
        top_p: nucleus sampling mass (1 = off)
        top_k: keep the k most likely tokens (0 = off)
        repetition_penalty: CTRL penalty on residues already present (> 1)
        min_length: residues (prompt included) before <eos> is allowed
        max_length: most residues per sequence (prompt included)
        prompt: N-terminal residues every sample starts with (e.g. M)
        greedy: arg-max decoding instead of sampling
        batch_size: sequences decoded together
        device: torch device, e.g. cuda
    """
    if num < 1:
        raise PlmError(f"--num {num}: must be >= 1")
    cfg = SamplingConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        min_length=min_length,
        max_length=max_length,
        greedy=greedy,
    )
    from plm.model.io import load_with_record
    from plm.model.record import read_record, require_objective

    require_objective(read_record(checkpoint), "clm", "generation")  # before any weight is read
    model, _ = load_with_record(checkpoint)
    samples = generate(model, num, cfg, prompts=prompt, seed=seed, batch_size=batch_size, device=device)
    info = f" seed={seed} T={temperature} top_p={top_p} top_k={top_k}"
    write_fasta(samples, out, info)
    n_eos = sum(s.stop == "eos" for s in samples)
    print(
        f"wrote {len(samples)} sequences to {out} ({n_eos} ended with <eos>, {len(samples) - n_eos} hit --max-length)"
    )
    return 0


# CheckpointError is a ValueError; so is a SamplingConfig out of range
main = command(generate_fasta, "plm generate", expected=(ValueError, FileNotFoundError))
