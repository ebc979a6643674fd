"""Sequence identity: the project's one definition, and the pure-Python search and clustering built on it.

identity(a, b) = identical aligned residue pairs / length of the SHORTER sequence, from a global
alignment with free end gaps (BLOSUM62, gap open −11 / extend −1: BLAST's protein defaults).

Why this denominator: a fragment of a protein scores 1.0 against it (its residues all align, the
overhang is free), so novelty and decontamination err on the side of calling a sequence seen, and an
insertion in the longer sequence costs nothing while one in the shorter counts as a mismatch. MMseqs2
(``plm.identity.mmseqs``, used for real data) reports ``fident`` = identical pairs / columns of a *local*
alignment and requires coverage; on a contained fragment and on substitution-only pairs both give the
same number, on gapped pairs MMseqs2's is lower.

Everything in ``plm`` that computes identity without MMseqs2 — ``plm score`` (``plm.generate.metrics``)
and the tiny-input fallback of ``plm data`` (``plm.identity.fallback``) — calls :func:`identity`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

#: BLAST's protein defaults: BLOSUM62 with affine gaps open −11 / extend −1.
MATRIX, GAP_OPEN, GAP_EXTEND = "BLOSUM62", -11.0, -1.0
#: Prefilter defaults: k-mer size and how many best-sharing references get a full alignment.
KMER = 3
PREFILTER_TOP = 10


@lru_cache(maxsize=1)
def _aligner() -> Any:
    try:
        from Bio.Align import PairwiseAligner, substitution_matrices
    except ImportError as err:
        raise ImportError(
            "sequence identity aligns with Biopython, which is not installed: "
            "`pip install biopython` (or reinstall plm: it is a dependency)"
        ) from err
    aligner = PairwiseAligner(mode="global")
    aligner.substitution_matrix = substitution_matrices.load(MATRIX)
    aligner.open_gap_score, aligner.extend_gap_score = GAP_OPEN, GAP_EXTEND
    aligner.end_gap_score = 0.0  # free end gaps: a fragment aligns inside its parent without penalty
    return aligner


def identity(a: str, b: str) -> float:
    """Identical aligned residues / length of the shorter sequence, in [0, 1] (0 when either is empty)."""
    if not a or not b:
        return 0.0
    if a == b:
        return 1.0
    alignment = _aligner().align(a, b)[0]
    return alignment.counts().identities / min(len(a), len(b))


def _kmers(seq: str, k: int) -> set[str]:
    return {seq[i : i + k] for i in range(len(seq) - k + 1)}


class KmerIndex:
    """Reference sequences indexed by k-mer, so each query is aligned to its few best candidates only.

    The prefilter only chooses which pairs to align; the number reported is always :func:`identity`.
    It can miss the true best reference when that one shares few k-mers (distant or very short pairs).
    """

    def __init__(self, refs: Sequence[str] = (), k: int = KMER, top: int | None = PREFILTER_TOP) -> None:
        self.refs: list[str] = []
        self.k, self.top = k, top
        self.index: dict[str, list[int]] = defaultdict(list)
        for seq in refs:
            self.add(seq)

    def add(self, seq: str) -> int:
        """Index one more reference; returns its position."""
        r = len(self.refs)
        self.refs.append(seq)
        for kmer in _kmers(seq, self.k):
            self.index[kmer].append(r)
        return r

    def candidates(self, query: str) -> list[int]:
        """References sharing at least one k-mer with ``query``, most shared first (``top`` of them)."""
        shared: Counter[int] = Counter()
        for kmer in _kmers(query, self.k):
            shared.update(self.index.get(kmer, ()))
        return [r for r, _ in shared.most_common(self.top)]

    def max_identity(self, query: str) -> tuple[float, int]:
        """Best identity to any reference and its position (−1 if no reference shares a k-mer: identity 0)."""
        best, best_ref = 0.0, -1
        for r in self.candidates(query):
            ident = identity(query, self.refs[r])
            if ident > best:
                best, best_ref = ident, r
                if best == 1.0:
                    break
        return best, best_ref


def greedy_clusters(
    seqs: Sequence[str], min_identity: float, top: int | None = None, k: int = KMER
) -> list[int]:
    """The representative (an index into ``seqs``) of each sequence, CD-HIT's greedy incremental scheme.

    Longest first, each sequence joins the earliest-founded representative it reaches ``min_identity``
    with, else founds a cluster. ``top=None`` aligns against every representative (exact, O(n·clusters)
    alignments); an integer aligns only against the ``top`` representatives sharing most ``k``-mers,
    which keeps large inputs tractable at the risk of splitting a distant pair.
    """
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    reps = KmerIndex(k=k, top=top)
    founders: list[int] = []  # position in ``reps`` → index into ``seqs``
    rep_of = [-1] * len(seqs)
    for i in order:
        pool = range(len(founders)) if top is None else sorted(reps.candidates(seqs[i]))
        home = next((r for r in pool if identity(seqs[i], reps.refs[r]) >= min_identity), None)
        if home is None:
            home = reps.add(seqs[i])
            founders.append(i)
        rep_of[i] = founders[home]
    return rep_of
