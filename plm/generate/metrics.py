"""Sequence-only metrics for generated proteins: identity, diversity, novelty, repeats, low complexity.

Identity is defined once, here, and used everywhere: align two sequences globally with free end gaps
(BLOSUM62, gap open −11 / extend −1, BLAST's defaults) and divide the identical aligned pairs by the
length of the *shorter* sequence. A fragment of a training protein therefore scores 1.0 — the
conservative choice for novelty. MMseqs2 (``plm.identity``) is used for clustering when it is installed
and ``backend="auto"``; its numbers differ slightly (it also requires 80% coverage).
"""

from __future__ import annotations

import math
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

Backend = Literal["auto", "python", "mmseqs"]

#: SEG's defaults (Wootton & Federhen 1993): 12-residue windows with entropy below 2.2 bits are low complexity.
SEG_WINDOW = 12
SEG_MAX_ENTROPY = 2.2
#: A tandem repeat: a unit of 1..6 residues repeated so the periodic stretch is >= max(3 units, 6 residues).
MAX_REPEAT_PERIOD = 6
MIN_REPEAT_COPIES = 3
MIN_REPEAT_LENGTH = 6
#: Novelty prefilter: k-mer size and how many best-sharing references get a full alignment.
KMER = 3
PREFILTER_TOP = 10


@lru_cache(maxsize=1)
def _aligner():
    from Bio.Align import PairwiseAligner, substitution_matrices

    aligner = PairwiseAligner(mode="global")
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score, aligner.extend_gap_score = -11.0, -1.0
    aligner.end_gap_score = 0.0  # free end gaps: a fragment aligns inside its parent without penalty
    return aligner


def identity(a: str, b: str) -> float:
    """Identical aligned residues / length of the shorter sequence (0 for an empty sequence)."""
    if not a or not b:
        return 0.0
    if a == b:
        return 1.0
    alignment = _aligner().align(a, b)[0]
    return alignment.counts().identities / min(len(a), len(b))


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


def greedy_clusters(seqs: Sequence[str], min_identity: float = 0.5) -> list[int]:
    """Cluster label per sequence: longest first, each joins the first representative it matches at
    ``min_identity`` or founds a new cluster (CD-HIT's greedy incremental scheme)."""
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    reps: list[int] = []
    labels = [-1] * len(seqs)
    for i in order:
        for c, r in enumerate(reps):
            if identity(seqs[i], seqs[r]) >= min_identity:
                labels[i] = c
                break
        else:
            labels[i] = len(reps)
            reps.append(i)
    return labels


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
    if backend != "python":
        from plm.identity import find_mmseqs

        if find_mmseqs() is not None:
            return _mmseqs_cluster_count(seqs, min_identity), "mmseqs2 easy-cluster"
        if backend == "mmseqs":
            raise FileNotFoundError("backend='mmseqs' but no mmseqs executable found: install MMseqs2 "
                                    "(apt-get install mmseqs2) or set $PLM_MMSEQS, or use backend='python'")
    return len(set(greedy_clusters(seqs, min_identity))), "python greedy (Biopython alignment)"


def max_identity_to_reference(seqs: Sequence[str], refs: Sequence[str], backend: Backend = "auto") -> tuple[list[float], str]:
    """Novelty: each sequence's max identity to any reference, and the method used.

    MMseqs2 (``easy-search``, identity = identical / aligned residues, the field's standard) when it is
    installed, which scales to training-set-sized references; otherwise a k-mer prefilter plus global
    alignment in Python (identity = identical / shorter length), fine for a few thousand references.
    A sequence with no detectable hit gets 0.
    """
    if not seqs:
        return [], "none"
    if backend != "python":
        from plm.identity import find_mmseqs

        if find_mmseqs() is not None:
            from plm.identity import MMseqs
            from plm.identity.search import best_hits
            from plm.identity.seqio import SeqRecord

            hits = best_hits([SeqRecord(str(i), q) for i, q in enumerate(seqs)],
                             [SeqRecord(str(i), r) for i, r in enumerate(refs)], MMseqs(progress=False))
            return [hits[i].identity if i in hits else 0.0 for i in range(len(seqs))], "mmseqs2 easy-search"
        if backend == "mmseqs":
            raise FileNotFoundError("backend='mmseqs' but no mmseqs executable found: install MMseqs2 "
                                    "(apt-get install mmseqs2) or set $PLM_MMSEQS, or use backend='python'")
    index = NoveltyIndex(list(refs))
    return [index.max_identity(q)[0] for q in seqs], "python k-mer prefilter + global alignment"


@dataclass
class NoveltyIndex:
    """Reference sequences indexed by k-mer so each query is aligned to its few best candidates only."""

    refs: list[str]
    k: int = KMER
    top: int = PREFILTER_TOP

    def __post_init__(self) -> None:
        self.index: dict[str, list[int]] = defaultdict(list)
        for r, seq in enumerate(self.refs):
            for kmer in {seq[i : i + self.k] for i in range(len(seq) - self.k + 1)}:
                self.index[kmer].append(r)

    def candidates(self, query: str) -> list[int]:
        shared: Counter[int] = Counter()
        for kmer in {query[i : i + self.k] for i in range(len(query) - self.k + 1)}:
            shared.update(self.index.get(kmer, ()))
        return [r for r, _ in shared.most_common(self.top)]

    def max_identity(self, query: str) -> tuple[float, int]:
        """Best identity to any reference and its index (−1 if no reference shares a k-mer: identity 0)."""
        best, best_ref = 0.0, -1
        for r in self.candidates(query):
            ident = identity(query, self.refs[r])
            if ident > best:
                best, best_ref = ident, r
        return best, best_ref


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


def low_complexity_fraction(seq: str, window: int = SEG_WINDOW, max_entropy: float = SEG_MAX_ENTROPY) -> float:
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
