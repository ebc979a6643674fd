import csv
import json
import shlex
from pathlib import Path

import pytest
import yaml

from plm.cli import main as plm_main
from plm.scaling.laws import LAWS
from plm.scaling.sweep import auto_sizes, make_jobs, parse_size, write_jobs
from tests.helpers.disk import fill_disk_on


def test_jobs_end_exactly_at_their_budget(tmp_path):
    jobs, notes = make_jobs(
        "clm",
        [1e10, 1e11],
        "1x16,2x32x2,4x128",
        tmp_path,
        row_len=128,
        rows_per_batch=16,
        lr=None,
        min_steps=10,
    )
    assert {(j.layers, j.hidden, j.heads) for j in jobs} == {(1, 16, 1), (2, 32, 2), (4, 128, 4)}
    for job in jobs:
        assert job.tokens == job.steps * 128 * 16
        exact = job.flops / (6 * job.n_params)  # D = C / 6N, rounded up to whole optimizer steps
        assert 0 <= job.tokens - exact < 128 * 16
        assert job.lr == pytest.approx(6e-4)  # peak_lr_for(N) of small models
    assert notes == [
        (
            "skipped 4x128x4 at C = 1e+10: only 2 steps of 2048 tokens (< --min-steps 10); "
            "use smaller sizes or rows"
        )
    ]


def test_size_specs_and_auto_sizes():
    assert (
        parse_size("8m").n_layer == 6 and parse_size("2x64").n_head == 2 and parse_size("2x64x4").n_head == 4
    )
    with pytest.raises(ValueError, match=r"'2x' is neither a ladder size .* nor LxH / LxHxA"):
        parse_size("2x")
    shapes = auto_sizes("clm", 1e21)
    n = [s.n_params_non_embedding() for s in shapes]
    n_opt = LAWS["clm"].n_opt(1e21)
    assert len(shapes) >= 5 and n == sorted(n) and n[0] < n_opt / 4 and n[-1] > 4 * n_opt


def test_print_jobs_writes_configs_and_one_command_per_job(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        plm_main(
            [
                "sweep",
                "--objective",
                "mlm",
                "--budgets",
                "1e10,3e10",
                "--sizes",
                "1x16,1x32",
                "--out",
                str(out),
                "--row-len",
                "128",
                "--rows-per-batch",
                "16",
                "--print-jobs",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        cmd = shlex.split(line)
        assert cmd[1:4] == ["-m", "plm.cli", "fit"] and cmd[cmd.index("--ckpt_path") + 1] == "last"
        cfg = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())
        assert cfg["model"]["class_path"] == "plm.lit.MaskedLM"
        assert (
            cfg["trainer"]["val_check_interval"] == cfg["trainer"]["max_steps"]
        )  # final val loss at the budget
    manifest = json.loads((out / "sweep.json").read_text())["jobs"]
    assert len(manifest) == 4
    # a second objective in the same directory is merged, not overwritten
    assert (
        plm_main(
            [
                "sweep",
                "--objective",
                "clm",
                "--budgets",
                "1e10",
                "--sizes",
                "1x16",
                "--out",
                str(out),
                "--row-len",
                "128",
                "--rows-per-batch",
                "16",
            ]
        )
        == 0
    )
    assert len(json.loads((out / "sweep.json").read_text())["jobs"]) == 5


def test_bad_sweep_arguments_are_clear_errors(tmp_path, capsys):
    assert plm_main(["sweep", "--objective", "clm", "--budgets", "1e10,x", "--out", str(tmp_path)]) == 2
    assert "--budgets '1e10,x'" in capsys.readouterr().err
    assert plm_main(["sweep", "--objective", "clm", "--budgets", "1e10,-1", "--out", str(tmp_path)]) == 2
    assert "positive" in capsys.readouterr().err
    assert (
        plm_main(
            ["sweep", "--objective", "clm", "--budgets", "1e3", "--sizes", "2x64", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "no jobs left" in capsys.readouterr().err
    assert (
        plm_main(
            ["sweep", "--objective", "clm", "--budgets", "1e10", "--out", str(tmp_path), "--parallel", "0"]
        )
        == 2
    )
    assert "positive counts" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_resumes_and_collects(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--objective",
        "clm",
        "--budgets",
        "3e8",
        "--sizes",
        "1x16,1x32",
        "--out",
        str(out),
        "--row-len",
        "64",
        "--rows-per-batch",
        "4",
        "--val-rows",
        "4",
        "--precision",
        "32-true",
        "--min-steps",
        "5",
        "--parallel",
        "2",
        "--threads",
        "1",
        "--run",
    ]
    assert plm_main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["n_params"] for r in rows] == ["3616", "13888"] and all(
        2.0 < float(r["loss"]) < 4.0 for r in rows
    )
    for job in json.loads((out / "sweep.json").read_text())["jobs"]:
        exported = json.loads((out / "runs" / job["name"] / "final" / "config.json").read_text())
        assert exported["global_step"] == job["steps"]  # the schedule ended exactly at the budget
    logs = {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    assert plm_main(args) == 0  # resumable: finished runs are skipped
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == logs
    capsys.readouterr()
    assert plm_main(["fit-laws", str(out)]) == 2  # one budget, two sizes: not enough for a law
    assert "fewer than 3 distinct n_params" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_runs_which_then_resume(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "plm.cli",
        "sweep",
        "--objective",
        "mlm",
        "--budgets",
        "5e9",
        "--sizes",
        "1x16,1x24",
        "--out",
        str(out),
        "--row-len",
        "64",
        "--rows-per-batch",
        "4",
        "--val-rows",
        "4",
        "--precision",
        "32-true",
        "--min-steps",
        "5",
        "--parallel",
        "2",
        "--threads",
        "1",
        "--run",
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not all(
        (out / "runs" / n / "csv" / "metrics.csv").is_file()
        for n in ("mlm-C5.00e09-1x16x1", "mlm-C5.00e09-1x24x1")
    ):
        time.sleep(0.5)  # both runs are training
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=120) == 128 + signal.SIGTERM
    ps = subprocess.run(["pgrep", "-f", str(out / "configs")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # no orphaned run keeps going
    stopped = [r for r in (out / "runs").iterdir() if not (r / "final").exists()]
    assert stopped and all((r / "ckpt" / "last.ckpt").is_file() for r in stopped)  # saved on SIGTERM
    assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2


@pytest.mark.parametrize("name_part", ["sweep.json", ".yaml"])
def test_a_write_that_fails_midway_leaves_the_previous_configs_and_manifest(tmp_path, monkeypatch, name_part):
    """A full disk while writing a job config or sweep.json: the previous file stays whole, no temporaries."""
    jobs, _ = make_jobs(
        "mlm", [1e10], "1x16,1x32", tmp_path, row_len=128, rows_per_batch=16, lr=None, min_steps=10
    )
    write_jobs(tmp_path, jobs, 128, 16, 8, "32-true", 0)
    before = {
        p: p.read_bytes()
        for p in [tmp_path / "sweep.json", *(tmp_path / "configs").iterdir()]
        if name_part in p.name
    }
    more, _ = make_jobs(
        "clm", [1e10], "1x16", tmp_path, row_len=128, rows_per_batch=16, lr=None, min_steps=10
    )
    fill_disk_on(monkeypatch, name_part)
    with pytest.raises(OSError, match="No space left"):
        write_jobs(tmp_path, jobs + more, 128, 16, 8, "32-true", 1)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name]
    assert len(json.loads((tmp_path / "sweep.json").read_text())["jobs"]) == 2
