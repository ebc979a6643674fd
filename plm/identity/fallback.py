"""APPROXIMATE pure-Python identity for tiny inputs and tests, when MMseqs2 is not installed.

Two measures, neither an alignment:
  * exact: identical sequences, or one contained verbatim in the other, have identity 1.0 (exact; a
    local alignment of a substring is 100% identical, as MMseqs2 would report).
  * k-mer: with independent substitutions at identity p a k-mer survives with probability p**k, so the
    fraction of the shorter sequence's distinct k-mers found in the other, C, gives the estimate
    p ≈ C**(1/k) (the Mash estimator). Indels, low-complexity repeats and short sequences bias it.

Use MMseqs2 for anything you report; this exists so that small tests and laptops without the binary
still run, and every result made with it is labelled ``fallback-kmer (approximate)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from plm.identity.seqio import SeqRecord

METHOD = "fallback-kmer (approximate)"
DEFAULT_K = 4  # 20**4 = 160k k-mers: two unrelated 1,000-aa proteins share ~0.6% of them by chance
MAX_PAIRS = 2_000_000  # all-vs-all in Python: beyond this, install MMseqs2


@dataclass(frozen=True)
class Best:
    """Best target of one query: ``target`` is the target's position (-1 when nothing was found)."""

    identity: float
    target: int


def _kmers(seq: str, k: int) -> frozenset[str]:
    return frozenset(seq[i : i + k] for i in range(len(seq) - k + 1))


def _check_size(n_query: int, n_target: int) -> None:
    if n_query * n_target > MAX_PAIRS:
        raise ValueError(
            f"{n_query} x {n_target} sequences is too many for the approximate pure-Python fallback "
            f"(limit {MAX_PAIRS:,} pairs); install MMseqs2 with `apt-get install mmseqs2`"
        )


def pair_identity(a: str, b: str, k: int = DEFAULT_K, kmers: tuple[frozenset, frozenset] | None = None) -> float:
    """Approximate identity of two sequences (1.0 for equal or contained; see the module doc)."""
    if a == b or (len(a) <= len(b) and a in b) or (len(b) < len(a) and b in a):
        return 1.0
    ka, kb = kmers if kmers is not None else (_kmers(a, k), _kmers(b, k))
    small, large = (ka, kb) if len(ka) <= len(kb) else (kb, ka)
    if not small:
        return 0.0
    containment = len(small & large) / len(small)
    return containment ** (1.0 / k)


def best_hits(queries: list[SeqRecord], targets: list[SeqRecord], k: int = DEFAULT_K) -> dict[int, Best]:
    """Max approximate identity of each query to any target (queries without any shared k-mer: absent)."""
    _check_size(len(queries), len(targets))
    tk = [_kmers(t.seq, k) for t in targets]
    out: dict[int, Best] = {}
    for qi, q in enumerate(queries):
        qk = _kmers(q.seq, k)
        best = Best(0.0, -1)
        for ti, t in enumerate(targets):
            if best.identity >= 1.0:
                break
            if qk.isdisjoint(tk[ti]) and q.seq not in t.seq and t.seq not in q.seq:
                continue
            ident = pair_identity(q.seq, t.seq, k, (qk, tk[ti]))
            if ident > best.identity:
                best = Best(ident, ti)
        if best.target >= 0:
            out[qi] = best
    return out


def greedy_clusters(records: list[SeqRecord], min_identity: float, k: int = DEFAULT_K) -> list[tuple[str, str]]:
    """CD-HIT-style greedy clustering: longest first, each record joins the first representative it
    reaches ``min_identity`` with, else founds a cluster. Returns (representative id, member id) rows."""
    _check_size(len(records), len(records))
    order = sorted(range(len(records)), key=lambda i: (-len(records[i].seq), i))
    reps: list[tuple[int, frozenset]] = []
    rows: list[tuple[str, str]] = []
    for i in order:
        ki = _kmers(records[i].seq, k)
        home = next((r for r, kr in reps if pair_identity(records[i].seq, records[r].seq, k, (ki, kr)) >= min_identity),
                    None)
        if home is None:
            reps.append((i, ki))
            home = i
        rows.append((records[home].id, records[i].id))
    return rows
