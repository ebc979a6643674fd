"""``residue_fasta``: FLIP's per-residue layout, sequences, labels and an optional 0/1 mask in three FASTA
files sharing record ids, the split and validation flag as ``KEY=value`` fields of the label header.

:func:`read_label_fasta` is the one loop over that layout; the single-label reader here and the
multi-label one (:func:`plm.evaluation.multilabel.read_residue_multilabel`) differ only in how a label
string becomes an array, so they pass that in rather than each keeping a copy of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plm.evaluation.readers.common import (
    LabelError,
    ResidueRecord,
    _apply_mask,
    _cropped,
    _raise_problems,
    encode_residue_labels,
    header_fields,
    is_true,
    iter_fasta_text,
)

#: a record's label string and sequence → its per-residue labels; a ``LabelError`` is a bad record
LabelEncoder = Callable[[str, str], np.ndarray]


def read_label_fasta(
    sequences: str | Path,
    labels: str | Path,
    encode: LabelEncoder,
    mask: str | Path | None,
    split_field: str,
    validation_field: str | None,
    max_len: int | None,
    fix: str,
) -> list[ResidueRecord]:
    """Records of the label FASTA joined by id with their sequence (and mask: residues whose mask is not
    ``1`` get ``IGNORE``), labels from ``encode``; every bad record is gathered into one error ending in
    ``fix``."""
    seqs = {rid: s for rid, _, s in iter_fasta_text(sequences)}
    masks = {rid: m for rid, _, m in iter_fasta_text(mask)} if mask else {}
    records, problems = [], []
    for rid, desc, lab in iter_fasta_text(labels):
        seq = seqs.get(rid)
        if seq is None:
            problems.append(f"record {rid!r} has labels but no sequence in {sequences}")
            continue
        try:
            y = encode(lab, seq)
        except LabelError as err:
            problems.append(f"record {rid!r}: {err}")
            continue
        if mask:
            m = masks.get(rid)
            if m is None or len(m) != len(seq):
                problems.append(
                    f"record {rid!r}: mask missing or of length {len(m or '')} != {len(seq)} in {mask}"
                )
                continue
            _apply_mask(y, m)
        fields = header_fields(desc)
        records.append(
            _cropped(
                ResidueRecord(
                    rid, seq, y, fields.get(split_field, ""), is_true(fields.get(validation_field or "", ""))
                ),
                max_len,
            )
        )
    _raise_problems(
        Path(labels),
        records,
        problems,
        "bad label records",
        fix,
        "no label records found (is it a FASTA file?)",
    )
    return records


def read_residue_fasta(
    sequences: str | Path,
    labels: str | Path,
    classes: list[str],
    mask: str | Path | None = None,
    split_field: str = "SET",
    max_len: int | None = None,
    ignore: Sequence[str] = (),
    validation_field: str | None = None,
) -> list[ResidueRecord]:
    """FLIP-style per-residue labels: sequences, labels and an optional 0/1 mask in three FASTA files
    sharing record ids. The split comes from ``split_field=`` in the label header, the validation flag
    (``is_true``) from ``validation_field=``. Residues whose label is in ``ignore`` (e.g. TMbed's ``U`` =
    unresolved) are kept in the sequence but not scored."""
    return read_label_fasta(
        sequences,
        labels,
        lambda lab, seq: encode_residue_labels(lab, seq, classes, ignore),
        mask,
        split_field,
        validation_field,
        max_len,
        "Labels, sequences and mask must share ids and have one character per residue.",
    )
