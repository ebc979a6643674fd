"""The vectorised reader behind ``plm data prepare``: the policy of :mod:`plm.data.fasta.policy` applied to
1 MB blocks at once.

Numpy finds headers and line breaks, one ``bytes.translate`` maps the sequence text to token ids while
dropping whitespace, and record lengths and identifier ranges are vectorised; Python never touches a
line or a character, only a rejected record to word its message. Blocks are cut just before a '>' that
starts a line, so records never span blocks. :func:`read_fasta_blocks` gives the same records as
:func:`plm.data.fasta.stream.read_fasta` (a test holds them to it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from plm.data.fasta.inputs import CHUNK, existing_file, is_gzip, read_chunks
from plm.data.fasta.policy import (
    ALPHABET,
    DEFAULT_MAX_LENGTH,
    EMPTY,
    HEADER_BLANKS,
    NON_ASCII,
    NON_ASCII_ID,
    SEQUENCE_BLANKS,
    STAR,
    TABLE_BYTES,
    X_ID,
    DamagedGzip,
    FastaError,
    FastaRecord,
    FastaStats,
    OnInvalid,
    bad_char,
    check_on_invalid,
    invalid_record,
    no_identifier,
    record_byte_cap,
    record_where,
    refuse_damage,
    refuse_empty,
    split_header,
    text_before_header,
    too_long,
)

_SEQ_BLANK = np.zeros(256, dtype=bool)
_SEQ_BLANK[list(SEQUENCE_BLANKS)] = True
_ID_END = np.zeros(256, dtype=bool)
_ID_END[list(HEADER_BLANKS)] = True


def iter_blocks(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    gz: bool | None = None,
    block: int = CHUNK,
    max_length: int | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) pieces of ``path[start:end]``, each cut just before a '>' that starts a line.

    A plain file is read in place (a record cut off at a block's end is read again, not copied; a record
    longer than a block doubles the read). A gzip file is read whole (it cannot be entered in the middle);
    on damage its last, possibly incomplete record is dropped and :class:`DamagedGzip` raised. With
    ``max_length``, a record longer than :func:`record_byte_cap` comes out as its first cap + 1 bytes (which
    :func:`parse_block` refuses as too long) and the rest of it is read past, never held.
    """
    path = existing_file(path)
    gz = is_gzip(path) if gz is None else gz
    cap = record_byte_cap(max_length) if max_length is not None else None
    if gz:
        yield from _gzip_blocks(path, block, cap)
        return
    end = path.stat().st_size if end is None else end
    with open(path, "rb") as fh:
        pos, want = start, block
        while pos < end:
            fh.seek(pos)
            buf = fh.read(min(want, end - pos))
            if not buf:
                raise FastaError(
                    f"{path}: ends at byte {pos}, expected {end}; the file changed while being read"
                )
            cut = buf.rfind(b"\n>")
            keep = _capped(buf, pos == 0, cap) if cut < 0 else None
            if keep is not None:  # one record past the cap: its head, then on from the next header
                yield pos, buf[:keep]
                pos, want = _next_header(fh, pos + keep - 1, end, block), block
                continue
            if pos + len(buf) >= end or (
                cut < 0 and pos == 0 and _junk(buf)
            ):  # the last block, or not FASTA:
                cut = len(buf) - 1  # say so now, not after reading it all
            if cut < 0:  # a record longer than the block: read more
                want *= 2
                continue
            yield pos, buf if cut == len(buf) - 1 else buf[: cut + 1]
            pos, want = pos + cut + 1, block


def _capped(buf: bytes | bytearray, at_file_start: bool, cap: int | None) -> int | None:
    """How much of ``buf`` — one unfinished record, after blank lines when it starts the file — to hand out
    when the record is past ``cap`` bytes (its '>' plus cap bytes), or None while it is not."""
    if cap is None:
        return None
    lead = max(buf.find(b">"), 0) if at_file_start else 0
    return lead + cap + 1 if len(buf) > lead + cap + 1 else None


def _next_header(fh: BinaryIO, pos: int, end: int, block: int) -> int:
    """Offset of the first '>' that starts a line after ``pos`` (``end`` if none), read a block at a time."""
    while pos < end:
        fh.seek(pos)
        data = fh.read(min(block + 1, end - pos))
        i = data.find(b"\n>")
        if i >= 0:
            return pos + i + 1
        if pos + len(data) >= end or len(data) < 2:
            return end
        pos += len(data) - 1  # a '\n>' may straddle the pieces
    return end


def _junk(start: bytes, complete: bool = False) -> bool:
    """The start of a file shows text that is not a header, enough of it to quote (60 bytes or the line):
    the line reader stops at that line, this one must not read the whole file first."""
    text = start.lstrip()
    if not text:
        return False
    first = len(start) - len(text)
    header = text[:1] == b">" and start.rfind(b"\n", 0, first) == first - 1  # '>' at a line start
    return not header and (complete or len(text) >= 60 or b"\n" in text)


def _gzip_blocks(path: Path, block: int, cap: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Blocks of a gzip file; on damage the carry (the last, possibly cut record) is not handed out.

    Linear in the file: each decoded piece is searched once for record starts and the unfinished record
    is grown in place; past ``cap`` only its head is kept (handed out once its end is seen, so that a
    damage inside it drops it like any cut record) and the rest is decoded and dropped."""
    carry, carry_pos, searched = bytearray(), 0, 0  # carry: from carry_pos on; searched: bytes looked at
    head: bytes | None = None  # the kept head of a record past the cap, while the rest is dropped
    head_pos, pos = 0, 0  # where that record starts; the offset of the next decoded byte
    last = b""  # the byte before the current piece (a '\n>' may straddle two pieces)
    chunks = read_chunks(path, block)
    while True:
        try:
            chunk = next(chunks, None)
        except DamagedGzip:
            if carry_pos == 0 and head is None and _junk(bytes(carry), complete=True):
                yield 0, bytes(carry)  # text before any header: that error, not the damage, is the news
            raise
        if chunk is None:
            break
        if head is not None:  # dropping the rest of a record past the cap, up to the next header
            i = _header_in(chunk, last)
            last, pos = chunk[-1:], pos + len(chunk)
            if i < 0:
                continue
            yield head_pos, head
            head, chunk = None, chunk[i:]
            carry, carry_pos, searched = bytearray(), pos - len(chunk), 0
        else:
            last, pos = chunk[-1:], pos + len(chunk)
        carry += chunk
        cut = carry.rfind(b"\n>", max(searched - 1, 0))
        searched = len(carry)
        if cut < 0 and carry_pos == 0 and _junk(bytes(carry[: 1 << 16])):  # not FASTA: say so now
            cut = len(carry) - 1
        if cut >= 0:
            with memoryview(carry) as view:
                piece = bytes(view[: cut + 1])  # one copy (a bytearray slice would make two)
            yield carry_pos, piece
            del carry[: cut + 1]
            carry_pos += cut + 1
            searched = len(carry)  # the rest starts with '>' and holds no '\n>' (rfind found the last)
            continue
        keep = _capped(carry, carry_pos == 0, cap)
        if keep is not None:
            with memoryview(carry) as view:
                head, head_pos = bytes(view[:keep]), carry_pos
            carry, searched = bytearray(), 0
    if head is not None:
        yield head_pos, head
    elif carry:
        yield carry_pos, bytes(carry)


def _header_in(chunk: bytes, last: bytes) -> int:
    """Index in ``chunk`` of the first '>' that starts a line (``last``: the byte before it), or -1."""
    if last == b"\n" and chunk[:1] == b">":
        return 0
    i = chunk.find(b"\n>")
    return i + 1 if i >= 0 else -1


@dataclass
class ParsedBlock:
    """Every record of one block: tokens back to back (rejected records included) plus per-record arrays."""

    data: np.ndarray  # the block's bytes; identifiers are ranges of it
    tokens: np.ndarray  # uint8 token ids of all records, back to back
    ends: np.ndarray  # int64 end of each record in ``tokens``
    lens: np.ndarray  # int64 residues per record
    starts: np.ndarray  # int64 byte of each record's '>' in the file
    head_start: np.ndarray  # header line of each record in ``data``: its '>' ...
    head_end: np.ndarray  # ... and its end
    id_start: np.ndarray  # identifier byte range in ``data``
    id_end: np.ndarray
    ok: np.ndarray  # bool: records the policy keeps
    error: FastaError | None = None  # a header without identifier that ended the block


def _skip_leading_blanks(block: bytes, base: int, path: str, first: bool) -> tuple[bytes, int]:
    """A file may open with blank lines; any other text before the first header is an error."""
    i = block.find(b"\n>")
    lead = i + 1 if i >= 0 else len(block)
    pre = block[:lead]
    if not first or pre.strip():
        text = pre.lstrip()
        raise text_before_header(path, base + len(pre) - len(text), text.split(b"\n", 1)[0])
    return block[lead:], base + lead


def _identifiers(
    block: bytes, gt: np.ndarray, head_end: np.ndarray, idsp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Identifier byte ranges (from after '>' and any blanks to the first header blank, positions
    ``idsp``) and the first record whose header has no identifier, if any."""
    id_start = gt + 1
    id_end = np.minimum(idsp[np.searchsorted(idsp, id_start)], head_end)
    for r in np.flatnonzero(id_end <= id_start):  # empty header, or blanks before the identifier
        text = block[id_start[r] : head_end[r]]
        if not text.strip():
            return id_start, id_end, int(r)
        id_start[r] += len(text) - len(text.lstrip())
        id_end[r] = id_start[r] + len(text.split(None, 1)[0])
    return id_start, id_end, None


def _reasons(
    block: bytes,
    tok: np.ndarray,
    ends: np.ndarray,
    lens: np.ndarray,
    head_end: np.ndarray,
    next_gt: np.ndarray,
    on_invalid: OnInvalid,
    max_length: int,
) -> tuple[np.ndarray, dict[int, str]]:
    """Token ids (unknown ones → X under ``x``) and record → reason for the refused records."""
    reasons: dict[int, str] = {}
    if len(tok) and tok.max() >= NON_ASCII_ID:  # max is one vectorised pass; flatnonzero only on bad blocks
        bad_pos = np.flatnonzero(tok >= NON_ASCII_ID)
        tok = tok.copy()
        bad_rec = np.searchsorted(ends, bad_pos, side="right")
        if on_invalid == "x":
            tok[bad_pos] = X_ID
        else:
            non_ascii = np.unique(bad_rec[tok[bad_pos] == NON_ASCII_ID])
            for r in non_ascii:
                reasons[int(r)] = NON_ASCII
            for r in np.setdiff1d(np.unique(bad_rec), non_ascii):
                clean = block[head_end[r] : next_gt[r]].translate(None, SEQUENCE_BLANKS)
                char, pos = bad_char(clean[:-1] if clean.endswith(b"*") else clean)
                reasons[int(r)] = f"{ALPHABET} ({char!r} at position {pos})"
    for r in np.flatnonzero(lens == 0):
        reasons[int(r)] = EMPTY
    for r in np.flatnonzero(lens > max_length):
        reasons.setdefault(int(r), too_long(max_length))
    return tok, reasons


def parse_block(
    block: bytes,
    base: int,
    path: str,
    on_invalid: OnInvalid,
    max_length: int,
    first: bool,
    stats: FastaStats,
    problems: list[str],
) -> ParsedBlock | None:
    """Validate and tokenise every record of one block (None when it holds none).

    Refused records are counted in ``stats``; under ``error`` their messages are also appended to
    ``problems`` (gathered, so one run reports many). A header without identifier ends the block: the
    records before it are returned with the error in ``ParsedBlock.error``, for the caller to raise
    after them, as the line reader does; text before the first header raises at once.
    """
    if not block.startswith(b">"):  # only the first block of a file: blank lines or junk before '>'
        block, base = _skip_leading_blanks(block, base, path, first)
        if not block:
            return None
    arr = np.frombuffer(block, dtype=np.uint8)
    size = len(arr)
    low = np.flatnonzero(arr <= 32)
    kind = arr[low]
    nl = np.append(low[kind == ord("\n")], size)
    wsp = np.append(low[_SEQ_BLANK[kind]], size)  # positions of blanks, tabs, CR, LF
    # identifiers also end at \v and \f (bytes.split does); a memchr each, and a second mask only if present
    idsp = wsp if b"\x0b" not in block and b"\x0c" not in block else np.append(low[_ID_END[kind]], size)
    after_nl = nl[:-1][nl[:-1] + 1 < size] + 1
    gt = after_nl[arr[after_nl] == ord(">")]  # headers: '>' at a line start (found from the line breaks:
    gt = np.concatenate([[0], gt])  # one pass over the block fewer); a block always starts with one
    head_end = nl[np.searchsorted(nl, gt)]
    id_start, id_end, no_id = _identifiers(block, gt, head_end, idsp)
    if no_id is not None:
        err = no_identifier(path, base + int(gt[no_id]))
        if no_id == 0:
            raise err
        blk = parse_block(block[: gt[no_id]], base, path, on_invalid, max_length, first, stats, problems)
        blk.error = err
        return blk
    # sequence text = from a header's line end to the next header; translate maps letters to token ids
    # and drops whitespace in one C pass (measured: slicing and joining the records beats blanking the
    # headers of a copy in place, re.sub and numpy index scatter)
    next_gt = np.append(gt[1:], size)
    text = b"".join([block[x:y] for x, y in zip(head_end.tolist(), next_gt.tolist())])
    tok = np.frombuffer(text.translate(TABLE_BYTES, SEQUENCE_BLANKS), dtype=np.uint8)
    lens = (next_gt - head_end) - (np.searchsorted(wsp, next_gt) - np.searchsorted(wsp, head_end))
    ends = np.cumsum(lens)
    star = (lens > 0) & (tok[np.maximum(ends - 1, 0)] == STAR) if len(tok) else np.zeros(len(gt), bool)
    if star.any():  # one trailing stop codon written by gene callers: dropped
        drop = np.ones(len(tok), dtype=bool)
        drop[ends[star] - 1] = False
        tok = tok[drop]
        lens = lens - star
        ends = np.cumsum(lens)
    tok, reasons = _reasons(block, tok, ends, lens, head_end, next_gt, on_invalid, max_length)
    for r in np.flatnonzero(next_gt - gt > record_byte_cap(max_length)):
        reasons[int(r)] = too_long(max_length)  # not read whole (iter_blocks hands out its head only)
    starts = base + gt
    ok = np.ones(len(gt), dtype=bool)
    for r, why in sorted(reasons.items()):
        ok[r] = False
        where = record_where(path, block[id_start[r] : id_end[r]].decode("utf-8", "replace"), int(starts[r]))
        if on_invalid == "error":
            problems.append(f"{where}: {why}")
        else:
            stats.reject(where, why)
    stats.records += int(ok.sum())
    stats.residues += int(lens[ok].sum())
    return ParsedBlock(arr, tok, ends, lens, starts, gt, head_end, id_start, id_end, ok)


def read_fasta_blocks(
    path: str | os.PathLike,
    on_invalid: OnInvalid = "error",
    max_length: int = DEFAULT_MAX_LENGTH,
    stats: FastaStats | None = None,
    block: int = CHUNK,
) -> Iterator[FastaRecord]:
    """:func:`plm.data.fasta.stream.read_fasta` computed block-wise: the same records, rejections and
    errors (the first invalid record under ``error``); ``block`` only changes the speed."""
    check_on_invalid(on_invalid)
    stats = stats if stats is not None else FastaStats()
    index = 0
    try:
        for i, (pos, data) in enumerate(iter_blocks(path, block=block, max_length=max_length)):
            problems: list[str] = []
            blk = parse_block(data, pos, str(path), on_invalid, max_length, i == 0, stats, problems)
            if blk is None:
                continue
            yield from _records(blk, index, problems)
            index += len(blk.ok)
            if blk.error is not None:
                raise blk.error
    except DamagedGzip as err:
        refuse_damage(err, on_invalid, stats)
        return
    if index == 0:
        refuse_empty(path, on_invalid, stats)


def _records(blk: ParsedBlock, index: int, problems: list[str]) -> Iterator[FastaRecord]:
    """The kept records of a block, up to its first problem (under ``error``, raised there)."""
    lo = blk.ends - blk.lens
    for r in range(len(blk.ok)):
        if not blk.ok[r]:
            if problems:
                raise invalid_record(problems[0])
            continue
        header = blk.data[blk.head_start[r] + 1 : blk.head_end[r]].tobytes().strip()
        yield FastaRecord(*split_header(header), blk.tokens[lo[r] : blk.ends[r]].copy(), index + r)
