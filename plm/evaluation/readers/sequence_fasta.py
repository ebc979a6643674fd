"""``sequence_fasta``: one class per sequence, read from its FASTA header (DeepLoc), split by file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from plm.evaluation.readers.common import SequenceRecord, _problem_error, as_paths, iter_fasta_text


def read_sequence_fasta(
    paths: str | Path | Sequence[str | Path],
    header_pattern: str,
    classes: list[str],
    split: str = "",
    max_len: int | None = None,
    ignore: Sequence[str] = (),
    exclude: set[str] | None = None,
) -> list[SequenceRecord]:
    """One class per sequence, read from its FASTA header by ``header_pattern``, a regular expression
    with a named group ``target`` searched in the header line without ``>`` (DeepLoc writes
    ``>Q9H400 Cell.membrane-M test``). Records whose target is in ``ignore`` are skipped (DeepLoc's
    validation set has 23 ``Cytoplasm-Nucleus`` proteins outside the 10 test classes)."""
    pattern = re.compile(header_pattern)
    lookup = {c: i for i, c in enumerate(classes)}
    records, problems = [], []
    for path in as_paths(paths):
        file_problems = []
        for rid, desc, seq in iter_fasta_text(path):
            if exclude and rid in exclude:
                continue
            m = pattern.search(desc)
            if m is None:
                file_problems.append(f"record {rid!r}: header {desc!r} does not match {header_pattern!r}")
                continue
            target = m.group("target")
            if target in ignore:
                continue
            if target not in lookup:
                file_problems.append(f"record {rid!r}: class {target!r} not in classes {classes}")
                continue
            if not seq:
                file_problems.append(f"record {rid!r}: empty sequence")
                continue
            records.append(
                SequenceRecord(rid, seq[:max_len] if max_len else seq, float(lookup[target]), split)
            )
        if file_problems:
            problems.append(
                _problem_error(
                    path,
                    "bad records",
                    file_problems,
                    "Fix the header_pattern or the classes / ignore_labels in the task YAML.",
                )
            )
    if problems:
        raise ValueError(" | ".join(str(p) for p in problems))
    if not records:
        raise ValueError(f"{', '.join(map(str, as_paths(paths)))}: no FASTA records")
    return records
