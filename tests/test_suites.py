"""plm evaluate --suite: suite YAMLs are checked, runs cover (weights × seeds), and results.md puts ours
(mean ± sd over seeds) beside the published anchors."""

from __future__ import annotations

import csv
import re

import pytest

from plm.cli import main as plm_main
from plm.evaluation.suites import load_suite, summarise
from plm.evaluation.tasks import load_task
from plm.model.io import save_pretrained
from tests.conftest import tiny_model


def test_shipped_suites_name_existing_tasks_and_anchor_only_their_tasks():
    for name in ("schmirler2024", "proteingym_dms"):
        suite = load_suite(name)
        assert suite.random_init and len(suite.seeds) >= 3 and suite.anchors
        for task in suite.tasks:
            load_task(task)
        assert all(set(values) <= set(suite.tasks) for values in suite.anchors.values())
    assert load_suite("proteingym_dms").anchors["ESM-2 8M (ProteinGym v1.3) [S15]"]["dms_blat"] == 0.362


def test_bad_suite_yaml_is_reported_with_every_problem(tmp_path):
    (tmp_path / "s.yaml").write_text("tasks: [gb1]\nseeds: [a]\ncolour: red\nanchors: {paper: {ss3: 0.7}}\n")
    with pytest.raises(ValueError) as err:
        load_suite(tmp_path / "s.yaml")
    text = str(err.value)
    assert "s.yaml: invalid suite" in text and "unknown key(s) ['colour']" in text
    assert (
        "'seeds' must be a list of integers" in text
        and "anchors: 'paper' must map tasks of this suite" in text
    )
    with pytest.raises(FileNotFoundError, match="known suites: .*proteingym_dms"):
        load_suite("nope")


def test_summary_is_mean_and_sample_sd_over_seeds():
    rows = [
        {"task": "t", "metric": "m", "weights": "random_init", "value": v, "seed": s}
        for s, v in enumerate((0.1, 0.2, 0.6))
    ]
    rows.append({"task": "t", "metric": "m", "weights": "trained", "value": 0.5, "seed": 0})
    by = {s["weights"]: s for s in summarise(rows)}
    assert by["random_init"]["mean"] == pytest.approx(0.3) and by["random_init"]["sd"] == pytest.approx(
        0.264575, 1e-5
    )
    assert by["random_init"]["seeds"] == "0 1 2" and by["trained"]["n_seeds"] == 1


def test_suite_run_writes_ours_beside_the_anchors(tmp_path, capsys):
    save_pretrained(tiny_model("esm2", n_layer=1, n_embd=16, n_head=2), tmp_path / "m", objective="mlm")
    (tmp_path / "mini.yaml").write_text(
        "name: mini\ndescription: one assay\ntasks: [dms_blat]\nseeds: [3, 4]\n"
        "anchors: {'paper 8M': {dms_blat: 0.362}}\n"
    )
    out = tmp_path / "out"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m"),
                "--suite",
                str(tmp_path / "mini.yaml"),
                "--small",
                "--max-test",
                "30",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["weights"], r["seed"]) for r in rows] == [
        ("trained", "3"),
        ("random_init", "3"),
        ("random_init", "4"),
    ]
    md = (out / "results.md").read_text()
    assert re.search(
        r"\| dms_blat \| spearman \| -?\d\.\d{3} \(1\) \| -?\d\.\d{3} ± \d\.\d{3} \(2\) \| 0\.362 \|", md
    ), md
    assert "random_init, seed 4: dms_blat in" in md and "trained, seed 4" not in md
    with open(out / "scores" / "trained" / "dms_blat.csv", newline="") as fh:
        scored = list(csv.reader(fh))
    assert scored[0] == ["mutant", "DMS_score", "masked_marginal_wt_context"] and len(scored) == 31
    assert (out / "scores" / "random_init_seed4" / "dms_blat.csv").is_file()
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m"),
                "--suite",
                "mini",
                "--tasks",
                "gb1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "give --tasks (task names or YAML paths) or --suite" in capsys.readouterr().err
