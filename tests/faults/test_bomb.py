"""Issue 23 item 1: a compressed bomb (one record of hundreds of MiB on one line) is read in linear time
and bounded memory by every FASTA reader, and refused as too long as soon as it passes the byte cap."""

from __future__ import annotations

import gzip
import itertools
import time
import tracemalloc
from pathlib import Path

import pytest

from plm.data.fasta import FastaStats, read_chunks, read_fasta, read_fasta_blocks
from plm.data.fasta.policy import record_byte_cap, too_long
from tests.helpers.fasta import reader_outcome, write_bytes

pytestmark = pytest.mark.reliability

CAP_60 = record_byte_cap(60)
#: around the byte cap of max_length=60: exactly at it (kept), one byte past it with a bad letter (too long
#: wins: the reader never looked at the rest), then a normal record; under max_length=100000 all are short
AT_THE_CAP = (
    b">under\nMK"
    + b" " * (CAP_60 - 10)
    + b"\n"
    + b">over\nMK"
    + b" " * (CAP_60 - 9)
    + b"J\n"
    + b">after\nMKV\n"
)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_both_readers_apply_the_byte_cap_alike(tmp_path, gz):
    path = write_bytes(tmp_path / "cap.fasta", AT_THE_CAP, gz)
    for mode, max_length, block in itertools.product(
        ("error", "skip", "x"), (60, 100_000), (16, 4096, 1 << 20)
    ):
        want = reader_outcome(read_fasta, path, mode, max_length)
        assert reader_outcome(read_fasta_blocks, path, mode, max_length, block=block) == want, (
            mode,
            max_length,
            block,
        )
    records, rejected, *_ = reader_outcome(read_fasta, path, "skip", 60)
    assert [r[0] for r in records] == ["under", "after"] and rejected == {too_long(60): 1}


def _bomb(path: Path, mib: int) -> Path:
    """One header, ``mib`` MiB of residues on one line, then a normal record: ≈ 1 KB per MiB compressed."""
    line = b"ACDEFGHIKLMNPQRSTVWY" * (1 << 16)  # 1.25 MiB, compressible
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(b">bomb\n")
        for _ in range(-(-mib * 4 // 5)):  # at least mib MiB
            fh.write(line)
        fh.write(b"\n>ok\nMKV\n")
    return path


def _measure(read, path: Path) -> tuple[list, FastaStats, float, int]:
    stats = FastaStats()
    tracemalloc.start()
    t0 = time.perf_counter()
    records = list(read(path, on_invalid="skip", stats=stats))
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return records, stats, elapsed, peak


@pytest.mark.parametrize("read", [read_fasta, read_fasta_blocks], ids=["line reader", "block reader"])
def test_a_compressed_bomb_is_read_in_linear_time_and_bounded_memory(tmp_path, read):
    path = _bomb(tmp_path / "bomb.fasta.gz", 256)
    t0 = time.perf_counter()
    decoded = sum(len(c) for c in read_chunks(path))  # the unavoidable cost: decompressing it once
    baseline = time.perf_counter() - t0
    records, stats, elapsed, peak = _measure(read, path)
    assert decoded > 256 << 20 and path.stat().st_size < 2 << 20
    assert [r.id for r in records] == ["ok"] and dict(stats.rejected) == {too_long(100_000): 1}
    # quadratic reading took minutes here (and GBs): allow generous noise around the decoding time
    assert elapsed < 6 * baseline + 3, f"{elapsed:.1f} s to read, {baseline:.1f} s to decompress"
    assert peak < 32 << 20, (
        f"peak {peak / 2**20:.0f} MiB traced while reading a {decoded / 2**20:.0f} MiB record"
    )


def test_prepare_refuses_the_bomb_with_bounded_memory(tmp_path, capsys):
    import plm.data.prepare as prep

    path = _bomb(tmp_path / "bomb.fasta.gz", 128)
    tracemalloc.start()
    code = prep.main(
        [
            "--source",
            f"b={path}",
            "--out",
            str(tmp_path / "out"),
            "--on-invalid",
            "skip",
            "--quiet",
            "--workers",
            "1",
        ]
    )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB traced"
    assert "longer than max_length" in (tmp_path / "out" / "b" / "manifest.json").read_text()
