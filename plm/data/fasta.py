"""Streaming FASTA / FASTA.gz reader with one validation policy.

Policy (documented in the README, "Data"):
  * Windows line endings, blank lines, spaces inside sequence lines and a trailing ``*``: accepted.
  * lowercase residues: upper-cased.
  * sequence text before the first ``>`` header, or a header with no identifier: error (the file is
    not FASTA as we understand it; nothing sensible can be skipped).
  * empty sequences, over-long sequences (> ``max_length``), and characters outside the alphabet:
    ``on_invalid="error"`` raises ``FastaError`` naming file, record and reason; ``"skip"`` counts the
    record under its reason in ``FastaStats.rejected``; ``"x"`` maps unknown characters to ``X``
    (empty and over-long records are still skipped and counted).
  * duplicate identifiers are detected by ``plm data prepare`` (it needs a global view).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

import numpy as np

from plm.tokenizer import InvalidSequenceError, encode_residues

OnInvalid = Literal["error", "skip", "x"]
DEFAULT_MAX_LENGTH = 100_000  # longer than any real protein (titin ≈ 35k): beyond it, a broken file


class FastaError(ValueError):
    """A FASTA file or record that the policy refuses; the message names file, record and reason."""


@dataclass
class FastaStats:
    records: int = 0
    residues: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason → first record id seen with it


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    tokens: np.ndarray  # uint8 residue ids, no special tokens
    index: int  # 0-based record number in the file


def open_binary(path: str | os.PathLike) -> BinaryIO:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FASTA file not found")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # type: ignore[return-value]


def read_fasta(
    path: str | os.PathLike,
    on_invalid: OnInvalid = "error",
    max_length: int = DEFAULT_MAX_LENGTH,
    stats: FastaStats | None = None,
) -> Iterator[FastaRecord]:
    """Yield validated records one at a time; memory stays bounded by the longest record."""
    stats = stats if stats is not None else FastaStats()
    header: bytes | None = None
    chunks: list[bytes] = []
    index = -1

    def finish() -> FastaRecord | None:
        text = b"".join(chunks)
        ident = header.split(maxsplit=1) if header else []
        rid = ident[0].decode("utf-8", "replace") if ident else ""
        where = f"{path}: record {index + 1} ({rid!r})"
        reason = None
        tokens = None
        if not text.strip().rstrip(b"*"):
            reason = "empty sequence"
        else:
            try:
                tokens = encode_residues(text, on_unknown="x" if on_invalid == "x" else "error", where=where)
            except InvalidSequenceError as err:
                if on_invalid == "error":
                    raise FastaError(str(err)) from None
                reason = "character outside the alphabet"
            except UnicodeDecodeError:
                reason = "non-ASCII bytes in sequence"
            if tokens is not None and len(tokens) > max_length:
                reason, tokens = f"longer than max_length={max_length}", None
        if reason is not None:
            if on_invalid == "error":
                raise FastaError(f"{where}: {reason}; fix the file or prepare with on_invalid=skip")
            stats.rejected[reason] += 1
            stats.examples.setdefault(reason, rid)
            return None
        desc = ident[1].decode("utf-8", "replace") if len(ident) > 1 else ""
        stats.records += 1
        stats.residues += len(tokens)
        return FastaRecord(rid, desc, tokens, index)

    with open_binary(path) as fh:
        try:
            for line_no, line in enumerate(fh, start=1):
                line = line.rstrip(b"\r\n")
                if line.startswith(b">"):
                    if header is not None:
                        rec = finish()
                        if rec is not None:
                            yield rec
                    header, chunks = line[1:].strip(), []
                    index += 1
                    if not header:
                        raise FastaError(f"{path}: line {line_no}: header '>' has no identifier")
                elif line.strip():
                    if header is None:
                        raise FastaError(
                            f"{path}: line {line_no}: sequence data before the first '>' header; is this a FASTA file?"
                        )
                    chunks.append(line)
            if header is not None:
                rec = finish()
                if rec is not None:
                    yield rec
        except (EOFError, OSError, zlib.error) as err:
            raise FastaError(f"{path}: truncated or corrupt gzip stream ({err}); re-download or re-compress it") from err
