"""``plm data cluster``: cluster a FASTA at a min identity into a ``representative<TAB>member`` TSV.

The TSV is MMseqs2's own cluster format with the record ids ``plm data prepare`` uses, so
``plm data prepare --clusters NAME=TSV`` can sample cluster-then-member (as ESM-2 does with UniRef50/90)
for users without UniRef cluster files. Counting clusters at 50% identity is also the paper's
diversity measure for generated proteins.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

from plm.command import Flag, command
from plm.identity import fallback
from plm.identity.search import AUTO_BACKEND, Backend, BackendOptions, Fallback, method_name
from plm.identity.seqio import read_train, write_indexed_fasta
from plm.utils.atomic import atomic_file, atomic_write_text


def check_input(fasta: str | Path) -> None:
    """A missing ``--in`` fails here, before a backend is chosen or anything is read."""
    if not Path(fasta).is_file():
        raise FileNotFoundError(f"--in {fasta}: no such file; give the FASTA(.gz) to cluster")


def cluster(
    fasta: str | Path,
    out: str | Path,
    backend: Backend,
    min_identity: float,
    coverage: float = 0.8,
    cov_mode: int = 0,
    linclust: bool = False,
) -> dict:
    """Write the cluster TSV to ``out`` (and ``out`` + ``.json`` with counts); returns the counts."""
    if not 0.0 < min_identity <= 1.0:
        raise ValueError(f"--min-identity {min_identity}: must be a fraction in (0, 1]")
    check_input(fasta)
    records = read_train(fasta)
    if not records:
        raise ValueError(f"--in {fasta}: no sequences")
    if isinstance(backend, Fallback):
        rows = fallback.greedy_clusters(records, min_identity, backend.k)
    else:
        with backend.workdir() as tmp:
            write_indexed_fasta(records, tmp / "in.fasta")
            backend.easy_cluster(
                tmp / "in.fasta", tmp / "clu.tsv", min_identity, coverage, cov_mode, linclust
            )
            with open(tmp / "clu.tsv") as fh:
                rows = [(records[int(a)].id, records[int(b)].id) for a, b in csv.reader(fh, delimiter="\t")]
    out = Path(out)
    with atomic_file(out, "w", newline="") as fh:  # `plm data prepare --clusters` reads it
        csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(rows)
    sizes: dict[str, int] = {}
    for rep, _ in rows:
        sizes[rep] = sizes.get(rep, 0) + 1
    summary = {
        "in": str(fasta),
        "out": str(out),
        "min_identity": min_identity,
        "coverage": coverage,
        "cov_mode": cov_mode,
        "algorithm": "easy-linclust" if linclust else "easy-cluster",
        "method": method_name(backend),
        "records": len(records),
        "clusters": len(sizes),
        "singletons": sum(v == 1 for v in sizes.values()),
        "largest_cluster": max(sizes.values()),
    }
    atomic_write_text(Path(str(out) + ".json"), json.dumps(summary, indent=2) + "\n")
    return summary


def cluster_command(
    fasta: Annotated[str, Flag("--in")],
    out: str,
    min_identity: float,
    coverage: float = 0.8,
    cov_mode: int = 0,
    linclust: bool = False,
    search: BackendOptions = AUTO_BACKEND,
) -> int:
    """Cluster a FASTA at a min identity into a ``representative<TAB>member`` TSV.

    Args:
        fasta: FASTA(.gz) to cluster (ids as `plm data prepare` reads them)
        out: cluster TSV to write (representative<TAB>member); counts go to OUT.json
        min_identity: min identity within a cluster, e.g. 0.5 or 0.9
        coverage: mmseqs -c: min alignment coverage (UniRef uses 0.8)
        cov_mode: mmseqs --cov-mode: 0 both sequences, 1 target, 2 query
        linclust: linear-time easy-linclust (for very large inputs)
        search: identity backend
    """
    check_input(fasta)  # before `--backend auto` may warn about mmseqs
    s = cluster(fasta, out, search.resolve(), min_identity, coverage, cov_mode, linclust)
    print(
        f"{s['in']}: {s['records']:,} records → {s['clusters']:,} clusters at {s['min_identity']:.0%} identity "
        f"({s['singletons']:,} singletons, largest {s['largest_cluster']:,}) [{s['method']}] → {s['out']}"
    )
    return 0


# FastaError is a ValueError
main = command(cluster_command, "plm data cluster", expected=(FileNotFoundError, ValueError))
