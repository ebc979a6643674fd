"""Shared by the fault scenarios: the real ``plm fit`` in a subprocess (tiny preset, CPU) and its logs (the
small in-process fit is :func:`tests.helpers.runs.fit_inprocess`)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from plm.reliability.checkpoint_io import sidecar_path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "train" / "tiny.yaml"


def fit_cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "plm.cli",
        "fit",
        "--config",
        str(TINY),
        "--run_root",
        str(root),
        "--run_name",
        name,
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


def env(**more: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **more}


def run_fit(
    root: Path, name: str, *extra: str, expect: int | None = 0, timeout: float = 600
) -> subprocess.CompletedProcess:
    res = subprocess.run(
        fit_cmd(root, name, *extra),
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )
    if expect is not None:
        assert res.returncode == expect, f"exit {res.returncode}:\n{res.stderr[-3000:]}"
    return res


def start_fit(root: Path, name: str, *extra: str, step: int, new_session: bool = False) -> subprocess.Popen:
    """Start a fit (in its own process group when ``new_session``) and return once the checkpoint of
    ``step`` and its checksum are on disk."""
    proc = subprocess.Popen(
        fit_cmd(root, name, *extra),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    target = sidecar_path(root / name / "ckpt" / f"step{step:08d}.ckpt")
    deadline = time.monotonic() + 300
    while not target.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"fit ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"no checkpoint for step {step} after 300 s"
        time.sleep(0.02)
    return proc


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def logged_steps(run: Path, metric: str) -> list[int]:
    """The ``step`` of every row that holds ``metric``, in file order."""
    return [int(r["step"]) for r in metric_rows(run) if r.get(metric)]
