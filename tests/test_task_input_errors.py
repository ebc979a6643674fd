"""Bad task input is one clear line before any compute, in plm evaluate and plm finetune: label ids that do
not match the sequences, a label outside the declared classes, a mutation whose wild-type letter is wrong,
a YAML with an unknown key, a metric plm does not compute.

plm evaluate is given a checkpoint whose weights file is junk: a message about the task (not the weights)
proves the task was checked before the model was loaded. plm finetune must stop before its first step
(no checkpoint written)."""

from __future__ import annotations

import pytest

from plm.cli import main as plm_main
from plm.model.io import save_pretrained
from tests.conftest import tiny_model

RESIDUE = (
    "kind: residue_classification\nformat: residue_fasta\ndata: {sequences: s.fasta, labels: l.fasta}\n"
    "classes: [H, E, C]\nsplit: {train: train, test: test}\n"
)
CASES = {
    "label ids do not match": (
        RESIDUE,
        ">a SET=train\nHEC\n>zz SET=test\nCCC\n",
        "record 'zz' has labels but no sequence",
    ),
    "label outside classes": (
        RESIDUE,
        ">a SET=train\nHXC\n>b SET=test\nCCC\n",
        "labels ['X'] not in classes",
    ),
    "unknown key": (
        RESIDUE + "colour: blue\n",
        ">a SET=train\nHEC\n>b SET=test\nCCC\n",
        "unknown key(s) ['colour']",
    ),
    "metric not computed": (
        RESIDUE + "metric: spearman\n",
        ">a SET=train\nHEC\n>b SET=test\nCCC\n",
        "metric 'spearman' is not computed for kind residue_classification",
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_pretrained(tiny_model("esm2", n_layer=1, n_embd=16, n_head=2), root / "good", objective="mlm")
    save_pretrained(tiny_model("esm2", n_layer=1, n_embd=16, n_head=2), root / "junk", objective="mlm")
    (root / "junk" / "model.safetensors").write_bytes(b"not weights")
    return root


def _write(tmp_path, yaml: str, labels: str):
    (tmp_path / "s.fasta").write_text(">a\nMKV\n>b\nGGW\n")
    (tmp_path / "l.fasta").write_text(labels)
    (tmp_path / "t.yaml").write_text(yaml)
    return tmp_path / "t.yaml"


def _one_line(capsys, prog: str) -> str:
    """The last stderr line, after checking no traceback came with it. In-process LightningCLI runs leave
    Lightning's log handler on an earlier test's closed stream; the "--- Logging error ---" reports that
    produces are the test harness's, and are skipped."""
    text = capsys.readouterr().err
    own = text.split("--- Logging error ---")
    own = [own[0]] + [b.split("\nArguments: ", 1)[1] if "\nArguments: " in b else "" for b in own[1:]]
    err = "\n".join(own).strip().splitlines()
    assert err and err[-1].startswith(f"{prog}: ") and "Traceback" not in "\n".join(err), text[-2000:]
    return err[-1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plm_evaluate_refuses_before_loading_the_model(case, checkpoints, tmp_path, capsys):
    yaml, labels, text = CASES[case]
    task = _write(tmp_path, yaml, labels)
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoints / "junk"),
                "--tasks",
                str(task),
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 2
    )
    line = _one_line(capsys, "plm evaluate")
    assert text in line and "safetensors" not in line and ("t.yaml" in line or "l.fasta" in line)


def test_plm_evaluate_refuses_a_mutation_whose_wild_type_letter_is_wrong(checkpoints, tmp_path, capsys):
    (tmp_path / "wt.fasta").write_text(">WT\nMKVLA\n")
    (tmp_path / "dms.csv").write_text("mutant,DMS_score\nK2A,0.5\nA2G,0.1\n")
    (tmp_path / "t.yaml").write_text(
        "kind: zero_shot\nformat: dms_csv\ndata: {table: dms.csv, wildtype: wt.fasta}\nwildtype_id: WT\n"
    )
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoints / "junk"),
                "--tasks",
                str(tmp_path / "t.yaml"),
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    line = _one_line(capsys, "plm evaluate")
    assert "dms.csv: 1 mutation(s) do not match wild type 'WT'" in line and "row 3" in line


@pytest.mark.parametrize("case", sorted(CASES))
def test_plm_finetune_refuses_before_its_first_step(case, checkpoints, tmp_path, capsys):
    yaml, labels, text = CASES[case]
    task = _write(tmp_path, yaml, labels)
    rc = plm_main(
        [
            "finetune",
            "--model.class_path",
            "plm.evaluation.finetune.FineTune",
            "--model.init_args.backbone",
            str(checkpoints / "good"),
            "--data.task",
            str(task),
            "--data.data_root",
            str(tmp_path),
            "--trainer.max_steps",
            "5",
            "--run_root",
            str(tmp_path / "runs"),
            "--loggers",
            "[csv]",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert rc == 2
    assert text in _one_line(capsys, "plm finetune")
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
