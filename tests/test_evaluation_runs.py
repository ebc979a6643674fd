"""plm evaluate as a run: explicit caps, one split rule without overlap, data checked before the model
loads, results written task by task with what was evaluated, one-line errors, and a plain clone's default
data (issue 24 items 4-8, issue 25 item 1)."""

from __future__ import annotations

import csv
import itertools
import random
import re
from pathlib import Path

import pytest

from plm.cli import main as plm_main
from plm.evaluation import runner, splits, tasks, zero_shot_task
from plm.evaluation.datasets import SequenceRecord
from plm.evaluation.options import EvalOptions
from plm.evaluation.tasks import load_task
from plm.model.io import save_pretrained
from tests.conftest import tiny_model

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI"
AA = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "tiny"
    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=32), path, objective="mlm", step=123)
    return path


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("PLM_DEBUG", raising=False)


def _mutants(n: int) -> list[str]:
    """``n`` distinct double mutants of WT (more than the old implicit cap of 2,000 when asked)."""
    out = []
    for i, j in itertools.combinations(range(len(WT)), 2):
        for a, b in itertools.product(AA.replace(WT[i], "")[:8], AA.replace(WT[j], "")[:8]):
            out.append(f"{WT[i]}{i + 1}{a}:{WT[j]}{j + 1}{b}")
            if len(out) == n:
                return out
    raise AssertionError("not enough mutants")


def dms_task(
    root: Path,
    name: str = "my_dms",
    n: int = 40,
    extra: str = "",
    score: str = "DMS_score",
    mutants: list[str] | None = None,
) -> Path:
    """A zero-shot task under ``root`` (its data paths relative to it, as --data-root expects)."""
    rng = random.Random(0)
    mutants = mutants or _mutants(n)
    (root / f"{name}.csv").write_text(
        "mutant,DMS_score\n" + "".join(f"{m},{rng.random():.4f}\n" for m in mutants)
    )
    (root / "wt.fasta").write_text(f">WT\n{WT}\n")
    path = root / f"{name}.yaml"
    path.write_text(
        f"kind: zero_shot\nformat: dms_csv\ndata: {{table: {name}.csv, wildtype: wt.fasta}}\n"
        f"wildtype_id: WT\ncolumns: {{mutant: mutant, score: {score}}}\n{extra}"
    )
    return path


def evaluate(export: Path, root: Path, task_list: str, out: Path, *extra: str) -> int:
    return plm_main(
        [
            "evaluate",
            "--checkpoint",
            str(export),
            "--tasks",
            task_list,
            "--out",
            str(out),
            "--data-root",
            str(root),
            "--no-progress",
            *extra,
        ]
    )


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---- #24.4: caps are explicit -------------------------------------------------------------------------
def test_zero_shot_without_defaults_scores_every_variant(export, tmp_path, capsys):
    task = dms_task(tmp_path, n=2100)  # no defaults block: the old implicit cap scored 2,000
    assert evaluate(export, tmp_path, str(task), tmp_path / "out") == 0
    assert [r["n"] for r in read_rows(tmp_path / "out")] == ["2100"]
    assert "using" not in capsys.readouterr().err


def test_a_cap_that_applies_is_printed_with_who_set_it(export, tmp_path, capsys):
    task = dms_task(tmp_path, n=60, extra="defaults: {max_test: 50}\n")
    assert evaluate(export, tmp_path, str(task), tmp_path / "a") == 0
    assert read_rows(tmp_path / "a")[0]["n"] == "50"
    assert "my_dms: using 50 of 60 variants (max_test 50 from my_dms.yaml" in capsys.readouterr().err
    assert evaluate(export, tmp_path, str(task), tmp_path / "b", "--max-test", "20") == 0
    assert read_rows(tmp_path / "b")[0]["n"] == "20"
    assert "my_dms: using 20 of 60 variants (max_test 20 from an override" in capsys.readouterr().err


def test_supervised_caps_default_to_all_and_are_said():
    assert EvalOptions.max_train is None and EvalOptions.max_test is None
    spec = load_task("gb1")
    recs = [
        SequenceRecord(f"r{i}", f"MK{AA[i % 20]}{AA[i // 20]}", 0.0, "train" if i < 30 else "test")
        for i in range(40)
    ]
    said: list[str] = []
    train, test = runner.split_records(spec, recs, None, None, 0, said.append)
    assert (len(train), len(test), said) == (30, 10, [])
    train, test = runner.split_records(spec, recs, 12, None, 0, said.append, {"max_train": "gb1.yaml"})
    assert len(train) == 12 and said == [
        ("gb1: using 12 of 30 training records (max_train 12 from gb1.yaml; --max-train changes it)")
    ]


# ---- #24.5: one split rule, and test never overlaps train -------------------------------------------
def _fasta_task(root: Path, train: str, test: str, extra: str = "") -> Path:
    path = root / "loc.yaml"
    path.write_text(
        f"kind: sequence_classification\nformat: sequence_fasta\ndata: {{train: {train}, test: {test}}}\n"
        f"header_pattern: '^\\S+\\s+(?P<target>\\S+)'\nclasses: [A, B]\n{extra}"
    )
    return path


def test_train_fraction_over_separate_files_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"loc\.yaml: .*split: format sequence_fasta splits by file .*remove 'split'"
    ):
        load_task(_fasta_task(tmp_path, "train.fasta", "test.fasta", "split: {train_fraction: 0.8}\n"))
    two = tmp_path / "two.yaml"
    two.write_text(
        "kind: residue_classification\nformat: residue_table\ndata: {table: t.tsv}\nclasses: [H, E]\n"
        "split: {train_fraction: 0.8, train: train, test: test}\n"
    )
    with pytest.raises(
        ValueError, match=r"train_fraction and \['test', 'train'\] are two rules for one split"
    ):
        load_task(two)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: contacts\nformat: structures\ndata: {dir: s}\nsplit: {train_fraction: 1.5, tran: x}\n"
    )
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tran'\].*strictly between 0 and 1, got 1\.5"):
        load_task(bad)


def test_one_file_in_both_roles_is_an_error_before_the_model_loads(export, tmp_path, capsys, monkeypatch):
    (tmp_path / "all.fasta").write_text("".join(f">p{i} {'AB'[i % 2]}\nMKV{AA[i]}LLG\n" for i in range(12)))
    task = _fasta_task(tmp_path, "all.fasta", "all.fasta")
    monkeypatch.setattr(runner, "load_backbone", _never_loaded)
    assert evaluate(export, tmp_path, str(task), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "loc.yaml: 12 record id(s) are on both the train and the test side ('p0', 'p1'" in err


def test_training_copies_of_test_sequences_are_left_out_and_said():
    spec = load_task("gb1")
    test = [SequenceRecord(f"t{i}", f"MKV{AA[i]}", 0.0, "test") for i in range(5)]
    train = [SequenceRecord(f"a{i}", f"MKV{AA[i]}", 0.0, "train") for i in range(2)]  # copies of t0, t1
    train += [SequenceRecord(f"b{i}", f"MAAV{AA[i]}", 0.0, "train") for i in range(6)]
    said: list[str] = []
    got_train, got_test = runner.split_records(spec, train + test, None, None, 0, said.append)
    assert len(got_test) == 5 and {r.id for r in got_train} == {f"b{i}" for i in range(6)}
    assert said == [
        (
            "gb1: left out 2 of 8 training records whose sequence is identical to a test sequence "
            "(a test set never overlaps train)"
        )
    ]


def test_near_duplicates_reported_with_mmseqs_and_said_unchecked_without(monkeypatch):
    import plm.identity.mmseqs as mm
    from plm.identity import search
    from plm.identity.fallback import Best

    spec = load_task("gb1")
    train, test = (
        [SequenceRecord("a", "MKVLLG", 0.0)],
        [SequenceRecord("t", "MKVLLA", 0.0), SequenceRecord("u", "WWW", 0.0)],
    )
    monkeypatch.setattr(mm, "find_mmseqs", lambda *a: None)
    monkeypatch.setattr(splits, "_HINTS_GIVEN", set())
    assert runner.near_duplicate_note(spec, train, test) == (
        "gb1: identical sequences checked; near-duplicates (>= 90% identity) between train and test not checked "
        "(no MMseqs2: apt-get install mmseqs2, or set PLM_MMSEQS to the binary)"
    )
    monkeypatch.setattr(mm, "find_mmseqs", lambda *a: Path("/usr/bin/mmseqs"))
    monkeypatch.setattr(mm, "MMseqs", lambda **kw: object())
    monkeypatch.setattr(search, "best_hits", lambda q, t, backend, min_identity: {0: Best(0.95, 0)})
    assert runner.near_duplicate_note(spec, train, test) == (
        "gb1: 1 of 2 test sequences are >= 90% identical to a training sequence (MMseqs2)"
    )


# ---- #24.6: every task checked before the model; results kept task by task ------------------------------
def _never_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before every task's data was checked")


def test_every_task_is_checked_before_the_model_loads(export, tmp_path, capsys, monkeypatch):
    good = dms_task(tmp_path, "good")
    wrong_column = dms_task(tmp_path, "wrong_column", score="fitness")
    wrong_wt = dms_task(tmp_path, "wrong_wt", mutants=["A1G", "Q2R"])
    monkeypatch.setattr(runner, "load_backbone", _never_loaded)
    assert evaluate(export, tmp_path, f"{good},{wrong_column},{wrong_wt}", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "plm evaluate: 2 of 3 tasks cannot run (nothing was evaluated):" in err
    assert (
        "wrong_column.csv: missing column(s) ['fitness']" in err
        and "wrong_wt.csv: 2 mutation(s) do not match" in err
    )
    assert not (tmp_path / "out").exists()


def test_a_later_failure_keeps_the_finished_tasks(export, tmp_path, monkeypatch, capsys):
    first, second = dms_task(tmp_path, "first"), dms_task(tmp_path, "second")
    real, calls = zero_shot_task.score_variants, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(zero_shot_task, "score_variants", fail_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(export, tmp_path, f"{first},{second}", tmp_path / "out")
    assert [r["task"] for r in read_rows(tmp_path / "out")] == ["first"]
    assert "| first | spearman |" in (tmp_path / "out" / "results.md").read_text()
    assert "task second failed; the 1 task(s) before it are in" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left


# ---- #24.7: each row says what was evaluated --------------------------------------------------------------
def test_rows_record_weights_step_mode_seed_and_data(export, tmp_path):
    task = dms_task(tmp_path)
    assert evaluate(export, tmp_path, str(task), tmp_path / "t") == 0
    assert evaluate(export, tmp_path, str(task), tmp_path / "r", "--random-init", "--seed", "3") == 0
    (trained,), (rand,) = read_rows(tmp_path / "t"), read_rows(tmp_path / "r")
    assert list(trained) == runner.FIELDS
    assert {k: trained[k] for k in ("weights", "step", "mode", "seed", "objective", "data")} == {
        "weights": "trained",
        "step": "123",
        "mode": "zero_shot_mlm",
        "seed": "0",
        "objective": "mlm",
        "data": "full",
    }
    assert (rand["weights"], rand["step"], rand["seed"]) == ("random_init", "123", "3")
    assert trained["value"] != rand["value"]


# ---- #24.8: expected errors are one line; tracebacks under --debug ------------------------------------------
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"task 'nowhere': .*nowhere\.yaml not found; known tasks: .*ss3"),
        ("yaml", r"bad\.yaml: not valid YAML"),
        ("column", r"col\.csv: missing column\(s\) \['fitness'\]; the file has \['mutant', 'DMS_score'\]"),
        ("wildtype", r"wt_bad\.csv: 1 mutation\(s\) do not match wild type 'WT'"),
        ("checkpoint", r"no_such_ckpt: no such file or directory"),
    ],
)
def test_expected_errors_print_one_line_and_exit_2(export, tmp_path, capsys, case, message):
    task = {
        "missing": "nowhere",
        "column": str(dms_task(tmp_path, "col", score="fitness")),
        "wildtype": str(dms_task(tmp_path, "wt_bad", mutants=["A1G"])),
        "checkpoint": str(dms_task(tmp_path)),
    }.get(case)
    if case == "yaml":
        (tmp_path / "bad.yaml").write_text("kind: [zero_shot\n")
        task = str(tmp_path / "bad.yaml")
    ckpt = tmp_path / "no_such_ckpt" if case == "checkpoint" else export
    assert evaluate(ckpt, tmp_path, task, tmp_path / "out") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plm evaluate: "), lines
    assert re.search(message, lines[0]), lines[0]


def test_debug_shows_the_traceback(export, tmp_path, capsys, monkeypatch):
    assert evaluate(export, tmp_path, "nowhere", tmp_path / "out", "--debug") == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("PLM_DEBUG", "1")
    assert evaluate(export, tmp_path, "nowhere", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("plm evaluate: task 'nowhere'")


# ---- #25.1: a plain clone runs on the bundled subsets -------------------------------------------------------
@pytest.fixture
def plain_clone(monkeypatch, tmp_path):
    """No --data-root, no $PLM_DATA_ROOT, nothing at the CI layout's default root."""
    monkeypatch.delenv("PLM_DATA_ROOT", raising=False)
    monkeypatch.setattr(tasks, "CI_DATA_ROOT", tmp_path / "no_shared" / "data", raising=False)


def test_plain_clone_default_uses_the_bundled_subsets_and_says_so(export, tmp_path, capsys, plain_clone):
    out = tmp_path / "out"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(export),
                "--tasks",
                "dms_blat",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    (row,) = read_rows(out)
    assert (row["n"], row["data"]) == ("150", "bundled")  # the bundled TEM-1 subset
    err = capsys.readouterr().err
    assert "using the bundled subsets" in err and "--data-root or $PLM_DATA_ROOT" in err


def test_missing_full_data_says_how_to_point_at_it(export, tmp_path, capsys, plain_clone, monkeypatch):
    base = ["evaluate", "--checkpoint", str(export), "--out", str(tmp_path / "out"), "--no-progress"]
    # a user's task YAML with full data only: on a plain clone it cannot run, and says why
    own = tmp_path / "my_assay.yaml"
    spec = (tasks.TASK_DIR / "dms_pab1.yaml").read_text()
    own.write_text(
        spec.split("small_data:")[0].replace("name: dms_pab1", "name: my_assay")
        + "wildtype_id: PABP_YEAST\ncolumns: {mutant: mutant, score: log}\nmetric: spearman\n"
    )
    assert plm_main([*base, "--tasks", str(own)]) == 2
    assert "my_assay.yaml: task 'my_assay' ships no bundled subset" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plm_main([*base, "--tasks", "gb1", "--data-root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "gb1.yaml: data file(s) not found: table: " in err and "flip_gb1" in err
    assert "point --data-root or $PLM_DATA_ROOT at the full task data" in err and "--small" in err
    monkeypatch.setenv("PLM_DATA_ROOT", str(tmp_path / "typo"))  # an explicit root that is not there
    assert plm_main([*base, "--tasks", "gb1"]) == 2
    assert "$PLM_DATA_ROOT " in capsys.readouterr().err
