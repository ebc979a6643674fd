"""The FASTA policy in one place: what a record is, what is refused, and what refusing means.

Both readers (the line-by-line :func:`~plm.data.fasta.stream.read_fasta` and the vectorised block parser of
``plm data prepare``) apply these rules and word their rejections with these helpers; a test pins them
to the same records and the same rejections on a corpus of awkward inputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from plm.tokenizer import _LOOKUP, FIRST_RESIDUE, RESIDUES

OnInvalid = Literal["error", "skip", "x"]
ON_INVALID: tuple[str, ...] = ("error", "skip", "x")
DEFAULT_MAX_LENGTH = 100_000  # longer than any real protein (titin ≈ 35k): beyond it, a broken file
MAX_EXAMPLES = 3  # example messages kept per rejection reason

SEQUENCE_BLANKS = b" \t\r\n"  # dropped inside sequence text; any other byte must be a residue
HEADER_BLANKS = b" \t\r\n\x0b\x0c"  # end an identifier: exactly what bytes.split() splits on

# rejection reasons: the keys of FastaStats.rejected (details follow in parentheses in messages)
EMPTY = "empty sequence"
ALPHABET = "character outside the alphabet"
NON_ASCII = "non-ASCII bytes in sequence"
EMPTY_FILE = "empty file"
GZIP_TAIL = "unreadable gzip tail"
FILE_REASONS = (EMPTY_FILE, GZIP_TAIL)

# residue bytes → token ids; two markers for what needs a decision after whitespace is gone
STAR, NON_ASCII_ID, UNKNOWN_ID = 254, 253, 255  # never token ids
TABLE = _LOOKUP.copy()
TABLE[ord("*")] = STAR
TABLE[128:] = NON_ASCII_ID
TABLE_BYTES = TABLE.tobytes()
X_ID = FIRST_RESIDUE + RESIDUES.index("X")


class FastaError(ValueError):
    """A FASTA file or record that the policy refuses; the message names file, record and reason."""


class DamagedGzip(FastaError):
    """A gzip stream that cannot be decoded to its end; ``offset`` uncompressed bytes were readable."""

    def __init__(self, path: str | Path, offset: int, reason: str) -> None:
        self.path, self.offset, self.reason = str(path), offset, reason
        super().__init__(
            f"{path}: truncated or corrupt gzip stream after {offset:,} uncompressed bytes "
            f"({reason}); re-download or re-compress the file"
        )


def too_long(max_length: int) -> str:
    return f"longer than max_length={max_length}"


#: bytes per allowed residue beyond which a record is too long without counting its residues: real FASTA
#: has about 1.02 (a line break every 60-80 residues); the slack covers spaced formats, plus long headers
BYTES_PER_RESIDUE = 4
HEADER_ALLOWANCE = 1 << 16


def record_byte_cap(max_length: int) -> int:
    """Bytes of one record — from its '>' to the next header or the end of the file — beyond which it is
    refused as too long. Both readers stop keeping a record's bytes there, so a compressed bomb (one
    record of a GiB on one line) costs linear time and bounded memory instead of being read whole."""
    return BYTES_PER_RESIDUE * max_length + HEADER_ALLOWANCE


def reason_key(why: str) -> str:
    """The counted reason of a message: its details (which character, where) removed."""
    return why.split(" (")[0]


def record_where(path: str | Path, rid: str, offset: int) -> str:
    """How every rejection names a record: the file, its identifier and the byte of its '>'
    (uncompressed for gzip), so two readers of one file word it identically."""
    return f"{path}: record {rid!r} at byte {offset}"


@dataclass
class FastaStats:
    """Counts of one or more reads: kept records and residues, rejections by reason with examples."""

    records: int = 0
    residues: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason → first messages

    def reject(self, where: str, why: str, count: int = 1) -> None:
        key = reason_key(why)
        self.rejected[key] += count
        ex = self.examples.setdefault(key, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"{where}: {why}")


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    tokens: np.ndarray  # uint8 residue ids, no special tokens
    index: int  # 0-based record number in the file, rejected records included


def check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid={on_invalid!r}: use one of {', '.join(ON_INVALID)}")


def split_header(header: bytes) -> tuple[str, str]:
    """(identifier, description) of a header line without its '>'."""
    parts = header.split(None, 1)
    rid = parts[0].decode("utf-8", "replace") if parts else ""
    return rid, (parts[1].strip().decode("utf-8", "replace") if len(parts) > 1 else "")


def bad_char(clean: bytes) -> tuple[str, int]:
    """First character outside the alphabet of whitespace-free sequence text (trailing '*' already
    dropped) and its 1-based position: the detail every alphabet rejection gives."""
    bad = np.flatnonzero(TABLE[np.frombuffer(clean, np.uint8)] >= NON_ASCII_ID)
    i = int(bad[0]) if len(bad) else 0
    return chr(clean[i]), i + 1


def judge_sequence(
    text: bytes, on_invalid: OnInvalid, max_length: int
) -> tuple[np.ndarray | None, str | None]:
    """Token ids of one record's sequence text, or the reason it is refused (one record at a time;
    the block parser applies the same rules to whole blocks at once).

    Order matters and is shared: whitespace is dropped, then one trailing ``*``; an empty result is
    "empty"; non-ASCII bytes outrank other unknown characters; both become X under ``x``; length last.
    """
    clean = text.translate(None, SEQUENCE_BLANKS)
    if clean.endswith(b"*"):
        clean = clean[:-1]
    if not clean:
        return None, EMPTY
    tokens = TABLE[np.frombuffer(clean, dtype=np.uint8)]
    if tokens.max() >= NON_ASCII_ID:
        if on_invalid == "x":
            tokens[tokens >= NON_ASCII_ID] = X_ID
        elif (tokens == NON_ASCII_ID).any():
            return None, NON_ASCII
        else:
            char, pos = bad_char(clean)
            return None, f"{ALPHABET} ({char!r} at position {pos})"
    if len(tokens) > max_length:
        return None, too_long(max_length)
    return tokens, None


def invalid_record(problem: str) -> FastaError:
    return FastaError(
        f"{problem}; fix the record, or read with on_invalid=skip (count and drop it) "
        "or x (unknown letters → X)"
    )


def text_before_header(path: str | Path, offset: int, line: bytes) -> FastaError:
    """Text before the first header: never skippable, the file is not FASTA as we understand it."""
    return FastaError(
        f"{path}: byte {offset}: sequence data before the first '>' header "
        f"({line.lstrip()[:60].rstrip()!r}); is this a FASTA file?"
    )


def no_identifier(path: str | Path, offset: int) -> FastaError:
    return FastaError(f"{path}: byte {offset}: header '>' has no identifier; fix the file")


def refuse_file(
    path: str | Path, why: str, on_invalid: OnInvalid, stats: FastaStats, fix: str, skip: str
) -> None:
    """A whole file (or its tail) that yields no records: an error, or under skip/x one counted rejection
    naming the file, so a report never says "rejected: none" about it."""
    if on_invalid == "error":
        raise FastaError(f"{path}: {why}; {fix}, or use on_invalid=skip to {skip}")
    stats.reject(str(path), why)


def refuse_empty(path: str | Path, on_invalid: OnInvalid, stats: FastaStats) -> None:
    refuse_file(
        path,
        f"{EMPTY_FILE} (no FASTA records: the file is empty or blank)",
        on_invalid,
        stats,
        "check the path or the download",
        "count it and go on",
    )


def refuse_damage(err: DamagedGzip, on_invalid: OnInvalid, stats: FastaStats) -> None:
    """Records decoded before the damage are kept (the one it cut is dropped); the rest counts once."""
    refuse_file(
        err.path,
        f"{GZIP_TAIL} (truncated or corrupt gzip stream after {err.offset:,} uncompressed "
        f"bytes: {err.reason})",
        on_invalid,
        stats,
        "re-download or re-compress the file",
        "keep the records before the damage",
    )
