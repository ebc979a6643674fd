"""The registry of task-data formats: for each format a YAML can name, the file roles it needs, the task
kinds it can feed and the reader that turns a ``TaskSpec`` and its files into what the kind runs on.

This is the one place a format is defined: the task-YAML schema (:data:`plm.evaluation.tasks.KINDS`,
:data:`~plm.evaluation.tasks.FILES`) is derived from it, so adding a format is a reader module under
:mod:`plm.evaluation.readers` plus one :class:`Format` entry here, and a kind accepts a format exactly
when that format has a reader for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plm.evaluation import kinds
from plm.evaluation import multilabel as ml
from plm.evaluation.readers.annotated_fasta import read_annotated_fasta
from plm.evaluation.readers.common import read_ids
from plm.evaluation.readers.dms_csv import Variant, read_dms_csv, read_wildtype
from plm.evaluation.readers.residue_fasta import read_residue_fasta
from plm.evaluation.readers.residue_table import read_residue_table
from plm.evaluation.readers.sequence_csv import read_sequence_csv
from plm.evaluation.readers.sequence_fasta import read_sequence_fasta
from plm.evaluation.readers.structures import StructureRecord, read_structure

if TYPE_CHECKING:
    from plm.evaluation.tasks import TaskSpec

#: (the task, its data files by role, the length records are cropped to) → what the task's kind runs on
Reader = Callable[["TaskSpec", dict[str, Any], int], Any]
STRUCTURE_SUFFIXES = (".npz", ".pdb", ".cif", ".cif.gz", ".pdb.gz", ".bcif")


@dataclass(frozen=True)
class Format:
    """One file format of task data: the ``data`` roles a YAML must give (``required``) and may give
    (``optional``), the YAML keys it cannot be read without (key → what it holds), and its reader for
    each kind it feeds (the order of ``FORMATS`` decides a kind's default format: the first feeding it)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    readers: dict[str, Reader]
    needs: dict[str, str] = field(default_factory=dict)


# ---- readers: a TaskSpec onto each file reader's arguments ----------------------------------------------
def _residue_fasta(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    cols = spec.columns
    return read_residue_fasta(
        files["sequences"],
        files["labels"],
        spec.classes,
        files.get("mask"),
        cols.get("split", "SET"),
        max_len,
        spec.ignore_labels,
        cols.get("validation"),
    )


def _residue_table(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    cols = spec.columns
    return read_residue_table(
        files["table"],
        spec.classes,
        cols.get("sequence", "sequence"),
        cols.get("labels", "labels"),
        cols.get("mask", []),
        cols.get("id"),
        cols.get("split"),
        max_len,
        spec.ignore_labels,
    )


def _sequence_csv(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    cols = spec.columns
    split_column = None if "train_fraction" in spec.split else cols.get("split", "set")
    return read_sequence_csv(
        files["table"],
        cols.get("sequence", "sequence"),
        cols.get("target", "target"),
        split_column,
        spec.classes or None,
        max_len,
        cols.get("validation"),
    )


def _annotated_fasta(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """Split by file: the train files' records are tagged ``train``, the test files' ``test``."""
    exclude = read_ids(files["exclude"]) if "exclude" in files else None
    return [
        r
        for role in ("train", "test")
        for r in read_annotated_fasta(files[role], spec.classes, role, max_len, spec.ignore_labels, exclude)
    ]


def _sequence_fasta(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """Split by file, as :func:`_annotated_fasta`."""
    exclude = read_ids(files["exclude"]) if "exclude" in files else None
    return [
        r
        for role in ("train", "test")
        for r in read_sequence_fasta(
            files[role], spec.header_pattern, spec.classes, role, max_len, spec.ignore_labels, exclude
        )
    ]


def load_multilabel(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """Multi-label records (plm.evaluation.multilabel); a vocabulary read from the data becomes the spec's
    classes, so heads, metrics and kept models all use it."""
    cols = spec.columns
    if spec.kind == "residue_multilabel":
        return ml.read_residue_multilabel(
            files["sequences"],
            files["labels"],
            spec.classes,
            spec.label_map,
            files.get("mask"),
            cols.get("split", "SET"),
            cols.get("validation"),
            max_len,
        )
    records = ml.read_id_annotations(
        files["sequences"],
        files["labels"],
        files["train"],
        files["test"],
        files.get("valid"),
        spec.classes or None,
        max_len,
    )
    spec.classes = list(records.classes)
    return records


def load_dms(spec: TaskSpec, files: dict[str, Any], max_len: int) -> tuple[str, list[Variant]]:
    """The wild type and every measured variant (unparsed: the zero-shot run checks them against it)."""
    wt = read_wildtype(files["wildtype"], spec.wildtype_id)
    return wt, read_dms_csv(
        files["table"], spec.columns.get("mutant", "mutant"), spec.columns.get("score", "DMS_score")
    )


def load_structures(spec: TaskSpec, files: dict[str, Path], max_len: int) -> list[StructureRecord]:
    """Every structure under ``dir`` (.npz / .pdb / .cif[.gz]) or listed in ``files`` (a text file of
    paths), cropped to ``max_len`` and filtered to ≥ ``min_contacts`` contacts at |i−j| ≥ 6."""
    if "dir" in files:
        paths = sorted(p for p in files["dir"].iterdir() if p.name.endswith(STRUCTURE_SUFFIXES))
    else:
        listing = files["files"]
        paths = [listing.parent / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    out = []
    for p in paths:
        rec = read_structure(p)
        rec.sequence, rec.cb = rec.sequence[:max_len], rec.cb[:max_len]
        c = rec.contacts()
        if int(np.triu(c == 1, 6).sum()) >= spec.min_contacts:
            out.append(rec)
    if not out:
        raise ValueError(f"{spec.source}: no structure with >= {spec.min_contacts} contacts found in {files}")
    return out


# ---- the registry ---------------------------------------------------------------------------------------
# ``train``/``test`` roles split by file and may list several files (TMbed's cross-validation folds)
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "residue_fasta",
            ("sequences", "labels"),
            ("mask",),
            {"residue_classification": _residue_fasta, "residue_multilabel": load_multilabel},
        ),
        Format("residue_table", ("table",), (), {"residue_classification": _residue_table}),
        Format(
            "annotated_fasta", ("train", "test"), ("exclude",), {"residue_classification": _annotated_fasta}
        ),
        Format(
            "sequence_csv",
            ("table",),
            (),
            {"sequence_regression": _sequence_csv, "sequence_classification": _sequence_csv},
        ),
        Format(
            "sequence_fasta",
            ("train", "test"),
            ("exclude",),
            {"sequence_classification": _sequence_fasta},
            needs={"header_pattern": "a regex with a (?P<target>...) group"},
        ),
        Format(
            "dms_csv",
            ("table", "wildtype"),
            (),
            {"zero_shot": load_dms},
            needs={"wildtype_id": "record id in the wild-type FASTA"},
        ),
        Format("structures", (), ("dir", "files", "index"), {"contacts": load_structures}),
        Format(
            "id_annotations",
            ("sequences", "labels", "train", "test"),
            ("valid",),
            {"sequence_multilabel": load_multilabel},
        ),
    )
}
_UNDEFINED = sorted({k for f in FORMATS.values() for k in f.readers} - set(kinds.KIND_METRICS))
if _UNDEFINED:  # a reader for a kind kinds.py does not define: no loss or metrics to run it with
    raise RuntimeError(f"plm.evaluation.formats: readers for undefined kind(s) {_UNDEFINED}")

#: kind → the formats that can feed it (the first is the default when a YAML names no format)
KINDS: dict[str, list[str]] = {
    kind: [f.name for f in FORMATS.values() if kind in f.readers]
    for kind in kinds.KIND_METRICS
    if any(kind in f.readers for f in FORMATS.values())
}
#: format → (files it needs in ``data``, files it may have)
FILES: dict[str, tuple[list[str], list[str]]] = {
    f.name: (list(f.required), list(f.optional)) for f in FORMATS.values()
}


def read_task_data(spec: TaskSpec, files: dict[str, Any], max_len: int) -> Any:
    """What the task's kind runs on, read by its format's reader for that kind."""
    fmt = FORMATS.get(spec.format)
    reader = fmt.readers.get(spec.kind) if fmt else None
    if reader is None:
        raise ValueError(f"{spec.source}: format {spec.format!r} has no reader for kind {spec.kind}")
    return reader(spec, files, max_len)
