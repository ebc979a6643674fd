"""Shard planning: each source's files cut into shards, and which shards an earlier run left reusable.

A plain file is cut into byte ranges at ``>`` line starts; a gzip file is one shard (it cannot be entered
in the middle). A shard's spec (input size and mtime, options, :data:`FORMAT`) decides whether a shard
or a whole source written before can be reused.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from plm.data.fasta import OnInvalid, is_gzip
from plm.data.store import file_problems
from plm.utils.atomic import remove_stale_temporaries

FORMAT = 2  # 2: token parts hard-linked from shards (store.json lists them)
MANIFEST = "manifest.json"
SHARDS = ".shards"


@dataclass(frozen=True)
class PrepareOptions:
    """What decides a store's contents besides its inputs: part of every shard's and source's spec, so a
    store prepared under other options is rebuilt rather than reused."""

    val_fraction: float  # share of records held out (by a hash of the sequence) for validation
    on_invalid: OnInvalid  # plm.data.fasta's policy: error, skip or x
    max_length: int  # longest record kept, in residues


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

    def spec(self, opts: PrepareOptions) -> dict:
        return {**asdict(self), **asdict(opts), "format": FORMAT}


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


def verify_files(directory: Path, files: dict, checksum: bool = True) -> list[str]:
    """Problems (missing, size or checksum mismatch) of the files a manifest lists; [] when intact."""
    return file_problems(directory, files, checksum)


def reusable_shard(directory: Path, shard: Shard, opts: PrepareOptions) -> tuple[dict | None, list[str]]:
    """The manifest of a complete, intact shard made from the same input with compatible options."""
    mpath = directory / MANIFEST
    if not mpath.is_file():
        return None, []
    try:
        man = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        return None, [f"{mpath}: unreadable ({err})"]
    spec, want = man.get("spec", {}), shard.spec(opts)
    same_input = {k: v for k, v in spec.items() if k != "on_invalid"} == {
        k: v for k, v in want.items() if k != "on_invalid"
    }
    # a shard without rejected records is the same whatever the on_invalid policy
    if not same_input or (spec.get("on_invalid") != opts.on_invalid and man.get("rejected")):
        return None, []
    problems = verify_files(directory, man.get("files", {}))
    return (None, problems) if problems else (man, [])


def source_spec(name: str, paths: list[Path], opts: PrepareOptions, tsv: Path | None) -> dict:
    inputs = [{"path": str(p), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in paths]
    ctsv = (
        None
        if tsv is None
        else {"path": str(tsv), "size": tsv.stat().st_size, "mtime_ns": tsv.stat().st_mtime_ns}
    )
    return {"inputs": inputs, "clusters": ctsv, **asdict(opts), "format": FORMAT}


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


def plan_sources(
    out: Path, paths: dict[str, list[Path]], specs: dict[str, dict], opts: PrepareOptions, shard_size: int
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
