"""Token store: all residues of one source concatenated as uint8, plus int64 record offsets.

The same layout lives in memory (built from a FASTA for small data) or on disk as memory-mapped files
written by ``plm data prepare`` (``tokens.bin`` + ``offsets.npy``), so the sampler and packer never
care which. 10⁹ records cost 8 GB of offsets and one byte per residue, all paged in lazily.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from plm.data.fasta import FastaStats, OnInvalid, read_fasta

TOKENS_FILE, OFFSETS_FILE = "tokens.bin", "offsets.npy"
SPLIT_BUCKETS = 10_000


def is_validation(tokens: np.ndarray, val_fraction: float) -> bool:
    """Held-out membership decided by a hash of the sequence itself: the same sequence, wherever it
    occurs and in whichever source, always lands on the same side of the split."""
    digest = hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SPLIT_BUCKETS < round(val_fraction * SPLIT_BUCKETS)


@dataclass
class TokenStore:
    name: str
    tokens: np.ndarray  # uint8 (total residues,)
    offsets: np.ndarray  # int64 (records + 1,), offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_residues(self) -> int:
        return int(self.offsets[-1])

    def lengths(self, idx: np.ndarray | None = None) -> np.ndarray:
        if idx is None:
            return np.diff(self.offsets)
        idx = np.asarray(idx, dtype=np.int64)
        return self.offsets[idx + 1] - self.offsets[idx]

    def get(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        stop = hi - lo if stop is None else stop
        return np.asarray(self.tokens[lo + start : lo + stop])

    @classmethod
    def from_arrays(cls, name: str, seqs: Iterable[np.ndarray]) -> "TokenStore":
        seqs = list(seqs)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        tokens = np.concatenate(seqs).astype(np.uint8) if seqs else np.zeros(0, np.uint8)
        return cls(name, tokens, offsets)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.asarray(self.tokens, dtype=np.uint8).tofile(directory / TOKENS_FILE)
        np.save(directory / OFFSETS_FILE, np.asarray(self.offsets, dtype=np.int64))

    @classmethod
    def open(cls, directory: str | os.PathLike, name: str | None = None) -> "TokenStore":
        """Memory-map a prepared store, checking that offsets and token file agree (truncation)."""
        directory = Path(directory)
        tok_path, off_path = directory / TOKENS_FILE, directory / OFFSETS_FILE
        for p in (tok_path, off_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; run `plm data prepare` for this source")
        try:
            offsets = np.load(off_path, mmap_mode="r")
        except ValueError as err:
            raise ValueError(f"{off_path}: corrupt offsets file ({err}); re-run `plm data prepare`") from err
        size = tok_path.stat().st_size
        if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != size:
            raise ValueError(
                f"{tok_path}: holds {size} bytes but {off_path.name} ends at "
                f"{int(offsets[-1]) if len(offsets) else 'nothing'}; the store is truncated or corrupt: re-run prepare"
            )
        tokens = np.memmap(tok_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        return cls(name or directory.name, tokens, offsets)


def split_fasta(
    name: str,
    paths: list[str | os.PathLike],
    val_fraction: float,
    on_invalid: OnInvalid = "skip",
    stats: FastaStats | None = None,
) -> tuple[TokenStore, TokenStore]:
    """Read FASTA files into an in-memory (train, validation) pair split by sequence hash."""
    train, val = [], []
    for path in paths:
        for rec in read_fasta(path, on_invalid=on_invalid, stats=stats):
            (val if is_validation(rec.tokens, val_fraction) else train).append(rec.tokens)
    if not train:
        raise ValueError(f"source {name!r}: no training records in {[str(p) for p in paths]}")
    return TokenStore.from_arrays(name, train), TokenStore.from_arrays(f"{name}/val", val)
