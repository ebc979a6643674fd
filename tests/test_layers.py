"""Imports point one way: a package only imports packages of its own rank or below (lazy imports inside
functions included), so the model never needs evaluation code to load, and a general helper never lives in
a layer above the code that uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLM = Path(__file__).resolve().parents[1] / "plm"

# rank of each top-level package or module of plm; the commands (CLIs) sit on top
RANK = {
    "utils": 0,
    "errors": 0,
    "hardware": 0,
    "paths": 0,
    "tokenizer": 0,
    "command": 0,
    "model": 1,
    "reliability": 2,
    "strategies": 2,
    "data": 3,
    "lit": 4,
    "scaling": 5,
    "identity": 5,
    "evaluation": 6,
    "generate": 6,
    "callbacks": 7,
    "__init__": 8,
    "cli": 8,
    "lightning_cli": 8,
    "finetune_cli": 8,
    "convert_cli": 8,
    "train": 8,
    "predict": 8,
    "_shipped": 0,
}


def unit(path: Path) -> str:
    rel = path.relative_to(PLM)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def plm_imports(path: Path) -> set[str]:
    """Top-level plm units a module imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "plm"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("plm.")}
    return found


MODULES = sorted(p for p in PLM.rglob("*.py") if "_shipped" not in p.parts)


def test_every_unit_has_a_rank():
    units = {unit(p) for p in MODULES} | {u for p in MODULES for u in plm_imports(p)}
    assert not sorted(units - RANK.keys()), "give new packages a rank in RANK"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PLM)))
def test_imports_point_down(path):
    mine = RANK[unit(path)]
    upward = sorted(u for u in plm_imports(path) if RANK.get(u, -1) > mine)
    assert not upward, f"{path.relative_to(PLM.parent)} (rank {mine}) imports {upward} from a higher layer"
