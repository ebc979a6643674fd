"""``annotated_fasta``: three-line records, header, sequence, per-residue label string (TMbed's
``cv_*_annotated.fasta``), split by file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from plm.data.fasta import FastaError, read_text_records
from plm.evaluation.readers.common import (
    ResidueRecord,
    _cropped,
    _problem_error,
    as_paths,
    encode_residue_labels,
    task_file,
)


def read_annotated_fasta(
    paths: str | Path | Sequence[str | Path],
    classes: list[str],
    split: str = "",
    max_len: int | None = None,
    ignore: Sequence[str] = (),
    exclude: set[str] | None = None,
) -> list[ResidueRecord]:
    """Records of exactly three lines: ``>header``, the sequence, its per-residue label string (TMbed's
    ``cv_*_annotated.fasta``). Every record of every file gets ``split``; ids in ``exclude`` are skipped
    (TMbed's blacklist of proteins removed from its evaluation)."""
    records, problems = [], []
    for path in as_paths(paths):
        try:
            recs = list(read_text_records(task_file(path)))
        except FastaError as err:
            raise ValueError(
                f"{path}: not an annotated FASTA ('>header', sequence line, label line): {err}"
            ) from None
        file_problems = []
        for rec in recs:
            body, rid = rec.lines, rec.id
            if len(body) != 2:
                file_problems.append(
                    f"record {rid!r}: {len(body)} line(s) after the header, expected 2 (sequence, labels)"
                )
                continue
            if exclude and rid in exclude:
                continue
            seq, lab = body
            try:
                y = encode_residue_labels(lab, seq, classes, ignore)
            except ValueError as err:
                file_problems.append(f"record {rid!r}: {err}")
                continue
            records.append(_cropped(ResidueRecord(rid, seq, y, split), max_len))
        if file_problems:
            problems.append(
                _problem_error(
                    path,
                    "bad records",
                    file_problems,
                    "Each record is '>header', one sequence line, one label line of equal length.",
                )
            )
    if problems:
        raise ValueError(" | ".join(str(p) for p in problems))
    return records
