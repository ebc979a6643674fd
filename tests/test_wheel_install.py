"""``pip install .`` (the built wheel, not an editable install) gives a plm that runs from any directory: the
configs, the bundled sample data and the evaluation tasks, subsets and suites ship inside the package
(plm/paths.py, setup.py).

The slow test builds the wheel, installs it into a new virtual environment and runs ``plm`` from a
temporary directory, far from the checkout. Installing plm's dependencies from PyPI takes ~7 minutes
here, so by default the new venv borrows them from the project's environment the way
tests/test_hf_floor.py does (a ``.pth`` file, after the venv's own site-packages), through a directory
of links to everything in it *except* plm (its editable-install finder and metadata): before the wheel is
installed ``import plm`` fails, after it plm is the wheel's copy. ``PLM_WHEEL_TEST_FRESH=1`` installs
the pinned CPU torch and the wheel's dependencies from the package index instead.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plm import paths
from tests.helpers.runs import REPO

TORCH_PIN = "torch==2.13.0"


def _run(cmd: list, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    res = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _borrow_dependencies(venv_python: Path, tmp: Path) -> None:
    """Link every entry of this environment's site-packages except plm into one directory and put that
    directory on the new venv's path (after its own site-packages)."""
    deps = tmp / "deps"
    deps.mkdir()
    for source in Path(site.getsitepackages()[0]).iterdir():
        name = source.name.lower()
        if (
            name == "plm"
            or name.startswith(("plm-", "__editable__", "__editable___plm"))
            or name.endswith(".pth")
        ):
            continue
        (deps / source.name).symlink_to(source)
    purelib = _run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp
    ).stdout
    (Path(purelib.strip()) / "plm_test_deps.pth").write_text(f"{deps}\n")


def _files(top: Path) -> set[Path]:
    return {p.relative_to(top) for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_installed_wheel_trains_from_any_directory(tmp_path):
    start = time.monotonic()
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", wheels],
        REPO,
    )
    (wheel,) = wheels.glob("plm-*.whl")
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    python, plm = venv / "bin" / "python", venv / "bin" / "plm"
    if os.environ.get("PLM_WHEEL_TEST_FRESH") == "1":
        _run([python, "-m", "pip", "install", "-q", TORCH_PIN], tmp_path, timeout=1200)
        _run([python, "-m", "pip", "install", "-q", wheel], tmp_path, timeout=1800)
    else:
        _borrow_dependencies(python, tmp_path)
        missing = subprocess.run([python, "-c", "import plm"], cwd=work, capture_output=True, text=True)
        assert (
            missing.returncode != 0 and "No module named 'plm'" in missing.stderr
        )  # the checkout is not seen
        _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)

    where = _run([python, "-c", "import plm, plm.paths; print(plm.__file__); print(plm.paths.root())"], work)
    module, root = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(root) == Path(module).parent / paths.SHIPPED
    for rel in paths.SHIPPED_DIRS:  # the wheel holds what the checkout holds (pip compiles the .py)
        assert _files(Path(root) / rel) == _files(REPO / rel), rel

    assert "plm commands:" in _run([plm, "--help"], work).stdout
    dry = _run([plm, "train", "--size", "tiny", "--dry-run"], work).stdout
    assert f"{root}/configs/train/mlm.yaml" in dry
    code = (
        "from plm.evaluation.tasks import load_task, resolve_data\n"
        "from plm.evaluation.suites import load_suite\n"
        "load_suite('schmirler2024')\n"
        "files = load_task('gb1').files(small=True)\n"
        "print(resolve_data().bundled, files)"
    )
    tasks = _run([python, "-c", code], work).stdout
    assert tasks.startswith("True") and root in tasks

    # the README's demo command, from elsewhere: --config and the configs' data/sample/… paths resolve to
    # the shipped files
    _run(
        [
            plm,
            "fit",
            "--config",
            "configs/train/tiny.yaml",
            "--config",
            "configs/data/sample.yaml",
            "--data.eval_sets",
            "{cath: data/sample/cath_s40_500.fasta.gz}",
            "--run_root",
            "runs",
            "--run_name",
            "wheel",
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
        ],
        work,
    )
    final = work / "runs" / "wheel" / "final"
    assert (final / "model.safetensors").is_file() or any(final.iterdir())
    metrics = (work / "runs" / "wheel" / "csv" / "metrics.csv").read_text()
    assert "val/cath" in metrics
    print(f"wheel build + install + runs: {time.monotonic() - start:.0f} s")
