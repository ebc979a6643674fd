"""Task data: from a task's YAML and files to the records its run uses.

Readers (one module per file format, :mod:`plm.evaluation.readers`): per-residue labels in
``residue_fasta`` (FLIP: sequences, labels and mask in three FASTAs sharing ids), ``residue_table`` (one
row per chain with sequence, label string and 0/1 mask columns: CB513), ``annotated_fasta`` (header,
sequence line, label line per record: TMbed); per-sequence targets in ``sequence_csv`` (FLIP table) and
``sequence_fasta`` (label in the FASTA header: DeepLoc); DMS tables (``dms_csv``) and ``structures``.
Which format feeds which kind, and how a task's YAML maps onto a reader, is registered once in
:mod:`plm.evaluation.formats`.

This module assembles a task's data through that registry, and keeps the readers importable from
``plm.evaluation.datasets`` where callers have always found them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plm.evaluation import kinds
from plm.evaluation.formats import load_dms, load_multilabel, load_structures, read_task_data
from plm.evaluation.readers.annotated_fasta import read_annotated_fasta
from plm.evaluation.readers.common import (
    IGNORE,
    MAX_LISTED,
    LabelError,
    ResidueRecord,
    SequenceRecord,
    _apply_mask,
    _cropped,
    _problem_error,
    _raise_problems,
    as_paths,
    encode_residue_labels,
    header_fields,
    is_true,
    iter_fasta_text,
    open_text,
    read_csv_rows,
    read_ids,
    task_file,
)
from plm.evaluation.readers.dms_csv import Variant, read_dms_csv, read_wildtype
from plm.evaluation.readers.residue_fasta import read_label_fasta, read_residue_fasta
from plm.evaluation.readers.residue_table import read_residue_table
from plm.evaluation.readers.sequence_csv import read_sequence_csv
from plm.evaluation.readers.sequence_fasta import read_sequence_fasta
from plm.evaluation.readers.structures import StructureRecord, read_structure, virtual_cb

if TYPE_CHECKING:
    from plm.evaluation.tasks import TaskSpec

__all__ = [
    "IGNORE",
    "MAX_LISTED",
    "LabelError",
    "ResidueRecord",
    "SequenceRecord",
    "StructureRecord",
    "Variant",
    "_apply_mask",
    "_cropped",
    "_problem_error",
    "_raise_problems",
    "as_paths",
    "encode_residue_labels",
    "header_fields",
    "is_true",
    "iter_fasta_text",
    "load_dms",
    "load_multilabel",
    "load_records",
    "load_structures",
    "open_text",
    "read_annotated_fasta",
    "read_csv_rows",
    "read_dms_csv",
    "read_ids",
    "read_label_fasta",
    "read_residue_fasta",
    "read_residue_table",
    "read_sequence_csv",
    "read_sequence_fasta",
    "read_structure",
    "read_task_data",
    "read_wildtype",
    "task_file",
    "virtual_cb",
]


def load_records(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """The records of a supervised task in its YAML format; formats that split by file tag records
    ``train``/``test``. Zero-shot and contact tasks have their own data (:func:`read_task_data`)."""
    if spec.kind not in kinds.SUPERVISED_KINDS:
        raise ValueError(f"{spec.source}: format {spec.format!r} has no supervised reader")
    return read_task_data(spec, files, max_len)
