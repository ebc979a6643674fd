"""Multi-label task kinds: FLIP-bind-style per-residue labels through a label_map, DeepFRI-style EC annotations,
their metrics (per-label AUPRC, Fmax), and the bundled bind / ec tasks through plm evaluate and plm finetune."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from plm.cli import main as plm_main
from plm.evaluation.kinds import fmax, multilabel_metrics
from plm.evaluation.multilabel import read_annotations, read_id_annotations, read_residue_multilabel
from plm.evaluation.tasks import load_task
from plm.model.io import save_pretrained
from tests.conftest import tiny_model

BITS = {
    "0": [],
    "1": ["metal"],
    "2": ["nucleic"],
    "3": ["nucleic", "metal"],
    "4": ["small"],
    "5": ["small", "metal"],
    "6": ["small", "nucleic"],
    "7": ["small", "nucleic", "metal"],
}
CLASSES = ["small", "nucleic", "metal"]


def test_flip_bind_digits_become_label_rows(tmp_path):
    (tmp_path / "s.fasta").write_text(">a\nMKVLA\n>b\nGGW\n")
    (tmp_path / "l.fasta").write_text(
        ">a SET=train VALIDATION=True\n01457\n>b SET=test VALIDATION=False\n000\n"
    )
    (tmp_path / "m.fasta").write_text(">a\n11110\n>b\n111\n")
    recs = read_residue_multilabel(
        tmp_path / "s.fasta",
        tmp_path / "l.fasta",
        CLASSES,
        BITS,
        tmp_path / "m.fasta",
        validation_field="VALIDATION",
    )
    a, b = recs
    assert a.labels[:4].tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]
    assert (a.labels[4] == -100).all() and a.validation and a.split == "train" and not b.validation
    assert b.labels.shape == (3, 3) and b.labels.sum() == 0


def test_bad_multilabel_records_are_reported_together(tmp_path):
    (tmp_path / "s.fasta").write_text(">a\nMKV\n>b\nGG\n")
    (tmp_path / "l.fasta").write_text(">a SET=train\n09Z\n>b SET=train\n0\n>c SET=test\n00\n")
    with pytest.raises(
        ValueError,
        match=r"l\.fasta: 3 bad label records: record 'a': label character\(s\) "
        r"\['9', 'Z'\] not in the task's label_map.*record 'b': 1 labels for a "
        r"2-residue sequence.*record 'c' has labels but no sequence",
    ):
        read_residue_multilabel(tmp_path / "s.fasta", tmp_path / "l.fasta", CLASSES, BITS)


def _deepfri(tmp_path, rows: str, train: str = "A-1\nB-1\n", test: str = "C-1\n"):
    (tmp_path / "annot.tsv").write_text(
        "### EC-numbers\n1.1.1.1\t1.1.1.-\t2.7.1.-\n### PDB-chain\tEC-numbers\n" + rows
    )
    (tmp_path / "seqs.fasta").write_text(">A-1 nrPDB\nMKV\n>B-1\nGGA\n>C-1\nWWY\n")
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "test.txt").write_text(test)
    (tmp_path / "valid.txt").write_text("")
    return [tmp_path / n for n in ("seqs.fasta", "annot.tsv", "train.txt", "test.txt")]


def test_deepfri_annotations_use_the_header_vocabulary(tmp_path):
    files = _deepfri(tmp_path, "A-1\t1.1.1.1,1.1.1.-\nB-1\t2.7.1.-\nC-1\t1.1.1.-\n")
    ann, vocab = read_annotations(files[1])
    assert vocab == ["1.1.1.1", "1.1.1.-", "2.7.1.-"] and ann["A-1"] == ["1.1.1.1", "1.1.1.-"]
    recs = read_id_annotations(*files)
    assert recs.classes == vocab and [r.split for r in recs] == ["train", "train", "test"]
    assert recs[0].labels.tolist() == [1, 1, 0] and recs[2].labels.tolist() == [0, 1, 0]
    (tmp_path / "valid.txt").write_text("B-1\n")
    text = _error(read_id_annotations, *files, valid=tmp_path / "valid.txt")
    assert "id 'B-1' is listed in both" in text


def _error(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except ValueError as err:
        return str(err)
    raise AssertionError("no error")


def test_deepfri_ids_without_sequence_and_unknown_labels_fail_naming_them(tmp_path):
    files = _deepfri(
        tmp_path, "A-1\t1.1.1.1\nB-1\t9.9.9.9\nC-1\t1.1.1.-\nZ-9\t1.1.1.1\n", train="A-1\nB-1\nZ-9\n"
    )
    text = _error(read_id_annotations, *files)
    assert "annot.tsv: 2 ids that do not match" in text
    assert "id 'B-1': label(s) ['9.9.9.9'] not in the declared classes" in text
    assert "id 'Z-9' of train.txt: no sequence in" in text


def test_fmax_and_auprc_on_hand_made_scores():
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    perfect = y.float() * 0.9 + 0.05
    m = multilabel_metrics(perfect, y, ["a", "b", "c"])
    assert m["fmax"] == pytest.approx(1.0) and m["auprc_macro"] == pytest.approx(1.0)
    assert np.isnan(m["auprc_c"]) and m["auprc_micro"] == pytest.approx(1.0)
    # one row predicts everything at 0.6, others nothing: at t <= 0.6 precision 2/3 (only row 2 is covered,
    # 2 of its 3 predictions true), recall (1/1·0 + 0 + 2/2)/3 = 1/3 over the rows with a true label
    scores = torch.zeros(4, 3)
    scores[2] = 0.6
    assert fmax(scores, y) == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))


def test_task_yaml_checks_label_map_and_metric(tmp_path):
    def task(body: str) -> str:
        (tmp_path / "t.yaml").write_text(body)
        return _error(load_task, tmp_path / "t.yaml")

    base = "kind: residue_multilabel\ndata: {sequences: s.fasta, labels: l.fasta}\nclasses: [a, b]\n"
    assert "needs 'label_map'" in task(base)
    assert "label_map: '1' names ['z'], not in classes" in task(base + "label_map: {'0': [], '1': [z]}\n")
    assert "key 'ab' must be one label character" in task(base + "label_map: {ab: [a]}\n")
    assert "metric 'accuracy' is not computed for kind residue_multilabel" in task(
        base + "label_map: {'0': [], '1': [a]}\nmetric: accuracy\n"
    )
    assert "'label_map' applies to kind residue_multilabel, not sequence_regression" in task(
        "kind: sequence_regression\ndata: {table: t.csv}\nlabel_map: {'0': []}\nsplit: {train: train, test: test}\n"
    )
    assert load_task("bind").label_map["5"] == ["small_molecule", "metal"] and load_task("ec").classes == []


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("ml") / "tiny"
    save_pretrained(tiny_model("esm2", n_layer=1, n_embd=16, n_head=2), path, objective="mlm")
    return path


def test_plm_evaluate_scores_bundled_bind_and_ec(tiny_export, tmp_path):
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_export),
                "--tasks",
                "bind,ec",
                "--small",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = {(r["task"], r["metric"]): r for r in csv.DictReader(fh)}
    for metric in (
        "auprc_macro",
        "auprc_micro",
        "fmax",
        "auprc_small_molecule",
        "auprc_nucleic_acid",
        "auprc_metal",
    ):
        assert 0.0 <= float(rows[("bind", metric)]["value"]) <= 1.0, metric
    assert 0.0 < float(rows[("ec", "fmax")]["value"]) <= 1.0 and rows[("ec", "fmax")]["n"] == "50"
    assert ("ec", "auprc_2.7.11.1") not in rows  # 62 labels: aggregates only


@pytest.mark.slow
def test_plm_finetune_ec_reads_its_vocabulary_and_predicts_labels(tiny_export, tmp_path):
    assert (
        plm_main(
            [
                "finetune",
                "--config",
                "configs/finetune/ec_frozen.yaml",
                "--model.init_args.backbone",
                str(tiny_export),
                "--data.small",
                "true",
                "--run_root",
                str(tmp_path),
                "--trainer.max_steps",
                "12",
                "--trainer.enable_progress_bar",
                "false",
                "--loggers",
                "[csv]",
            ]
        )
        == 0
    )
    final = tmp_path / "ec_frozen" / "final"
    import plm

    kept = plm.load_finetuned(str(final))
    assert len(kept.classes) == 62 and kept.kind == "sequence_multilabel"
    (tmp_path / "q.fasta").write_text(">q\nMKVLAAGIWWKE\n")
    assert (
        plm_main(
            [
                "predict",
                "--checkpoint",
                str(final),
                "--in",
                str(tmp_path / "q.fasta"),
                "--out",
                str(tmp_path / "q.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(tmp_path / "q.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    probs = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
    assert len(probs) == 62 and row["prediction"] == ";".join(c for c in kept.classes if probs[c] >= 0.5)
