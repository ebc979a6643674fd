"""The test suite's own rule (issue #19, one source of truth): a helper that more than one test module needs
lives once, in tests/helpers/ (fixtures in conftest.py), and test modules import it from there, never from
each other."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.sequences import mutate

TESTS = Path(__file__).resolve().parent
#: a function body at least this long (source lines, docstring excluded) is a helper worth sharing
SHARED_FROM_LINES = 4


def _modules() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(TESTS.rglob("*.py"))}


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [n for n in tree.body if isinstance(n, ast.FunctionDef)]


def _body(fn: ast.FunctionDef) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring may differ
    return body


def _is_test_module(path: Path) -> bool:
    return path.name.startswith("test_")


def test_no_test_module_imports_another():
    found = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            found += [
                f"{path.relative_to(TESTS)} imports {n}"
                for n in names
                if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")
            ]
    assert found == []


def test_no_helper_is_copied_between_test_files():
    """The same function body (whatever the function's name and docstring) in two files of tests/ is one
    helper written twice: it belongs in tests/helpers/."""
    seen: dict[str, str] = {}
    copies = []
    for path, tree in _modules().items():
        for fn in _functions(tree):
            body = _body(fn)
            if not body or body[-1].end_lineno - body[0].lineno + 1 < SHARED_FROM_LINES:
                continue
            key = ast.dump(ast.Module(body=body, type_ignores=[]))
            where = f"{path.relative_to(TESTS)}:{fn.name}"
            if key in seen and seen[key].split(":")[0] != where.split(":")[0]:
                copies.append(f"{where} repeats {seen[key]}")
            seen.setdefault(key, where)
    assert copies == []


def test_helpers_are_not_defined_again_in_test_files():
    """A name tests/helpers/ defines is not defined again (also not as ``_name``) in another file."""
    modules = _modules()
    helpers = {
        fn.name.lstrip("_"): p
        for p, tree in modules.items()
        if p.parent.name == "helpers"
        for fn in _functions(tree)
    }
    again = [
        f"{p.relative_to(TESTS)}:{fn.name} (tests/helpers/{helpers[fn.name.lstrip('_')].name})"
        for p, tree in modules.items()
        if p.parent.name != "helpers"
        for fn in _functions(tree)
        if fn.name.lstrip("_") in helpers
    ]
    assert again == []


def test_mutate_substitutes_exactly_the_asked_share():
    seq = "ACDEFGHIKLMNPQRSTVWY" * 10
    for identity in (1.0, 0.95, 0.8, 0.3):
        out = mutate(seq, identity, seed=3)
        same = sum(a == b for a, b in zip(seq, out, strict=True))
        assert len(out) == len(seq) and same == len(seq) - round((1 - identity) * len(seq))
    assert mutate(seq, 0.8, 1) == mutate(seq, 0.8, 1) != mutate(seq, 0.8, 2)
