"""``plm predict``: run a model on the sequences of a FASTA file and write what it says about each.

- A fine-tuned model (the ``final/`` directory ``plm finetune`` writes): its predictions. Per-sequence
  tasks give one row per sequence, per-residue tasks one row per residue; classification rows hold the
  predicted class and every class probability, multi-label rows every label's probability and the labels
  at >= 0.5, regression rows the value in the training targets' units.
- A plain plm language model (export directory or Lightning ``.ckpt``): ``--what embeddings`` (default)
  writes each sequence's mean residue embedding to ``<out>.npy`` (row i = CSV row i) and the CSV lists the
  ids; ``--what logprobs`` writes one row per residue with the log-probability of the observed residue and
  of each of the 20 standard amino acids: from one unmasked pass for an MLM (ESM's per-token logits, not
  masked marginals), from the preceding residues for a CLM.

Every input is checked before the model runs (file, records, lengths, output directory). Sequences are
batched by a budget of padded tokens (``--max-tokens``), longest first, with a progress bar, on the CPU
or a GPU (``--device``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from plm.command import Flag, command
from plm.errors import PlmError
from plm.evaluation.backbone import token_batches
from plm.utils.atomic import atomic_file

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
THRESHOLD = 0.5  # multi-label: a label is predicted at probability >= 0.5


def read_inputs(path: Path, on_invalid: str) -> tuple[list[str], list[str]]:
    """Ids and sequences of a FASTA file (plm's FASTA policy: :mod:`plm.data.fasta`)."""
    from plm.data.fasta import FastaStats, read_fasta
    from plm.tokenizer import decode

    stats = FastaStats()
    records = list(read_fasta(path, on_invalid=on_invalid, stats=stats))
    if stats.rejected:
        reasons = ", ".join(f"{n} {why}" for why, n in stats.rejected.items())
        print(
            f"plm predict: {path}: skipped {sum(stats.rejected.values())} record(s) under --on-invalid "
            f"{on_invalid} ({reasons})",
            file=sys.stderr,
        )
    if not records:
        raise PlmError(f"{path}: no sequences to predict")
    return [r.id for r in records], [decode(r.tokens.tolist()) for r in records]


def check_lengths(ids: list[str], seqs: list[str], limit: int, crop: bool) -> list[str]:
    too_long = [(i, len(s)) for i, s in zip(ids, seqs) if len(s) > limit]
    if too_long and not crop:
        named = ", ".join(f"{i} ({n})" for i, n in too_long[:5]) + (" …" if len(too_long) > 5 else "")
        raise PlmError(
            f"{len(too_long)} sequence(s) longer than the model's {limit} residues: {named}; pass --crop "
            f"to predict on their first {limit} residues, or leave them out"
        )
    return [s[:limit] for s in seqs]


# ---- fine-tuned models ---------------------------------------------------------------------------------------
def prediction_rows(
    model: Any, ids: list[str], seqs: list[str], preds: list[np.ndarray]
) -> tuple[list[str], list[list]]:
    """CSV header and rows of a kept model's predictions (module docstring)."""
    kind, classes = model.kind, model.classes
    multilabel = kind.endswith("multilabel")
    if kind == "sequence_regression":
        return ["id", "length", "prediction"], [
            [i, len(s), f"{float(p):.6g}"] for i, s, p in zip(ids, seqs, preds)
        ]

    def decided(p: np.ndarray) -> str:
        if multilabel:
            return ";".join(c for c, v in zip(classes, p) if v >= THRESHOLD)
        return classes[int(np.argmax(p))]

    probs = [f"p_{c}" for c in classes]
    if not model.per_residue:
        return (
            ["id", "length", "prediction", *probs],
            [[i, len(s), decided(p), *(f"{v:.6g}" for v in p)] for i, s, p in zip(ids, seqs, preds)],
        )
    rows = [
        [i, t + 1, s[t], decided(p[t]), *(f"{v:.6g}" for v in p[t])]
        for i, s, p in zip(ids, seqs, preds)
        for t in range(len(p))
    ]
    return ["id", "position", "residue", "prediction", *probs], rows


# ---- language models ---------------------------------------------------------------------------------------
@torch.no_grad()
def embeddings(
    model: Any, seqs: list[str], causal: bool, layer: int, max_tokens: int, device: Any, progress: bool
) -> np.ndarray:
    """(N, h) mean over each sequence's residues of the ``layer`` representation."""
    from plm.evaluation.backbone import residue_features

    out = np.zeros((len(seqs), model.config.n_embd), dtype=np.float32)
    for idx, tokens in token_batches(seqs, max_tokens, device, progress):
        feats, mask = residue_features(model, tokens, causal, layer)
        m = mask.unsqueeze(-1).to(feats.dtype)
        out[idx] = ((feats * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu().numpy()
    return out


@torch.no_grad()
def logprobs(
    model: Any, seqs: list[str], causal: bool, max_tokens: int, device: Any, progress: bool
) -> list[np.ndarray]:
    """(L, vocab) log-probabilities per sequence: residue t predicted from an unmasked pass (MLM) or from
    residues before it (CLM: the logits one column to the left)."""
    out: list[np.ndarray | None] = [None] * len(seqs)
    for idx, tokens in token_batches(seqs, max_tokens, device, progress):
        logits = model(tokens, causal=causal).float().log_softmax(-1)
        for row, i in enumerate(idx):
            n = len(seqs[i])
            cols = slice(0, n) if causal else slice(1, n + 1)
            out[i] = logits[row, cols].cpu().numpy()
    return out  # type: ignore[return-value]


def logprob_rows(ids: list[str], seqs: list[str], lps: list[np.ndarray]) -> tuple[list[str], list[list]]:
    from plm.tokenizer import TOKENS

    aa_cols = [TOKENS.index(a) for a in AMINO_ACIDS]
    rows = []
    for i, s, lp in zip(ids, seqs, lps):
        for t, res in enumerate(s):
            rows.append(
                [i, t + 1, res, f"{lp[t, TOKENS.index(res)]:.5f}", *(f"{lp[t, c]:.5f}" for c in aa_cols)]
            )
    return ["id", "position", "residue", "logp", *(f"logp_{a}" for a in AMINO_ACIDS)], rows


# ---- command -----------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PlmError(f"--device {name}: no CUDA device here; use --device cpu")
    return torch.device(name)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_file(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def predict(
    checkpoint: Path,
    inp: Annotated[Path, Flag("--in")],
    out: Path,
    what: Literal["auto", "embeddings", "logprobs"] = "auto",
    layer: int = -1,
    max_tokens: int = 16384,
    device: str = "auto",
    crop: bool = False,
    on_invalid: Literal["error", "skip", "x"] = "error",
    no_progress: bool = False,
) -> int:
    """FASTA → predictions of a fine-tuned model, or embeddings / log-probabilities of a plm LM.

    Fine-tuned model: predictions; language model: embeddings (.npy beside the CSV) or per-residue
    log-probabilities (--what logprobs). Checks the inputs, loads the model, predicts, writes the CSV.

    Args:
        checkpoint: a plm finetune final/ directory, or a plm export directory / Lightning .ckpt
        inp: FASTA file of the sequences (gzip or plain)
        out: CSV to write (embeddings also write <out>.npy)
        what: for a language model: embeddings (auto) or logprobs; a fine-tuned model predicts
        layer: embeddings: representation (0 = embeddings, i = after block i, -1 = final)
        max_tokens: padded tokens per batch
        device: auto (a GPU when there is one), cpu, cuda, cuda:1 …
        crop: predict on the first residues of over-long sequences
        on_invalid: FASTA records with unknown letters or no residues: error, skip them, or x (map unknown
            letters to X)
        no_progress: hide the progress bar
    """
    from plm.evaluation.kept import is_finetuned, load_finetuned, read_meta
    from plm.model.record import read_record

    if max_tokens <= 0:
        raise PlmError(f"--max-tokens {max_tokens}: give a positive token budget")
    if not out.parent.is_dir():
        raise PlmError(f"--out {out}: directory {out.parent} does not exist; create it first")
    device = resolve_device(device)
    finetuned = is_finetuned(checkpoint)
    if finetuned:
        if what != "auto":
            raise PlmError(
                f"--what {what} is for language models; {checkpoint} is a fine-tuned model, "
                "which predicts its task (give its backbone/ directory for embeddings or logprobs)"
            )
        read_meta(checkpoint)
    record = read_record(checkpoint / "backbone" if finetuned else checkpoint)
    limit = record.config.max_seq_len - 2
    ids, seqs = read_inputs(inp, on_invalid)
    seqs = check_lengths(ids, seqs, limit, crop)
    progress = not no_progress
    if finetuned:
        model = load_finetuned(checkpoint).to(device)
        print(f"plm predict: {len(seqs):,} sequences → {model.describe()} on {device}", file=sys.stderr)
        header, rows = prediction_rows(model, ids, seqs, model.predict(seqs, max_tokens, progress))
    else:
        from plm.model.io import load_pretrained

        model = load_pretrained(checkpoint).to(device).eval()
        what = "embeddings" if what == "auto" else what
        print(
            f"plm predict: {len(seqs):,} sequences → {what} of {record.describe()} on {device}",
            file=sys.stderr,
        )
        if what == "embeddings":
            vectors = embeddings(model, seqs, record.causal, layer, max_tokens, device, progress)
            npy = out.with_suffix(".npy")
            with atomic_file(npy, "wb") as fh:
                np.save(fh, vectors)
            header, rows = (
                ["id", "length", "row"],
                [[i, len(s), n] for n, (i, s) in enumerate(zip(ids, seqs))],
            )
            print(
                f"plm predict: wrote {npy} ({vectors.shape[0]} × {vectors.shape[1]}, float32)",
                file=sys.stderr,
            )
        else:
            header, rows = logprob_rows(
                ids, seqs, logprobs(model, seqs, record.causal, max_tokens, device, progress)
            )
    write_csv(out, header, rows)
    print(f"plm predict: wrote {out} ({len(rows):,} rows)", file=sys.stderr)
    return 0


main = command(predict, "plm predict", expected=(ValueError, FileNotFoundError))
