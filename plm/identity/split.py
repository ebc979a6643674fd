"""``plm data split-by-identity``: held-out sets binned by max identity to the training data.

The paper evaluates perplexity on held-out sequences with < 0.5 and < 0.9 max identity to the
training set; generalisation depends strongly on that distance, so one pooled number hides it.

Bins are half-open ``[lo, hi)`` over max identity (MMseqs2 ``fident`` of the best significant
alignment; a sequence with no significant hit counts as 0). With ``--bins 0.5,0.9``:
  * disjoint bins: ``lt0.5.fasta`` [0, 0.5), ``0.5-0.9.fasta`` [0.5, 0.9), ``ge0.9.fasta`` [0.9, 1];
  * cumulative sets like the paper's: ``lt0.9.fasta`` = [0, 0.9) (``lt0.5`` is both).
Each file is a plain FASTA usable as an ``eval_sets`` entry; ``max_identity.tsv`` has every record's
identity, best training hit and bin, and ``summary.json`` the counts and per-bin identity range.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

from plm.command import command
from plm.identity.search import AUTO_BACKEND, Backend, BackendOptions, best_hits, method_name
from plm.identity.seqio import SeqRecord, read_sequences, read_store, read_train, store_splits, write_fasta
from plm.utils.atomic import atomic_file, atomic_write_text

TABLE_FILE, SUMMARY_FILE = "max_identity.tsv", "summary.json"


def parse_bins(text: str | list[float]) -> list[float]:
    bounds = [float(b) for b in text.split(",")] if isinstance(text, str) else [float(b) for b in text]
    problems = [f"{b} is not in (0, 1)" for b in bounds if not 0.0 < b < 1.0]
    if bounds != sorted(set(bounds)):
        problems.append("bounds must be strictly increasing")
    if not bounds or problems:
        raise ValueError(f"--bins {text!r}: {'; '.join(problems) or 'no bounds'} (example: --bins 0.5,0.9)")
    return bounds


def bin_names(bounds: list[float]) -> list[str]:
    """Disjoint bin file stems, lowest first: lt0.5, 0.5-0.9, ge0.9."""
    names = [f"lt{bounds[0]:g}"]
    names += [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bounds)]
    return names + [f"ge{bounds[-1]:g}"]


def bin_of(identity: float, bounds: list[float]) -> int:
    return sum(identity >= b for b in bounds)


def check_inputs(source: str | Path, train: list[str | Path]) -> None:
    """A missing ``--source`` or ``--train`` fails here, before a backend is chosen or anything is read."""
    if not Path(source).is_file():
        raise FileNotFoundError(
            f"--source {source}: no such file; give the candidate held-out sequences "
            "as a FASTA or CSV/TSV file"
        )
    missing = [str(p) for p in train if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"--train: not found: {', '.join(missing)}; give existing training FASTA file(s) "
            "or directories `plm data prepare` wrote"
        )


def load_training(paths: list[str | Path]) -> list[SeqRecord]:
    """Training sequences from FASTA files and/or prepared store directories (all splits)."""
    out: list[SeqRecord] = []
    for p in map(Path, paths):
        if p.is_dir():
            for split, d in store_splits(p).items():
                out += [SeqRecord(f"{p.name}/{split}:{r.id}", r.seq) for r in read_store(d)]
        else:
            out += [SeqRecord(f"{p.name}:{r.id}", r.seq) for r in read_train(p)]
    return out


def split_by_identity(
    source: str | Path,
    train: list[str | Path],
    bounds: list[float],
    out: str | Path,
    backend: Backend,
    evalue: float = 1e-3,
    exhaustive: bool = False,
) -> dict:
    """Bin ``source`` records by max identity to ``train``; writes the files described in the module doc."""
    bounds = parse_bins(bounds)
    check_inputs(source, train)
    records = read_sequences(source)
    if not records:
        raise ValueError(f"--source {source}: no sequences")
    training = load_training(train)
    hits = best_hits(records, training, backend, 0.0, evalue=evalue, exhaustive=exhaustive)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = bin_names(bounds)
    members: list[list[int]] = [[] for _ in names]
    ident = [hits[i].identity if i in hits else 0.0 for i in range(len(records))]
    for i, x in enumerate(ident):
        members[bin_of(x, bounds)].append(i)
    files = {}
    for name, idx in zip(names, members):
        files[name] = write_fasta((records[i] for i in idx), out / f"{name}.fasta")
    for k, hi in enumerate(bounds[1:], start=1):  # cumulative "< hi" sets, as the paper reports
        idx = sorted(i for b in members[: k + 1] for i in b)
        files[f"lt{hi:g}"] = write_fasta((records[i] for i in idx), out / f"lt{hi:g}.fasta")
    with atomic_file(out / TABLE_FILE, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["id", "max_identity", "best_train_hit", "bin"])
        for i, r in enumerate(records):
            w.writerow(
                [
                    r.id,
                    f"{ident[i]:.3f}",
                    training[hits[i].target].id if i in hits else "",
                    names[bin_of(ident[i], bounds)],
                ]
            )
    summary = {
        "source": str(source),
        "train": [str(p) for p in train],
        "bins": bounds,
        "method": method_name(backend),
        "evalue": evalue,
        "records": len(records),
        "training_records": len(training),
        "files": files,
        "disjoint_bins": {
            n: {
                "records": len(idx),
                "min_identity": min((ident[i] for i in idx), default=None),
                "max_identity": max((ident[i] for i in idx), default=None),
            }
            for n, idx in zip(names, members)
        },
    }
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def split_command(
    source: str,
    train: list[str],
    out: str,
    bins: str = "0.5,0.9",
    evalue: float = 1e-3,
    exhaustive: bool = False,
    search: BackendOptions = AUTO_BACKEND,
) -> int:
    """Held-out sets binned by max identity to the training data.

    Args:
        source: candidate held-out sequences (FASTA, or CSV/TSV with a sequence column)
        train: training FASTA file(s) and/or prepared store directories
        out: output directory for the bin FASTAs, max_identity.tsv, summary.json
        bins: increasing identity bounds, e.g. 0.5,0.9
        evalue: mmseqs -e: alignments above it do not count
        exhaustive: mmseqs without prefilter: slower, misses no hit
        search: identity backend
    """
    check_inputs(source, train)  # before `--backend auto` may warn about mmseqs
    s = split_by_identity(source, train, bins, out, search.resolve(), evalue, exhaustive)
    counts = ", ".join(f"{n}: {v['records']:,}" for n, v in s["disjoint_bins"].items())
    print(
        f"{s['source']}: {s['records']:,} records binned by max identity to {s['training_records']:,} "
        f"training records [{s['method']}]: {counts} → {out}"
    )
    return 0


main = command(split_command, "plm data split-by-identity", expected=(FileNotFoundError, ValueError))
