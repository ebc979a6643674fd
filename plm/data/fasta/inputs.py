"""Opening sequence inputs: one gzip rule and one gzip decoder for every reader.

The rule: a file is gzip-compressed exactly when its first two bytes are the gzip magic ``1f 8b``,
whatever its name (a ``.gz`` that is plain text is read as plain text, a compressed file without the
suffix is still decompressed). Concatenated members (bgzip, ``cat a.gz b.gz``) and zero padding are read
through.

The decoder feeds zlib fixed-size pieces of compressed input, so the bytes readable before a truncation
or corruption are the same for every reader; they are all handed out before :class:`DamagedGzip`
is raised, and the reader's policy decides what becomes of them.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from plm.data.fasta.policy import DamagedGzip

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20  # decoded bytes handed out at once
_PIECE = 1 << 18  # compressed bytes fed at once; fixed, because it decides what is readable before damage
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, CRC-32 and length checked by zlib itself


def existing_file(path: str | os.PathLike, what: str = "FASTA file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def _gunzip(raw: BinaryIO, path: Path) -> Iterator[bytes]:
    """Decoded pieces of at most CHUNK bytes; raises DamagedGzip after the last decodable byte.

    Input and output pieces have fixed sizes: zlib reports damage per call and that call's output is
    lost, so the readable prefix of a damaged file depends on them and must not depend on the caller.
    """
    size = CHUNK
    produced, data, d = 0, b"", None
    while True:
        if not data:
            data = raw.read(_PIECE)
            if not data:
                break
        if d is None:  # between members: zero padding is allowed, anything else must be a member
            data = data.lstrip(b"\0")
            if not data:
                continue
            d = zlib.decompressobj(_GZIP_WBITS)
        try:
            out = d.decompress(data, size)
        except zlib.error as err:
            raise DamagedGzip(path, produced, f"zlib: {err}") from None
        data = d.unconsumed_tail
        if out:
            produced += len(out)
            yield out
        if d.eof:
            data, d = d.unused_data, None
    if d is not None:  # input ended inside a member: hand out what zlib still holds, then complain
        while out := d.decompress(b"", size):
            produced += len(out)
            yield out
        if not d.eof:
            raise DamagedGzip(
                path, produced, "the compressed data ends before the end of the stream: truncated"
            )


def read_chunks(path: str | os.PathLike, size: int = CHUNK, what: str = "FASTA file") -> Iterator[bytes]:
    """The (decoded) bytes of a file in pieces of at most ``size``; memory stays at one piece."""
    path = existing_file(path, what)
    gz = is_gzip(path)
    with open(path, "rb") as raw:
        if gz:
            for out in _gunzip(raw, path):
                for i in range(0, len(out), size):
                    yield out[i : i + size]  # the whole piece when size >= CHUNK (no copy)
        else:
            while chunk := raw.read(size):
                yield chunk


class _ChunkReader(io.RawIOBase):
    """A readable raw stream over :func:`read_chunks`, for readers that want lines or a text wrapper."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._view, self._pos = chunks, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos >= len(self._view):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view, self._pos = memoryview(chunk), 0
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._chunks.close()  # type: ignore[attr-defined]  (a generator: closes the file it holds)
        super().close()


def open_binary(path: str | os.PathLike, what: str = "FASTA file") -> BinaryIO:
    """A binary file object over the decoded content (gzip by the rule above); a damaged gzip stream
    raises :class:`DamagedGzip` naming the file instead of EOFError or zlib.error."""
    path = existing_file(path, what)
    if not is_gzip(path):
        return open(path, "rb")
    return io.BufferedReader(_ChunkReader(read_chunks(path, what=what)), buffer_size=1 << 16)


def is_blank(path: str | os.PathLike) -> bool:
    """True when the decoded content is only whitespace (no record can be in it); reads until the first
    other byte. A gzip stream damaged before that byte is not blank: its damage is what to report."""
    try:
        return not any(chunk.strip() for chunk in read_chunks(path, 1 << 16))
    except DamagedGzip:
        return False
