"""Sequence-only metrics for generated proteins: identity, diversity, novelty, repeats, low complexity.

Identity is ``plm.identity.pairwise.identity`` (identical aligned pairs / length of the shorter
sequence; a fragment of a training protein scores 1.0, the conservative choice for novelty). MMseqs2
(``plm.identity``) is used for clustering and novelty when it is installed and ``backend="auto"``; its
numbers differ slightly (local alignment, identity over aligned columns, 80% coverage).
"""

from __future__ import annotations

import math
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from plm.identity.pairwise import KmerIndex, greedy_clusters, identity

Backend = Literal["auto", "python", "mmseqs"]

#: SEG's defaults (Wootton & Federhen 1993): 12-residue windows with entropy below 2.2 bits are low complexity.
SEG_WINDOW = 12
SEG_MAX_ENTROPY = 2.2
#: A tandem repeat: a unit of 1..6 residues repeated so the periodic stretch is >= max(3 units, 6 residues).
MAX_REPEAT_PERIOD = 6
MIN_REPEAT_COPIES = 3
MIN_REPEAT_LENGTH = 6


def pairwise_identities(seqs: Sequence[str], max_pairs: int = 5_000, seed: int = 0) -> np.ndarray:
    """Identity of every pair i < j, or of ``max_pairs`` random pairs when there are more (seeded)."""
    n = len(seqs)
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_pairs:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    else:
        rng = random.Random(seed)
        chosen: set[tuple[int, int]] = set()
        while len(chosen) < max_pairs:
            i, j = sorted(rng.sample(range(n), 2))
            chosen.add((i, j))
        pairs = sorted(chosen)
    return np.array([identity(seqs[i], seqs[j]) for i, j in pairs], dtype=np.float64)


def _use_mmseqs(backend: Backend) -> bool:
    """Whether to run MMseqs2: 'auto' uses it when installed; asking for 'mmseqs' without it is an error
    (a silent switch to Python would change the numbers a report compares)."""
    if backend == "python":
        return False
    from plm.identity import find_mmseqs

    if find_mmseqs() is not None:
        return True
    if backend == "mmseqs":
        raise FileNotFoundError(
            "backend='mmseqs' but no mmseqs executable found: install MMseqs2 "
            "(apt-get install mmseqs2) or set $PLM_MMSEQS, or use backend='python'"
        )
    return False


def _mmseqs_cluster_count(seqs: Sequence[str], min_identity: float) -> int:
    from plm.identity import MMseqs

    with tempfile.TemporaryDirectory(prefix="plm-clu-") as tmp:
        fasta = Path(tmp) / "in.fasta"
        fasta.write_text("".join(f">{i}\n{s}\n" for i, s in enumerate(seqs)))
        tsv = MMseqs(progress=False).easy_cluster(fasta, Path(tmp) / "clu.tsv", min_identity)
        reps = {line.split("\t")[0] for line in tsv.read_text().splitlines() if line}
    return len(reps)


def n_clusters(seqs: Sequence[str], min_identity: float = 0.5, backend: Backend = "auto") -> tuple[int, str]:
    """Number of clusters at ``min_identity`` (the paper's diversity measure) and the method used."""
    if not seqs:
        return 0, "none"
    if _use_mmseqs(backend):
        return _mmseqs_cluster_count(seqs, min_identity), "mmseqs2 easy-cluster"
    return len(set(greedy_clusters(seqs, min_identity))), "python greedy (Biopython alignment)"


def max_identity_to_reference(
    seqs: Sequence[str], refs: Sequence[str], backend: Backend = "auto"
) -> tuple[list[float], str]:
    """Novelty: each sequence's max identity to any reference, and the method used.

    MMseqs2 (``easy-search``, identity = identical / aligned residues, the field's standard) when it is
    installed, which scales to training-set-sized references; otherwise a k-mer prefilter plus global
    alignment in Python (identity = identical / shorter length), fine for a few thousand references.
    A sequence with no detectable hit gets 0.
    """
    if not seqs:
        return [], "none"
    if _use_mmseqs(backend):
        from plm.identity import MMseqs
        from plm.identity.search import best_hits
        from plm.identity.seqio import SeqRecord

        hits = best_hits(
            [SeqRecord(str(i), q) for i, q in enumerate(seqs)],
            [SeqRecord(str(i), r) for i, r in enumerate(refs)],
            MMseqs(progress=False),
        )
        return [hits[i].identity if i in hits else 0.0 for i in range(len(seqs))], "mmseqs2 easy-search"
    index = KmerIndex(refs)
    return [index.max_identity(q)[0] for q in seqs], "python k-mer prefilter + global alignment"


def repeat_fraction(seq: str, max_period: int = MAX_REPEAT_PERIOD) -> float:
    """Share of residues inside a tandem repeat (a unit of 1..``max_period`` residues repeated in place,
    e.g. ``AAAAAA`` or ``GSGSGS``) — the collapse ProGen2 shows at low temperature."""
    n = len(seq)
    if n == 0:
        return 0.0
    covered = np.zeros(n, dtype=bool)
    for p in range(1, max_period + 1):
        need = max(MIN_REPEAT_COPIES * p, MIN_REPEAT_LENGTH)
        i = 0
        while i < n - p:
            if seq[i] != seq[i + p]:
                i += 1
                continue
            j = i
            while j < n - p and seq[j] == seq[j + p]:
                j += 1
            stretch = j - i + p  # seq[i : j + p] has period p
            if stretch >= need:
                covered[i : j + p] = True
            i = j + 1
    return float(covered.mean())


def low_complexity_fraction(
    seq: str, window: int = SEG_WINDOW, max_entropy: float = SEG_MAX_ENTROPY
) -> float:
    """Share of residues covered by a ``window`` whose Shannon entropy is below ``max_entropy`` bits (SEG-like)."""
    n = len(seq)
    if n == 0:
        return 0.0
    window = min(window, n)
    covered = np.zeros(n, dtype=bool)
    counts = Counter(seq[:window])
    for start in range(n - window + 1):
        if start:
            out, new = seq[start - 1], seq[start + window - 1]
            counts[out] -= 1
            counts[new] += 1
        h = -sum(c / window * math.log2(c / window) for c in counts.values() if c)
        if h < max_entropy:
            covered[start : start + window] = True
    return float(covered.mean())
