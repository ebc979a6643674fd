"""``plm data prepare``: :func:`prepare` (check the arguments, plan, parse, finalise, write the top
manifest) and the command line around it."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from plm.command import Flag, command
from plm.data.fasta import (
    DEFAULT_MAX_LENGTH,
    FILE_REASONS,
    FastaError,
    FastaStats,
    OnInvalid,
    is_blank,
    refuse_empty,
)
from plm.data.prepare.finalise import check_not_empty, finalize_source, top_manifest
from plm.data.prepare.parse import keep_freed_memory, parse_shards
from plm.data.prepare.plan import MANIFEST, SHARDS, PrepareOptions, plan_sources, source_spec
from plm.utils.atomic import atomic_write_text

VAL_FRACTION = 0.02  # share of each source held out
SHARD_SIZE = 64 << 20  # bytes of plain FASTA per shard


def _argument_problems(
    paths: dict[str, list[Path]], clusters: dict[str, Path], on_invalid: str, val_fraction: float
) -> list[str]:
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


def _empty_files(
    paths: dict[str, list[Path]], on_invalid: OnInvalid
) -> tuple[list[str], dict[str, FastaStats]]:
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


def prepare(
    sources: dict[str, list[str | os.PathLike]],
    out: str | os.PathLike,
    clusters: dict[str, str | os.PathLike] | None = None,
    val_fraction: float = VAL_FRACTION,
    on_invalid: OnInvalid = "error",
    workers: int | None = None,
    shard_size: int = SHARD_SIZE,
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
    opts = PrepareOptions(val_fraction, on_invalid, max_length)
    specs = {n: source_spec(n, ps, opts, clusters.get(n)) for n, ps in paths.items()}
    done, plan, manifests, todo = plan_sources(out, paths, specs, opts, shard_size)
    t_start = time.perf_counter()
    parse_shards(todo, opts, out, workers, progress, manifests, on_shard_done)
    check_not_empty(plan, manifests, file_stats, paths)
    t_parsed = time.perf_counter()
    result = dict(done)
    for n, shards in plan.items():
        result[n] = finalize_source(n, out, shards, manifests[n], specs[n], clusters.get(n), file_stats[n])
    seconds = {
        "parse": round(t_parsed - t_start, 2),
        "finalize": round(time.perf_counter() - t_parsed, 2),
        "shards_parsed": len(todo),
        "shards_reused": sum(len(m) for m in manifests.values()) - len(todo),
    }
    top = top_manifest(out, opts, result, seconds)
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


def _name_path(text: str) -> tuple[str, str]:
    name, paths = _name_paths(text)
    if len(paths) != 1:
        raise argparse.ArgumentTypeError(f"{name}=…: give exactly one TSV")
    return name, paths[0]


def _warn_file_rejections(out: Path, top: dict) -> None:
    """Whole files (or gzip tails) skipped under --on-invalid skip/x: named on stderr, not only counted."""
    for n, s in top["sources"].items():
        if not any(k in s["rejected"] for k in FILE_REASONS):
            continue
        examples = json.loads((out / n / MANIFEST).read_text()).get("rejected_examples", {})
        for key in FILE_REASONS:
            for ex in examples.get(key, []):
                print(f"warning: source {n!r}: skipped {ex}", file=sys.stderr)


def prepare_command(
    source: Annotated[tuple[tuple[str, list[str]], ...], Flag(type=_name_paths, metavar="NAME=PATH[,PATH…]")],
    out: str,
    clusters: Annotated[tuple[tuple[str, str], ...], Flag(type=_name_path, metavar="NAME=TSV")] = (),
    val_fraction: float = VAL_FRACTION,
    on_invalid: OnInvalid = "error",
    workers: int | None = None,
    shard_size: Annotated[int, Flag(type=parse_size)] = SHARD_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    quiet: bool = False,
) -> int:
    """FASTA/FASTA.gz → memory-mapped token stores (train/val per source) with a manifest.

    Parallel, in bounded memory, and resumable: re-run the same command after an interruption.

    Args:
        source: a named source and its FASTA files (plain or .gz); repeat for several sources
        out: output directory (point ProteinDataModule sources at DIR/NAME)
        clusters: cluster membership 'representative<TAB>member' (MMseqs2 createtsv, UniRef) for a source:
            it is then sampled cluster first, member second
        val_fraction: share of each source held out, chosen by a hash of the sequence
        on_invalid: records breaking the policy: error (list them and stop), skip (count and drop), x (unknown
            letters → X); skip and x also count an empty file or the unreadable tail of a damaged .gz instead
            of stopping (a source left with no record is always an error)
        workers: parallel worker processes (default: all cores)
        shard_size: bytes of plain FASTA per shard, the unit of parallelism and of resume (default 64M)
        max_length: longer records are rejected as broken
        quiet: no progress bar
    """
    sources: dict[str, list[str]] = {}
    for name, ps in source:
        sources.setdefault(name, []).extend(ps)
    try:
        keep_freed_memory()
        top = prepare(
            sources,
            out,
            dict(clusters),
            val_fraction,
            on_invalid,
            workers,
            shard_size,
            max_length,
            progress=not quiet,
        )
    except (FastaError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"error: no space left on the device while writing under {out} ({err}). Finished shards and "
            "sources are kept and nothing partial is published; free space and re-run the same command to "
            "resume.",
            file=sys.stderr,
        )
        return 2
    for n, s in top["sources"].items():
        rej = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "none"
        print(
            f"{n}: train {s['train']['records']:,} records / {s['train']['residues']:,} residues, "
            f"val {s['val']['records']:,} / {s['val']['residues']:,}; rejected: {rej}"
        )
    _warn_file_rejections(Path(out), top)
    print(f"wrote {Path(out) / MANIFEST}")
    return 0


main = command(prepare_command, "plm data prepare")
