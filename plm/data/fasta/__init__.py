"""FASTA: the one reader policy for every FASTA (and sequence table) this project reads.

Policy (docs/data.md, "FASTA policy", summarises it; this is the full statement):
  * gzip: a file is gzip exactly when it starts with the magic bytes ``1f 8b``, whatever its name;
    concatenated members are read through. A truncated or corrupt stream is an error naming the file;
    under ``on_invalid="skip"``/``"x"`` the records before the damage are kept, the one it cut is dropped
    and the unreadable tail is one counted rejection (``unreadable gzip tail``).
  * accepted: Windows line endings, blank lines, spaces and tabs inside sequence lines, one trailing
    ``*`` (after whitespace is removed); lowercase is upper-cased.
  * never skippable (the file is not FASTA as we understand it): text before the first ``>`` header, a
    header without identifier. The identifier is the header up to its first whitespace.
  * per record, under ``on_invalid``: an empty sequence, a character outside the alphabet of
    :mod:`plm.tokenizer` (non-ASCII bytes reported as such), more than ``max_length`` residues
    (default 100,000: no real protein is that long) — or more than ``4 × max_length + 64 KiB`` bytes from
    its '>' to the next header, judged as the reader passes that size without reading the record whole,
    so a compressed bomb costs linear time and bounded memory — → ``"error"`` raises :class:`FastaError` naming file,
    record and byte; ``"skip"`` counts it under its reason in :class:`FastaStats`; ``"x"`` maps unknown
    characters to ``X`` (empty and over-long records are still skipped and counted).
  * a file with no record at all (0 bytes, or only whitespace) is an error naming it; under skip/x it is
    one counted rejection (``empty file``). Nothing is ever dropped without being counted.
  * duplicate identifiers are found by ``plm data prepare`` (it needs a view over all files).

Readers: :func:`read_fasta` (line by line; records as Python objects), :func:`read_text_records`
(label and mask files: same structure rules, no alphabet), :func:`read_fasta_blocks` and
:func:`parse_block` (vectorised, for ``plm data prepare``), :func:`open_binary` for other sequence
inputs (CSV/TSV, cluster tables) so they share the gzip rule.
"""

from __future__ import annotations

from plm.data.fasta.blocks import ParsedBlock, iter_blocks, parse_block, read_fasta_blocks
from plm.data.fasta.inputs import GZIP_MAGIC, is_blank, is_gzip, open_binary, read_chunks
from plm.data.fasta.policy import (
    DEFAULT_MAX_LENGTH,
    EMPTY_FILE,
    FILE_REASONS,
    GZIP_TAIL,
    MAX_EXAMPLES,
    DamagedGzip,
    FastaError,
    FastaRecord,
    FastaStats,
    OnInvalid,
    refuse_damage,
    refuse_empty,
)
from plm.data.fasta.stream import TextRecord, read_fasta, read_text_records

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "EMPTY_FILE",
    "FILE_REASONS",
    "GZIP_MAGIC",
    "GZIP_TAIL",
    "MAX_EXAMPLES",
    "DamagedGzip",
    "FastaError",
    "FastaRecord",
    "FastaStats",
    "OnInvalid",
    "ParsedBlock",
    "TextRecord",
    "is_blank",
    "is_gzip",
    "iter_blocks",
    "open_binary",
    "parse_block",
    "read_chunks",
    "read_fasta",
    "read_fasta_blocks",
    "read_text_records",
    "refuse_damage",
    "refuse_empty",
]
