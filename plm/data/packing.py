"""Packing: fill fixed-size rows with whole or cropped sequences, each framed as ``<cls> … <eos>``.

Rows carry document ids (0, 1, … per row; padding gets an id of its own) so the model's attention
mask keeps sequences apart and rotary positions restart per sequence. Planning (which sample goes
where) needs only record lengths, so every data-loader worker can plan the whole stream cheaply and
materialise just its own batches: the order never depends on the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plm.data.sampler import MixtureSampler
from plm.data.store import TokenStore
from plm.tokenizer import CLS, EOS, PAD
from plm.utils.hashing import mix64

CROP_SALT = 0xC2


@dataclass(frozen=True)
class Piece:
    source: int
    record: int
    start: int  # first residue taken
    n_res: int  # residues taken


@dataclass
class PackedRows:
    tokens: np.ndarray  # (R, T) int64
    doc_ids: np.ndarray  # (R, T) int64
    n_real: int  # non-pad tokens

    @property
    def efficiency(self) -> float:
        return self.n_real / self.tokens.size if self.tokens.size else 0.0


def materialize(stores: list[TokenStore], rows: list[list[Piece]], row_len: int) -> PackedRows:
    tokens = np.full((len(rows), row_len), PAD, dtype=np.int64)
    docs = np.zeros((len(rows), row_len), dtype=np.int64)
    n_real = 0
    for r, pieces in enumerate(rows):
        pos = 0
        for d, p in enumerate(pieces):
            end = pos + p.n_res + 2
            tokens[r, pos] = CLS
            tokens[r, pos + 1 : end - 1] = stores[p.source].get(p.record, p.start, p.start + p.n_res)
            tokens[r, end - 1] = EOS
            docs[r, pos:end] = d
            pos = end
        docs[r, pos:] = len(pieces)  # padding: a document of its own
        n_real += pos
    return PackedRows(tokens, docs, n_real)


class StreamPacker:
    """Plans rows from the sampler's stream starting at a cursor (global sample index)."""

    def __init__(
        self, stores: list[TokenStore], sampler: MixtureSampler, row_len: int, seed: int, min_piece: int = 16
    ):
        if row_len < 8:
            raise ValueError(f"row_len={row_len} is too short; use at least 8 tokens")
        self.stores, self.sampler, self.row_len, self.seed = stores, sampler, row_len, seed
        self.min_piece = max(3, min(min_piece, row_len))
        self._mean_len = max(8.0, float(np.mean([s.lengths().mean() for s in stores if len(s)])) + 2)

    def _candidates(self, cursor: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = np.arange(cursor, cursor + n, dtype=np.int64)
        draw = self.sampler.draw(k)
        lengths = np.empty(n, dtype=np.int64)
        for s in np.unique(draw.source):
            sel = draw.source == s
            lengths[sel] = self.stores[int(s)].lengths(draw.record[sel])
        max_res = self.row_len - 2
        span = np.maximum(lengths - max_res, 0) + 1  # possible crop starts
        start = (mix64(self.seed, k, CROP_SALT) % span.astype(np.uint64)).astype(np.int64)
        return draw.source, draw.record, np.minimum(lengths, max_res), start

    def plan(self, cursor: int, n_rows: int) -> tuple[list[list[Piece]], int]:
        """``n_rows`` rows starting at sample ``cursor``; returns the rows and the next cursor."""
        rows: list[list[Piece]] = []
        need = int(n_rows * self.row_len / self._mean_len * 1.3) + 8
        src, rec, length, start = self._candidates(cursor, need)
        i = 0
        row: list[Piece] = []
        free = self.row_len
        while len(rows) < n_rows:
            if i == len(src):  # ran out of planned candidates: draw more
                more = self._candidates(cursor + i, need)
                src, rec, length, start = (np.concatenate(p) for p in zip((src, rec, length, start), more))
            n_res = int(length[i])
            if n_res + 2 <= free:
                row.append(Piece(int(src[i]), int(rec[i]), int(start[i]), n_res))
                free -= n_res + 2
                i += 1
            elif free >= self.min_piece:  # crop this sample to fill the row; its remainder is dropped
                row.append(Piece(int(src[i]), int(rec[i]), int(start[i]), free - 2))
                free = 0
                i += 1
            else:
                free = 0
            if free < 3:  # no room for even one residue: row done
                rows.append(row)
                row, free = [], self.row_len
        return rows, cursor + i


def pack_records(store: TokenStore, row_len: int, limit_rows: int | None = None) -> list[list[Piece]]:
    """Deterministic rows of whole records in file order (cropped to the row): for evaluation."""
    rows: list[list[Piece]] = []
    row: list[Piece] = []
    free = row_len
    for i, n in enumerate(store.lengths()):
        n_res = int(min(n, row_len - 2))
        if n_res + 2 > free:
            rows.append(row)
            if limit_rows is not None and len(rows) >= limit_rows:
                return rows
            row, free = [], row_len
        row.append(Piece(0, i, 0, n_res))
        free -= n_res + 2
    if row:
        rows.append(row)
    return rows[:limit_rows] if limit_rows is not None else rows
