"""Likelihood of given sequences: log-probabilities under a CLM and pseudo-log-likelihood under an MLM.

Perplexity of generated proteins under the generating CLM, and pseudo-perplexity (Salazar et al. 2020;
mask one residue at a time) under an MLM, both over the same ``<cls> residues <eos>`` token layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plm.model.transformer import Transformer
from plm.tokenizer import CLS, EOS, MASK, PAD, encode_residues


@torch.inference_mode()
def sequence_logprobs(model: Transformer, sequences: list[str], batch_size: int = 16, device: str = "cpu") -> list[tuple[float, int]]:
    """Sum of log p(x_t | x_<t) over residues and the final ``<eos>`` of ``<cls> seq <eos>``, and the count.

    One full (cache-free) causal forward per padded batch; used for perplexity under a CLM.
    """
    model = model.to(device).eval()
    out: list[tuple[float, int]] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        ids = [[CLS, *encode_residues(s, on_unknown="x", where=f"sequence {start + i}").tolist(), EOS] for i, s in enumerate(chunk)]
        width = max(len(x) for x in ids)
        tokens = torch.full((len(ids), width), PAD, dtype=torch.long, device=device)
        for r, x in enumerate(ids):
            tokens[r, : len(x)] = torch.tensor(x)
        logits = model(tokens, causal=True).float()  # (B, T, V)
        target = tokens[:, 1:]
        lp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, target[..., None]).squeeze(2)
        valid = target != PAD
        lp = torch.where(valid, lp, 0.0)
        out += [(float(lp[r].sum()), int(valid[r].sum())) for r in range(len(ids))]
    return out


@torch.inference_mode()
def pseudo_logprobs(model: Transformer, sequences: list[str], rows_per_batch: int = 64, device: str = "cpu") -> list[tuple[float, int]]:
    """Sum over residues of log p(x_i | x_{-i}) with x_i masked, and the residue count, per sequence.

    Each sequence costs len(seq) forwards, batched ``rows_per_batch`` masked copies at a time.
    """
    model = model.to(device).eval()
    out: list[tuple[float, int]] = []
    for n, seq in enumerate(sequences):
        ids = torch.tensor([CLS, *encode_residues(seq, on_unknown="x", where=f"sequence {n}").tolist(), EOS], device=device)
        positions = torch.arange(1, len(ids) - 1, device=device)
        total = 0.0
        for chunk in positions.split(rows_per_batch):
            batch = ids.repeat(len(chunk), 1)  # (R, L+2), one masked residue per row
            rows = torch.arange(len(chunk), device=device)
            batch[rows, chunk] = MASK
            logits = model(batch, causal=False).float()[rows, chunk]  # (R, V)
            total += float(F.log_softmax(logits, dim=-1).gather(1, ids[chunk][:, None]).sum())
        out.append((total, len(positions)))
    return out
