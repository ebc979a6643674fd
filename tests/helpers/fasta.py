"""Reading a FASTA file the way a test compares readers: everything a reader gives, or its error."""

from __future__ import annotations

import gzip
from pathlib import Path

from plm.data.fasta import FastaError, FastaStats


def reader_outcome(reader, path: Path, mode: str, max_length: int, **kw) -> tuple:
    """What a reader gives: records and rejections, or the error and the records before it."""
    stats, records = FastaStats(), []
    try:
        for r in reader(path, mode, max_length, stats, **kw):
            records.append((r.id, r.description, r.tokens.tolist(), r.index))
    except FastaError as err:
        return records, str(err)
    return records, dict(stats.rejected), stats.examples, stats.records, stats.residues


def write_bytes(path: Path, data: bytes, gz: bool) -> Path:
    """``data`` at ``path``, gzip-compressed when ``gz``."""
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
