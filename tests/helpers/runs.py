"""The checkout's root and a real ``plm fit`` of the tiny config in a subprocess, for tests that train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fit_tiny(tmp_path: Path, name: str, *extra: str, env: dict | None = None) -> Path:
    """``plm fit --config configs/train/tiny.yaml`` under ``tmp_path/name`` (``extra`` appended); the run."""
    cmd = [sys.executable, "-m", "plm.cli", "fit", "--config", str(REPO / "configs/train/tiny.yaml"),
           "--run_root", str(tmp_path), "--run_name", name, "--trainer.log_every_n_steps", "1", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / name
