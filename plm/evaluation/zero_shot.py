"""Zero-shot variant effects from a language model alone (no labels are used).

MLM: masked-marginal score (Meier et al. 2021, ESM-1v): sum over mutated sites of
log p(mut | wt with that site masked) - log p(wt | same). One forward pass per distinct site covers
every variant, so a 5,000-variant single-mutant scan costs ~L passes, not 5,000.
CLM: log-likelihood ratio log p(mutant sequence) - log p(wild type); for the ``progen2`` flavour the
mean of the left-to-right and reversed-sequence ratios (ProGen2 trains on both directions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from plm.model.likelihood import masked_logprobs, sequence_logprobs
from plm.model.transformer import Transformer
from plm.tokenizer import encode

_MUT = re.compile(r"^([A-Z])(\d+)([A-Z])$")


@dataclass(frozen=True)
class Mutation:
    pos: int  # 0-based index into the wild type
    wt: str
    mt: str


def parse_mutations(mutant: str, wildtype: str, offset: int = 1) -> list[Mutation]:
    """Parse ``A24G`` or multi-mutants ``A24G:K30R`` (':' or ',' separated) against ``wildtype``.

    ``offset`` is the number the first wild-type residue carries (1 for 1-based UniProt numbering).
    Every problem in the string is reported at once."""
    parts = [p.strip() for p in re.split(r"[:,]", mutant.strip()) if p.strip()]
    if not parts:
        raise ValueError(f"mutation {mutant!r}: empty; expected e.g. 'A24G' or 'A24G:K30R'")
    muts, problems = [], []
    for p in parts:
        m = _MUT.match(p)
        if not m:
            problems.append(f"{p!r} is not <wt><position><mut> like 'A24G'")
            continue
        wt, num, mt = m.group(1), int(m.group(2)), m.group(3)
        pos = num - offset
        if not 0 <= pos < len(wildtype):
            problems.append(
                f"{p!r}: position {num} outside the wild type ({offset}..{len(wildtype) + offset - 1})"
            )
        elif wildtype[pos] != wt:
            problems.append(
                f"{p!r}: wild type has {wildtype[pos]!r} at {num}, not {wt!r} (wrong offset or wild type?)"
            )
        else:
            muts.append(Mutation(pos, wt, mt))
    if len({m.pos for m in muts}) != len(muts):
        problems.append("a position is mutated twice")
    if problems:
        raise ValueError(f"mutation {mutant!r}: " + "; ".join(problems))
    return muts


def apply_mutations(wildtype: str, muts: list[Mutation]) -> str:
    seq = list(wildtype)
    for m in muts:
        seq[m.pos] = m.mt
    return "".join(seq)


def masked_marginal_scores(
    model: Transformer,
    wildtype: str,
    variants: list[list[Mutation]],
    batch_size: int = 8,
    progress: bool = True,
) -> list[float]:
    """ESM-1v masked-marginal score of each variant (positive = predicted better than wild type)."""
    device = next(model.parameters()).device
    wt_ids = torch.tensor(encode(wildtype), device=device)  # <cls> seq <eos>
    sites = sorted({m.pos for v in variants for m in v})
    columns = torch.tensor(sites, dtype=torch.long, device=device) + 1  # residue i sits at column i + 1
    lp = masked_logprobs(model.eval(), wt_ids, columns, batch_size, progress).cpu()  # (n_sites, V)
    logp = dict(zip(sites, lp))
    aa = {c: encode(c, add_special=False)[0] for c in "ACDEFGHIKLMNPQRSTVWYXBZUO"}
    return [float(sum(logp[m.pos][aa[m.mt]] - logp[m.pos][aa[m.wt]] for m in v)) for v in variants]


def sequence_log_likelihoods(
    model: Transformer, sequences: list[str], batch_size: int = 8, progress: bool = True
) -> list[float]:
    """Causal log p(sequence) summed over residues and the closing <eos> (the <cls> start is given)."""
    return [lp for lp, _ in sequence_logprobs(model, sequences, batch_size, progress=progress)]


def clm_llr_scores(
    model: Transformer,
    wildtype: str,
    variants: list[list[Mutation]],
    batch_size: int = 8,
    progress: bool = True,
    both_directions: bool | None = None,
) -> list[float]:
    """log p(mutant) - log p(wild type); averaged over both reading directions for ``progen2``."""
    if both_directions is None:
        both_directions = model.config.flavour == "progen2"
    seqs = [apply_mutations(wildtype, v) for v in variants]
    fwd = sequence_log_likelihoods(model, [wildtype] + seqs, batch_size, progress)
    scores = [s - fwd[0] for s in fwd[1:]]
    if both_directions:
        rev = sequence_log_likelihoods(
            model, [wildtype[::-1]] + [s[::-1] for s in seqs], batch_size, progress
        )
        scores = [(a + (b - rev[0])) / 2 for a, b in zip(scores, rev[1:])]
    return scores


def score_name(model: Transformer, objective: str) -> str:
    """What :func:`score_variants` computes, named exactly (a column of the per-variant CSVs): masked
    marginals with the wild type as the context of every masked site (ProteinGym's ESM scoring), or the
    likelihood ratio forward only or averaged with the reversed sequences."""
    if objective == "mlm":
        return "masked_marginal_wt_context"
    return "llr_mean_forward_reverse" if model.config.flavour == "progen2" else "llr_forward"


def score_variants(
    model: Transformer,
    objective: str,
    wildtype: str,
    variants: list[list[Mutation]],
    batch_size: int = 8,
    progress: bool = True,
) -> list[float]:
    """Dispatch on the training objective: 'mlm' → masked marginals, 'clm' → likelihood ratios."""
    if objective == "mlm":
        return masked_marginal_scores(model, wildtype, variants, batch_size, progress)
    if objective == "clm":
        return clm_llr_scores(model, wildtype, variants, batch_size, progress)
    raise ValueError(f"objective {objective!r}: zero-shot scoring needs 'mlm' or 'clm'")
