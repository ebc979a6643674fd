"""`plm score` end to end: tiny CLM, MLM and ESMFold, a reference set, all outputs written."""

import csv
import json

import pytest

from plm.cli import main as plm_main
from plm.model.io import save_pretrained
from tests.conftest import tiny_model
from tests.helpers.disk import fill_disk_on
from tests.helpers.esmfold import build_tiny_esmfold
from tests.helpers.sequences import A_MUT3, A, B


def test_score_end_to_end(tmp_path):
    fasta = tmp_path / "samples.fasta"
    fasta.write_text(f">a\n{A}\n>a3\n{A_MUT3}\n>b\n{B}\n>rep\n{'GS' * 12}\n")
    ref = tmp_path / "ref.fasta"
    ref.write_text(f">r1\n{A}\n>r2\nWWWWWWWWWWCCCCCCCCC\n")
    save_pretrained(tiny_model("progen2", rotary_dim=6), tmp_path / "clm", objective="clm")
    save_pretrained(tiny_model("esm2", token_dropout=True), tmp_path / "mlm", objective="mlm")
    esmfold = build_tiny_esmfold(tmp_path / "esmfold")
    out = tmp_path / "scores"
    rc = plm_main(
        [
            "score",
            str(fasta),
            "--esmfold",
            str(esmfold),
            "--clm",
            str(tmp_path / "clm"),
            "--mlm",
            str(tmp_path / "mlm"),
            "--reference",
            str(ref),
            "--out",
            str(out),
            "--cluster-backend",
            "python",
            "--novelty-backend",
            "python",
        ]
    )
    assert rc == 0
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["a", "a3", "b", "rep"]
    assert float(rows[0]["max_identity_to_reference"]) == 1.0
    assert float(rows[1]["max_identity_to_reference"]) == pytest.approx(30 / 33, abs=1e-4)
    assert float(rows[3]["repeat_fraction"]) == 1.0 and float(rows[0]["repeat_fraction"]) == 0.0
    for r in rows:
        assert 0 < float(r["plddt"]) < 100
        assert 1 < float(r["clm_perplexity"]) < 100 and 1 < float(r["mlm_pseudo_perplexity"]) < 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"]["count"] == 3  # {a, a3}, {b}, {rep}
    assert summary["novel_share"] == 0.5 and summary["not_computed"] == {}
    md = (out / "summary.md").read_text()
    assert "mean pLDDT" in md and "clusters at 50% identity: **3**" in md
    for name in ["pairwise_identity", "plddt", "clm_perplexity", "mlm_pseudo_perplexity", "repeat_fraction"]:
        assert (out / f"hist_{name}.png").stat().st_size > 1000
    assert (out / "plddt_cache.json").is_file()


def test_score_reports_what_it_did_not_compute(tmp_path):
    fasta = tmp_path / "s.fasta"
    fasta.write_text(f">a\n{A}\n>b\n{B}\n")
    assert plm_main(["score", str(fasta), "--out", str(tmp_path / "o"), "--cluster-backend", "python"]) == 0
    md = (tmp_path / "o" / "summary.md").read_text()
    assert (
        "pLDDT: not computed (pass --esmfold DIR)" in md
        and "novelty: not computed (pass --reference FASTA)" in md
    )
    from plm.generate.score import ScoreOptions, score

    with pytest.raises(FileNotFoundError, match="--esmfold .*missing: no such directory"):
        score(fasta, tmp_path / "o", ScoreOptions(esmfold=str(tmp_path / "missing")))


@pytest.mark.mmseqs
def test_novelty_uses_mmseqs_when_installed(tmp_path):
    from plm.generate.metrics import max_identity_to_reference
    from plm.identity import find_mmseqs

    if find_mmseqs() is None:
        pytest.skip("mmseqs not installed (CI installs it: apt-get install mmseqs2)")
    refs = [A, "WWWWWWWWWWCCCCCCCCC"]
    got, method = max_identity_to_reference([A, A_MUT3, B], refs, "mmseqs")
    assert method == "mmseqs2 easy-search"
    assert got[0] == 1.0 and 0.85 < got[1] < 1.0 and got[2] < 0.5  # exact, 3 substitutions, unrelated
    py, py_method = max_identity_to_reference([A, A_MUT3, B], refs, "python")
    assert py_method.startswith("python") and py[0] == 1.0 and abs(py[1] - got[1]) < 0.05


def test_score_checks_every_input_before_any_work(tmp_path, capsys, monkeypatch):
    """A bad --esmfold or --reference fails at once, in one line, before the minutes of scoring."""
    from plm.generate import metrics

    fasta = tmp_path / "samples.fasta"
    fasta.write_text(f">a\n{A}\n>b\n{B}\n")
    save_pretrained(tiny_model("progen2", rotary_dim=6), tmp_path / "clm", objective="clm")
    called = []
    monkeypatch.setattr(metrics, "pairwise_identities", lambda *a, **k: called.append(1))
    base = ["score", str(fasta), "--out", str(tmp_path / "out"), "--clm", str(tmp_path / "clm")]
    for extra, expected in (
        (["--esmfold", str(tmp_path / "nope")], "--esmfold"),
        (["--reference", str(tmp_path / "missing.fasta")], "--reference"),
        (["--mlm", str(tmp_path / "clm")], "--mlm"),
    ):
        assert plm_main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("plm score: ") and expected in err and "Traceback" not in err
    assert not called and not (tmp_path / "out").exists()


def test_score_reports_each_stage(tmp_path, capsys):
    fasta = tmp_path / "samples.fasta"
    fasta.write_text(f">a\n{A}\n>b\n{B}\n")
    assert plm_main(["score", str(fasta), "--out", str(tmp_path / "out"), "--cluster-backend", "python"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] sequence statistics …" in err and "[2/2] pairwise identity and clusters: done in" in err


@pytest.mark.parametrize("name_part", ["scores.csv", "summary.json", "summary.md"])
def test_a_write_that_fails_midway_leaves_the_previous_outputs(tmp_path, monkeypatch, name_part):
    """A full disk while writing an output of a second score into the same --out: the first one's file is
    still whole, and no temporaries are left."""
    from plm.generate.score import ScoreOptions, score

    fasta, out = tmp_path / "s.fasta", tmp_path / "o"
    fasta.write_text(f">a\n{A}\n>b\n{B}\n")
    score(fasta, out, ScoreOptions(cluster_backend="python"))
    before = (out / name_part).read_bytes()
    fasta.write_text(f">a3\n{A_MUT3}\n>rep\n{'GS' * 12}\n")
    fill_disk_on(monkeypatch, name_part)
    with pytest.raises(OSError, match="No space left"):
        score(fasta, out, ScoreOptions(cluster_backend="python"))
    monkeypatch.undo()
    assert (out / name_part).read_bytes() == before
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
