"""Max identity of each query sequence to a target set, by MMseqs2 or the approximate fallback.

An exact-sequence pass (hash lookup) always runs first: it is cheap, and it guarantees that verbatim
overlaps are found even for sequences too short for MMseqs2's k-mer prefilter.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Literal

from plm.identity import fallback
from plm.identity.fallback import Best
from plm.identity.mmseqs import MMseqs, find_mmseqs
from plm.identity.seqio import SeqRecord, write_indexed_fasta

BackendName = Literal["auto", "mmseqs", "fallback"]


@dataclass(frozen=True)
class Fallback:
    """Marker for the approximate pure-Python backend."""

    k: int = fallback.DEFAULT_K
    method: str = fallback.METHOD


Backend = MMseqs | Fallback


def method_name(backend: Backend) -> str:
    return backend.method if isinstance(backend, Fallback) else f"mmseqs2 {backend.version()}"


@dataclass(frozen=True)
class BackendOptions:
    """The identity backend every identity command chooses the same way (their shared flags).

    Attributes:
        backend: mmseqs: MMseqs2 (required for real data); fallback: approximate pure-Python search (k-mer
            prefilter + alignment) for tiny inputs; auto: mmseqs if installed, else fallback
        mmseqs: path to the mmseqs executable (default: $PLM_MMSEQS, then PATH)
        threads: mmseqs --threads (keep small on shared machines)
        tmp_dir: parent directory for mmseqs temporary files (default: system temp)
        sensitivity: mmseqs -s: 1 (fast) … 7.5 (sensitive)
        quiet: no progress display
    """

    backend: BackendName = "auto"
    mmseqs: str | None = None
    threads: int = 1
    tmp_dir: str | None = None
    sensitivity: float = 5.7
    quiet: bool = False

    def resolve(self) -> Backend:
        """The backend to search with (``auto`` warns when it falls back: call it after checking the inputs)."""
        return resolve_backend(
            self.backend,
            executable=self.mmseqs,
            threads=self.threads,
            tmp_root=self.tmp_dir,
            sensitivity=self.sensitivity,
            progress=not self.quiet,
        )


AUTO_BACKEND = BackendOptions()  # the default of every flag: mmseqs if installed, else the fallback


def resolve_backend(
    name: BackendName = "auto",
    executable: str | None = None,
    threads: int = 1,
    tmp_root: str | None = None,
    sensitivity: float = 5.7,
    progress: bool = True,
) -> Backend:
    if name == "fallback" or (name == "auto" and find_mmseqs(executable) is None):
        if name == "auto":
            print(
                "warning: mmseqs not found; using the APPROXIMATE pure-Python fallback (tiny inputs only). "
                "Install MMseqs2 with `apt-get install mmseqs2` for real results.",
                file=sys.stderr,
            )
        return Fallback()
    return MMseqs(
        executable=executable, threads=threads, tmp_root=tmp_root, sensitivity=sensitivity, progress=progress
    )


def _digest(seq: str) -> bytes:
    return hashlib.sha1(seq.encode("ascii")).digest()


def exact_hits(queries: list[SeqRecord], targets: list[SeqRecord]) -> dict[int, Best]:
    """Queries whose sequence occurs verbatim among the targets (identity 1.0)."""
    index: dict[bytes, int] = {}
    for ti, t in enumerate(targets):
        index.setdefault(_digest(t.seq), ti)
    return {qi: Best(1.0, index[d]) for qi, q in enumerate(queries) if (d := _digest(q.seq)) in index}


def best_hits(
    queries: list[SeqRecord],
    targets: list[SeqRecord],
    backend: Backend,
    min_identity: float = 0.0,
    coverage: float = 0.0,
    cov_mode: int = 0,
    evalue: float = 1e-3,
    exhaustive: bool = False,
) -> dict[int, Best]:
    """Best (max-identity) target for every query that has one at >= ``min_identity``.

    Keys are query positions, ``Best.target`` a target position. Queries absent from the result have no
    detectable similar target: for MMseqs2 that means no alignment passed the e-value/coverage filters.
    """
    if not queries or not targets:
        return {}
    if isinstance(backend, Fallback):
        found = fallback.best_hits(queries, targets, backend.k)
    else:
        with backend.workdir() as tmp:
            write_indexed_fasta(queries, tmp / "query.fasta")
            write_indexed_fasta(targets, tmp / "target.fasta")
            hits = backend.easy_search(
                tmp / "query.fasta",
                tmp / "target.fasta",
                min_identity=min_identity,
                coverage=coverage,
                cov_mode=cov_mode,
                evalue=evalue,
                exhaustive=exhaustive,
            )
        found = {}
        for h in hits:
            qi, ti = int(h.query), int(h.target)
            if qi not in found or h.identity > found[qi].identity:
                found[qi] = Best(h.identity, ti)
    for qi, best in exact_hits(queries, targets).items():
        found[qi] = best
    return {qi: b for qi, b in found.items() if b.identity >= min_identity}
