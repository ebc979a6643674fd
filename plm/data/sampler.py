"""Data order as a pure function of (seed, global sample index k).

k → source: the index space is cut into blocks of ``block`` samples; every block holds exactly
``counts[s]`` samples of source s (largest-remainder rounding of the mixture weights) at positions
shuffled by (seed, block). So realised shares match the weights to 1/block at every block boundary,
and how many samples of source s precede k is closed-form: nothing is replayed on resume.

j-th sample of source s → record: epoch e = j // n_s and a keyed pseudo-random permutation of
[0, n_s) per (seed, source, epoch) (a Feistel network with cycle walking). Every record is seen once
per epoch, the order differs between epochs, and it needs no memory even at 10⁹ records.
With a cluster index, the permutation runs over clusters and the member is drawn by hash (ESM-2's
"uniform UniRef50 cluster, then a random UniRef90 member").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from plm.utils.hashing import mix64

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform(*parts: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) floats from a hash of the parts."""
    return (mix64(*parts) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def feistel_permute(x: np.ndarray, n: int, key: np.ndarray | int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, n) evaluated pointwise (balanced Feistel + cycle walking)."""
    x = np.asarray(x, dtype=np.uint64)
    if n <= 1:
        return np.zeros_like(x)
    bits = max(2, int(np.ceil(np.log2(n))))
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    key = np.broadcast_to(np.asarray(key, dtype=np.uint64), x.shape)

    def enc(v: np.ndarray, kk: np.ndarray) -> np.ndarray:
        left, right = v >> half, v & mask
        for r in range(rounds):
            left, right = right, left ^ (mix64(kk, r, right) & mask)
        return (left << half) | right

    out = enc(x, key)
    todo = out >= np.uint64(n)
    while todo.any():  # cycle walking: domain ≤ 4n, so a few rounds at most
        out[todo] = enc(out[todo], key[todo])
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def block_counts(weights: list[float], block: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights must be non-negative and not all zero, got {weights}")
    exact = w / w.sum() * block
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: block - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class Draw:
    source: np.ndarray  # int64 source index per sample
    record: np.ndarray  # int64 record index in that source
    nth: np.ndarray  # int64: how many samples of that source came before (epochs = nth / n_records)


class MixtureSampler:
    """Maps global sample indices to (source, record) deterministically; see module docstring."""

    def __init__(
        self,
        n_records: list[int],
        weights: list[float],
        seed: int = 0,
        block: int = 4096,
        clusters: list[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> None:
        if len(n_records) != len(weights):
            raise ValueError(f"{len(n_records)} sources but {len(weights)} mixture weights")
        if any(n <= 0 for n, w in zip(n_records, weights) if w > 0):
            raise ValueError(f"a source with positive weight has no records: {n_records}")
        self.n_records = list(n_records)
        self.seed, self.block = seed, block
        self.counts = block_counts(weights, block)
        # per source: None (sample records) or (offsets, members): cluster c holds record ids
        # members[offsets[c]:offsets[c + 1]]
        self.clusters = clusters or [None] * len(n_records)
        self._schedule = lru_cache(maxsize=8)(self._block_schedule)

    def units(self, s: int) -> int:
        """Items one epoch of source s runs over: clusters if clustered, else records."""
        cl = self.clusters[s]
        return self.n_records[s] if cl is None else len(cl[0]) - 1

    def _block_schedule(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        base = np.repeat(np.arange(len(self.counts)), self.counts)
        order = np.random.Generator(np.random.PCG64([self.seed, b])).permutation(self.block)
        src = base[order]
        rank = np.empty(self.block, dtype=np.int64)
        for s in range(len(self.counts)):  # rank of each slot among its source's slots in this block
            rank[src == s] = np.arange(self.counts[s])
        return src, rank

    def draw(self, k: np.ndarray) -> Draw:
        k = np.asarray(k, dtype=np.int64)
        b, pos = np.divmod(k, self.block)
        src = np.empty_like(k)
        nth = np.empty_like(k)
        for blk in np.unique(b):
            sel = b == blk
            s_sched, r_sched = self._schedule(int(blk))
            src[sel] = s_sched[pos[sel]]
            nth[sel] = blk * self.counts[src[sel]] + r_sched[pos[sel]]
        record = np.empty_like(k)
        for s in np.unique(src):
            sel = src == s
            units = self.units(int(s))
            epoch, within = np.divmod(nth[sel], units)
            unit = feistel_permute(within, units, mix64(self.seed, int(s), epoch))
            cl = self.clusters[int(s)]
            if cl is None:
                record[sel] = unit
            else:
                offsets, members = cl
                size = (offsets[unit + 1] - offsets[unit]).astype(np.uint64)
                member = (mix64(self.seed, k[sel], 0xC1) % size).astype(np.int64)
                record[sel] = members[offsets[unit] + member]
        return Draw(src, record, nth)

    def seen_per_source(self, cursor: int) -> np.ndarray:
        """Samples drawn from each source among indices [0, cursor): closed form, no replay."""
        full, rest = divmod(int(cursor), self.block)
        seen = full * self.counts
        if rest:
            s_sched, _ = self._schedule(full)
            seen = seen + np.bincount(s_sched[:rest], minlength=len(self.counts))
        return seen

    def epochs_per_source(self, cursor: int) -> np.ndarray:
        return self.seen_per_source(cursor) / np.maximum(1, [self.units(s) for s in range(len(self.counts))])
