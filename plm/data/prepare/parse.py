"""Parsing: one shard → a small store per split (tokens, offsets) plus id hashes, split flags and record
starts, published whole or not at all; and the run of all shards in worker processes.

Validation is that of :mod:`plm.data.fasta`, applied by its vectorised block reader.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from plm.data.clusters import hash_ranges
from plm.data.fasta import (
    DamagedGzip,
    FastaError,
    FastaStats,
    ParsedBlock,
    iter_blocks,
    parse_block,
    refuse_damage,
)
from plm.data.prepare.plan import MANIFEST, SHARDS, PrepareOptions, Shard
from plm.data.store import CHECKSUM, OFFSETS_FILE, TOKENS_FILE, crc32_hex, file_entry, validation_mask
from plm.utils.atomic import atomic_directory

BLOCK = 1 << 20  # bytes parsed at once by a worker (small: numpy temporaries stay in cache, no page faults)
MAX_PROBLEMS = 20  # problems gathered into one error message


def keep_freed_memory() -> None:
    """Let glibc keep freed large blocks for reuse instead of unmapping them.

    By default every ≥ 128 KB numpy temporary or read buffer is mmap-ed fresh and page-faulted in, then
    returned to the OS: measured, a worker's first shard spent 40 % of its time in the kernel on 40k
    page faults. Worker processes and the CLI only (a library caller's process keeps its own policy);
    memory stays bounded by the largest working set. No-op off glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc maximum): smaller blocks come from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: free heap kept before giving it back
    except (OSError, AttributeError):
        pass


class _ShardWriter:
    """Appends one split's tokens (checksummed on the fly) and remembers record lengths."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.dir = directory
        self.fh = open(directory / TOKENS_FILE, "wb")  # noqa: SIM115 (closed by finish() or the shard)
        self.crc = 0
        self.lengths: list[np.ndarray] = []

    def write_runs(
        self, tokens: np.ndarray, starts: list[int], stops: list[int], lengths: np.ndarray
    ) -> None:
        mv = memoryview(tokens)
        data = b"".join([mv[a:b] for a, b in zip(starts, stops)])  # one write and one checksum call per block
        self.fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.lengths.append(lengths)

    def finish(self) -> dict:
        self.fh.close()
        lens = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        np.save(self.dir / OFFSETS_FILE, offsets)
        files = {TOKENS_FILE: {"size": int(offsets[-1]), CHECKSUM: crc32_hex(self.crc)}}
        files[OFFSETS_FILE] = file_entry(self.dir / OFFSETS_FILE)
        return {"records": len(lens), "residues": int(offsets[-1]), "files": files}


class _ShardOutput:
    """What one shard's blocks add up to: a writer per split, id hashes, split flags, record starts."""

    def __init__(self, directory: Path) -> None:
        self.writers = {"train": _ShardWriter(directory / "train"), "val": _ShardWriter(directory / "val")}
        self.ids: list[np.ndarray] = []
        self.split: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def add(self, blk: ParsedBlock, val_fraction: float) -> None:
        """Write the kept records of a block: held-out by the rule of plm.data.store.is_validation
        (vectorised), runs of consecutive kept records straight from the block, no copies."""
        ok, lens, ends = blk.ok, blk.lens, blk.ends
        val = validation_mask(blk.tokens, np.concatenate([[0], ends]), val_fraction)
        lo = ends - lens
        for split, mask in (("train", ok & ~val), ("val", ok & val)):
            if mask.any():
                edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
                self.writers[split].write_runs(
                    blk.tokens, lo[edges[::2]].tolist(), ends[edges[1::2] - 1].tolist(), lens[mask]
                )
        self.ids.append(hash_ranges(blk.data, blk.id_start[ok], blk.id_end[ok]))
        self.split.append(val[ok].astype(np.uint8))
        self.starts.append(blk.starts[ok])

    def close(self) -> None:
        for w in self.writers.values():
            w.fh.close()


class _ShardProblems(Exception):
    """Error mode found invalid records: the shard is abandoned (its temporary directory removed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def _parse_shard(shard: Shard, opts: PrepareOptions, out: _ShardOutput, stats: FastaStats) -> list[str]:
    """Parse the shard's blocks into ``out``; returns the problems found (error mode: gathered, up to
    MAX_PROBLEMS, and nothing more is written once there is one)."""
    problems: list[str] = []
    try:
        blocks = iter_blocks(shard.path, shard.start, shard.end, shard.gz, BLOCK, opts.max_length)
        for i, (pos, block) in enumerate(blocks):
            blk = parse_block(
                block,
                pos,
                shard.path,
                opts.on_invalid,
                opts.max_length,
                i == 0 and shard.start == 0,
                stats,
                problems,
            )
            if blk is not None and not problems:
                out.add(blk, opts.val_fraction)
            if blk is not None and blk.error is not None:
                raise blk.error
            if len(problems) >= MAX_PROBLEMS:
                break
    except DamagedGzip as err:
        try:
            refuse_damage(err, opts.on_invalid, stats)  # skip/x: the records before it are kept
        except FastaError as refused:
            problems.append(str(refused))
    except FastaError as err:
        problems.append(str(err))
    return problems


def _write_shard(directory: Path, shard: Shard, opts: PrepareOptions) -> dict:
    """Parse one shard into ``directory`` and write its manifest (raises _ShardProblems instead)."""
    t0 = time.perf_counter()
    stats = FastaStats()
    out = _ShardOutput(directory)
    try:
        problems = _parse_shard(shard, opts, out, stats)
    finally:
        out.close()
    if problems:
        raise _ShardProblems(problems)
    manifest = {
        "spec": shard.spec(opts),
        "rejected": dict(stats.rejected),
        "examples": stats.examples,
        "seconds": round(time.perf_counter() - t0, 3),
        "files": {},
    }
    for split, writer in out.writers.items():
        info = writer.finish()
        manifest[split] = {"records": info["records"], "residues": info["residues"]}
        manifest["files"].update({f"{split}/{k}": v for k, v in info["files"].items()})
    for name, parts, dtype in (
        ("ids.npy", out.ids, np.uint64),
        ("split.npy", out.split, np.uint8),
        ("starts.npy", out.starts, np.int64),
    ):
        np.save(directory / name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        manifest["files"][name] = file_entry(directory / name)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def run_shard(shard: Shard, opts: PrepareOptions, root: str) -> dict:
    """Parse one shard into ``root/.shards/SOURCE/KEY``, published whole or not at all; return its
    manifest, or (error mode, invalid records) its problems with nothing written."""
    final = Path(root) / SHARDS / shard.source / shard.key
    try:
        with atomic_directory(final) as tmp:
            manifest = _write_shard(tmp, shard, opts)
    except _ShardProblems as err:
        return {"key": shard.key, "source": shard.source, "problems": err.problems}
    return {"key": shard.key, "source": shard.source, "manifest": manifest}


def _run_shard_star(args: tuple) -> dict:
    return run_shard(*args)


def _shard_bytes(s: Shard) -> int:
    return s.size if s.gz else s.end - s.start


def parse_shards(
    todo: list[Shard],
    opts: PrepareOptions,
    out: Path,
    workers: int | None,
    progress: bool,
    manifests: dict[str, dict[str, dict]],
    on_shard_done: Callable[[str, str], None] | None,
) -> None:
    """Run the shards (largest first) in worker processes; raise one error listing the problems."""
    from tqdm.auto import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    errors: list[str] = []
    bar = tqdm(
        total=sum(map(_shard_bytes, todo)),
        unit="B",
        unit_scale=True,
        desc="prepare",
        disable=not progress or not todo,
    )
    args = [(s, opts, str(out)) for s in sorted(todo, key=lambda s: -_shard_bytes(s))]
    by_key = {(s.source, s.key): s for s in todo}

    def handle(res: dict) -> None:
        bar.update(_shard_bytes(by_key[(res["source"], res["key"])]))
        if "problems" in res:
            errors.extend(res["problems"])
            return
        manifests[res["source"]][res["key"]] = res["manifest"]
        if on_shard_done is not None:
            on_shard_done(res["source"], res["key"])

    try:
        if workers == 1:
            for a in args:
                handle(run_shard(*a))
        else:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers, initializer=keep_freed_memory) as pool:
                for res in pool.imap_unordered(_run_shard_star, args):
                    handle(res)
    finally:
        bar.close()
    if errors:
        more = f"\n  … and more (first {MAX_PROBLEMS} per shard shown)" if len(errors) > MAX_PROBLEMS else ""
        raise FastaError(
            f"plm data prepare: {len(errors)} invalid record(s) or file(s):\n  "
            + "\n  ".join(errors[:MAX_PROBLEMS])
            + more
            + "\nFix the file(s) or re-run with --on-invalid skip (count and drop) or x (unknown letters → X)"
            " (a missing header or text before the first '>' cannot be skipped: fix the file);"
            " finished shards are kept and reused."
        )
