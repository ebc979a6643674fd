"""Readers for multi-label tasks: several labels per residue (FLIP binding sites) or per sequence (EC numbers).

``residue_multilabel`` reads the ``residue_fasta`` layout (sequences, labels, optional mask; FLIP) with a
``label_map`` in the task YAML saying which classes each label character switches on; FLIP bind writes one
digit per residue whose three bits are small molecule / nucleic acid / metal::

    classes: [small_molecule, nucleic_acid, metal]
    label_map: {"0": [], "1": [metal], "2": [nucleic_acid], "3": [nucleic_acid, metal], "4": [small_molecule],
                "5": [small_molecule, metal], "6": [small_molecule, nucleic_acid], "7": [small_molecule, nucleic_acid, metal]}

``sequence_multilabel`` reads the ``id_annotations`` format (DeepFRI's nrPDB-EC files): a FASTA of
``sequences``, a ``labels`` table (``id<TAB>label,label,…``; DeepFRI's ``### EC-numbers`` header line lists
the label vocabulary) and id lists naming the ``train`` / ``valid`` / ``test`` records. Without ``classes`` in
the YAML the vocabulary is the file's header, else every label the table uses.

Every problem (ids without a sequence or without labels, a label outside the declared classes, a label
string of the wrong length) is gathered into one error naming the file, as the single-label readers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plm.evaluation.readers.common import (
    LabelError,
    ResidueRecord,
    _problem_error,
    as_paths,
    iter_fasta_text,
    open_text,
    read_ids,
)
from plm.evaluation.readers.residue_fasta import read_label_fasta


@dataclass
class MultiLabelRecord:
    """One sequence with a 0/1 vector over the task's classes."""

    id: str
    sequence: str
    labels: np.ndarray  # (C,) float32
    split: str = ""
    validation: bool = False


class LabelledRecords(list):
    """Records plus the label vocabulary they were encoded with (when the task YAML named none)."""

    classes: list[str]


def label_vectors(label_map: dict[str, list[str]], classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Label character → (C,) 0/1 vector; ``load_task`` has checked every class exists."""
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for char, on in label_map.items():
        v = np.zeros(len(classes), dtype=np.float32)
        v[[index[c] for c in on]] = 1.0
        out[str(char)] = v
    return out


def read_residue_multilabel(
    sequences: str | Path,
    labels: str | Path,
    classes: list[str],
    label_map: dict[str, list[str]],
    mask: str | Path | None = None,
    split_field: str = "SET",
    validation_field: str | None = None,
    max_len: int | None = None,
) -> list[ResidueRecord]:
    """Per-residue (L, C) 0/1 labels from a FLIP-style label FASTA through ``label_map``; residues outside
    the mask get a row of ``IGNORE``."""
    vectors = label_vectors(label_map, classes)

    def encode(lab: str, seq: str) -> np.ndarray:
        if len(lab) != len(seq):
            raise LabelError(f"{len(lab)} labels for a {len(seq)}-residue sequence")
        bad = sorted(set(lab) - set(vectors))
        if bad:
            raise LabelError(f"label character(s) {bad} not in the task's label_map {sorted(vectors)}")
        return np.stack([vectors[c] for c in lab])

    return read_label_fasta(
        sequences,
        labels,
        encode,
        mask,
        split_field,
        validation_field,
        max_len,
        "Labels, sequences and mask must share ids, with one label character per residue, "
        "each a key of label_map.",
    )


def read_annotations(path: str | Path) -> tuple[dict[str, list[str]], list[str] | None]:
    """id → labels of a ``id<TAB>label,label`` table, and the vocabulary its header lists (DeepFRI: a
    ``###`` line before the first row followed by the tab-separated labels, ``### EC-numbers`` /
    ``### GO-terms``), None without one. Other ``#`` lines are comments."""
    annotations: dict[str, list[str]] = {}
    vocabulary: list[str] | None = None
    with open_text(path) as fh:
        lines = [ln.rstrip("\r\n") for ln in fh]
    i = 0
    while i < len(lines):
        line = lines[i]
        if (
            line.startswith("###")
            and vocabulary is None
            and not annotations
            and i + 1 < len(lines)
            and not lines[i + 1].startswith("#")
        ):
            vocabulary = [c for c in lines[i + 1].split("\t") if c]
            i += 2
            continue
        if line.strip() and not line.startswith("#"):
            rid, _, labels = line.partition("\t")
            annotations[rid.strip()] = [c.strip() for c in labels.split(",") if c.strip()]
        i += 1
    if not annotations:
        raise ValueError(f"{path}: no 'id<TAB>label,label' rows")
    return annotations, vocabulary


def read_id_annotations(
    sequences: str | Path,
    labels: str | Path,
    train: str | Path | list,
    test: str | Path | list,
    valid: str | Path | None = None,
    classes: list[str] | None = None,
    max_len: int | None = None,
) -> LabelledRecords:
    """Records of the ids the ``train`` / ``valid`` / ``test`` lists name (valid ones are training records
    flagged for validation), each with its labels as a 0/1 vector over ``classes`` (module docstring)."""
    annotations, vocabulary = read_annotations(labels)
    classes = list(classes or vocabulary or sorted({c for v in annotations.values() for c in v}))
    index = {c: i for i, c in enumerate(classes)}
    seqs = {rid: s for rid, _, s in iter_fasta_text(sequences)}
    parts = [("train", p, False) for p in as_paths(train)] + [("test", p, False) for p in as_paths(test)]
    parts += [("train", Path(valid), True)] if valid else []
    out, problems, where = LabelledRecords(), [], {}
    for split, path, is_valid in parts:
        for rid in sorted(read_ids(path)):
            if rid in where:
                problems.append(f"id {rid!r} is listed in both {where[rid]} and {path}")
                continue
            where[rid] = path
            seq, labs = seqs.get(rid), annotations.get(rid)
            if seq is None or labs is None:
                missing = "no sequence in " + str(sequences) if seq is None else "no labels in " + str(labels)
                problems.append(f"id {rid!r} of {path.name}: {missing}")
                continue
            unknown = [c for c in labs if c not in index]
            if unknown:
                problems.append(f"id {rid!r}: label(s) {unknown} not in the declared classes")
                continue
            y = np.zeros(len(classes), dtype=np.float32)
            y[[index[c] for c in labs]] = 1.0
            out.append(MultiLabelRecord(rid, seq[:max_len] if max_len else seq, y, split, is_valid))
    if problems:
        raise _problem_error(
            Path(labels),
            "ids that do not match",
            problems,
            "The id lists, the sequence FASTA and the label table must name the same records, "
            "with labels from the task's classes.",
        )
    if not out:
        raise ValueError(f"{labels}: the id lists name no records")
    out.classes = classes
    return out
