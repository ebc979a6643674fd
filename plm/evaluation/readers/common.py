"""What every task-data reader shares: the record types, file opening, FASTA-as-text, CSV rows, label
encoding and the one-error-for-every-problem convention.

Benchmark files are usually edited by hand, so each reader gathers every problem it finds into one error
that names the file and the offending records: a user fixes them all in one go rather than one per run.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plm.data.fasta import open_binary, read_text_records

IGNORE = -100
MAX_LISTED = 5  # problems named in one error message


@dataclass
class ResidueRecord:
    """One sequence with an integer class per residue (``IGNORE`` where unscored)."""

    id: str
    sequence: str
    labels: np.ndarray
    split: str = ""
    validation: bool = (
        False  # a training record the benchmark sets aside for validation (FLIP's VALIDATION=True)
    )


@dataclass
class SequenceRecord:
    """One sequence with one target (float for regression, class index for classification)."""

    id: str
    sequence: str
    target: float
    split: str = ""
    validation: bool = (
        False  # a training record the benchmark sets aside for validation (FLIP's validation column)
    )


class LabelError(ValueError):
    """A record's label string does not fit its sequence or the task's classes: a problem to gather and
    report with the others, unlike any other error, which stops the reader as it always did."""


def _problem_error(path: Path, what: str, problems: list[str], fix: str) -> ValueError:
    shown = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return ValueError(f"{path}: {len(problems)} {what}: {shown}{more}. {fix}")


def _apply_mask(y: np.ndarray, mask: str) -> None:
    """Residues whose mask character is not '1' are left out of the loss and the metrics."""
    y[np.frombuffer(mask.encode(), dtype=np.uint8) != ord("1")] = IGNORE


def _cropped(record: ResidueRecord, max_len: int | None) -> ResidueRecord:
    if max_len:
        record.sequence, record.labels = record.sequence[:max_len], record.labels[:max_len]
    return record


def _raise_problems(
    path: Path, records: list[ResidueRecord], problems: list[str], what: str, fix: str, empty: str
) -> None:
    """One error listing every bad record, or one saying the file held none."""
    if problems:
        raise _problem_error(path, what, problems, fix)
    if not records:
        raise ValueError(f"{path}: {empty}")


def task_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (check the task YAML's data paths and --data-root)")
    return path


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain, gzip (decided by magic bytes, the rule of :mod:`plm.data.fasta`) or single-member .zip
    text files."""
    path = task_file(path)
    if path.suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        return io.TextIOWrapper(zf.open(members[0]), encoding="utf-8")
    return io.TextIOWrapper(open_binary(path, "file"), encoding="utf-8")


def iter_fasta_text(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(id, header line, sequence string) for each record. Labels and masks are not residues: they are
    read by :func:`plm.data.fasta.read_text_records` (the FASTA structure, gzip and empty-file rules of
    every reader) without the tokenizer's alphabet."""
    for rec in read_text_records(task_file(path)):
        yield rec.id, rec.header, "".join(rec.lines)


def header_fields(description: str) -> dict[str, str]:
    """``KEY=value`` tokens of a FASTA header (FLIP writes ``SET=train VALIDATION=False``)."""
    return dict(tok.split("=", 1) for tok in description.split()[1:] if "=" in tok)


def is_true(value: str | None) -> bool:
    """A validation flag as benchmark files write it (FLIP: ``True`` / ``False`` or empty)."""
    return (value or "").strip().lower() in ("true", "1", "yes")


def encode_residue_labels(
    labels: str, sequence: str, classes: Sequence[str], ignore: Sequence[str] = ()
) -> np.ndarray:
    """One class index per residue (``IGNORE`` for labels in ``ignore``); a length mismatch or a label
    outside ``classes`` + ``ignore`` is a ``LabelError`` (a ``ValueError``) saying which."""
    if len(labels) != len(sequence):
        raise LabelError(f"{len(labels)} labels for a {len(sequence)}-residue sequence")
    lookup = {c: i for i, c in enumerate(classes)} | {c: IGNORE for c in ignore}
    bad = sorted(set(labels) - set(lookup))
    if bad:
        raise LabelError(
            f"labels {bad} not in classes {list(classes)}" + (f" or ignored {list(ignore)}" if ignore else "")
        )
    return np.array([lookup[c] for c in labels], dtype=np.int64)


def as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """One path or a list of them (a task may split its train set over several files: TMbed's folds)."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def read_ids(path: str | Path) -> set[str]:
    """Record ids, one per line (a leading ``>`` and anything after the first whitespace are ignored)."""
    with open_text(path) as fh:
        return {line.lstrip(">").split()[0] for line in fh if line.strip()}


def read_csv_rows(path: str | Path, required: list[str]) -> list[dict[str, str]]:
    """All rows of a CSV (tab-separated when the name contains ``.tsv``), after checking the required
    columns exist (named in the error if not)."""
    with open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter="\t" if ".tsv" in Path(path).name else ",")
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; the file has {columns}. "
                "Fix the column names in the task YAML."
            )
        return list(reader)
