"""Evaluation suite: contact metric on hand-made maps, readers, task YAML errors, zero-shot scoring."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from plm.evaluation import datasets as ds
from plm.evaluation.heads import apc, attention_features
from plm.evaluation.metrics import (
    classification_metrics,
    contact_metrics,
    contact_precision,
    regression_metrics,
)
from plm.evaluation.tasks import SMALL_DATA_ROOT, load_task
from plm.evaluation.zero_shot import Mutation, parse_mutations, score_variants
from plm.tokenizer import encode
from tests.conftest import tiny_model


# ---- contact precision on hand-made maps --------------------------------------------------------------
def _diag_contacts(length: int, sep: int, n: int) -> np.ndarray:
    c = np.zeros((length, length), dtype=np.int8)
    for i in range(n):
        c[i, i + sep] = c[i + sep, i] = 1
    return c


def test_contact_precision_perfect_and_fractions():
    c = _diag_contacts(30, 24, 6)  # 6 long-range contacts, L/5 = 6
    scores = c.astype(np.float32)
    assert contact_precision(scores, c, 24, None, 5) == 1.0
    assert contact_precision(scores, c, 24, None, 2) == pytest.approx(6 / 15)  # top 15: 6 true, 9 false
    # L = 30 but only 21 pairs have |i-j| >= 24: precision is over the pairs that exist
    assert contact_precision(scores, c, 24, None, 1) == pytest.approx(6 / 21)


def test_contact_precision_one_false_positive_on_top():
    c = _diag_contacts(40, 24, 8)  # L/5 = 8
    scores = c.astype(np.float32)
    scores[0, 39] = scores[39, 0] = 5.0  # a non-contact ranked first
    assert contact_precision(scores, c, 24, None, 5) == pytest.approx(7 / 8)


def test_contact_ranges_and_unknowns():
    c = np.zeros((30, 30), dtype=np.int8)
    c[0, 5] = c[5, 0] = 1  # separation 5: never scored
    c[0, 8] = c[8, 0] = 1  # short range
    c[0, 15] = c[15, 0] = 1  # medium range
    scores = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    scores[0, 8] = scores[0, 15] = 10.0
    assert contact_precision(scores, c, 6, 11, 30) == 1.0  # top-1 short pair is (0, 8)
    assert contact_precision(scores, c, 12, 23, 30) == 1.0
    assert contact_precision(scores, c, 24, None, 30) == 0.0
    c[
        0, 8
    ] = -1  # unknown truth: excluded before ranking, so the next-best short pair (not a contact) is picked
    assert contact_precision(scores, c, 6, 11, 30) == 0.0
    assert np.isnan(contact_precision(np.zeros((10, 10)), np.zeros((10, 10)), 24, None, 5))  # no long pair
    m = contact_metrics([scores], [c])
    assert set(m) == {f"P@{f}_{r}" for f in ("L", "L/2", "L/5") for r in ("short", "medium", "long")}
    with pytest.raises(ValueError, match="must be equal"):
        contact_precision(np.zeros((4, 4)), np.zeros((5, 5)))


def test_apc_removes_rank_one_background_and_features_are_symmetric():
    a, b = torch.rand(7), torch.rand(7)
    assert torch.allclose(apc(torch.outer(a, b)), torch.zeros(7, 7), atol=1e-6)
    maps = [torch.rand(1, 3, 9, 9).softmax(-1) for _ in range(2)]
    f = attention_features(maps, 7)  # drops <cls> and <eos>
    assert f.shape == (7, 7, 6)
    assert torch.allclose(f, f.transpose(0, 1), atol=1e-6)


def test_standard_metrics_known_values():
    r = regression_metrics(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0]))
    assert r["spearman"] == pytest.approx(1.0)
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1, 0]), 2)
    assert (
        m["accuracy"] == pytest.approx(0.75) and 0 < m["macro_f1"] < 1 and m["auroc"] == pytest.approx(0.75)
    )


# ---- readers ----------------------------------------------------------------------------------------
def test_biotite_reader_matches_prepared_map_with_virtual_cb():
    raw = SMALL_DATA_ROOT / "structures_raw"
    rec = ds.read_structure(raw / "dfri_1S3P-A.pdb.gz")
    ref = ds.read_structure(raw / "dfri_1S3P-A_A.npz")
    assert rec.sequence == ref.sequence and "G" in rec.sequence
    assert np.abs(rec.cb - ref.cb).max() < 0.02  # Gly rows use the virtual Cβ in both
    c = rec.contacts()
    assert (c == c.T).all() and c.diagonal().all()
    with pytest.raises(ValueError, match="no chain 'Z'"):
        ds.read_structure(raw / "dfri_1S3P-A.pdb.gz", chain="Z")


def test_small_subsets_load_through_their_yaml():
    spec = load_task("ss3")
    files = spec.files(small=True)
    recs = ds.read_residue_fasta(files["sequences"], files["labels"], spec.classes, files["mask"])
    assert {r.split for r in recs} == {"train", "test"}
    assert all(len(r.labels) == len(r.sequence) for r in recs)
    assert any((r.labels == ds.IGNORE).any() for r in recs)  # the resolved-residue mask is applied
    gb1 = ds.read_sequence_csv(load_task("gb1").files(small=True)["table"])
    assert len(gb1) == 250 and all(len(r.sequence) == 265 for r in gb1)


# ---- task YAML errors -------------------------------------------------------------------------------
def _write_fasta(path: Path, records: dict[str, str], desc: str = "") -> None:
    with gzip.open(path, "wt") as fh:
        for rid, s in records.items():
            fh.write(f">{rid} {desc}\n{s}\n")


def _yaml(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "mytask.yaml"
    p.write_text(body)
    return p


def test_yaml_wrong_path_names_file_and_role(tmp_path):
    p = _yaml(tmp_path, "kind: sequence_regression\ndata: {table: nowhere/gb1.csv}\n")
    spec = load_task(p)
    with pytest.raises(
        FileNotFoundError, match=r"mytask\.yaml: data file\(s\) not found: table: .*nowhere/gb1\.csv"
    ):
        spec.files(tmp_path)


def test_yaml_wrong_column_names_file_and_column(tmp_path):
    (tmp_path / "t.csv").write_text("sequence,fitness,set\nMKV,1.0,train\n")
    p = _yaml(tmp_path, "kind: sequence_regression\ndata: {table: t.csv}\ncolumns: {target: target}\n")
    spec = load_task(p)
    files = spec.files(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"t\.csv: missing column\(s\) \['target'\]; the file has \['sequence', 'fitness', 'set'\]",
    ):
        ds.read_sequence_csv(files["table"], target_column=spec.columns["target"])


def test_label_sequence_length_mismatch_names_records(tmp_path):
    _write_fasta(tmp_path / "seq.fasta.gz", {"p1": "MKVL", "p2": "MKV", "p3": "MK"})
    _write_fasta(tmp_path / "lab.fasta.gz", {"p1": "HHEC", "p2": "HH", "p3": "CC"}, "SET=train")
    with pytest.raises(
        ValueError,
        match=r"lab\.fasta\.gz: 1 bad label records: record 'p2': 2 labels for a 3-residue sequence",
    ):
        ds.read_residue_fasta(tmp_path / "seq.fasta.gz", tmp_path / "lab.fasta.gz", ["H", "E", "C"])
    _write_fasta(tmp_path / "lab.fasta.gz", {"p1": "HHXC", "p9": "HHE"}, "SET=train")
    with pytest.raises(
        ValueError,
        match=r"2 bad label records: record 'p1': labels \['X'\].*record 'p9' has labels but no sequence",
    ):
        ds.read_residue_fasta(tmp_path / "seq.fasta.gz", tmp_path / "lab.fasta.gz", ["H", "E", "C"])


def test_yaml_schema_problems_reported_together(tmp_path):
    p = _yaml(
        tmp_path, "kind: residue_classification\nformat: residue_fasta\ndata: {sequences: a}\ncolour: red\n"
    )
    with pytest.raises(
        ValueError,
        match=r"mytask\.yaml: invalid task definition: unknown key\(s\) \['colour'\].*"
        r"data: missing \['labels'\].*needs 'classes'",
    ):
        load_task(p)
    with pytest.raises(FileNotFoundError, match="task 'nope'.*known tasks: .*ss3"):
        load_task("nope")


# ---- zero-shot --------------------------------------------------------------------------------------
WT = "MKTAYIAKQR"


def test_parse_mutations_single_multi_and_offset():
    assert parse_mutations("A4G", WT) == [Mutation(3, "A", "G")]
    assert parse_mutations("A4G:K8R", WT) == [Mutation(3, "A", "G"), Mutation(7, "K", "R")]
    assert parse_mutations("A104G", WT, offset=101) == [Mutation(3, "A", "G")]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("G4A", r"wild type has 'A' at 4, not 'G'"),
        ("A40G", r"position 40 outside the wild type \(1\.\.10\)"),
        ("A4", r"is not <wt><position><mut>"),
        ("A4G:A4C", "mutated twice"),
        ("", "empty"),
    ],
)
def test_parse_mutations_bad_strings(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_mutations(bad, WT)


def test_parse_mutations_reports_every_problem():
    with pytest.raises(ValueError, match=r"'G4A'.*not 'G'.*'Q40R'.*outside"):
        parse_mutations("G4A:Q40R", WT)


@pytest.mark.parametrize("flavour, objective", [("esm2", "mlm"), ("progen2", "clm"), ("esm2", "clm")])
def test_zero_shot_sign_sanity(flavour, objective):
    """A model whose output bias strongly prefers alanine must score X→A gains and A→X losses."""
    model = tiny_model(flavour, **({"rotary_dim": 6} if flavour == "progen2" else {}))
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[encode("A", add_special=False)[0]] = 20.0
    to_a = parse_mutations("K2A", WT)
    from_a = parse_mutations("A4G", WT)
    double = parse_mutations("K2A:T3A", WT)
    s = score_variants(model, objective, WT, [to_a, from_a, double], progress=False)
    assert s[0] > 5 and s[1] < -5 and s[2] > s[0]
    if objective == "mlm":  # masked marginals are additive over sites by definition
        single_t3 = score_variants(model, objective, WT, [parse_mutations("T3A", WT)], progress=False)[0]
        assert s[2] == pytest.approx(s[0] + single_t3, rel=1e-5)
