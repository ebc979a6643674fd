"""APPROXIMATE pure-Python stand-in for MMseqs2 search and clustering, for tiny inputs and tests.

The identity of a pair is ``plm.identity.pairwise.identity``, the project's one definition (an alignment,
identical pairs / shorter length). What is approximate is which pairs get aligned: a k-mer index picks
each query's few best-sharing targets, so a distant best hit can be missed, and no coverage is required.

Use MMseqs2 for anything you report; this exists so that small tests and laptops without the binary
still run, and every result made with it is labelled ``fallback (approximate)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from plm.identity import pairwise
from plm.identity.seqio import SeqRecord

METHOD = "fallback: k-mer prefilter + alignment (approximate)"
DEFAULT_K = 4  # 20**4 = 160k k-mers: two unrelated 1,000-aa proteins share ~0.6% of them by chance
MAX_PAIRS = 2_000_000  # all-vs-all in Python: beyond this, install MMseqs2


@dataclass(frozen=True)
class Best:
    """Best target of one query: ``target`` is the target's position (-1 when nothing was found)."""

    identity: float
    target: int


def _check_size(n_query: int, n_target: int) -> None:
    if n_query * n_target > MAX_PAIRS:
        raise ValueError(
            f"{n_query} x {n_target} sequences is too many for the approximate pure-Python fallback "
            f"(limit {MAX_PAIRS:,} pairs); install MMseqs2 with `apt-get install mmseqs2`"
        )


def best_hits(queries: list[SeqRecord], targets: list[SeqRecord], k: int = DEFAULT_K) -> dict[int, Best]:
    """Max identity of each query to any target (queries sharing no k-mer with any target: absent)."""
    _check_size(len(queries), len(targets))
    index = pairwise.KmerIndex([t.seq for t in targets], k, pairwise.PREFILTER_TOP)
    out: dict[int, Best] = {}
    for qi, q in enumerate(queries):
        ident, ti = index.max_identity(q.seq)
        if ti >= 0:
            out[qi] = Best(ident, ti)
    return out


def greedy_clusters(
    records: list[SeqRecord], min_identity: float, k: int = DEFAULT_K
) -> list[tuple[str, str]]:
    """CD-HIT-style greedy clustering (``plm.identity.pairwise.greedy_clusters``, each record aligned to
    the representatives sharing most k-mers only). Returns (representative id, member id) rows."""
    _check_size(len(records), len(records))
    rep_of = pairwise.greedy_clusters([r.seq for r in records], min_identity, top=pairwise.PREFILTER_TOP, k=k)
    order = sorted(range(len(records)), key=lambda i: (-len(records[i].seq), i))
    return [(records[rep_of[i]].id, records[i].id) for i in order]
