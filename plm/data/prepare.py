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

Validation policy: that of :mod:`plm.data.fasta` (empty, outside the alphabet, over-long → error naming
file, record and byte offset, or a counted skip; CRLF, blank lines, lowercase, trailing ``*`` accepted;
text before the first header or a header without identifier is always an error) plus duplicate ids
within a source: the first occurrence is kept, later ones are a counted skip. Duplicates are found from
64-bit id hashes (8 bytes per record in memory at the end, ~8 GB per 10⁹ records; a false duplicate
needs a 64-bit collision, probability ≈ n²/2⁶⁵).

The reader works on 1 MB blocks (numpy temporaries stay in cache): numpy finds headers and line
breaks, one ``bytes.translate`` maps the sequence text to token ids while dropping whitespace, and
record lengths, id hashes and the held-out hash are vectorised; Python never touches a line or a
character, and only touches a record to slice it out of the block.
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from plm.data.clusters import build_clusters, hash_ranges, save_clusters
from plm.data.fasta import DEFAULT_MAX_LENGTH, FastaError, OnInvalid
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
from plm.tokenizer import _LOOKUP, FIRST_RESIDUE, RESIDUES

FORMAT = 2  # 2: token parts hard-linked from shards (store.json lists them)
STORE_META = "store.json"
MANIFEST = "manifest.json"
SHARDS = ".shards"
IDS_FILE = "ids.npy"
X_ID = FIRST_RESIDUE + RESIDUES.index("X")
BLOCK = 1 << 20  # bytes parsed at once by a worker (small: numpy temporaries stay in cache, no page faults)
MAX_PROBLEMS = 20  # problems gathered into one error message
MAX_EXAMPLES = 3  # example records per rejection reason in the manifest
HIST_EDGES = [0, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10_000, 100_000, 1 << 62]
_DROP = b" \t\r\n"


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


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


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
        if _is_gzip(path):
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


def _blocks(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) pieces of the shard, each cut just before a '>' that starts a line."""
    import gzip

    fh = gzip.open(shard.path, "rb") if shard.gz else open(shard.path, "rb")  # noqa: SIM115 (closed below)
    with fh:
        if not shard.gz:
            pos, want = shard.start, BLOCK
            while pos < shard.end:  # plain file: re-read the cut-off record instead of copying it
                fh.seek(pos)
                buf = fh.read(min(want, shard.end - pos))
                if not buf:
                    raise FastaError(f"{shard.path}: ends at byte {pos}, expected {shard.end}; the file changed during prepare")
                cut = len(buf) - 1 if pos + len(buf) >= shard.end else buf.rfind(b"\n>")
                if cut < 0:  # a record longer than the block: read more
                    want *= 2
                    continue
                yield pos, buf if cut == len(buf) - 1 else buf[: cut + 1]
                pos, want = pos + cut + 1, BLOCK
            return
        carry, carry_pos = b"", 0
        while True:
            chunk = fh.read(BLOCK)
            if not chunk:
                if carry:
                    yield carry_pos, carry
                return
            buf = carry + chunk if carry else chunk
            cut = buf.rfind(b"\n>")
            if cut < 0:
                carry = buf
                continue
            yield carry_pos, buf[: cut + 1]
            carry_pos += cut + 1
            carry = buf[cut + 1 :]


class _ShardWriter:
    """Appends one split's tokens (checksummed on the fly) and remembers record lengths."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.dir = directory
        self.fh = open(directory / TOKENS_FILE, "wb")  # noqa: SIM115 (closed by close())
        self.crc = 0
        self.lengths: list[np.ndarray] = []

    def write_runs(self, tokens: np.ndarray, starts: list[int], stops: list[int], lengths: np.ndarray) -> None:
        mv = memoryview(tokens)
        data = b"".join([mv[a:b] for a, b in zip(starts, stops)])  # one write and one checksum call per block
        self.fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.lengths.append(lengths)

    def close(self) -> dict:
        self.fh.close()
        lens = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        np.save(self.dir / OFFSETS_FILE, offsets)
        files = {TOKENS_FILE: {"size": int(offsets[-1]), CHECKSUM: crc32_hex(self.crc)}}
        files[OFFSETS_FILE] = file_entry(self.dir / OFFSETS_FILE)
        return {"records": len(lens), "residues": int(offsets[-1]), "files": files}


_WS = np.zeros(256, dtype=bool)
_WS[list(b" \t\r\n")] = True
STAR, NON_ASCII, UNKNOWN = 254, 253, 255  # markers in the translation table (never token ids)
_TABLE = _LOOKUP.copy()
_TABLE[ord("*")] = STAR
_TABLE[128:] = NON_ASCII
_TABLE_BYTES = _TABLE.tobytes()


def _bad_char(seq_region: bytes) -> tuple[str, int]:
    """First character outside the alphabet in a record's sequence text and its 1-based position."""
    clean = seq_region.translate(None, _DROP)
    clean = clean[:-1] if clean.endswith(b"*") else clean
    bad = np.flatnonzero(_TABLE[np.frombuffer(clean, np.uint8)] >= NON_ASCII)
    i = int(bad[0]) if len(bad) else 0
    return chr(clean[i]), i + 1


def _parse_block(block: bytes, base: int, shard: Shard, opts: dict, first: bool, out: dict) -> None:
    """Validate and tokenise every record of one block; append results to ``out``.

    Vectorised over the block: numpy finds headers and whitespace, one ``bytes.translate`` maps the
    sequence text to token ids while dropping whitespace, id and held-out hashes are numpy.
    """
    if not block.startswith(b">"):  # only the first block of a file: blank lines or junk before '>'
        i = block.find(b"\n>")
        lead = i + 1 if i >= 0 else len(block)
        if not first or block[:lead].strip():
            line = block.lstrip()[:60].split(b"\n")[0]
            raise FastaError(
                f"{shard.path}: byte {base}: sequence data before the first '>' header ({line!r}); is this a FASTA file?"
            )
        if lead == len(block):
            return
        block, base = block[lead:], base + lead
    arr = np.frombuffer(block, dtype=np.uint8)
    size = len(arr)
    low = np.flatnonzero(arr <= 32)
    wsp = np.append(low[_WS[arr[low]]], size)  # positions of blanks, tabs, CR, LF
    nl = np.append(low[arr[low] == ord("\n")], size)
    after_nl = nl[:-1][nl[:-1] + 1 < size] + 1
    gt = after_nl[arr[after_nl] == ord(">")]  # headers: '>' at a line start (found from the line breaks:
    gt = np.concatenate([[0], gt]) if size and arr[0] == ord(">") else gt  # one pass over the block fewer)
    n = len(gt)
    head_end = nl[np.searchsorted(nl, gt)]
    id_start = gt + 1
    id_end = np.minimum(wsp[np.searchsorted(wsp, id_start)], head_end)
    for r in np.flatnonzero(id_end <= id_start):  # empty header, or blanks before the identifier
        text = block[id_start[r] : head_end[r]]
        if not text.strip():
            raise FastaError(f"{shard.path}: byte {base + int(gt[r])}: header '>' has no identifier; fix the file")
        id_start[r] += len(text) - len(text.lstrip())
        id_end[r] = id_start[r] + len(text.split(None, 1)[0])
    # sequence text = from a header's line end to the next header; translate maps letters to token ids
    # and drops whitespace in one C pass (measured: slicing and joining the records beats blanking the
    # headers of a copy in place, re.sub and numpy index scatter)
    next_gt = np.append(gt[1:], size)
    text = b"".join([block[x:y] for x, y in zip(head_end.tolist(), next_gt.tolist())])
    tok = np.frombuffer(text.translate(_TABLE_BYTES, _DROP), dtype=np.uint8)
    lens = (next_gt - head_end) - (np.searchsorted(wsp, next_gt) - np.searchsorted(wsp, head_end))
    starts = base + gt
    ends = np.cumsum(lens)
    star = (lens > 0) & (tok[np.maximum(ends - 1, 0)] == STAR) if len(tok) else np.zeros(n, bool)
    if star.any():  # trailing stop codon written by gene callers: dropped
        drop = np.ones(len(tok), dtype=bool)
        drop[ends[star] - 1] = False
        tok = tok[drop]
        lens = lens - star
        ends = np.cumsum(lens)
    reasons: dict[int, str] = {}
    if len(tok) and tok.max() >= NON_ASCII:  # max is one vectorised pass; flatnonzero only on bad blocks
        bad_pos = np.flatnonzero(tok >= NON_ASCII)
        tok = tok.copy()
        bad_rec = np.searchsorted(ends, bad_pos, side="right")
        if opts["on_invalid"] == "x":  # as read_fasta: every unknown character becomes X
            tok[bad_pos] = X_ID
        else:
            non_ascii = np.unique(bad_rec[tok[bad_pos] == NON_ASCII])
            for r in non_ascii:
                reasons[int(r)] = "non-ASCII bytes in sequence"
            for r in np.setdiff1d(np.unique(bad_rec), non_ascii):
                char, pos_in = _bad_char(block[head_end[r] : next_gt[r]])
                reasons[int(r)] = f"character outside the alphabet ({char!r} at position {pos_in})"
    for r in np.flatnonzero(lens == 0):
        reasons[int(r)] = "empty sequence"
    for r in np.flatnonzero(lens > opts["max_length"]):
        reasons.setdefault(int(r), f"longer than max_length={opts['max_length']}")
    ok = np.ones(n, dtype=bool)
    for r, why in sorted(reasons.items()):
        ok[r] = False
        rid = block[id_start[r] : id_end[r]].decode("utf-8", "replace")
        where = f"{shard.path}: record {rid!r} at byte {int(starts[r])}"
        if opts["on_invalid"] == "error":
            out["problems"].append(f"{where}: {why}")
        key = why.split(" (")[0]
        out["rejected"][key] += 1
        ex = out["examples"].setdefault(key, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"{where}: {why}")
    if out["problems"]:
        return  # error mode: keep gathering problems, write nothing
    # held-out split: the rule of plm.data.store.is_validation, vectorised over the block
    val = validation_mask(tok, np.concatenate([[0], ends]), opts["val_fraction"])
    lo = ends - lens
    for split, mask in (("train", ok & ~val), ("val", ok & val)):
        if mask.any():  # write runs of consecutive kept records straight from the block: no copies
            edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
            out[split].write_runs(tok, lo[edges[::2]].tolist(), ends[edges[1::2] - 1].tolist(), lens[mask])
    out["ids"].append(hash_ranges(arr, id_start[ok], id_end[ok]))
    out["split"].append(val[ok].astype(np.uint8))
    out["starts"].append(starts[ok])


def run_shard(shard: Shard, opts: dict, root: str) -> dict:
    """Parse one shard into ``root/.shards/SOURCE/KEY`` atomically; return its manifest.

    In error mode a shard with invalid records writes nothing and returns its problems instead.
    """
    final = Path(root) / SHARDS / shard.source / shard.key
    tmp = final.with_name(f"{shard.key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = {"train": _ShardWriter(tmp / "train"), "val": _ShardWriter(tmp / "val"), "ids": [], "split": [],
           "starts": [], "rejected": Counter(), "examples": {}, "problems": []}
    t0 = time.perf_counter()
    try:
        for i, (pos, block) in enumerate(_blocks(shard)):
            _parse_block(block, pos, shard, opts, first=(i == 0 and shard.start == 0), out=out)
            if len(out["problems"]) >= MAX_PROBLEMS:
                break
    except FastaError as err:
        out["problems"].append(str(err))
    if out["problems"]:
        for w in ("train", "val"):
            out[w].fh.close()
        shutil.rmtree(tmp, ignore_errors=True)
        return {"key": shard.key, "source": shard.source, "problems": out["problems"]}
    manifest = {"spec": shard.spec(opts), "rejected": dict(out["rejected"]), "examples": out["examples"],
                "seconds": round(time.perf_counter() - t0, 3), "files": {}}
    for split in ("train", "val"):
        info = out[split].close()
        manifest[split] = {"records": info["records"], "residues": info["residues"]}
        manifest["files"].update({f"{split}/{k}": v for k, v in info["files"].items()})
    for name, parts, dtype in (("ids.npy", out["ids"], np.uint64), ("split.npy", out["split"], np.uint8),
                               ("starts.npy", out["starts"], np.int64)):
        np.save(tmp / name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        manifest["files"][name] = file_entry(tmp / name)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)  # atomic: the shard exists complete or not at all
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


def finalize_source(name: str, out: Path, shards: list[Shard], manifests: dict[str, dict], spec: dict,
                    cluster_tsv: Path | None) -> dict:
    """Shards → DIR/NAME/{train,val} + manifest; drops later duplicate ids; removes the shards."""
    sroot = out / SHARDS / name
    dirs = [sroot / s.key for s in shards]
    ids = [np.load(d / "ids.npy") for d in dirs]
    split = [np.load(d / "split.npy") for d in dirs]
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
    keep_all = first_occurrences(all_ids)
    rejected, examples = Counter(), {}
    for s in shards:
        m = manifests[s.key]
        rejected.update(m["rejected"])
        for k, v in m["examples"].items():
            examples.setdefault(k, [])
            examples[k] += v[: MAX_EXAMPLES - len(examples[k])]
    n_dup = int((~keep_all).sum())
    if n_dup:
        rejected["duplicate identifier"] += n_dup
        bounds = np.cumsum([0] + [len(i) for i in ids])
        for g in np.flatnonzero(~keep_all)[:MAX_EXAMPLES]:
            si = int(np.searchsorted(bounds, g, side="right") - 1)
            start = int(np.load(dirs[si] / "starts.npy")[g - bounds[si]])
            where = (f"record at uncompressed byte {start}" if shards[si].gz
                     else f"record {_read_id_at(shards[si].path, start)!r} at byte {start}")
            examples.setdefault("duplicate identifier", []).append(f"{shards[si].path}: {where}")
    keeps = np.split(keep_all, np.cumsum([len(i) for i in ids])[:-1]) if ids else []
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
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
    manifest = {
        "name": name, "format": FORMAT, "spec": spec, **summary,
        "rejected": dict(rejected), "rejected_examples": examples,
        "inputs": [{"path": p["path"], "size": p["size"], "mtime_ns": p["mtime_ns"],
                    "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p["mtime_ns"] / 1e9))}
                   for p in spec["inputs"]],
        "shards": len(shards), "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
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
    if problems:
        raise ValueError("plm data prepare: " + "; ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    opts = {"val_fraction": val_fraction, "on_invalid": on_invalid, "max_length": max_length}
    specs = {n: _source_spec(n, ps, opts, clusters.get(n)) for n, ps in paths.items()}
    done_sources = {n: m for n, m in ((n, _up_to_date(out / n, specs[n])) for n in paths) if m is not None}
    plan = {n: plan_shards(n, ps, shard_size) for n, ps in paths.items() if n not in done_sources}
    manifests: dict[str, dict[str, dict]] = {n: {} for n in plan}
    todo: list[Shard] = []
    redone: list[str] = []
    for n, shards in plan.items():
        for s in shards:
            man, bad = reusable_shard(out / SHARDS / n / s.key, s, opts)
            if man is not None:
                manifests[n][s.key] = man
            else:
                todo.append(s)
                redone += bad
    if redone:
        print("plm data prepare: damaged shards will be redone:\n  " + "\n  ".join(redone), file=sys.stderr)
    t_start = time.perf_counter()
    total = sum((s.size if s.gz else s.end - s.start) for s in todo)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    errors: list[str] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=not progress or not todo)
    args = [(s, opts, str(out)) for s in sorted(todo, key=lambda s: -(s.size if s.gz else s.end - s.start))]
    by_key = {(s.source, s.key): s for s in todo}

    def handle(res: dict) -> None:
        s = by_key[(res["source"], res["key"])]
        bar.update(s.size if s.gz else s.end - s.start)
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
            f"plm data prepare: {len(errors)} invalid record(s):\n  " + "\n  ".join(errors[:MAX_PROBLEMS]) + more
            + "\nFix the file(s) or re-run with --on-invalid skip (count and drop) or x (unknown letters → X)"
            " (a missing header or text before the first '>' cannot be skipped: fix the file);"
            " finished shards are kept and reused."
        )
    t_parsed = time.perf_counter()
    result = dict(done_sources)
    for n, shards in plan.items():
        result[n] = finalize_source(n, out, shards, manifests[n], specs[n], clusters.get(n))
    top = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "options": opts,
        "seconds": {"parse": round(t_parsed - t_start, 2), "finalize": round(time.perf_counter() - t_parsed, 2),
                    "shards_parsed": len(todo), "shards_reused": sum(len(m) for m in manifests.values()) - len(todo)},
        "sources": {n: {"train": {k: m["train"][k] for k in ("records", "residues")},
                        "val": {k: m["val"][k] for k in ("records", "residues")},
                        "rejected": m["rejected"], "inputs": [i["path"] for i in m["inputs"]]}
                    for n, m in result.items()},
        "files": {f"{n}/{rel}": v for n, m in result.items() for rel, v in
                  {**m["files"], MANIFEST: file_entry(out / n / MANIFEST)}.items()},
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(top, indent=1))
    os.replace(tmp, out / MANIFEST)
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
                   "x (unknown letters → X); default error")
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
    print(f"wrote {Path(a.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
