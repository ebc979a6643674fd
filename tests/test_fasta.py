"""The one FASTA policy: the line reader and prepare's vectorised block reader give the same records and
the same rejections on awkward inputs; the gzip rule, damaged gzip and empty files."""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest

from plm.data.fasta import (
    DamagedGzip,
    FastaError,
    FastaStats,
    open_binary,
    read_fasta,
    read_fasta_blocks,
    read_text_records,
)
from plm.tokenizer import encode_residues
from tests.helpers.fasta import reader_outcome, write_bytes

# awkward inputs; every one is read plain and gzip-compressed, whole and in tiny blocks
CORPUS: dict[str, bytes] = {
    "crlf": b">a first\r\nMKTAY\r\nIAK\r\n>b\r\nLLGVV\r\n",
    "blank_lines": b"\n\n  \n>a\n\nMKV\n\n\n>b desc\n\nLL\n\n",
    "lowercase": b">a\nmktayiak\n>b\nMkTa\n",
    "stop": b">a\nMKV*\n>b\nMKV*  \n>c\nMK*V\n>d\n**\n>e\n*\n",
    "empty_records": b">a\n>b\n\n>c\nMK\n>d",
    "header_only": b">only a header",
    "headers_odd": b">  spaced id  and desc\nMK\n>tab\tid\nLL\n>vt\x0bid\nAA\n>a>b x\nCC\n",
    "alphabet": b">a\nMKJ\n>b\nMK1V\n>c\nMK-.XBZUO\n>d\nM\x0bK\n>e\nMK>V\n",
    "non_ascii": b">a\nMK\xc3\x84V\n>b\nMK\xc3\x84 J\n>c \xc3\xa9t\xc3\xa9\nMK\n",
    "long_lines": b">a\n" + b"ACDEFGHIKL" * 5_000 + b"\n>b\n" + b"M" * 100_001 + b"\n>c\nMK\n",
    "wrapped": b"".join(
        b">r%d d\n" % i + b"MKTAYIAKQR"[: 3 + i % 8] * (1 + i % 5) + b"\n" for i in range(300)
    ),
    "no_final_newline": b">a\nMK\n>b\nLL",
    "structure_junk": b"MKV\n>a\nMK\n",
    "structure_blank_header": b">a\nMKJ\n>\nMK\n>c\nLL\n",
    "structure_indented_header": b"\n >a\nMK\n",
    "empty_file": b"",
    "blank_file": b" \n\r\n\t\n",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_block_reader_is_pinned_to_the_line_reader(tmp_path, name, gz):
    path = write_bytes(tmp_path / "in.fasta", CORPUS[name], gz)
    for mode, max_length, block in itertools.product(("error", "skip", "x"), (60, 100_000), (16, 1 << 20)):
        want = reader_outcome(read_fasta, path, mode, max_length)
        assert reader_outcome(read_fasta_blocks, path, mode, max_length, block=block) == want, (
            mode,
            max_length,
            block,
        )


def test_corpus_verdicts(tmp_path):
    """The shared verdicts themselves (the pin above would pass if both readers were wrong alike)."""

    def skip(name: str) -> tuple:
        return reader_outcome(
            read_fasta, write_bytes(tmp_path / f"{name}.fa", CORPUS[name], False), "skip", 100_000
        )

    recs, rejected = skip("crlf")[:2]
    assert [(r[0], r[1]) for r in recs] == [("a", "first"), ("b", "")] and not rejected
    assert recs[0][2] == encode_residues("MKTAYIAK").tolist()
    recs, rejected = skip("stop")[:2]  # one trailing '*' after whitespace is dropped; others are letters
    assert [r[0] for r in recs] == ["a", "b"]
    assert rejected == {"character outside the alphabet": 2, "empty sequence": 1}
    recs, rejected, examples = skip("alphabet")[:3]
    assert [r[0] for r in recs] == ["c"] and rejected == {"character outside the alphabet": 4}
    assert examples["character outside the alphabet"][0].endswith(
        "record 'a' at byte 0: character outside the alphabet ('J' at position 3)"
    )
    assert skip("non_ascii")[1] == {"non-ASCII bytes in sequence": 2}
    assert [r[0] for r in skip("headers_odd")[0]] == ["spaced", "tab", "vt", "a>b"]
    recs, rejected = skip("long_lines")[:2]
    assert [len(r[2]) for r in recs] == [50_000, 2] and rejected == {"longer than max_length=100000": 1}
    assert skip("empty_records")[1] == {"empty sequence": 3}
    for name in ("empty_file", "blank_file"):
        assert skip(name)[:2] == ([], {"empty file": 1})
    with pytest.raises(FastaError, match=r"empty\.fa: empty file .*no FASTA records"):
        list(read_fasta(write_bytes(tmp_path / "empty.fa", b"", False)))


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("structure_junk", r"byte 0: sequence data before the first '>' header \(b'MKV'\)"),
        ("structure_blank_header", r"byte 7: header '>' has no identifier"),
        ("structure_indented_header", r"byte 2: sequence data before the first '>' header \(b'>a'\)"),
    ],
)
def test_structural_errors_cannot_be_skipped(tmp_path, name, pattern):
    path = write_bytes(tmp_path / "in.fasta", CORPUS[name], False)
    for reader, mode in itertools.product((read_fasta, read_fasta_blocks), ("skip", "x")):
        with pytest.raises(FastaError, match=pattern):
            list(reader(path, mode))


def test_gzip_is_decided_by_magic_bytes_not_the_name(tmp_path):
    text = b">a\nMKV\n>b\nLL\n"
    plain_gz = write_bytes(tmp_path / "plain.fasta.gz", text, False)
    packed = write_bytes(tmp_path / "packed.fasta", text, True)
    members = tmp_path / "members.fa"  # bgzip / cat a.gz b.gz, with zero padding
    members.write_bytes(gzip.compress(text[:7]) + gzip.compress(text[7:]) + bytes(5))
    for path in (plain_gz, packed, members):
        for reader in (read_fasta, read_fasta_blocks):
            assert [r.id for r in reader(path)] == ["a", "b"], (path.name, reader.__name__)
        with open_binary(path) as fh:
            assert fh.read() == text


GZ = gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"MKVLAAGIT" * 20) for i in range(2000)))
DAMAGED = {
    "truncated": GZ[: len(GZ) // 2],
    "no_trailer": GZ[:-4],
    "bit_flip": GZ[:200] + bytes([GZ[200] ^ 0xFF]) + GZ[201:],
    "header_only": GZ[:10],
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_gzip_is_an_error_naming_the_file_or_a_counted_tail(tmp_path, name):
    path = tmp_path / "broken.fasta.gz"
    path.write_bytes(DAMAGED[name])
    for reader in (read_fasta, read_fasta_blocks):
        with pytest.raises(
            FastaError,
            match=r"broken\.fasta\.gz: unreadable gzip tail .*truncated or corrupt gzip "
            r"stream after [\d,]+ uncompressed bytes.*on_invalid=skip",
        ):
            list(reader(path))
    stats = FastaStats()
    records = list(read_fasta(path, "skip", stats=stats))
    assert (
        stats.rejected == {"unreadable gzip tail": 1}
        and "broken.fasta.gz" in stats.examples["unreadable gzip tail"][0]
    )
    assert [r.id for r in records] == [
        f"r{i}" for i in range(len(records))
    ]  # a prefix, none after the damage
    assert all(len(r.tokens) == 180 for r in records)  # the record the damage cut is not among them
    if name == "no_trailer":
        assert len(records) == 1999  # everything decodes; only the last record is unconfirmed
    with (
        pytest.raises(DamagedGzip, match=r"broken\.fasta\.gz: truncated or corrupt gzip"),
        open_binary(path) as fh,
    ):
        fh.read()  # other readers (CSV, cluster TSV) get the same named error, not EOFError


def test_text_records_share_the_structure_rules(tmp_path):
    path = write_bytes(tmp_path / "lab.fasta", b">p1 SET=train\nHH EC\n\n>p2\nCC\r\n", True)
    recs = list(read_text_records(path))
    assert [(r.id, r.header, r.lines) for r in recs] == [
        ("p1", "p1 SET=train", ["HH EC"]),
        ("p2", "p2", ["CC"]),
    ]
    with pytest.raises(FastaError, match=r"junk\.fasta: byte 0: sequence data before"):
        list(read_text_records(write_bytes(tmp_path / "junk.fasta", b"HHEC\n>p1\nHH\n", False)))
    assert np.array_equal(next(read_fasta(path, "x")).tokens, encode_residues("HHEC"))
