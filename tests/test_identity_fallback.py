"""The approximate pure-Python identity fallback and the input readers, without the mmseqs binary."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from plm.data.cli import main as data_main
from plm.data.store import TokenStore
from plm.identity import fallback
from plm.identity.cluster import cluster
from plm.identity.decontaminate import EXCLUDE_FILE, decontaminate, read_exclusions
from plm.identity.mmseqs import ENV_VAR, MMseqsNotFoundError, find_mmseqs, require_mmseqs
from plm.identity.pairwise import identity
from plm.identity.search import Fallback, exact_hits, resolve_backend
from plm.identity.seqio import SeqRecord, read_sequences, read_train, store_splits, tokens_to_str
from plm.identity.split import bin_names, parse_bins, split_by_identity
from plm.tokenizer import encode_residues
from tests.helpers.sequences import mutate


def test_fallback_reports_the_one_identity_on_substrings_and_mutants(proteins):
    a, b = proteins[0].seq, proteins[1].seq
    queries = [
        SeqRecord("same", a),
        SeqRecord("part", a[20:90]),
        SeqRecord("m95", mutate(a, 0.95)),
        SeqRecord("m80", mutate(a, 0.8)),
    ]
    hits = fallback.best_hits(queries, [SeqRecord("a", a)])
    assert hits[0].identity == 1.0 and hits[1].identity == 1.0  # contained: every residue aligns identically
    assert hits[2].identity == pytest.approx(0.95, abs=0.01) and hits[3].identity == pytest.approx(
        0.8, abs=0.01
    )
    assert all(hits[i].identity == identity(q.seq, a) for i, q in enumerate(queries))
    assert (
        fallback.best_hits([SeqRecord("b", b)], [SeqRecord("a", a)])[0].identity < 0.5
    )  # unrelated proteins


def test_best_hits_and_greedy_clusters(proteins):
    targets = proteins[:10]
    queries = [
        SeqRecord("same", targets[3].seq),
        SeqRecord("close", mutate(targets[5].seq, 0.9, 1)),
        SeqRecord("far", proteins[20].seq),
    ]
    hits = fallback.best_hits(queries, targets)
    assert hits[0] == fallback.Best(1.0, 3)
    assert hits[1].target == 5 and hits[1].identity > 0.8
    assert 2 not in hits or hits[2].identity < 0.5
    recs = [proteins[0], SeqRecord("m1", mutate(proteins[0].seq, 0.95, 2)), proteins[1]]
    rows = fallback.greedy_clusters(recs, 0.9)
    assert sorted(rows) == sorted(
        [(proteins[0].id, proteins[0].id), (proteins[0].id, "m1"), (proteins[1].id, proteins[1].id)]
    )


def test_fallback_refuses_large_inputs(monkeypatch):
    monkeypatch.setattr(fallback, "MAX_PAIRS", 10)
    with pytest.raises(ValueError, match="too many for the approximate.*apt-get install mmseqs2"):
        fallback.best_hits([SeqRecord("a", "ACDE")] * 4, [SeqRecord("b", "ACDE")] * 4)


def test_exact_hits_found_whatever_the_length():
    hits = exact_hits([SeqRecord("q0", "MK"), SeqRecord("q1", "MKV")], [SeqRecord("t", "MKV")])
    assert hits == {1: fallback.Best(1.0, 0)}


def test_missing_mmseqs_names_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_mmseqs() is None
    with pytest.raises(MMseqsNotFoundError, match=r"no `mmseqs` on PATH.*apt-get install mmseqs2"):
        require_mmseqs()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(MMseqsNotFoundError, match=rf"nope.*from {ENV_VAR}.*apt-get install mmseqs2"):
        require_mmseqs()
    fake = tmp_path / "mmseqs-custom"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(ENV_VAR, str(fake))
    assert find_mmseqs() == fake
    monkeypatch.delenv(ENV_VAR)
    assert isinstance(resolve_backend("auto"), Fallback)  # no binary anywhere: approximate, with a warning
    assert "APPROXIMATE" in capsys.readouterr().err
    with pytest.raises(MMseqsNotFoundError, match="apt-get install mmseqs2"):
        resolve_backend("mmseqs")


def test_read_sequences_formats(tmp_path):
    tm = tmp_path / "cv.fasta.gz"
    with gzip.open(tm, "wt") as fh:  # TMbed: sequence line then a label line of equal length
        fh.write(">P1|EUKARYA|NO_SP|1\nMKVLAAG\n1112HHH\n>P2|x\nMKV\nLLA\n")
    assert read_sequences(tm) == [SeqRecord("P1|EUKARYA|NO_SP|1", "MKVLAAG"), SeqRecord("P2|x", "MKVLLA")]
    csv_path = tmp_path / "gb1.csv"
    csv_path.write_text("sequence,target\nmkvl,1.0\nAAGG,2.0\n")
    assert [r.seq for r in read_sequences(csv_path)] == ["MKVL", "AAGG"]
    bad = tmp_path / "labels.fasta"
    bad.write_text(">a SET=train\n0012\n")
    with pytest.raises(ValueError, match=r"labels.fasta: record 'a' has non-residue.*label file"):
        read_sequences(bad)
    (tmp_path / "noseq.tsv").write_text("id\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match=r"noseq.tsv: no sequence column"):
        read_sequences(tmp_path / "noseq.tsv")
    with pytest.raises(FileNotFoundError, match="missing.fasta: sequence file not found"):
        read_sequences(tmp_path / "missing.fasta")


def _fasta(path, records):
    path.write_text("".join(f">{r.id} desc {r.id}\n{r.seq}\n" for r in records))
    return path


def test_decontaminate_fasta_with_fallback(tmp_path, proteins):
    evals = proteins[:3]
    train = proteins[10:30] + [
        SeqRecord("leak_exact", evals[0].seq),
        SeqRecord("leak_80", mutate(evals[1].seq, 0.8, 3)),
    ]
    _fasta(tmp_path / "train.fasta", train)
    _fasta(tmp_path / "eval.fasta", evals)
    s = decontaminate(tmp_path / "train.fasta", [tmp_path / "eval.fasta"], tmp_path / "out", Fallback(), 0.5)
    assert (s["records"], s["removed"], s["removed_exact"]) == (22, 2, 1)
    assert "approximate" in s["method"]
    kept = read_train(tmp_path / "out" / "train.decontaminated.fasta.gz")
    assert [r.id for r in kept] == [r.id for r in proteins[10:30]]
    assert kept[0].description == f"desc {proteins[10].id}"  # headers survive
    report = (tmp_path / "out" / "removed.tsv").read_text().splitlines()
    assert report[1].split("\t")[2:4] == ["leak_exact", f"{tmp_path.name}/eval.fasta:{evals[0].id}"]


def test_decontaminate_store_writes_and_merges_exclusions(tmp_path, proteins):
    evals = proteins[:2]
    train = [proteins[12], proteins[13], evals[0], proteins[14]]
    val = [evals[1], proteins[15]]
    for split, recs in (("train", train), ("val", val)):
        TokenStore.from_arrays(split, [encode_residues(r.seq) for r in recs]).save(tmp_path / "store" / split)
    _fasta(tmp_path / "eval.fasta", evals)
    assert set(store_splits(tmp_path / "store")) == {"train", "val"}
    s = decontaminate(
        tmp_path / "store", [tmp_path / "eval.fasta"], tmp_path / "out", Fallback(), 0.9, list_only=True
    )
    assert s["removed"] == 2 and not (tmp_path / "store" / "train" / EXCLUDE_FILE).exists()
    decontaminate(tmp_path / "store", [tmp_path / "eval.fasta"], tmp_path / "out", Fallback(), 0.9)
    assert read_exclusions(tmp_path / "store" / "train").tolist() == [2]
    assert read_exclusions(tmp_path / "store" / "val").tolist() == [0]
    np.save(
        tmp_path / "store" / "train" / EXCLUDE_FILE, np.array([0], dtype=np.int64)
    )  # an earlier run's list
    decontaminate(tmp_path / "store", [tmp_path / "eval.fasta"], tmp_path / "out", Fallback(), 0.9)
    excl = read_exclusions(tmp_path / "store" / "train")
    assert excl.tolist() == [0, 2] and excl.dtype == np.int64
    store = TokenStore.open(tmp_path / "store" / "train")
    assert tokens_to_str(store.get(2)) == evals[0].seq


def test_decontaminate_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--against: evaluation file.*missing.fasta"):
        decontaminate(tmp_path, [tmp_path / "missing.fasta"], tmp_path / "o", Fallback())
    with pytest.raises(ValueError, match="--min-identity 1.5"):
        decontaminate(tmp_path, [], tmp_path / "o", Fallback(), 1.5)
    (tmp_path / "e.fasta").write_text(">e\nMKV\n")
    with pytest.raises(FileNotFoundError, match="not a prepared store.*pass a FASTA"):
        decontaminate(tmp_path, [tmp_path / "e.fasta"], tmp_path / "o", Fallback())


def test_bins_parse_and_names():
    assert parse_bins("0.5,0.9") == [0.5, 0.9]
    assert bin_names([0.5, 0.9]) == ["lt0.5", "0.5-0.9", "ge0.9"]
    with pytest.raises(ValueError, match=r"1.2 is not in \(0, 1\); bounds must be strictly increasing"):
        parse_bins("0.9,0.5,1.2")


def test_split_by_identity_fallback(tmp_path, proteins):
    train = proteins[:10]
    source = [
        SeqRecord("seen", train[0].seq),
        SeqRecord("mid", mutate(train[1].seq, 0.7, 4)),
        SeqRecord("novel", proteins[30].seq),
    ]
    _fasta(tmp_path / "train.fasta", train)
    _fasta(tmp_path / "src.fasta", source)
    s = split_by_identity(
        tmp_path / "src.fasta", [tmp_path / "train.fasta"], [0.5, 0.9], tmp_path / "bins", Fallback()
    )
    assert {k: v["records"] for k, v in s["disjoint_bins"].items()} == {"lt0.5": 1, "0.5-0.9": 1, "ge0.9": 1}
    assert [r.id for r in read_sequences(tmp_path / "bins" / "lt0.9.fasta")] == ["mid", "novel"]
    assert [r.id for r in read_sequences(tmp_path / "bins" / "ge0.9.fasta")] == ["seen"]


def test_cluster_fallback_and_cli_dispatch(tmp_path, proteins, capsys, monkeypatch):
    recs = [proteins[0], SeqRecord("near", mutate(proteins[0].seq, 0.95, 5)), proteins[1]]
    _fasta(tmp_path / "in.fasta", recs)
    rc = data_main(
        [
            "cluster",
            "--in",
            str(tmp_path / "in.fasta"),
            "--out",
            str(tmp_path / "c.tsv"),
            "--min-identity",
            "0.9",
            "--backend",
            "fallback",
        ]
    )
    assert rc == 0 and "2 clusters" in capsys.readouterr().out
    rows = [line.split("\t") for line in (tmp_path / "c.tsv").read_text().splitlines()]
    assert [proteins[0].id, "near"] in rows and len(rows) == 3
    assert data_main(["bogus"]) == 2 and "unknown subcommand 'bogus'" in capsys.readouterr().err
    import sys
    import types

    fake = types.ModuleType("plm.data.prepare.command")
    fake.main = lambda argv: 7 if argv == ["--x"] else 1
    monkeypatch.setitem(sys.modules, "plm.data.prepare.command", fake)
    assert data_main(["prepare", "--x"]) == 7  # `plm data prepare` reaches plm.data.prepare.command:main


def test_cluster_rejects_bad_identity(tmp_path):
    with pytest.raises(ValueError, match="--min-identity 0.0"):
        cluster(tmp_path / "x.fasta", tmp_path / "c.tsv", Fallback(), 0.0)
