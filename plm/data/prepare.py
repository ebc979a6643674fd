"""``plm data prepare``: FASTA / FASTA.gz → memory-mappable token stores, parallel, bounded, resumable.

Layout written under ``--out DIR``::

    DIR/manifest.json                      all sources: counts, residues, options, checksum of every file
    DIR/NAME/manifest.json                 one source: inputs (size, mtime), rejected records, histogram
    DIR/NAME/{train,val}/tokens*.bin       uint8 residue tokens, records back to back, one part per shard
    DIR/NAME/{train,val}/offsets.npy       int64 record boundaries (records + 1)
    DIR/NAME/{train,val}/store.json        sizes + CRC-32 that ``TokenStore.open`` checks
    DIR/NAME/train/ids.npy                 uint64 hash of each record id (clusters, exclusion lists)
    DIR/NAME/train/clusters_*.npy          optional cluster index (``--clusters NAME=TSV``)

Why shards: input files are cut into byte ranges at ``>`` line starts (gzip files are one shard each,
they cannot be entered in the middle) and each shard is parsed by one worker process into its own small
store under ``DIR/.shards/NAME/``, written to a temporary directory and renamed when complete, with a
manifest holding its checksums. An interrupted run therefore leaves only complete shards; a re-run
verifies them (size + checksum) and parses only the missing or damaged ones. Finally the shards become
the parts of each store in file order (so the result does not depend on the worker count) by hard
links, not copies; duplicate ids are dropped, and the shard directories are deleted.

Validation policy: that of :mod:`plm.data.fasta` (one gzip rule, empty / outside the alphabet / over-long
records and empty or damaged files → an error naming the file, or a counted skip; text before the first
header or a header without identifier is always an error), parsed by its vectorised block reader, plus
two rules that need the view over all files of a source: duplicate ids (the first occurrence is kept,
later ones are a counted skip) and a source left without any record (always an error: nothing
downstream can use an empty store). Duplicates are found from 64-bit id hashes (8 bytes per record in
memory at the end, ~8 GB per 10⁹ records; a false duplicate needs a 64-bit collision, probability
≈ n²/2⁶⁵).

Every directory is published with :func:`plm.utils.atomic.atomic_directory` (a shard, a source) and the
top manifest with :func:`~plm.utils.atomic.atomic_write_text`: a failure at any point leaves the
previous output and no temporary behind, and a run killed outright leaves hidden temporaries that the
next run removes.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from plm.data.clusters import build_clusters, hash_ranges, save_clusters
from plm.data.fasta import (
    DEFAULT_MAX_LENGTH,
    FILE_REASONS,
    MAX_EXAMPLES,
    DamagedGzip,
    FastaError,
    FastaStats,
    OnInvalid,
    ParsedBlock,
    is_blank,
    is_gzip,
    iter_blocks,
    parse_block,
    refuse_damage,
    refuse_empty,
)
from plm.data.store import (
    CHECKSUM,
    OFFSETS_FILE,
    TOKENS_FILE,
    crc32_hex,
    file_entry,
    file_problems,
    part_name,
    validation_mask,
)
from plm.utils.atomic import atomic_directory, atomic_write_text, remove_stale_temporaries

FORMAT = 2  # 2: token parts hard-linked from shards (store.json lists them)
STORE_META = "store.json"
MANIFEST = "manifest.json"
SHARDS = ".shards"
IDS_FILE = "ids.npy"
BLOCK = 1 << 20  # bytes parsed at once by a worker (small: numpy temporaries stay in cache, no page faults)
MAX_PROBLEMS = 20  # problems gathered into one error message
HIST_EDGES = [0, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10_000, 100_000, 1 << 62]


# ---- shard plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    source: str
    path: str  # absolute
    file_index: int
    start: int  # byte range (uncompressed file) or 0, -1 for a whole gzip file
    end: int
    gz: bool
    size: int  # input file size and mtime: a changed input invalidates its shards
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.file_index:04d}-{self.start:015d}"

    def spec(self, opts: dict) -> dict:
        return {**asdict(self), **opts, "format": FORMAT}


def _next_record_start(fh, pos: int, size: int) -> int:
    """First byte ≥ pos that is a '>' at the start of a line (size when there is none)."""
    if pos <= 0:
        return 0
    fh.seek(pos - 1)
    base, carry = pos - 1, b""
    while True:
        chunk = fh.read(1 << 20)
        if not chunk:
            return size
        buf = carry + chunk
        i = buf.find(b"\n>")
        if i >= 0:
            return base + i + 1
        base += len(buf) - 1
        carry = buf[-1:]


def plan_shards(source: str, paths: list[Path], shard_size: int) -> list[Shard]:
    shards = []
    for fi, path in enumerate(paths):
        st = path.stat()
        if is_gzip(path):
            shards.append(Shard(source, str(path), fi, 0, -1, True, st.st_size, st.st_mtime_ns))
            continue
        with open(path, "rb") as fh:
            cuts = sorted({_next_record_start(fh, p, st.st_size) for p in range(0, st.st_size, shard_size)})
        cuts = [c for c in cuts if c < st.st_size] + [st.st_size]
        for a, b in itertools.pairwise(cuts):
            shards.append(Shard(source, str(path), fi, a, b, False, st.st_size, st.st_mtime_ns))
    return shards


# ---- shard worker ----------------------------------------------------------------------------------
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

    def write_runs(self, tokens: np.ndarray, starts: list[int], stops: list[int], lengths: np.ndarray) -> None:
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
                self.writers[split].write_runs(blk.tokens, lo[edges[::2]].tolist(), ends[edges[1::2] - 1].tolist(),
                                               lens[mask])
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


def _parse_shard(shard: Shard, opts: dict, out: _ShardOutput, stats: FastaStats) -> list[str]:
    """Parse the shard's blocks into ``out``; returns the problems found (error mode: gathered, up to
    MAX_PROBLEMS, and nothing more is written once there is one)."""
    problems: list[str] = []
    try:
        blocks = iter_blocks(shard.path, shard.start, shard.end, shard.gz, BLOCK, opts["max_length"])
        for i, (pos, block) in enumerate(blocks):
            blk = parse_block(block, pos, shard.path, opts["on_invalid"], opts["max_length"],
                              i == 0 and shard.start == 0, stats, problems)
            if blk is not None and not problems:
                out.add(blk, opts["val_fraction"])
            if blk is not None and blk.error is not None:
                raise blk.error
            if len(problems) >= MAX_PROBLEMS:
                break
    except DamagedGzip as err:
        try:
            refuse_damage(err, opts["on_invalid"], stats)  # skip/x: the records before it are kept
        except FastaError as refused:
            problems.append(str(refused))
    except FastaError as err:
        problems.append(str(err))
    return problems


def _write_shard(directory: Path, shard: Shard, opts: dict) -> dict:
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
    manifest = {"spec": shard.spec(opts), "rejected": dict(stats.rejected), "examples": stats.examples,
                "seconds": round(time.perf_counter() - t0, 3), "files": {}}
    for split, writer in out.writers.items():
        info = writer.finish()
        manifest[split] = {"records": info["records"], "residues": info["residues"]}
        manifest["files"].update({f"{split}/{k}": v for k, v in info["files"].items()})
    for name, parts, dtype in (("ids.npy", out.ids, np.uint64), ("split.npy", out.split, np.uint8),
                               ("starts.npy", out.starts, np.int64)):
        np.save(directory / name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        manifest["files"][name] = file_entry(directory / name)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def run_shard(shard: Shard, opts: dict, root: str) -> dict:
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


def verify_files(directory: Path, files: dict, checksum: bool = True) -> list[str]:
    """Problems (missing, size or checksum mismatch) of the files a manifest lists; [] when intact."""
    return file_problems(directory, files, checksum)


def reusable_shard(directory: Path, shard: Shard, opts: dict) -> tuple[dict | None, list[str]]:
    """The manifest of a complete, intact shard made from the same input with compatible options."""
    mpath = directory / MANIFEST
    if not mpath.is_file():
        return None, []
    try:
        man = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        return None, [f"{mpath}: unreadable ({err})"]
    spec, want = man.get("spec", {}), shard.spec(opts)
    same_input = {k: v for k, v in spec.items() if k != "on_invalid"} == {k: v for k, v in want.items() if k != "on_invalid"}
    # a shard without rejected records is the same whatever the on_invalid policy
    if not same_input or (spec.get("on_invalid") != opts["on_invalid"] and man.get("rejected")):
        return None, []
    problems = verify_files(directory, man.get("files", {}))
    return (None, problems) if problems else (man, [])


# ---- finalisation -----------------------------------------------------------------------------------
def _read_id_at(path: str, offset: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.readline(4096)[1:].split(None, 1)
    return head[0].decode("utf-8", "replace") if head else "?"


def _histogram(offsets: np.ndarray) -> dict:
    counts = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    for a in range(0, len(offsets) - 1, 1 << 24):
        lens = np.diff(np.asarray(offsets[a : a + (1 << 24) + 1]))
        counts += np.bincount(np.searchsorted(HIST_EDGES, lens, side="right") - 1, minlength=len(counts))[: len(counts)]
    labels = [f"{lo}-{hi - 1}" if i < len(HIST_EDGES) - 2 else f">={lo}" for i, (lo, hi) in
              enumerate(itertools.pairwise(HIST_EDGES))]
    return dict(zip(labels, counts.tolist()))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Give ``dst`` the content of ``src`` without copying it when possible: a hard link (same inode, so
    deleting the shard later frees nothing and costs nothing), else an in-kernel copy."""
    try:
        os.link(src, dst)
        return
    except OSError as err:  # another file system, or one without hard links
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        start, length = 0, src.stat().st_size
        while length > 0:
            try:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), length, start)
            except OSError as err:  # file systems without copy_file_range
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                os.lseek(fi.fileno(), start, os.SEEK_SET)
                n = os.write(fo.fileno(), os.read(fi.fileno(), min(length, 64 << 20)))
            if n <= 0:
                raise OSError(f"{src}: short copy ({length} bytes left)")
            start, length = start + n, length - n


def _write_store(dst: Path, shard_dirs: list[Path], keep: list[np.ndarray], shard_files: list[dict],
                 ids: np.ndarray | None) -> tuple[dict, list[str]]:
    """Assemble one split of all shards into the store ``dst``; returns (files, token parts).

    Each shard's token file becomes one part of the store (``tokens.bin``, ``tokens.001.bin``, …) by a
    hard link, keeping the checksum its worker computed: finalising costs no copy and no re-hash, whatever
    the data size. A shard that lost duplicate records is rewritten (kept runs only) and re-checksummed.
    """
    dst.mkdir(parents=True)
    n = int(sum(int(k.sum()) for k in keep))
    offsets = np.lib.format.open_memmap(dst / OFFSETS_FILE, mode="w+", dtype=np.int64, shape=(n + 1,))
    offsets[0] = 0
    files: dict[str, dict] = {}
    parts: list[str] = []
    pos = rec = 0
    for sd, k, entry in zip(shard_dirs, keep, shard_files):
        src_off = np.load(sd / OFFSETS_FILE)
        lens = np.diff(src_off)[k]
        offsets[rec + 1 : rec + 1 + len(lens)] = pos + np.cumsum(lens)
        rec += len(lens)
        size = int(lens.sum())
        if size == 0:
            continue
        part = dst / part_name(len(parts))
        if k.all():
            _link_or_copy(sd / TOKENS_FILE, part)
        else:  # duplicates dropped: copy the runs of kept records and hash them
            crc = 0
            edges = np.flatnonzero(np.diff(np.concatenate([[0], k.astype(np.int8), [0]])))
            with open(sd / TOKENS_FILE, "rb") as src, open(part, "wb") as out:
                for a, b in zip(edges[::2], edges[1::2]):
                    src.seek(int(src_off[a]))
                    left = int(src_off[b] - src_off[a])
                    while left:
                        buf = src.read(min(left, 64 << 20))
                        out.write(buf)
                        crc = zlib.crc32(buf, crc)
                        left -= len(buf)
            entry = {"size": size, CHECKSUM: crc32_hex(crc)}
        files[part.name] = entry
        parts.append(part.name)
        pos += size
    if not parts:  # an empty split still has its (empty) tokens.bin
        (dst / TOKENS_FILE).write_bytes(b"")
        files[TOKENS_FILE] = file_entry(dst / TOKENS_FILE)
        parts.append(TOKENS_FILE)
    offsets.flush()
    del offsets
    files[OFFSETS_FILE] = file_entry(dst / OFFSETS_FILE)
    if ids is not None:
        np.save(dst / IDS_FILE, ids)
        files[IDS_FILE] = file_entry(dst / IDS_FILE)
    return files, parts


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """True for the first occurrence of every id hash (one sort; the argsort only runs on duplicates)."""
    keep = np.ones(len(ids), dtype=bool)
    srt = np.sort(ids)
    dup_vals = np.unique(srt[1:][srt[1:] == srt[:-1]])
    if len(dup_vals):
        where = np.flatnonzero(np.isin(ids, dup_vals))
        _, first = np.unique(ids[where], return_index=True)
        keep[where] = False
        keep[where[first]] = True
    return keep


def _rejections(shards: list[Shard], manifests: dict[str, dict], files: FastaStats) -> FastaStats:
    """The source's rejections: its files' (empty files) and every shard's, examples capped."""
    total = FastaStats(rejected=Counter(files.rejected), examples={k: list(v) for k, v in files.examples.items()})
    for s in shards:
        m = manifests[s.key]
        total.rejected.update(m["rejected"])
        for k, v in m["examples"].items():
            ex = total.examples.setdefault(k, [])
            ex += v[: MAX_EXAMPLES - len(ex)]
    return total


def _count_duplicates(stats: FastaStats, keep_all: np.ndarray, ids: list[np.ndarray], dirs: list[Path],
                      shards: list[Shard]) -> None:
    n_dup = int((~keep_all).sum())
    if not n_dup:
        return
    stats.rejected["duplicate identifier"] += n_dup
    bounds = np.cumsum([0] + [len(i) for i in ids])
    for g in np.flatnonzero(~keep_all)[:MAX_EXAMPLES]:
        si = int(np.searchsorted(bounds, g, side="right") - 1)
        start = int(np.load(dirs[si] / "starts.npy")[g - bounds[si]])
        where = (f"record at uncompressed byte {start}" if shards[si].gz
                 else f"record {_read_id_at(shards[si].path, start)!r} at byte {start}")
        stats.examples.setdefault("duplicate identifier", []).append(f"{shards[si].path}: {where}")


def _write_splits(tmp: Path, name: str, shards: list[Shard], dirs: list[Path], manifests: dict[str, dict],
                  ids: list[np.ndarray], keep_all: np.ndarray, cluster_tsv: Path | None) -> tuple[dict, dict]:
    """DIR/NAME/{train,val} in ``tmp`` from the shards; returns (files, summary per split)."""
    split = [np.load(d / "split.npy") for d in dirs]
    keeps = np.split(keep_all, np.cumsum([len(i) for i in ids])[:-1]) if ids else []
    files: dict[str, dict] = {}
    summary: dict[str, dict] = {}
    for sname, flag in (("train", 0), ("val", 1)):
        sel = [(sp == flag) for sp in split]
        keep_split = [k[s] for k, s in zip(keeps, sel)]
        split_ids = None
        if sname == "train":
            split_ids = (np.concatenate([i[k & s] for i, k, s in zip(ids, keeps, sel)]) if ids
                         else np.zeros(0, np.uint64)).astype(np.uint64, copy=False)
        entries = [manifests[s.key]["files"][f"{sname}/{TOKENS_FILE}"] for s in shards]
        sfiles, parts = _write_store(tmp / sname, [d / sname for d in dirs], keep_split, entries, split_ids)
        offsets = np.load(tmp / sname / OFFSETS_FILE, mmap_mode="r")
        summary[sname] = {"records": len(offsets) - 1, "residues": int(offsets[-1]), "length_histogram": _histogram(offsets)}
        if sname == "train" and cluster_tsv is not None:
            c_off, c_mem, c_stats = build_clusters(cluster_tsv, split_ids)
            for p in save_clusters(tmp / sname, c_off, c_mem):
                sfiles[p.name] = file_entry(p)
            summary[sname]["clusters"] = c_stats
        meta = {"name": name, "split": sname, **summary[sname], "parts": parts, "files": sfiles}
        (tmp / sname / STORE_META).write_text(json.dumps(meta, indent=1))
        files.update({f"{sname}/{k}": v for k, v in sfiles.items()})
    return files, summary


def finalize_source(name: str, out: Path, shards: list[Shard], manifests: dict[str, dict], spec: dict,
                    cluster_tsv: Path | None, file_stats: FastaStats | None = None) -> dict:
    """Shards → DIR/NAME/{train,val} + manifest, replacing an older DIR/NAME in one step; drops later
    duplicate ids; removes the shards once the source is in place."""
    sroot = out / SHARDS / name
    dirs = [sroot / s.key for s in shards]
    ids = [np.load(d / "ids.npy") for d in dirs]
    keep_all = first_occurrences(np.concatenate(ids) if ids else np.zeros(0, np.uint64))
    stats = _rejections(shards, manifests, file_stats or FastaStats())
    _count_duplicates(stats, keep_all, ids, dirs, shards)
    with atomic_directory(out / name) as tmp:
        files, summary = _write_splits(tmp, name, shards, dirs, manifests, ids, keep_all, cluster_tsv)
        manifest = {
            "name": name, "format": FORMAT, "spec": spec, **summary,
            "rejected": dict(stats.rejected), "rejected_examples": stats.examples,
            "inputs": [{"path": p["path"], "size": p["size"], "mtime_ns": p["mtime_ns"],
                        "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p["mtime_ns"] / 1e9))}
                       for p in spec["inputs"]],
            "shards": len(shards), "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(sroot, ignore_errors=True)
    return manifest


# ---- driver -----------------------------------------------------------------------------------------
def _source_spec(name: str, paths: list[Path], opts: dict, tsv: Path | None) -> dict:
    inputs = [{"path": str(p), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in paths]
    ctsv = None if tsv is None else {"path": str(tsv), "size": tsv.stat().st_size, "mtime_ns": tsv.stat().st_mtime_ns}
    return {"inputs": inputs, "clusters": ctsv, **opts, "format": FORMAT}


def _up_to_date(root: Path, spec: dict) -> dict | None:
    mpath = root / MANIFEST
    if not mpath.is_file():
        return None
    try:
        man = json.loads(mpath.read_text())
    except ValueError:
        return None
    if man.get("spec") != spec or verify_files(root, man.get("files", {})):
        return None
    return man


def _argument_problems(paths: dict[str, list[Path]], clusters: dict[str, Path], on_invalid: str,
                       val_fraction: float) -> list[str]:
    problems = []
    if not paths:
        problems.append("no --source given")
    for n, ps in paths.items():
        if not n or "/" in n or n.startswith(".") or n == MANIFEST:
            problems.append(f"source name {n!r} is not a plain directory name")
        problems += [f"source {n!r}: {p}: file not found" for p in ps if not p.is_file()]
    for n, t in clusters.items():
        if n not in paths:
            problems.append(f"--clusters {n}=…: no source named {n!r} (sources: {sorted(paths)})")
        elif not t.is_file():
            problems.append(f"--clusters {n}: {t}: file not found")
    if on_invalid not in ("error", "skip", "x"):
        problems.append(f"on_invalid={on_invalid!r}: use error, skip or x")
    if not 0.0 <= val_fraction < 1.0:
        problems.append(f"val_fraction={val_fraction}: must be in [0, 1)")
    return problems


def _empty_files(paths: dict[str, list[Path]], on_invalid: OnInvalid) -> tuple[list[str], dict[str, FastaStats]]:
    """Files without a single record, by the FASTA policy: problems (error mode) or counted rejections.
    Checked before any parsing: a 0-byte plain file has no shard that could notice it."""
    problems, stats = [], {n: FastaStats() for n in paths}
    for n, ps in paths.items():
        for p in ps:
            if is_blank(p):
                try:
                    refuse_empty(p, on_invalid, stats[n])
                except FastaError as err:
                    problems.append(f"source {n!r}: {err}")
    return problems, stats


def _plan(out: Path, paths: dict[str, list[Path]], specs: dict[str, dict], opts: dict, shard_size: int
          ) -> tuple[dict[str, dict], dict[str, list[Shard]], dict[str, dict[str, dict]], list[Shard]]:
    """(sources already done, shards per source to finalise, reusable shard manifests, shards to parse).

    Temporaries a killed run left (hidden ``.NAME.tmp-…`` siblings) are removed first: this run holds
    the output directory."""
    remove_stale_temporaries(out)
    done = {n: m for n, m in ((n, _up_to_date(out / n, specs[n])) for n in paths) if m is not None}
    plan = {n: plan_shards(n, ps, shard_size) for n, ps in paths.items() if n not in done}
    manifests: dict[str, dict[str, dict]] = {n: {} for n in plan}
    todo: list[Shard] = []
    redone: list[str] = []
    for n, shards in plan.items():
        remove_stale_temporaries(out / SHARDS / n)
        for s in shards:
            man, bad = reusable_shard(out / SHARDS / n / s.key, s, opts)
            if man is not None:
                manifests[n][s.key] = man
            else:
                todo.append(s)
                redone += bad
    if redone:
        print("plm data prepare: damaged shards will be redone:\n  " + "\n  ".join(redone), file=sys.stderr)
    return done, plan, manifests, todo


def _shard_bytes(s: Shard) -> int:
    return s.size if s.gz else s.end - s.start


def _parse_shards(todo: list[Shard], opts: dict, out: Path, workers: int | None, progress: bool,
                  manifests: dict[str, dict[str, dict]], on_shard_done: Callable[[str, str], None] | None) -> None:
    """Run the shards (largest first) in worker processes; raise one error listing the problems."""
    from tqdm.auto import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    errors: list[str] = []
    bar = tqdm(total=sum(map(_shard_bytes, todo)), unit="B", unit_scale=True, desc="prepare",
               disable=not progress or not todo)
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
            f"plm data prepare: {len(errors)} invalid record(s) or file(s):\n  " + "\n  ".join(errors[:MAX_PROBLEMS])
            + more + "\nFix the file(s) or re-run with --on-invalid skip (count and drop) or x (unknown letters → X)"
            " (a missing header or text before the first '>' cannot be skipped: fix the file);"
            " finished shards are kept and reused."
        )


def _check_not_empty(plan: dict[str, list[Shard]], manifests: dict[str, dict[str, dict]],
                     file_stats: dict[str, FastaStats], paths: dict[str, list[Path]]) -> None:
    """A source without a single record left is an error whatever ``on_invalid`` says: an empty store
    would only fail later, at training time, far from its cause."""
    problems = []
    for n, shards in plan.items():
        if any(m["train"]["records"] + m["val"]["records"] for m in manifests[n].values()):
            continue
        rejected = _rejections(shards, manifests[n], file_stats[n]).rejected
        why = ", ".join(f"{k}: {v}" for k, v in rejected.items()) or "the files hold no records"
        problems.append(f"source {n!r} ({', '.join(map(str, paths[n]))}): no record left ({why})")
    if problems:
        raise FastaError("plm data prepare: " + "; ".join(problems) + "; check the files or leave the source out")


def _top_manifest(out: Path, opts: dict, result: dict[str, dict], seconds: dict) -> dict:
    return {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "options": opts, "seconds": seconds,
        "sources": {n: {"train": {k: m["train"][k] for k in ("records", "residues")},
                        "val": {k: m["val"][k] for k in ("records", "residues")},
                        "rejected": m["rejected"], "inputs": [i["path"] for i in m["inputs"]]}
                    for n, m in result.items()},
        "files": {f"{n}/{rel}": v for n, m in result.items() for rel, v in
                  {**m["files"], MANIFEST: file_entry(out / n / MANIFEST)}.items()},
    }


def prepare(
    sources: dict[str, list[str | os.PathLike]],
    out: str | os.PathLike,
    clusters: dict[str, str | os.PathLike] | None = None,
    val_fraction: float = 0.02,
    on_invalid: OnInvalid = "error",
    workers: int | None = None,
    shard_size: int = 64 << 20,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: bool = True,
    on_shard_done: Callable[[str, str], None] | None = None,
) -> dict:
    """Prepare every source; returns the top-level manifest (also written to ``out/manifest.json``).

    ``on_shard_done(source, key)`` is called in the main process after each shard is parsed (not for
    shards reused from an earlier run); raising from it interrupts the run like a kill would.
    """
    out = Path(out)
    clusters = {k: Path(v) for k, v in (clusters or {}).items()}
    paths = {n: [Path(p).resolve() for p in ps] for n, ps in sources.items()}
    problems = _argument_problems(paths, clusters, on_invalid, val_fraction)
    empty_problems, file_stats = _empty_files(paths, on_invalid) if not problems else ([], {})
    if problems or empty_problems:
        raise FastaError("plm data prepare: " + "; ".join(problems + empty_problems))
    out.mkdir(parents=True, exist_ok=True)
    opts = {"val_fraction": val_fraction, "on_invalid": on_invalid, "max_length": max_length}
    specs = {n: _source_spec(n, ps, opts, clusters.get(n)) for n, ps in paths.items()}
    done, plan, manifests, todo = _plan(out, paths, specs, opts, shard_size)
    t_start = time.perf_counter()
    _parse_shards(todo, opts, out, workers, progress, manifests, on_shard_done)
    _check_not_empty(plan, manifests, file_stats, paths)
    t_parsed = time.perf_counter()
    result = dict(done)
    for n, shards in plan.items():
        result[n] = finalize_source(n, out, shards, manifests[n], specs[n], clusters.get(n), file_stats[n])
    seconds = {"parse": round(t_parsed - t_start, 2), "finalize": round(time.perf_counter() - t_parsed, 2),
               "shards_parsed": len(todo), "shards_reused": sum(len(m) for m in manifests.values()) - len(todo)}
    top = _top_manifest(out, opts, result, seconds)
    atomic_write_text(out / MANIFEST, json.dumps(top, indent=1))
    if (out / SHARDS).is_dir() and not any((out / SHARDS).iterdir()):
        (out / SHARDS).rmdir()
    return top


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().rstrip("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 64M, 1G, 1048576)") from None
    if value < 1024:
        raise argparse.ArgumentTypeError(f"shard size {text!r} is too small; use at least 1K")
    return value


def _name_paths(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH[,PATH…]")
    return name, [p for p in rest.split(",") if p]


def _warn_file_rejections(out: Path, top: dict) -> None:
    """Whole files (or gzip tails) skipped under --on-invalid skip/x: named on stderr, not only counted."""
    for n, s in top["sources"].items():
        if not any(k in s["rejected"] for k in FILE_REASONS):
            continue
        examples = json.loads((out / n / MANIFEST).read_text()).get("rejected_examples", {})
        for key in FILE_REASONS:
            for ex in examples.get(key, []):
                print(f"warning: source {n!r}: skipped {ex}", file=sys.stderr)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="plm data prepare",
        description="FASTA/FASTA.gz → memory-mapped token stores (train/val per source) with a manifest; "
        "parallel, bounded memory, resumable (re-run the same command after an interruption).",
    )
    p.add_argument("--source", action="append", type=_name_paths, required=True, metavar="NAME=PATH[,PATH…]",
                   help="a named source and its FASTA files (plain or .gz); repeat for several sources")
    p.add_argument("--clusters", action="append", type=_name_paths, default=[], metavar="NAME=TSV",
                   help="cluster membership 'representative<TAB>member' (MMseqs2 createtsv, UniRef) for a source: "
                   "it is then sampled cluster first, member second")
    p.add_argument("--out", required=True, help="output directory (point ProteinDataModule sources at DIR/NAME)")
    p.add_argument("--val-fraction", type=float, default=0.02,
                   help="share of each source held out, chosen by a hash of the sequence (default 0.02)")
    p.add_argument("--on-invalid", choices=("error", "skip", "x"), default="error",
                   help="records breaking the policy: error (list them and stop), skip (count and drop), "
                   "x (unknown letters → X); skip and x also count an empty file or the unreadable tail of a "
                   "damaged .gz instead of stopping (a source left with no record is always an error); "
                   "default error")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: all cores)")
    p.add_argument("--shard-size", type=parse_size, default=64 << 20,
                   help="bytes of plain FASTA per shard, the unit of parallelism and of resume (default 64M)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help=f"longer records are rejected as broken (default {DEFAULT_MAX_LENGTH})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    sources: dict[str, list[str]] = {}
    for name, ps in a.source:
        sources.setdefault(name, []).extend(ps)
    clusters = {}
    for name, ps in a.clusters:
        if len(ps) != 1:
            p.error(f"--clusters {name}=…: give exactly one TSV")
        clusters[name] = ps[0]
    try:
        keep_freed_memory()
        top = prepare(sources, a.out, clusters, a.val_fraction, a.on_invalid, a.workers, a.shard_size,
                      a.max_length, progress=not a.quiet)
    except (FastaError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the device while writing under {a.out} ({err}). Finished shards and "
              "sources are kept and nothing partial is published; free space and re-run the same command to "
              "resume.", file=sys.stderr)
        return 2
    for n, s in top["sources"].items():
        rej = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "none"
        print(f"{n}: train {s['train']['records']:,} records / {s['train']['residues']:,} residues, "
              f"val {s['val']['records']:,} / {s['val']['residues']:,}; rejected: {rej}")
    _warn_file_rejections(Path(a.out), top)
    print(f"wrote {Path(a.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
