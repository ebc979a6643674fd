"""``dms_csv``: a deep mutational scan, a table of mutation strings and measured scores plus the wild type
they are written against (a record of a FASTA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plm.evaluation.readers.common import iter_fasta_text, read_csv_rows


def read_wildtype(path: str | Path, record_id: str) -> str:
    for rid, _, seq in iter_fasta_text(path):
        if rid == record_id:
            return seq
    raise ValueError(f"{path}: no wild-type record {record_id!r}")


@dataclass
class Variant:
    mutant: str
    score: float


def read_dms_csv(
    path: str | Path, mutant_column: str = "mutant", score_column: str = "DMS_score"
) -> list[Variant]:
    """DMS table: one mutation string (``A24G:K30R``) and one measured score per row; rows without a
    score (blank/NaN) are dropped because DMS tables mark missing measurements that way."""
    rows = read_csv_rows(path, [mutant_column, score_column])
    out = []
    for row in rows:
        raw = (row[score_column] or "").strip()
        if raw.lower() in ("", "nan", "na"):
            continue
        out.append(Variant(row[mutant_column].strip(), float(raw)))
    if not out:
        raise ValueError(f"{path}: no rows with a score in column {score_column!r}")
    return out
