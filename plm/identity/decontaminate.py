"""``plm data decontaminate``: drop training records too similar to any evaluation sequence.

Benchmarks leak into pretraining sets (3,280 evaluation sequences of the shared data occur verbatim
in a pretraining source; issue 11), and a leaked test set measures memorisation, not generalisation.
A training record is removed when its max identity to an evaluation sequence is >= ``min_identity``.

Outputs (in ``--out``): ``removed.tsv`` (one row per removed record: split, record index, id, best
evaluation hit, identity, exact) and ``summary.json``. The training data itself is filtered as:
  * FASTA input → ``OUT/<name>.decontaminated.fasta.gz`` (same records and headers minus removed ones);
  * prepared store directory → ``<store>/exclude.npy`` per split (sorted int64 record indices, merged
    with any existing list), so the store is filtered without re-preparing; the data module skips them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from plm.command import command
from plm.identity.search import AUTO_BACKEND, Backend, BackendOptions, best_hits, exact_hits, method_name
from plm.identity.seqio import SeqRecord, read_sequences, read_store, read_train, store_splits, write_fasta
from plm.utils.atomic import atomic_file, atomic_write_text

EXCLUDE_FILE = "exclude.npy"
REPORT_FILE, SUMMARY_FILE = "removed.tsv", "summary.json"


def read_exclusions(store_dir: str | Path) -> np.ndarray:
    """Record indices a decontamination excluded from this store (empty when there is no list)."""
    path = Path(store_dir) / EXCLUDE_FILE
    return np.load(path) if path.is_file() else np.zeros(0, dtype=np.int64)


def check_inputs(train: str | Path, against: list[str | Path]) -> None:
    """A missing ``--train`` or ``--against`` fails here, before a backend is chosen or anything is read."""
    if not Path(train).exists():
        raise FileNotFoundError(
            f"--train {train}: no such FASTA file or prepared store directory; give the "
            "training FASTA(.gz) or a directory `plm data prepare` wrote"
        )
    missing = [str(p) for p in against if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--against: evaluation file(s) not found: {', '.join(missing)}; "
            "give existing FASTA or CSV/TSV files of the evaluation sequences"
        )


def load_evaluation(paths: list[str | Path]) -> list[SeqRecord]:
    """All evaluation sequences, ids prefixed by ``folder/file`` so the report says where a hit is (task
    sets reuse file names such as ``sequences.fasta``)."""
    out = []
    for p in paths:
        label = f"{Path(p).resolve().parent.name}/{Path(p).name}"
        out += [SeqRecord(f"{label}:{r.id}", r.seq) for r in read_sequences(p)]
    if not out:
        raise ValueError(f"--against: no sequences in {[str(p) for p in paths]}")
    return out


def decontaminate(
    train: str | Path,
    against: list[str | Path],
    out: str | Path,
    backend: Backend,
    min_identity: float = 0.5,
    list_only: bool = False,
    coverage: float = 0.0,
    cov_mode: int = 0,
    evalue: float = 1e-3,
) -> dict:
    """Find (and unless ``list_only`` remove) training records within ``min_identity`` of ``against``."""
    if not 0.0 < min_identity <= 1.0:
        raise ValueError(f"--min-identity {min_identity}: must be a fraction in (0, 1]")
    train, out = Path(train), Path(out)
    check_inputs(train, against)
    evaluation = load_evaluation(against)
    out.mkdir(parents=True, exist_ok=True)
    parts = (
        {k: read_store(v) for k, v in store_splits(train).items()}
        if train.is_dir()
        else {"-": read_train(train)}
    )

    rows, outputs, per_split = [], [], {}
    for split, records in parts.items():
        hits = best_hits(records, evaluation, backend, min_identity, coverage, cov_mode, evalue)
        exact = exact_hits(records, evaluation)
        removed = sorted(hits)
        per_split[split] = {
            "records": len(records),
            "removed": len(removed),
            "removed_exact": sum(i in exact for i in removed),
        }
        for i in removed:
            rows.append(
                (
                    split,
                    i,
                    records[i].id,
                    evaluation[hits[i].target].id,
                    f"{hits[i].identity:.3f}",
                    int(i in exact),
                )
            )
        if list_only:
            continue
        if train.is_dir():
            store_dir = store_splits(train)[split]
            merged = np.union1d(read_exclusions(store_dir), np.asarray(removed, dtype=np.int64)).astype(
                np.int64
            )
            with atomic_file(store_dir / EXCLUDE_FILE) as fh:  # training reads it: whole or not at all
                np.save(fh, merged)
            outputs.append(str(store_dir / EXCLUDE_FILE))
        else:
            dropped = set(removed)
            target = out / f"{train.name.split('.')[0]}.decontaminated.fasta.gz"
            write_fasta((r for i, r in enumerate(records) if i not in dropped), target)
            outputs.append(str(target))

    with atomic_file(out / REPORT_FILE, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["split", "record_index", "record_id", "best_eval_hit", "identity", "exact"])
        w.writerows(rows)
    by_eval: dict[str, int] = {}
    for row in rows:
        by_eval[row[3].split(":", 1)[0]] = by_eval.get(row[3].split(":", 1)[0], 0) + 1
    summary = {
        "train": str(train),
        "against": [str(p) for p in against],
        "evaluation_sequences": len(evaluation),
        "min_identity": min_identity,
        "coverage": coverage,
        "cov_mode": cov_mode,
        "evalue": evalue,
        "method": method_name(backend),
        "list_only": list_only,
        "records": sum(s["records"] for s in per_split.values()),
        "removed": len(rows),
        "removed_exact": sum(s["removed_exact"] for s in per_split.values()),
        "splits": per_split,
        "removed_by_eval_file": by_eval,
        "outputs": [str(out / REPORT_FILE), *outputs],
    }
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def decontaminate_command(
    train: str,
    against: list[str],
    out: str,
    min_identity: float = 0.5,
    list_only: bool = False,
    coverage: float = 0.0,
    cov_mode: int = 0,
    evalue: float = 1e-3,
    search: BackendOptions = AUTO_BACKEND,
) -> int:
    """Drop training records too similar to any evaluation sequence.

    Args:
        train: training FASTA(.gz) or prepared store directory (DIR/<split>/tokens.bin)
        against: evaluation sequence files: FASTA (TMbed-annotated too), or CSV/TSV with a sequence column
        out: directory for removed.tsv, summary.json and a filtered FASTA
        min_identity: remove records with max identity >= this (0-1)
        list_only: only write the report; leave the training data alone
        coverage: mmseqs -c: min alignment coverage (0 = any significant local hit)
        cov_mode: mmseqs --cov-mode: 0 both, 1 target (eval), 2 query (train)
        evalue: mmseqs -e: max e-value of a counted alignment
        search: identity backend
    """
    check_inputs(train, against)  # before `--backend auto` may warn about mmseqs
    s = decontaminate(
        train, against, out, search.resolve(), min_identity, list_only, coverage, cov_mode, evalue
    )
    verb = "would remove" if s["list_only"] else "removed"
    print(
        f"{s['train']}: {verb} {s['removed']:,} of {s['records']:,} records at >= {s['min_identity']:.0%} identity "
        f"({s['removed_exact']:,} exact) [{s['method']}]; report: {out}/{REPORT_FILE}"
    )
    return 0


# FastaError is a ValueError
main = command(decontaminate_command, "plm data decontaminate", expected=(FileNotFoundError, ValueError))
