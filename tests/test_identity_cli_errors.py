"""`plm data decontaminate|split-by-identity|cluster` refuse a missing input in one line (issue 25).

The message names the file and what to give instead, the exit code is 2 and there is no traceback unless
``--debug`` (or ``PLM_DEBUG=1``) asks for it. The check runs before the backend is chosen, so even without
mmseqs on PATH the only line is the refusal (not the fallback warning first).
"""

from __future__ import annotations

import pytest

from plm.data.cli import main as data_main
from plm.errors import ENV_VAR

CASES = {
    "decontaminate-train": (
        ["decontaminate", "--train", "{d}/nope.fasta", "--against", "{d}/e.fasta", "--out", "{d}/o"],
        (
            "plm data decontaminate: --train {d}/nope.fasta: no such FASTA file or prepared store "
            "directory; give the training FASTA(.gz)"
        ),
    ),
    "decontaminate-against": (
        ["decontaminate", "--train", "{d}/t.fasta", "--against", "{d}/gone.csv", "--out", "{d}/o"],
        "plm data decontaminate: --against: evaluation file(s) not found: {d}/gone.csv; give",
    ),
    "split-source": (
        ["split-by-identity", "--source", "{d}/nope.fasta", "--train", "{d}/t.fasta", "--out", "{d}/o"],
        "plm data split-by-identity: --source {d}/nope.fasta: no such file; give the candidate held-out",
    ),
    "split-train": (
        [
            "split-by-identity",
            "--source",
            "{d}/e.fasta",
            "--train",
            "{d}/t.fasta",
            "{d}/gone",
            "--out",
            "{d}/o",
        ],
        "plm data split-by-identity: --train: not found: {d}/gone; give existing training",
    ),
    "cluster": (
        ["cluster", "--in", "{d}/nope.fasta", "--out", "{d}/c.tsv", "--min-identity", "0.5"],
        "plm data cluster: --in {d}/nope.fasta: no such file; give the FASTA(.gz) to cluster",
    ),
}


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    (tmp_path / "t.fasta").write_text(">t\nMKTAYIAKQRQISFVKSHFSRQ\n")
    (tmp_path / "e.fasta").write_text(">e\nMKTAYIAKQRQISFVKSHFSRQ\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no mmseqs: `--backend auto` would warn
    monkeypatch.delenv("PLM_MMSEQS", raising=False)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path


def _argv(case: str, d) -> tuple[list[str], str]:
    argv, message = CASES[case]
    return [a.format(d=d) for a in argv], message.format(d=d)


@pytest.mark.parametrize("case", CASES)
def test_a_missing_input_is_one_line_naming_file_and_fix(case, inputs, capsys):
    argv, message = _argv(case, inputs)
    assert data_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (inputs / "o").exists() and not (inputs / "c.tsv").exists()  # nothing written


@pytest.mark.parametrize("case", ["decontaminate-train", "split-source", "cluster"])
def test_debug_adds_the_traceback(case, inputs, capsys, monkeypatch):
    argv, message = _argv(case, inputs)
    assert data_main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith(message)  # the one line still comes last
    monkeypatch.setenv(ENV_VAR, "1")
    assert data_main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_debug_is_listed_in_help(capsys):
    for sub in ("decontaminate", "split-by-identity", "cluster"):
        with pytest.raises(SystemExit):
            data_main([sub, "--help"])
        assert "--debug" in capsys.readouterr().out


def test_a_bad_value_is_one_line_too(inputs, capsys):
    """A ValueError plm raises about an input (here --min-identity) follows the same rule."""
    assert (
        data_main(
            [
                "cluster",
                "--in",
                str(inputs / "t.fasta"),
                "--out",
                str(inputs / "c.tsv"),
                "--min-identity",
                "1.5",
                "--backend",
                "fallback",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err == "plm data cluster: --min-identity 1.5: must be a fraction in (0, 1]\n"
