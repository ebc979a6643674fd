"""Where plm finds the files it ships: the configs, the bundled sample data, the evaluation task YAMLs,
their bundled subsets and the suites. Every module asks here; none computes a repository path itself.

Two layouts, one answer (:func:`root`, the directory the files hang off, laid out like the repository):

* a source checkout (``pip install -e .``, or ``PYTHONPATH`` at the checkout): the files stay where they
  are in the repository: ``configs/``, ``data/sample/``, ``evaluation/{tasks,data,suites}/``;
* an installed wheel: ``setup.py`` copies the same directories (:data:`SHIPPED_DIRS`) into the package as
  ``plm/_shipped/``, found with :mod:`importlib.resources`.

Configs name bundled files relative to that root (``data/sample/cath_s40_500.fasta.gz``), so a relative
path that does not exist from the working directory is looked up under :func:`root` (:func:`resolve`).

This module uses the standard library only: ``setup.py`` reads :data:`SHIPPED_DIRS` from it at build time.
"""

from __future__ import annotations

import functools
import os
from importlib.resources import files
from pathlib import Path

# the package directory the wheel holds the shipped files in (plm/_shipped/<SHIPPED_DIRS>)
SHIPPED = "_shipped"
# repository-relative directories plm reads at run time; the wheel ships exactly these (setup.py)
SHIPPED_DIRS = ("configs", "data/sample", "evaluation/tasks", "evaluation/data", "evaluation/suites")


def package_dir() -> Path:
    """The installed ``plm`` package directory."""
    return Path(str(files("plm")))


@functools.cache
def checkout() -> Path | None:
    """The source checkout plm runs from (it has pyproject.toml and configs/ beside ``plm/``), else None
    (an installed wheel)."""
    top = package_dir().parent
    return top if (top / "pyproject.toml").is_file() and (top / "configs").is_dir() else None


@functools.cache
def root() -> Path:
    """The directory the shipped files hang off: ``plm/_shipped`` in a wheel, else the checkout. When
    neither is there (a broken install) the wheel's location, so errors name where the files should be."""
    shipped = package_dir() / SHIPPED
    if shipped.is_dir():
        return shipped
    return checkout() or shipped


def configs() -> Path:
    """``configs/``: train/, data/, finetune/."""
    return root() / "configs"


def train_config(name: str) -> Path:
    """``configs/train/<name>.yaml`` (mlm, clm, transfer, tiny)."""
    return configs() / "train" / f"{name}.yaml"


def sample_data() -> Path:
    """``data/sample/``: the bundled real sequences (uniprot, metagenomic, cath_s40_500)."""
    return root() / "data" / "sample"


def task_dir() -> Path:
    """``evaluation/tasks/``: one YAML per downstream task."""
    return root() / "evaluation" / "tasks"


def task_data() -> Path:
    """``evaluation/data/``: the bundled task subsets the YAMLs' ``small_data`` paths name."""
    return root() / "evaluation" / "data"


def suite_dir() -> Path:
    """``evaluation/suites/``: the named evaluation protocols."""
    return root() / "evaluation" / "suites"


def ci_data_root() -> Path | None:
    """The CI layout of the full task files, a ``shared/data`` folder next to the checkout's own folder; None when installed."""
    top = checkout()
    return top.parent / "shared" / "data" if top is not None else None


def resolve(path: str | os.PathLike) -> str | os.PathLike:
    """A relative path as given when it exists from the working directory, else the shipped file of that
    name (configs say ``data/sample/…``, runs start anywhere); unchanged when neither exists, so the
    caller's error names the path the user wrote (see :func:`not_found_hint`)."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    shipped = root() / path
    return shipped if shipped.exists() else path


def not_found_hint(path: str | os.PathLike) -> str:
    """Where a missing relative path was looked for, for an error message."""
    if Path(path).is_absolute():
        return ""
    return f" (looked in {Path.cwd()} and in plm's shipped files, {root()})"


def config_args(argv: list[str]) -> list[str]:
    """``argv`` with each relative ``--config``/``-c`` file that does not exist from the working directory
    but is shipped (``--config configs/train/tiny.yaml``) replaced by the shipped file's path."""
    out, take = [], False
    for arg in argv:
        if take:
            out.append(str(resolve(arg)))
            take = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            take = True
        elif arg.startswith("--config="):
            out.append("--config=" + str(resolve(arg.split("=", 1)[1])))
        else:
            out.append(arg)
    return out
