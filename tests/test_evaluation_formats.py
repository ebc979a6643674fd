"""Task formats beyond FLIP's: CB513 tables (Q8), TMbed annotated FASTA, DeepLoc headers, chain-fraction
splits, and the YAML checks that guard them. Small real subsets from evaluation/data plus hand-made bad files."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from plm.evaluation import datasets as ds
from plm.evaluation.runner import load_records, split_records
from plm.evaluation.tasks import TASK_DIR, load_task


def _records(task: str) -> list:
    spec = load_task(task)
    return load_records(spec, spec.files(small=True), 1022)


def _yaml(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "mytask.yaml"
    p.write_text(body)
    return p


# ---- the shipped subsets load through their YAML -------------------------------------------------------
def test_ss8_cb513_subset_applies_both_masks():
    recs = _records("ss8")
    assert len(recs) == 40 and all(len(r.labels) == len(r.sequence) for r in recs)
    scored = np.concatenate([r.labels[r.labels != ds.IGNORE] for r in recs])
    assert (
        set(scored.tolist()) <= set(range(8)) and len(set(scored.tolist())) >= 6
    )  # H E C T S G (B, I are rare)
    # a row with unresolved or outside-CB513 residues: exactly the residues where both masks are 1 are scored
    with gzip.open(load_task("ss8").files(small=True)["table"], "rt") as fh:
        header, *lines = [line.rstrip("\n").split("\t") for line in fh]
    rows = [dict(zip(header, line)) for line in lines]
    row = next(r for r in rows if "0" in r["disorder_mask"] and "0" in r["cb513_mask"])
    both = np.array([a == b == "1" for a, b in zip(row["disorder_mask"], row["cb513_mask"])])
    rec = next(r for r in recs if r.id == row["id"])
    assert ((rec.labels != ds.IGNORE) == both).all()
    assert rec.labels[both][0] == "HECTSGBI".index(row["dssp8"][int(np.argmax(both))])
    q3 = next(r for r in _records("ss3_cb513") if r.id == row["id"])
    assert ((q3.labels != ds.IGNORE) == both).all() and q3.labels.max() <= 2


def test_scl_subset_reads_class_from_header_and_skips_ignored():
    spec = load_task("scl")
    recs = _records("scl")
    assert Counter(r.split for r in recs) == {"train": 59, "test": 40}  # one Cytoplasm-Nucleus record skipped
    names = {r.id: spec.classes[int(r.target)] for r in recs}
    assert names["P01387"] == "Extracellular" and names["Q9BY27"] == "Nucleus"
    with gzip.open(spec.files(small=True)["train"], "rt") as fh:
        assert sum("Cytoplasm-Nucleus" in line for line in fh) == 1


def test_tmbed_subset_ignores_unresolved_and_excludes_blacklist():
    spec = load_task("tmbed")
    recs = _records("tmbed")
    ids = {r.id for r in recs}
    assert "2lck_A|P70406|UCP2_MOUSE" not in ids and "P34893|EUKARYA|NO_SP|2" not in ids  # in blacklist.txt
    assert Counter(r.split for r in recs) == {"train": 38, "test": 20}
    with gzip.open(spec.files(small=True)["test"], "rt") as fh:
        lines = [ln.strip() for ln in fh]
    header, seq, lab = lines[
        lines.index(">2wcd_A|P77335|HLYE_ECOLI") : lines.index(">2wcd_A|P77335|HLYE_ECOLI") + 3
    ]
    rec = next(r for r in recs if r.id == header[1:])
    assert len(rec.sequence) == len(seq) and (rec.labels == ds.IGNORE).sum() == lab.count("U") > 0
    assert (
        (rec.labels == spec.classes.index("H")).sum() + (rec.labels == spec.classes.index("h")).sum()
        == lab.count("H") + lab.count("h")
        > 0
    )


def test_conservation_subset_has_nine_classes():
    recs = _records("conservation")
    assert Counter(r.split for r in recs) == {"train": 60, "test": 30}
    assert set(np.concatenate([r.labels for r in recs]).tolist()) == set(range(9))


def test_train_fraction_split_is_seeded_disjoint_and_complete():
    spec = load_task("ss8")
    recs = _records("ss8")
    train, test = split_records(spec, recs, 10**6, 10**6, seed=0)
    assert (len(train), len(test)) == (32, 8)
    assert {r.id for r in train}.isdisjoint({r.id for r in test}) and len({r.id for r in train + test}) == 40
    again, _ = split_records(spec, recs, 10**6, 10**6, seed=0)
    other, _ = split_records(spec, recs, 10**6, 10**6, seed=1)
    assert [r.id for r in again] == [r.id for r in train] and {r.id for r in other} != {r.id for r in train}
    spec.split = {"train_fraction": 1.0}
    with pytest.raises(
        ValueError, match=r"ss8\.yaml: train_fraction 1\.0 of 40 records leaves 40 train and 0 test"
    ):
        split_records(spec, recs, 10**6, 10**6, seed=0)


# ---- bad files: errors name the file, the record and the fix ---------------------------------------------
TSV_HEADER = "id\tsequence\tdssp8\tmask\n"


def test_residue_table_wrong_column_names_file_and_columns(tmp_path):
    (tmp_path / "t.tsv").write_text(TSV_HEADER + "c1\tMKV\tHHE\t111\n")
    with pytest.raises(
        ValueError,
        match=r"t\.tsv: missing column\(s\) \['dssp3'\]; the file has \['id', 'sequence', 'dssp8', 'mask'\]",
    ):
        ds.read_residue_table(tmp_path / "t.tsv", ["H", "E", "C"], label_column="dssp3")


def test_residue_table_length_and_mask_mismatch_name_line_and_record(tmp_path):
    (tmp_path / "t.tsv").write_text(
        TSV_HEADER + "c1\tMKV\tHHE\t111\nc2\tMKVL\tHHE\t1111\nc3\tMKV\tHHQ\t111\nc4\tMKV\tHHE\t1x1\n"
    )
    with pytest.raises(
        ValueError,
        match=r"t\.tsv: 3 bad rows: line 3 \(record 'c2'\), column 'dssp8': 3 labels for a 4-residue "
        r"sequence; line 4 \(record 'c3'\), column 'dssp8': labels \['Q'\] not in classes.*"
        r"line 5 \(record 'c4'\): mask column 'mask' must be one 0/1 per residue",
    ):
        ds.read_residue_table(
            tmp_path / "t.tsv", ["H", "E", "C"], label_column="dssp8", mask_columns=["mask"]
        )


def test_residue_table_ignore_and_mask_values(tmp_path):
    (tmp_path / "t.tsv").write_text(TSV_HEADER + "c1\tMKVL\tHHEU\t1101\n")
    (rec,) = ds.read_residue_table(
        tmp_path / "t.tsv", ["H", "E", "C"], label_column="dssp8", mask_columns=["mask"], ignore=["U"]
    )
    assert rec.labels.tolist() == [0, 0, ds.IGNORE, ds.IGNORE]


def test_annotated_fasta_bad_records_named(tmp_path):
    p = tmp_path / "cv.fasta"
    p.write_text(">ok|1\nMKVL\n1122\n>short|2\nMKVL\n112\n>nolab|3\nMKVL\n>badlab|4\nMKV\n1Z2\n")
    with pytest.raises(
        ValueError,
        match=r"cv\.fasta: 3 bad records: record 'short\|2': 3 labels for a 4-residue sequence; "
        r"record 'nolab\|3': 1 line\(s\) after the header, expected 2.*"
        r"record 'badlab\|4': labels \['Z'\] not in classes",
    ):
        ds.read_annotated_fasta(p, ["1", "2"], "train", ignore=["U"])
    with pytest.raises(FileNotFoundError, match=r"missing\.fasta: no such file"):
        ds.read_annotated_fasta([p, tmp_path / "missing.fasta"], ["1", "2"])
    p.write_text("MKVL\n1122\n")
    with pytest.raises(ValueError, match=r"cv\.fasta: not an annotated FASTA"):
        ds.read_annotated_fasta(p, ["1", "2"])


def test_sequence_fasta_header_and_class_errors_named(tmp_path):
    p = tmp_path / "loc.fasta"
    p.write_text(
        ">P1 Nucleus-S test\nMKV\n>P2 Nowhere-M test\nMKV\n>P3 no_location_here\nMKV\n>P4 Both-Places-U\nMKV\n"
    )
    pattern = r"^\S+\s+(?P<target>\S+)-[MSU]\b"
    with pytest.raises(
        ValueError,
        match=r"loc\.fasta: 2 bad records: record 'P2': class 'Nowhere' not in classes.*"
        r"record 'P3': header 'P3 no_location_here' does not match",
    ):
        ds.read_sequence_fasta(p, pattern, ["Nucleus", "Cytoplasm"], ignore=["Both-Places"])
    p.write_text(">P1 Nucleus-S test\nMKV\n>P4 Both-Places-U\nMKV\n")
    (rec,) = ds.read_sequence_fasta(p, pattern, ["Cytoplasm", "Nucleus"], "test", ignore=["Both-Places"])
    assert (rec.id, rec.target, rec.split) == ("P1", 1.0, "test")


def test_yaml_new_format_checks(tmp_path):
    base = "kind: sequence_classification\nformat: sequence_fasta\nclasses: [a, b]\n"
    with pytest.raises(ValueError, match=r"mytask\.yaml: .*data: missing \['test'\].*needs 'header_pattern'"):
        load_task(_yaml(tmp_path, base + "data: {train: a.fasta}\n"))
    with pytest.raises(ValueError, match=r"'header_pattern' needs a named group \(\?P<target>"):
        load_task(_yaml(tmp_path, base + "data: {train: a.fa, test: b.fa}\nheader_pattern: '(\\S+)'\n"))
    with pytest.raises(ValueError, match=r"'header_pattern' is not a valid regular expression"):
        load_task(_yaml(tmp_path, base + "data: {train: a.fa, test: b.fa}\nheader_pattern: '(?P<target>'\n"))
    with pytest.raises(ValueError, match=r"format 'sequence_fasta' cannot feed kind residue_classification"):
        load_task(
            _yaml(
                tmp_path,
                base.replace("sequence_classification", "residue_classification")
                + "data: {train: a.fa, test: b.fa}\nheader_pattern: '(?P<target>x)'\n",
            )
        )
    with pytest.raises(ValueError, match=r"data: 'table' must be a path, got \['a.tsv'\]"):
        load_task(
            _yaml(
                tmp_path,
                "kind: residue_classification\nformat: residue_table\nclasses: [H]\ndata: {table: [a.tsv]}\n",
            )
        )
    with pytest.raises(ValueError, match=r"'ignore_labels' must be a list"):
        load_task(
            _yaml(
                tmp_path,
                base + "data: {train: a.fa, test: b.fa}\nheader_pattern: '(?P<target>x)'\nignore_labels: U\n",
            )
        )


def test_yaml_list_role_missing_file_named(tmp_path):
    (tmp_path / "a.fasta").write_text(">x\nMK\n12\n")
    spec = load_task(
        _yaml(
            tmp_path,
            "kind: residue_classification\nformat: annotated_fasta\nclasses: ['1', '2']\n"
            "data: {train: [a.fasta, b.fasta], test: a.fasta}\n",
        )
    )
    with pytest.raises(FileNotFoundError, match=r"mytask\.yaml: data file\(s\) not found: train: .*b\.fasta"):
        spec.files(tmp_path)
    (tmp_path / "b.fasta").write_text(">y\nMKV\n122\n")
    files = spec.files(tmp_path)
    assert files["train"] == [tmp_path / "a.fasta", tmp_path / "b.fasta"]
    assert [(r.id, r.split) for r in load_records(spec, files, 100)] == [
        ("x", "train"),
        ("y", "train"),
        ("x", "test"),
    ]


# ---- every shipped task YAML, and the new kinds end to end ---------------------------------------------------
@pytest.mark.parametrize("path", sorted(TASK_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_task_yaml_loads_and_its_small_data_exists(path):
    spec = load_task(path)
    assert spec.name == path.stem
    if spec.small_data:
        assert spec.files(small=True)


def test_plm_evaluate_new_kinds_on_small_subsets(tmp_path):
    from plm.cli import main as plm_main
    from plm.model.io import save_pretrained
    from tests.conftest import tiny_model

    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=32), tmp_path / "m", objective="mlm")
    out = tmp_path / "out"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m"),
                "--tasks",
                "ss8,scl,tmbed,conservation",
                "--out",
                str(out),
                "--small",
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    with open(out / "results.csv", newline="") as fh:
        rows = {(r["task"], r["metric"]): r for r in csv.DictReader(fh)}
    assert rows[("scl", "accuracy")]["n"] == "40" and rows[("tmbed", "macro_f1")]["mode"] == "frozen"
    ss8_scored = sum(
        int((r.labels != ds.IGNORE).sum())
        for r in split_records(load_task("ss8"), _records("ss8"), 1000, 1000, 0)[1]
    )
    assert rows[("ss8", "accuracy")]["n"] == str(ss8_scored)
    for key in [
        ("ss8", "accuracy"),
        ("scl", "macro_f1"),
        ("tmbed", "accuracy"),
        ("conservation", "accuracy"),
    ]:
        assert 0.0 <= float(rows[key]["value"]) <= 1.0, key
