"""Sequence inputs for identity work: FASTA, annotated FASTA, CSV/TSV columns and prepared stores.

Evaluation sets come in many formats (TMbed's 3-line FASTA with a label line, FLIP/ProteinGym CSVs with
a ``sequence``/``target_seq`` column, CB513 as TSV), so :func:`read_sequences` accepts them all and
:func:`read_train` reads training data with the same validation policy ``plm data prepare`` uses.
Records are handed to mmseqs under their *position* (``0``, ``1``, …) rather than their header, so
identifiers with spaces, pipes or duplicates can never be confused, and mapped back afterwards.
Files are read through :mod:`plm.data.fasta`, so gzip detection, FASTA structure, empty files and damaged
gzip streams follow the one policy everywhere.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plm.data.fasta import open_binary, read_fasta, read_text_records
from plm.data.store import OFFSETS_FILE, TOKENS_FILE, TokenStore
from plm.tokenizer import FIRST_RESIDUE, RESIDUES
from plm.utils.atomic import atomic_file

SEQUENCE_COLUMNS = ("sequence", "target_seq", "seq", "mutated_sequence", "input")
_AA = {c for c in RESIDUES if c.isalpha()}  # the tokenizer's letters ('.' and '-' are gaps, not residues)
_LETTERS = np.zeros(256, dtype=np.uint8)
_LETTERS[FIRST_RESIDUE : FIRST_RESIDUE + len(RESIDUES)] = np.frombuffer(RESIDUES.encode(), dtype=np.uint8)


@dataclass(frozen=True)
class SeqRecord:
    id: str
    seq: str
    description: str = ""


def tokens_to_str(tokens: np.ndarray) -> str:
    """uint8 residue tokens → letters (vectorised; stores hold millions of records)."""
    return _LETTERS[np.asarray(tokens, dtype=np.uint8)].tobytes().decode("ascii")


def _base_suffix(path: Path) -> str:
    name = path.name.lower()
    return Path(name.removesuffix(".gz")).suffix


def _fasta_sequences(path: Path) -> Iterator[SeqRecord]:
    """FASTA records; a record of two equal-length lines whose second is not amino acids is TMbed's
    annotated format (sequence, then per-residue labels) and only the first line is kept."""
    for rec in read_text_records(path):
        lines = rec.lines
        if len(lines) == 2 and len(lines[0]) == len(lines[1]) and not set(lines[1].upper()) <= _AA:
            lines = lines[:1]
        seq = "".join(lines).upper().rstrip("*")
        bad = set(seq) - _AA
        if bad:
            raise ValueError(
                f"{path}: record {rec.id!r} has non-residue characters {sorted(bad)}; "
                "is this a label file rather than sequences?"
            )
        if seq:
            yield SeqRecord(rec.id, seq)


def _table_sequences(path: Path, delimiter: str) -> Iterator[SeqRecord]:
    with io.TextIOWrapper(
        open_binary(path, "sequence table"), encoding="utf-8", errors="replace", newline=""
    ) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        column = next((c for c in SEQUENCE_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ValueError(
                f"{path}: no sequence column; expected one of {SEQUENCE_COLUMNS}, found {reader.fieldnames}"
            )
        id_col = next((c for c in ("id", "DMS_id", "name") if c in (reader.fieldnames or [])), None)
        for i, row in enumerate(reader):
            seq = (row[column] or "").strip().upper()
            if seq:
                yield SeqRecord(row[id_col] if id_col else f"{path.stem}:{i}", seq)


def read_sequences(path: str | os.PathLike) -> list[SeqRecord]:
    """Sequences of an evaluation file: FASTA (also TMbed-annotated), ``.csv``/``.tsv`` (gzipped or not)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sequence file not found")
    suffix = _base_suffix(path)
    if suffix in (".csv", ".tsv"):
        return list(_table_sequences(path, "," if suffix == ".csv" else "\t"))
    return list(_fasta_sequences(path))


def read_train(path: str | os.PathLike) -> list[SeqRecord]:
    """Training FASTA read with prepare's policy (unknown characters → X), so ids and sequences match
    what ``plm data prepare`` stores."""
    return [SeqRecord(r.id, tokens_to_str(r.tokens), r.description) for r in read_fasta(path, on_invalid="x")]


def store_splits(directory: str | os.PathLike) -> dict[str, Path]:
    """``split → store dir`` of a prepared directory (``DIR/<split>/tokens.bin``) or a single store."""
    directory = Path(directory)
    if (directory / TOKENS_FILE).is_file():
        return {directory.name: directory}
    splits = {
        p.parent.name: p.parent
        for p in sorted(directory.glob(f"*/{TOKENS_FILE}"))
        if (p.parent / OFFSETS_FILE).is_file()
    }
    if not splits:
        raise FileNotFoundError(
            f"{directory}: not a prepared store (no {TOKENS_FILE} + {OFFSETS_FILE} in it or in its split "
            "subdirectories); pass a FASTA file or run `plm data prepare` first"
        )
    return splits


def read_store(directory: str | os.PathLike) -> list[SeqRecord]:
    """All records of a store directory, identified by their record index (what exclude.npy holds)."""
    store = TokenStore.open(directory)
    return [SeqRecord(str(i), tokens_to_str(store.get(i))) for i in range(len(store))]


def write_indexed_fasta(records: Iterable[SeqRecord], path: str | os.PathLike) -> int:
    """Write records with their position as the header (see module doc); returns the count."""
    n = 0
    with open(path, "w") as fh:
        for n, rec in enumerate(records, start=1):
            fh.write(f">{n - 1}\n{rec.seq}\n")
    return n


def write_fasta(records: Iterable[SeqRecord], path: str | os.PathLike, width: int = 0) -> int:
    """Write records under their own ids (gzip when the name ends in .gz), whole or not at all: these
    are outputs other commands read; returns the count."""
    path = Path(path)
    n = 0
    with atomic_file(path) as raw:
        gz = (
            gzip.GzipFile(fileobj=raw, mode="wb")
            if path.name.endswith(".gz")
            else contextlib.nullcontext(raw)
        )
        with gz as sink:
            for rec in records:
                seq = (
                    rec.seq
                    if width <= 0
                    else "\n".join(rec.seq[i : i + width] for i in range(0, len(rec.seq), width))
                )
                header = f"{rec.id} {rec.description}" if rec.description else rec.id
                sink.write(f">{header}\n{seq}\n".encode())
                n += 1
    return n
