"""Finalising: a source's shards → ``DIR/NAME/{train,val}`` + manifest, replacing an older ``DIR/NAME``
in one step, and the top manifest's content.

Duplicate ids (over all files of a source) are dropped here, and a source left without any record is
refused here, since both need the view over all shards.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import time
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from plm.data.clusters import build_clusters, save_clusters
from plm.data.fasta import MAX_EXAMPLES, FastaError, FastaStats
from plm.data.prepare.plan import FORMAT, MANIFEST, SHARDS, PrepareOptions, Shard
from plm.data.store import CHECKSUM, OFFSETS_FILE, TOKENS_FILE, crc32_hex, file_entry, part_name
from plm.utils.atomic import atomic_directory

STORE_META = "store.json"
IDS_FILE = "ids.npy"
HIST_EDGES = [0, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10_000, 100_000, 1 << 62]


def _read_id_at(path: str, offset: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.readline(4096)[1:].split(None, 1)
    return head[0].decode("utf-8", "replace") if head else "?"


def _histogram(offsets: np.ndarray) -> dict:
    counts = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    for a in range(0, len(offsets) - 1, 1 << 24):
        lens = np.diff(np.asarray(offsets[a : a + (1 << 24) + 1]))
        counts += np.bincount(np.searchsorted(HIST_EDGES, lens, side="right") - 1, minlength=len(counts))[
            : len(counts)
        ]
    labels = [
        f"{lo}-{hi - 1}" if i < len(HIST_EDGES) - 2 else f">={lo}"
        for i, (lo, hi) in enumerate(itertools.pairwise(HIST_EDGES))
    ]
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


def _write_store(
    dst: Path, shard_dirs: list[Path], keep: list[np.ndarray], shard_files: list[dict], ids: np.ndarray | None
) -> tuple[dict, list[str]]:
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
    total = FastaStats(
        rejected=Counter(files.rejected), examples={k: list(v) for k, v in files.examples.items()}
    )
    for s in shards:
        m = manifests[s.key]
        total.rejected.update(m["rejected"])
        for k, v in m["examples"].items():
            ex = total.examples.setdefault(k, [])
            ex += v[: MAX_EXAMPLES - len(ex)]
    return total


def _count_duplicates(
    stats: FastaStats, keep_all: np.ndarray, ids: list[np.ndarray], dirs: list[Path], shards: list[Shard]
) -> None:
    n_dup = int((~keep_all).sum())
    if not n_dup:
        return
    stats.rejected["duplicate identifier"] += n_dup
    bounds = np.cumsum([0] + [len(i) for i in ids])
    for g in np.flatnonzero(~keep_all)[:MAX_EXAMPLES]:
        si = int(np.searchsorted(bounds, g, side="right") - 1)
        start = int(np.load(dirs[si] / "starts.npy")[g - bounds[si]])
        where = (
            f"record at uncompressed byte {start}"
            if shards[si].gz
            else f"record {_read_id_at(shards[si].path, start)!r} at byte {start}"
        )
        stats.examples.setdefault("duplicate identifier", []).append(f"{shards[si].path}: {where}")


def _write_splits(
    tmp: Path,
    name: str,
    shards: list[Shard],
    dirs: list[Path],
    manifests: dict[str, dict],
    ids: list[np.ndarray],
    keep_all: np.ndarray,
    cluster_tsv: Path | None,
) -> tuple[dict, dict]:
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
            split_ids = (
                np.concatenate([i[k & s] for i, k, s in zip(ids, keeps, sel)])
                if ids
                else np.zeros(0, np.uint64)
            ).astype(np.uint64, copy=False)
        entries = [manifests[s.key]["files"][f"{sname}/{TOKENS_FILE}"] for s in shards]
        sfiles, parts = _write_store(tmp / sname, [d / sname for d in dirs], keep_split, entries, split_ids)
        offsets = np.load(tmp / sname / OFFSETS_FILE, mmap_mode="r")
        summary[sname] = {
            "records": len(offsets) - 1,
            "residues": int(offsets[-1]),
            "length_histogram": _histogram(offsets),
        }
        if sname == "train" and cluster_tsv is not None:
            c_off, c_mem, c_stats = build_clusters(cluster_tsv, split_ids)
            for p in save_clusters(tmp / sname, c_off, c_mem):
                sfiles[p.name] = file_entry(p)
            summary[sname]["clusters"] = c_stats
        meta = {"name": name, "split": sname, **summary[sname], "parts": parts, "files": sfiles}
        (tmp / sname / STORE_META).write_text(json.dumps(meta, indent=1))
        files.update({f"{sname}/{k}": v for k, v in sfiles.items()})
    return files, summary


def finalize_source(
    name: str,
    out: Path,
    shards: list[Shard],
    manifests: dict[str, dict],
    spec: dict,
    cluster_tsv: Path | None,
    file_stats: FastaStats | None = None,
) -> dict:
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
            "name": name,
            "format": FORMAT,
            "spec": spec,
            **summary,
            "rejected": dict(stats.rejected),
            "rejected_examples": stats.examples,
            "inputs": [
                {
                    "path": p["path"],
                    "size": p["size"],
                    "mtime_ns": p["mtime_ns"],
                    "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p["mtime_ns"] / 1e9)),
                }
                for p in spec["inputs"]
            ],
            "shards": len(shards),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(sroot, ignore_errors=True)
    return manifest


def check_not_empty(
    plan: dict[str, list[Shard]],
    manifests: dict[str, dict[str, dict]],
    file_stats: dict[str, FastaStats],
    paths: dict[str, list[Path]],
) -> None:
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
        raise FastaError(
            "plm data prepare: " + "; ".join(problems) + "; check the files or leave the source out"
        )


def top_manifest(out: Path, opts: PrepareOptions, result: dict[str, dict], seconds: dict) -> dict:
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "options": asdict(opts),
        "seconds": seconds,
        "sources": {
            n: {
                "train": {k: m["train"][k] for k in ("records", "residues")},
                "val": {k: m["val"][k] for k in ("records", "residues")},
                "rejected": m["rejected"],
                "inputs": [i["path"] for i in m["inputs"]],
            }
            for n, m in result.items()
        },
        "files": {
            f"{n}/{rel}": v
            for n, m in result.items()
            for rel, v in {**m["files"], MANIFEST: file_entry(out / n / MANIFEST)}.items()
        },
    }
