"""The datasets the data loaders wrap: one rank's packed training stream and its held-out batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from plm.data.batch import Batch
from plm.data.packing import StreamPacker, materialize


class PackedStream(IterableDataset):
    """Infinite stream of packed micro-batches for one rank, starting at a sample cursor."""

    def __init__(
        self, packer: StreamPacker, rows_per_batch: int, rank: int, world_size: int, start_cursor: int
    ):
        self.packer, self.rows, self.rank, self.world = packer, rows_per_batch, rank, world_size
        self.start_cursor = start_cursor

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        cursor, m = self.start_cursor, 0
        while True:
            rows, nxt = self.packer.plan(cursor, self.rows * self.world)
            if m % n_workers == worker:
                mine = rows[self.rank * self.rows : (self.rank + 1) * self.rows]
                packed = materialize(self.packer.stores, mine, self.packer.row_len)
                yield Batch(
                    tokens=torch.from_numpy(packed.tokens),
                    doc_ids=torch.from_numpy(packed.doc_ids),
                    n_real=int(packed.n_real),
                    mask_seed=cursor,
                    set="train",
                    cursor_end=nxt,
                )
            cursor, m = nxt, m + 1


class RankBatches(IterableDataset):
    """One rank's ready-made held-out batches. Iterable, so Lightning leaves it alone: a list would get a
    DistributedSampler under DDP / FSDP that splits this rank's share again and repeats batches to even it
    out (validation then scored a different, partly duplicated subset than one process)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
