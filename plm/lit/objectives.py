"""The only code that differs between MLM and CLM besides the attention mask: inputs and labels.

Both run on the device, on packed rows, seeded from the batch's masking seed (``Batch.mask_seed``, for
training batches the global sample cursor), so the masks are a pure function of (seed, data position)
like the data itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from plm.tokenizer import EOS, FIRST_RESIDUE, MASK, PAD, RESIDUES, STANDARD_AA_IDS

Objective = Literal["mlm", "clm"]
IGNORE = -100
LAST_RESIDUE = FIRST_RESIDUE + len(RESIDUES) - 1


def mlm_inputs(
    tokens: Tensor, doc_ids: Tensor, generator: torch.Generator, mask_prob: float = 0.15
) -> tuple[Tensor, Tensor]:
    """BERT/ESM masking: ``mask_prob`` of residues selected (at least one per sequence); of those 80%
    become ``<mask>``, 10% a random standard residue, 10% stay. Labels only at selected positions."""
    eligible = (tokens >= FIRST_RESIDUE) & (tokens <= LAST_RESIDUE)
    score = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    selected = eligible & (score < mask_prob)
    # at least one selected residue per document: force the eligible position with the lowest score
    n_docs = int(doc_ids.max()) + 1
    key = torch.where(eligible, score, torch.full_like(score, 2.0))
    best = torch.full((tokens.shape[0], n_docs), 2.0, device=tokens.device).scatter_reduce(
        1, doc_ids, key, reduce="amin", include_self=True
    )
    has_any = torch.zeros_like(best, dtype=torch.bool).scatter_reduce(1, doc_ids, selected, reduce="amax")
    force = eligible & (key == best.gather(1, doc_ids)) & ~has_any.gather(1, doc_ids)
    selected |= force
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    action = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    aa = torch.tensor(STANDARD_AA_IDS, device=tokens.device)
    random_aa = aa[torch.randint(len(aa), tokens.shape, generator=generator, device=tokens.device)]
    inputs = torch.where(selected & (action < 0.8), torch.full_like(tokens, MASK), tokens)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_aa, inputs)
    return inputs, labels


def clm_labels(tokens: Tensor, doc_ids: Tensor) -> Tensor:
    """Next-token labels that never cross a sequence boundary or point at padding."""
    labels = torch.full_like(tokens, IGNORE)
    nxt = tokens[:, 1:]
    same_doc = doc_ids[:, 1:] == doc_ids[:, :-1]
    valid = same_doc & (nxt != PAD) & (tokens[:, :-1] != EOS) & (tokens[:, :-1] != PAD)
    labels[:, :-1] = torch.where(valid, nxt, torch.full_like(nxt, IGNORE))
    return labels
