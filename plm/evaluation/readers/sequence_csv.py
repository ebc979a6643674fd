"""``sequence_csv``: a sequence/target table, one record per row (FLIP's per-sequence tasks)."""

from __future__ import annotations

from pathlib import Path

from plm.evaluation.readers.common import SequenceRecord, _problem_error, is_true, read_csv_rows


def read_sequence_csv(
    path: str | Path,
    sequence_column: str = "sequence",
    target_column: str = "target",
    split_column: str | None = "set",
    classes: list[str] | None = None,
    max_len: int | None = None,
    validation_column: str | None = None,
) -> list[SequenceRecord]:
    """A sequence/target table (FLIP format). With ``classes`` the target is a class name; rows whose
    ``validation_column`` is true (``is_true``) are the benchmark's validation records."""
    optional = [c for c in (split_column, validation_column) if c]
    rows = read_csv_rows(path, [sequence_column, target_column] + optional)
    records, problems = [], []
    lookup = {c: i for i, c in enumerate(classes or [])}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        raw = row[target_column]
        try:
            target = float(lookup[raw]) if classes else float(raw)
        except (KeyError, ValueError):
            problems.append(
                f"line {i}: target {raw!r} is not " + (f"one of {classes}" if classes else "a number")
            )
            continue
        seq = row[sequence_column].strip()
        if not seq:
            problems.append(f"line {i}: empty sequence")
            continue
        records.append(
            SequenceRecord(
                f"line{i}",
                seq[:max_len] if max_len else seq,
                target,
                row[split_column] if split_column else "",
                is_true(row[validation_column]) if validation_column else False,
            )
        )
    if problems:
        raise _problem_error(Path(path), "bad rows", problems, f"Check column {target_column!r}.")
    return records
