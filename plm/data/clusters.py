"""Cluster membership (``rep \\t member`` TSV, MMseqs2 ``createtsv`` / UniRef style) → index arrays.

The sampler draws a cluster first and a member second (ESM-2's recipe: uniform UniRef50 cluster, then a
random UniRef90 member). It needs, per source, ``offsets`` (int64, clusters + 1) and ``members`` (int64
record indices into the train store): cluster c holds ``members[offsets[c]:offsets[c + 1]]``.

Identifiers are matched through 64-bit hashes (:func:`id_hashes`) so no Python string set of 10⁹ ids
is ever built: memory is 16 bytes per TSV line in numpy arrays (rep hash + member index), read in
chunks. Members that are not training records (held-out, rejected or absent) are dropped and counted;
training records that no line mentions become singleton clusters, so no record is lost.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from plm.data.fasta import open_binary
from plm.utils.atomic import atomic_file
from plm.utils.hashing import mix64

OFFSETS_FILE, MEMBERS_FILE = "clusters_offsets.npy", "clusters_members.npy"


MAX_WORDS = 32  # identifiers up to 256 bytes are hashed vectorised; longer ones one by one


def hash_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Stable (process-independent) 64-bit hashes of the byte ranges ``buf[starts[i]:ends[i]]``.

    Vectorised (no Python per identifier): the ranges are laid out zero-padded as rows of 64-bit
    words and mixed word by word together with their length.
    """
    buf = np.asarray(buf, dtype=np.uint8)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    lens = ends - starts
    out = np.empty(len(starts), dtype=np.uint64)
    short = np.flatnonzero(lens <= 8 * MAX_WORDS)
    if len(short):
        width = max(8, -(-int(lens[short].max()) // 8) * 8)
        # rows of `width` bytes starting at each identifier, gathered from a strided view of the buffer
        # (no int64 position matrix, no copy of the buffer), then zeroed past each identifier's end
        first = starts[short]
        inside = first <= len(buf) - width
        if inside.all():
            mat = np.lib.stride_tricks.sliding_window_view(buf, width)[first]
        else:  # identifiers in the last `width` bytes: pad a copy of the buffer (rare: small buffers)
            mat = np.lib.stride_tricks.sliding_window_view(
                np.concatenate([buf, np.zeros(width, np.uint8)]), width
            )[first]
        mat = mat * (np.arange(width) < lens[short, None])
        words = mat.view("<u8")
        h = mix64(lens[short])
        n_words = (lens[short] + 7) // 8
        for j in range(words.shape[1]):  # only an identifier's own words: its hash must not depend on
            h = np.where(j < n_words, mix64(h, words[:, j]), h)  # the longest identifier of the batch
        out[short] = h
    for i in np.flatnonzero(lens > 8 * MAX_WORDS):
        digest = hashlib.blake2b(buf[starts[i] : ends[i]].tobytes(), digest_size=8).digest()
        out[i] = mix64(lens[i], int.from_bytes(digest, "little"))
    return out


def id_hashes(idents: list[bytes]) -> np.ndarray:
    """:func:`hash_ranges` of each identifier (the same values ``plm data prepare`` stores in ids.npy)."""
    lens = np.fromiter(map(len, idents), dtype=np.int64, count=len(idents))
    ends = np.cumsum(lens)
    return hash_ranges(np.frombuffer(b"".join(idents), dtype=np.uint8), ends - lens, ends)


def _read_pairs(tsv: Path, chunk_lines: int):
    """Yield (rep hashes, member hashes) per chunk of TSV lines; errors name file and line."""
    with open_binary(tsv, "cluster TSV") as fh:
        line_no = 0
        while True:
            lines = fh.readlines(chunk_lines * 32)
            if not lines:
                return
            reps, mems = [], []
            for line in lines:
                line_no += 1
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise ValueError(
                        f"{tsv}: line {line_no}: expected 'representative<TAB>member', got {line[:80]!r}; "
                        "give the MMseqs2 createtsv / UniRef membership table"
                    )
                reps.append(parts[0].lstrip(b">"))
                mems.append(parts[1].lstrip(b">"))
            yield id_hashes(reps), id_hashes(mems)


def build_clusters(
    tsv: str | os.PathLike, record_hashes: np.ndarray, chunk_lines: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cluster arrays over the records whose id hashes are ``record_hashes`` (train store order).

    Returns (offsets, members, stats) with stats = lines, members matched/unmatched, singletons added.
    """
    tsv = Path(tsv)
    record_hashes = np.asarray(record_hashes, dtype=np.uint64)
    order = np.argsort(record_hashes, kind="stable")
    sorted_h = record_hashes[order]
    rep_parts, rec_parts = [], []
    lines = unmatched = 0
    for rep_h, mem_h in _read_pairs(tsv, chunk_lines):
        lines += len(rep_h)
        pos = np.searchsorted(sorted_h, mem_h)
        pos = np.minimum(pos, max(0, len(sorted_h) - 1))
        hit = (sorted_h[pos] == mem_h) if len(sorted_h) else np.zeros(len(mem_h), bool)
        unmatched += int((~hit).sum())
        rep_parts.append(rep_h[hit])
        rec_parts.append(order[pos[hit]].astype(np.int64))
    reps = np.concatenate(rep_parts) if rep_parts else np.zeros(0, np.uint64)
    recs = np.concatenate(rec_parts) if rec_parts else np.zeros(0, np.int64)
    # a record listed twice (under one or two representatives) keeps its first line only
    _, first = np.unique(recs, return_index=True)
    first.sort()
    reps, recs = reps[first], recs[first]
    # records no line mentions: their own cluster (keyed by their own hash, which no rep can collide with
    # in practice) so sampling still covers them
    covered = np.zeros(len(record_hashes), dtype=bool)
    covered[recs] = True
    lonely = np.flatnonzero(~covered)
    reps = np.concatenate([reps, record_hashes[lonely] ^ np.uint64(0xA5A5A5A5A5A5A5A5)])
    recs = np.concatenate([recs, lonely.astype(np.int64)])
    # cluster ids in order of each representative's first appearance; members sorted within clusters
    uniq, first_pos, inverse = np.unique(reps, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(len(uniq))
    cluster = rank[inverse]
    srt = np.lexsort((recs, cluster))
    members = recs[srt]
    offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum(np.bincount(cluster, minlength=len(uniq)), out=offsets[1:])
    stats = {
        "tsv": str(tsv),
        "lines": lines,
        "clusters": len(uniq),
        "members_matched": len(first),
        "members_not_in_train": unmatched,
        "singleton_clusters_added": len(lonely),
    }
    return offsets, members, stats


def save_clusters(directory: str | os.PathLike, offsets: np.ndarray, members: np.ndarray) -> list[Path]:
    """Write the two index files, each whole or not at all (a reader pairs them by their lengths)."""
    directory = Path(directory)
    out = []
    for name, arr in ((OFFSETS_FILE, offsets), (MEMBERS_FILE, members)):
        with atomic_file(directory / name) as fh:
            np.save(fh, np.asarray(arr, dtype=np.int64))
        out.append(directory / name)
    return out


def load_clusters(directory: str | os.PathLike, n_records: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The (offsets, members) pair of a prepared train store, or None when it has no clusters."""
    directory = Path(directory)
    off_p, mem_p = directory / OFFSETS_FILE, directory / MEMBERS_FILE
    if not off_p.exists() and not mem_p.exists():
        return None
    if not (off_p.exists() and mem_p.exists()):
        raise FileNotFoundError(
            f"{directory}: only one of {OFFSETS_FILE}, {MEMBERS_FILE}; re-run `plm data prepare`"
        )
    offsets, members = np.load(off_p, mmap_mode="r"), np.load(mem_p, mmap_mode="r")
    problems = []
    if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(members):
        problems.append(f"{off_p.name} does not end at the {len(members)} members")
    if len(members) and (int(members.min()) < 0 or int(members.max()) >= n_records):
        problems.append(f"members index outside the store's {n_records} records")
    if problems:
        raise ValueError(
            f"{directory}: corrupt cluster index: {'; '.join(problems)}; re-run `plm data prepare`"
        )
    return np.asarray(offsets), np.asarray(members)


def exclude_records(
    n_records: int,
    clusters: tuple[np.ndarray, np.ndarray] | None,
    exclude: np.ndarray,
    where: str = "exclude list",
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded record indices: the result is a cluster index (singletons when none were given)
    over the remaining records, which the sampler already understands."""
    exclude = np.asarray(exclude)
    if exclude.ndim != 1 or not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError(
            f"{where}: expected a 1-D integer array of train record indices, got {exclude.dtype} {exclude.shape}"
        )
    if len(exclude) and (int(exclude.min()) < 0 or int(exclude.max()) >= n_records):
        raise ValueError(
            f"{where}: record indices must be in [0, {n_records}); got {int(exclude.min())}..{int(exclude.max())}"
        )
    keep = np.ones(n_records, dtype=bool)
    keep[exclude.astype(np.int64)] = False
    if not keep.any():
        raise ValueError(f"{where}: excludes all {n_records} records of the source")
    if clusters is None:
        members = np.flatnonzero(keep).astype(np.int64)
        return np.arange(len(members) + 1, dtype=np.int64), members
    offsets, members = clusters
    kept = keep[members]
    cluster_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[kept]
    sizes = np.bincount(cluster_of, minlength=len(offsets) - 1)
    sizes = sizes[sizes > 0]
    new_off = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=new_off[1:])
    return new_off, np.asarray(members)[kept].astype(np.int64)
