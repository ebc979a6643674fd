"""The line-by-line reader: the readable statement of the policy, used wherever records are few enough
to hold as Python objects (training from FASTA, evaluation sets, identity tools, scoring).

``plm data prepare`` parses with the vectorised twin in :mod:`plm.data.fasta.blocks`; a test holds the
two to the same records and rejections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from plm.data.fasta.inputs import read_chunks
from plm.data.fasta.policy import (
    DEFAULT_MAX_LENGTH,
    DamagedGzip,
    FastaRecord,
    FastaStats,
    OnInvalid,
    check_on_invalid,
    invalid_record,
    judge_sequence,
    no_identifier,
    record_byte_cap,
    record_where,
    refuse_damage,
    refuse_empty,
    split_header,
    text_before_header,
    too_long,
)


@dataclass
class RawRecord:
    index: int  # 0-based record number in the file
    offset: int  # byte of its '>' in the (decoded) file
    header: bytes  # the header line without '>', stripped
    lines: list[bytes]  # following lines as they are (line breaks removed)
    too_long: bool = (
        False  # passed the byte cap: ``lines`` no longer kept (read_fasta refuses it as too long)
    )


class _Dropped(list):
    """The lines of a record past the byte cap: read and not kept."""

    def append(self, line: bytes) -> None:
        pass


@dataclass(frozen=True)
class TextRecord:
    """A record whose lines are not (only) residues: labels, masks, annotated formats."""

    id: str
    header: str  # the whole header line without '>'
    lines: list[str]  # stripped, blank lines left out


def _lines(path: str | os.PathLike, cap: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """(byte offset, line without its '\\n', offset of the next line); on gzip damage the cut last line
    comes out first. A line spanning chunks is joined once (linear time), and only its first ``cap`` bytes
    are kept (a line inside one chunk is at most a chunk): memory stays bounded whatever the input."""
    pos, pieces, kept, length = 0, [], 0, 0  # the unfinished line: kept pieces, their size, its true size
    try:
        for chunk in read_chunks(path):
            lines = chunk.split(b"\n")
            if len(lines) > 1:
                head = lines[0]
                first = b"".join([*pieces, head]) if pieces else head
                length += len(head)
                yield pos, first, pos + length + 1
                pos += length + 1
                for line in lines[1:-1]:
                    yield pos, line, pos + len(line) + 1
                    pos += len(line) + 1
                pieces, kept, length = [], 0, 0
            tail = lines[-1]
            if tail:
                length += len(tail)
                if cap is None or kept < cap:
                    take = tail if cap is None else tail[: cap - kept]
                    pieces.append(take)
                    kept += len(take)
    except DamagedGzip:
        if length:
            yield pos, b"".join(pieces), pos + length
        raise
    if length:
        yield pos, b"".join(pieces), pos + length


def raw_records(
    path: str | os.PathLike,
    on_invalid: OnInvalid = "error",
    stats: FastaStats | None = None,
    cap: int | None = None,
) -> Iterator[RawRecord]:
    """Records with the structural rules applied (text before the first header and headers without an
    identifier are errors, an empty file and a damaged gzip tail follow ``on_invalid``); their content
    is the caller's to judge.

    A header is checked when its record is complete, so the record a gzip damage cuts off is dropped
    unexamined, as the block reader drops it. A record longer than ``cap`` bytes (from its '>' to the next
    header) is marked ``too_long`` and its lines are no longer kept.
    """
    check_on_invalid(on_invalid)
    stats = stats if stats is not None else FastaStats()
    rec: RawRecord | None = None
    limit = float("inf")  # the offset past which the current record is too long to keep
    try:
        for pos, line, end in _lines(path, cap):
            if line.startswith(b">"):
                if rec is not None:
                    yield _complete(rec, path)
                rec = RawRecord(rec.index + 1 if rec else 0, pos, line[1:].strip(), [])
                limit = pos + cap if cap is not None else float("inf")
            elif rec is None:
                if line.strip():
                    raise text_before_header(path, pos + len(line) - len(line.lstrip()), line)
                continue
            else:
                rec.lines.append(line)
            if end > limit:  # past the cap: stop keeping its lines (read_fasta refuses it as too long)
                rec.too_long, rec.lines, limit = True, _Dropped(), float("inf")
    except DamagedGzip as err:
        refuse_damage(err, on_invalid, stats)  # the record it cut is dropped: it may be incomplete
        return
    if rec is not None:
        yield _complete(rec, path)
    else:
        refuse_empty(path, on_invalid, stats)


def _complete(rec: RawRecord, path: str | os.PathLike) -> RawRecord:
    if not rec.header:
        raise no_identifier(path, rec.offset)
    return rec


def read_fasta(
    path: str | os.PathLike,
    on_invalid: OnInvalid = "error",
    max_length: int = DEFAULT_MAX_LENGTH,
    stats: FastaStats | None = None,
) -> Iterator[FastaRecord]:
    """Yield validated records one at a time; memory stays bounded by the longest record kept (a record
    past :func:`record_byte_cap` is refused as too long without being held)."""
    stats = stats if stats is not None else FastaStats()
    for raw in raw_records(path, on_invalid, stats, record_byte_cap(max_length)):
        rid, desc = split_header(raw.header)
        if raw.too_long:
            tokens, why = None, too_long(max_length)
        else:
            tokens, why = judge_sequence(b"".join(raw.lines), on_invalid, max_length)
        if why is not None:
            where = record_where(path, rid, raw.offset)
            if on_invalid == "error":
                raise invalid_record(f"{where}: {why}")
            stats.reject(where, why)
            continue
        stats.records += 1
        stats.residues += len(tokens)
        yield FastaRecord(rid, desc, tokens, raw.index)


def read_text_records(path: str | os.PathLike, on_invalid: OnInvalid = "error") -> Iterator[TextRecord]:
    """Records as text, for files whose lines are labels or masks rather than residues (they do not go
    through the alphabet); structure, gzip and empty files follow the same policy as :func:`read_fasta`."""
    for raw in raw_records(path, on_invalid):
        lines = [s for s in (ln.decode("utf-8", "replace").strip() for ln in raw.lines) if s]
        yield TextRecord(split_header(raw.header)[0], raw.header.decode("utf-8", "replace"), lines)
