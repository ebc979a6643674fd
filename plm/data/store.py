"""Token store: all residues of one source concatenated as uint8, plus int64 record offsets.

The same layout lives in memory (built from a FASTA for small data) or on disk as memory-mapped files
written by ``plm data prepare`` (``tokens.bin`` + ``offsets.npy``), so the sampler and packer never
care which. 10⁹ records cost 8 GB of offsets and one byte per residue, all paged in lazily.

On disk the residues may be split over several part files (``tokens.bin``, ``tokens.001.bin``, …,
listed in ``store.json``) read as one array through :class:`PartedTokens`: ``plm data prepare`` then
hard-links each worker's shard into the store instead of copying hundreds of GB a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plm.data.fasta import FastaStats, OnInvalid, read_fasta
from plm.utils.atomic import atomic_file

TOKENS_FILE, OFFSETS_FILE = "tokens.bin", "offsets.npy"
STORE_META = "store.json"  # written by `plm data prepare`: sizes + checksums of the store's files
SPLIT_BUCKETS = 10_000


VAL_SAMPLES = 32  # residues the held-out hash reads per sequence


def validation_mask(tokens: np.ndarray, offsets: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out membership of every record of a token array, decided by a hash of each sequence:
    the same sequence, wherever it occurs and in whichever source, always lands on the same side.

    The hash reads the length and ``VAL_SAMPLES`` residues at evenly spaced positions (all of them for
    short sequences), so it is vectorised over records (no per-record Python at 10⁹ records) and a
    sequence one point mutation away from another usually lands on the same side too (less leakage).
    """
    from plm.utils.hashing import mix64

    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    thr = round(val_fraction * SPLIT_BUCKETS)
    if thr <= 0 or len(lens) == 0:
        return np.zeros(len(lens), dtype=bool)
    tokens = np.asarray(tokens)
    if len(tokens):  # in-place integer steps: prepare runs this on every 1 MB block
        pos = lens[:, None] * np.arange(VAL_SAMPLES, dtype=np.int64)
        pos //= VAL_SAMPLES
        pos += offsets[:-1, None]
        np.minimum(pos, len(tokens) - 1, out=pos)
        vals = np.ascontiguousarray(tokens[pos], dtype=np.uint8)
        vals[lens == 0] = 0
    else:
        vals = np.zeros((len(lens), VAL_SAMPLES), np.uint8)
    words = vals.view("<u8")
    h = mix64(lens)
    for j in range(words.shape[1]):  # 8 residues per 64-bit word: 4 rounds
        h = mix64(h, words[:, j])
    return (h % np.uint64(SPLIT_BUCKETS)) < np.uint64(thr)


def is_validation(tokens: np.ndarray, val_fraction: float) -> bool:
    """:func:`validation_mask` of one sequence."""
    tokens = np.asarray(tokens)
    return bool(validation_mask(tokens, np.array([0, len(tokens)]), val_fraction)[0])


class PartedTokens:
    """Several memory-mapped uint8 part files read as one array (slices only; records never span parts)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.bounds = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("PartedTokens supports contiguous slices only, e.g. tokens[a:b]")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.zeros(0, np.uint8)
        k = int(np.searchsorted(self.bounds, start, side="right")) - 1
        base = int(self.bounds[k])
        if stop <= self.bounds[k + 1]:  # the common case: one record, one part, no copy
            return self.parts[k][start - base : stop - base]
        pieces = []
        while start < stop:
            end = min(stop, int(self.bounds[k + 1]))
            pieces.append(np.asarray(self.parts[k][start - int(self.bounds[k]) : end - int(self.bounds[k])]))
            start, k = end, k + 1
        return np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([np.asarray(p) for p in self.parts]) if self.parts else np.zeros(0, np.uint8)
        return whole if dtype is None else whole.astype(dtype)


def part_name(i: int) -> str:
    """File name of token part ``i`` (part 0 keeps the single-file name, so old readers still find it)."""
    return TOKENS_FILE if i == 0 else f"tokens.{i:03d}.bin"


@dataclass
class TokenStore:
    name: str
    tokens: np.ndarray | PartedTokens  # uint8 (total residues,)
    offsets: np.ndarray  # int64 (records + 1,), offsets[0] == 0
    # optional (offsets, members) cluster index over the records: sampled cluster first, member second
    clusters: tuple[np.ndarray, np.ndarray] | None = None

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
    def from_arrays(cls, name: str, seqs: Iterable[np.ndarray]) -> TokenStore:
        seqs = list(seqs)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        tokens = np.concatenate(seqs).astype(np.uint8) if seqs else np.zeros(0, np.uint8)
        return cls(name, tokens, offsets)

    def save(self, directory: str | os.PathLike) -> None:
        """Each file whole or not at all (a torn pair is caught by ``open``'s size check)."""
        directory = Path(directory)
        with atomic_file(directory / TOKENS_FILE) as fh:
            fh.write(memoryview(np.ascontiguousarray(self.tokens, dtype=np.uint8)))
        with atomic_file(directory / OFFSETS_FILE) as fh:
            np.save(fh, np.asarray(self.offsets, dtype=np.int64))

    @classmethod
    def open(cls, directory: str | os.PathLike, name: str | None = None, verify: bool = False) -> TokenStore:
        """Memory-map a prepared store, checking that offsets and token file agree (truncation).

        With a ``store.json`` (written by ``plm data prepare``) file sizes are checked against it on every
        open (cheap); ``verify=True`` also recomputes the checksums (reads every byte once).
        """
        directory = Path(directory)
        tok_path, off_path = directory / TOKENS_FILE, directory / OFFSETS_FILE
        for p in (tok_path, off_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; run `plm data prepare` for this source")
        parts = _check_store_meta(directory, verify)
        try:
            offsets = np.load(off_path, mmap_mode="r")
        except ValueError as err:
            raise ValueError(f"{off_path}: corrupt offsets file ({err}); re-run `plm data prepare`") from err
        paths = [directory / p for p in parts]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(
                f"{directory}: token part file(s) {missing} missing; the store is incomplete: re-run prepare"
            )
        sizes = [p.stat().st_size for p in paths]
        if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != sum(sizes):
            raise ValueError(
                f"{tok_path}: the token file(s) hold {sum(sizes)} bytes but {off_path.name} ends at "
                f"{int(offsets[-1]) if len(offsets) else 'nothing'}; the store is truncated or corrupt: re-run prepare"
            )
        maps = [
            np.memmap(p, dtype=np.uint8, mode="r") if n else np.zeros(0, np.uint8)
            for p, n in zip(paths, sizes)
        ]
        tokens = maps[0] if len(maps) == 1 else PartedTokens(maps)
        return cls(name or directory.name, tokens, offsets)


CHECKSUM = "crc32"
"""What ``plm data prepare`` records for every file. CRC-32 detects the accidents a store meets (a
truncated copy, flipped bits, a file from another run) like sha256 does, at a fraction of its cost
(docs/performance.md). Stores written with sha256 still verify."""


def crc32_hex(crc: int) -> str:
    return f"{crc & 0xFFFFFFFF:08x}"


def file_digest(path: Path, kind: str) -> str:
    """``kind`` ("crc32" or "sha256") of a file's bytes, read in 16 MB blocks."""
    crc, sha = 0, hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(16 << 20), b""):
            if kind == "crc32":
                crc = zlib.crc32(block, crc)
            else:
                sha.update(block)
    return crc32_hex(crc) if kind == "crc32" else sha.hexdigest()


def file_entry(path: Path) -> dict:
    """The manifest entry of a file: its size and checksum."""
    return {"size": path.stat().st_size, CHECKSUM: file_digest(path, CHECKSUM)}


def file_problems(directory: Path, files: dict, checksum: bool = True) -> list[str]:
    """Files of a manifest entry ``{name: {"size", "crc32" or "sha256"}}`` that are missing, of the wrong size or
    (with ``checksum``) of the wrong content."""
    problems = []
    for rel, want in files.items():
        p = directory / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, the manifest says {want['size']} (truncated?)")
        elif checksum:
            for kind in ("crc32", "sha256"):
                if kind in want and file_digest(p, kind) != want[kind]:
                    problems.append(f"{p}: {kind} differs from the manifest (corrupt)")
    return problems


def _check_store_meta(directory: Path, checksum: bool) -> list[str]:
    """The store's token part files, in order; raise ValueError listing every file whose size (or
    checksum) differs from ``store.json``. Without a ``store.json`` the store is the single ``tokens.bin``."""
    meta_path = directory / STORE_META
    if not meta_path.is_file():
        if checksum:
            raise FileNotFoundError(
                f"{meta_path}: missing, so the store cannot be verified; re-run `plm data prepare`"
            )
        return [TOKENS_FILE]
    try:
        meta = json.loads(meta_path.read_text())
        files, parts = meta["files"], list(meta.get("parts", [TOKENS_FILE]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path}: unreadable ({err}); re-run `plm data prepare`") from err
    problems = file_problems(directory, files, checksum)
    problems += [
        f"{directory / p}: a token part that {STORE_META} does not describe" for p in parts if p not in files
    ]
    if problems:
        raise ValueError(
            f"{directory}: truncated or corrupt store ({'; '.join(problems)}); re-run `plm data prepare`"
        )
    return parts


def split_fasta(
    name: str,
    paths: list[str | os.PathLike],
    val_fraction: float,
    on_invalid: OnInvalid = "skip",
    stats: FastaStats | None = None,
) -> tuple[TokenStore, TokenStore]:
    """Read FASTA files into an in-memory (train, validation) pair split by sequence hash (one vectorised
    :func:`validation_mask` over all records: per-record hashing cost seconds at every start-up)."""
    seqs = [rec.tokens for path in paths for rec in read_fasta(path, on_invalid=on_invalid, stats=stats)]
    whole = TokenStore.from_arrays(name, seqs)
    held_out = validation_mask(whole.tokens, whole.offsets, val_fraction).tolist()
    train = [t for t, v in zip(seqs, held_out) if not v]
    val = [t for t, v in zip(seqs, held_out) if v]
    if not train:
        raise ValueError(f"source {name!r}: no training records in {[str(p) for p in paths]}")
    return TokenStore.from_arrays(name, train), TokenStore.from_arrays(f"{name}/val", val)
