"""How likely a model finds given sequences: causal log-likelihood and masked (pseudo-)log-likelihood.

Defined once, here in the model layer, because two sibling layers read them: generation scoring
(perplexity of generated proteins, ``plm score``) and evaluation (zero-shot variant effects). Both import
``plm.model``; neither imports the other. Every sequence is laid out as ``<cls> residues <eos>``.

* causal: log p(x) = Σ_t log p(x_t | x_<t) over the residues and the closing ``<eos>`` (``<cls>`` is
  given), one cache-free causal forward per padded batch.
* masked: log p(x_i | x_{-i}) with only column i masked, one row per column (ESM-1v masked marginals;
  summed over every residue it is the pseudo-log-likelihood of Salazar et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from plm.model.transformer import Transformer
from plm.tokenizer import CLS, EOS, MASK, PAD, OnUnknown, encode_residues


def _on_device(model: Transformer, device: str | torch.device | None) -> tuple[Transformer, torch.device]:
    """The model in eval mode on ``device`` (None: wherever it already is) and that device."""
    if device is not None:
        model = model.to(device)
    return model.eval(), next(model.parameters()).device


def _token_ids(seq: str, index: int, on_unknown: OnUnknown) -> list[int]:
    """``<cls> residues <eos>``; an unknown letter raises naming the sequence (X with ``on_unknown='x'``)."""
    return [CLS, *encode_residues(seq, on_unknown=on_unknown, where=f"sequence {index}").tolist(), EOS]


@torch.inference_mode()
def sequence_logprobs(
    model: Transformer,
    sequences: list[str],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    on_unknown: OnUnknown = "error",
    progress: bool = False,
) -> list[tuple[float, int]]:
    """Per sequence: the causal log-likelihood (sum over residues and ``<eos>``) and how many tokens it sums.

    Perplexity is ``exp(-logprob / count)``; a zero-shot likelihood ratio is a difference of logprobs.
    """
    model, device = _on_device(model, device)
    out: list[tuple[float, int]] = []
    starts = range(0, len(sequences), batch_size)
    for start in tqdm(starts, desc="log-likelihoods", disable=not progress):
        batch = sequences[start : start + batch_size]
        ids = [_token_ids(s, start + i, on_unknown) for i, s in enumerate(batch)]
        width = max(len(x) for x in ids)
        tokens = torch.full((len(ids), width), PAD, dtype=torch.long, device=device)
        for r, x in enumerate(ids):
            tokens[r, : len(x)] = torch.tensor(x)
        logits = model(tokens, causal=True).float()  # (B, T, V)
        target = tokens[:, 1:]  # (B, T-1): token t+1 is predicted at column t
        lp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, target[..., None]).squeeze(2)
        valid = target != PAD
        lp = torch.where(valid, lp, 0.0)
        out += [(float(lp[r].sum()), int(valid[r].sum())) for r in range(len(ids))]
    return out


@torch.inference_mode()
def masked_logprobs(
    model: Transformer, ids: Tensor, columns: Tensor, rows_per_batch: int = 64, progress: bool = False
) -> Tensor:
    """(len(columns), V) log-probabilities at each column of the token row ``ids`` with that column masked.

    ``ids`` is one ``<cls> residues <eos>`` row on the model's device; rows are batched ``rows_per_batch``
    masked copies at a time, so L columns cost ⌈L / rows_per_batch⌉ forwards.
    """
    out = []
    chunks = columns.split(rows_per_batch)
    for chunk in tqdm(chunks, desc="masked marginals", disable=not progress):
        batch = ids.repeat(len(chunk), 1)  # (R, T), one masked column per row
        rows = torch.arange(len(chunk), device=ids.device)
        batch[rows, chunk] = MASK
        logits = model(batch, causal=False).float()[rows, chunk]  # (R, V)
        out.append(F.log_softmax(logits, dim=-1))
    return torch.cat(out) if out else torch.empty(0, model.config.vocab_size, device=ids.device)


def pseudo_logprobs(
    model: Transformer,
    sequences: list[str],
    rows_per_batch: int = 64,
    device: str | torch.device | None = None,
    on_unknown: OnUnknown = "error",
) -> list[tuple[float, int]]:
    """Per sequence: Σ_i log p(x_i | x_{-i}) over its residues (each masked in turn) and the residue count."""
    model, device = _on_device(model, device)
    out: list[tuple[float, int]] = []
    for n, seq in enumerate(sequences):
        ids = torch.tensor(_token_ids(seq, n, on_unknown), device=device)
        positions = torch.arange(1, len(ids) - 1, device=device)  # the residues, not <cls>/<eos>
        lp = masked_logprobs(model, ids, positions, rows_per_batch)  # (L, V)
        picked = lp.gather(1, ids[positions][:, None]).squeeze(1)  # (L,) log p(true residue)
        # summed in float32 per forward and in float64 across forwards: long sequences lose no precision
        out.append((sum((float(c.sum()) for c in picked.split(rows_per_batch)), 0.0), len(positions)))
    return out
