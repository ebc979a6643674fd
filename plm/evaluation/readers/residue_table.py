"""``residue_table``: one chain per row of a CSV/TSV, with a sequence column, a per-residue label string
and optional 0/1 mask columns (CB513 as NetSurfP-2.0 ships it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from plm.evaluation.readers.common import (
    ResidueRecord,
    _apply_mask,
    _cropped,
    _raise_problems,
    encode_residue_labels,
    read_csv_rows,
)


def read_residue_table(
    path: str | Path,
    classes: list[str],
    sequence_column: str = "sequence",
    label_column: str = "labels",
    mask_columns: Sequence[str] = (),
    id_column: str | None = "id",
    split_column: str | None = None,
    max_len: int | None = None,
    ignore: Sequence[str] = (),
) -> list[ResidueRecord]:
    """One chain per row: a sequence column, a label-string column (one character per residue) and
    optional 0/1 mask columns; a residue is scored only where every mask is ``1`` (CB513: resolved
    *and* inside the original CB513 segment, the NetSurfP-2.0 convention). TSV when the name says so."""
    mask_columns = [mask_columns] if isinstance(mask_columns, str) else list(mask_columns)
    required = [sequence_column, label_column, *mask_columns] + [c for c in (id_column, split_column) if c]
    records, problems = [], []
    for line, row in enumerate(read_csv_rows(path, required), start=2):  # line 1 is the header
        rid = row[id_column] if id_column else f"line{line}"
        seq = (row[sequence_column] or "").strip()
        try:
            y = encode_residue_labels((row[label_column] or "").strip(), seq, classes, ignore)
        except ValueError as err:
            problems.append(f"line {line} (record {rid!r}), column {label_column!r}: {err}")
            continue
        for col in mask_columns:
            m = (row[col] or "").strip()
            if len(m) != len(seq) or set(m) - {"0", "1"}:
                problems.append(
                    f"line {line} (record {rid!r}): mask column {col!r} must be one 0/1 per residue "
                    f"({len(seq)}), got {len(m)} characters"
                )
                break
            _apply_mask(y, m)
        else:
            records.append(
                _cropped(ResidueRecord(rid, seq, y, row[split_column] if split_column else ""), max_len)
            )
    _raise_problems(
        Path(path),
        records,
        problems,
        "bad rows",
        "Each label and mask string must have one character per residue of the sequence column.",
        "no rows",
    )
    return records
