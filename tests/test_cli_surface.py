"""The public command-line surface of ``plm`` is frozen: a change to it is deliberate (issue #22).

Every command `plm --help` lists (and every `plm data` subcommand) is called with its parser caught at its
first parse, so nothing runs; each parser's options are read from the parser object — option strings,
required, nargs, choices, default, action kind — together with its mutually exclusive groups. Positional
arguments keep their order; options are sorted (their order only shows in --help). For the
LightningCLI commands (fit, validate, test, finetune) only the top-level options are frozen (--config,
--run_name, --ckpt_path …), not the model/data/trainer fields, which follow the classes. Help texts are
not frozen: rewording one is not a change of surface.

The result is compared with tests/fixtures/cli_surface.json. After a deliberate change, regenerate it with

    PLM_UPDATE_CLI_SURFACE=1 .venv/bin/python -m pytest tests/test_cli_surface.py

and commit the new snapshot with the change.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "cli_surface.json"
UPDATE_ENV = "PLM_UPDATE_CLI_SURFACE"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/test_cli_surface.py"


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _catch(self, *args, **kwargs):
    raise _Caught(self)


def caught_parser(argv: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The parser `plm <argv>` parses its arguments with (argparse or jsonargparse), caught before parsing."""
    import jsonargparse

    from plm.cli import main

    with monkeypatch.context() as m:
        for cls in (argparse.ArgumentParser, jsonargparse.ArgumentParser):
            m.setattr(cls, "parse_args", _catch)
            m.setattr(cls, "parse_known_args", _catch)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                main(argv)
        except _Caught as caught:
            return caught.parser
    raise AssertionError(f"plm {' '.join(argv)} finished without parsing its arguments")


def _plain(value: Any) -> Any:
    """A default as JSON: paths as strings, anything else not JSON-native by its type name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def _action(action: argparse.Action) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "flags": list(action.option_strings) or [action.dest],
        "kind": type(action).__name__.strip("_"),
    }
    if action.required:
        entry["required"] = True
    if action.nargs is not None:
        entry["nargs"] = action.nargs
    if action.choices is not None:
        entry["choices"] = sorted(map(str, action.choices))
    if action.option_strings and action.default is not None and action.default != argparse.SUPPRESS:
        entry["default"] = _plain(action.default)
    return entry


def parser_surface(parser: argparse.ArgumentParser, top_level_only: bool = False) -> dict[str, Any]:
    """Options (``top_level_only``: those whose dest has no dot, for LightningCLI) and exclusive groups."""
    actions = [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction)
        and not (top_level_only and "." in a.dest)
        and not isinstance(a, argparse._SubParsersAction)
    ]
    positionals = [_action(a) for a in actions if not a.option_strings]  # in order: the order is the surface
    options = sorted(
        (_action(a) for a in actions if a.option_strings), key=lambda o: o["flags"][-1].lstrip("-")
    )
    surface: dict[str, Any] = {
        "options": positionals + options
    }  # options sorted: their order is only --help's
    groups = [
        {"flags": sorted(f for a in g._group_actions for f in a.option_strings), "required": g.required}
        for g in parser._mutually_exclusive_groups
    ]
    if groups:
        surface["exclusive"] = groups
    return surface


def _lightning_subcommands(parser) -> dict[str, Any]:
    sub = parser._subcommands_action
    return {name: parser_surface(p, top_level_only=True) for name, p in sub._name_parser_map.items()}


LIGHTNING_ONLY = ("fit", "validate", "test", "finetune")


def collect(monkeypatch, lightning: bool) -> dict[str, Any]:
    """``{command: surface}`` for the plain plm commands (`plm data <sub>` as ``"data <sub>"``) or, with
    ``lightning``, for the LightningCLI ones (which pay the Lightning imports, ~10 s on a cold CPU)."""
    from plm.cli import COMMANDS, LIGHTNING_SUBCOMMANDS
    from plm.data.cli import SUBCOMMANDS

    if lightning:
        surface = _lightning_subcommands(caught_parser([LIGHTNING_SUBCOMMANDS[0]], monkeypatch))
        surface = {name: surface[name] for name in LIGHTNING_SUBCOMMANDS}
        surface["finetune"] = _lightning_subcommands(caught_parser(["finetune"], monkeypatch))["fit"]
        return surface
    surface: dict[str, Any] = {
        "commands": sorted([*LIGHTNING_SUBCOMMANDS, *COMMANDS]),
        "data subcommands": sorted(SUBCOMMANDS),
    }
    for name in COMMANDS:
        if name == "data":
            for sub in SUBCOMMANDS:
                surface[f"data {sub}"] = parser_surface(caught_parser(["data", sub], monkeypatch))
        elif name != "finetune":
            surface[name] = parser_surface(caught_parser([name], monkeypatch))
    return surface


def _ordered(surface: dict[str, Any]) -> dict[str, Any]:
    lists = [k for k in surface if not isinstance(surface[k], dict)]
    return {k: surface[k] for k in [*sorted(lists), *sorted(k for k in surface if k not in lists)]}


def _dump(surface: dict[str, Any]) -> str:
    """One option per line, so a diff names the option that changed."""
    lines = ["{"]
    items = list(surface.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict):
            lines.append(f"  {json.dumps(key)}: {{")
            parts = list(value.items())
            for j, (k, v) in enumerate(parts):
                inner = ",\n".join(f"      {json.dumps(x, ensure_ascii=False)}" for x in v)
                lines.append(f"    {json.dumps(k)}: [\n{inner}\n    ]" + ("," if j < len(parts) - 1 else ""))
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    return "\n".join(lines) + "\n}\n"


@pytest.fixture(scope="module")
def surface():
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield collect(monkeypatch, lightning=False)


@pytest.fixture(scope="module")
def lightning_surface():
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield collect(monkeypatch, lightning=True)


def _compare(part: dict[str, Any]) -> None:
    """``part`` (some of the commands) against the snapshot; with PLM_UPDATE_CLI_SURFACE=1, write it in."""
    frozen_text = SNAPSHOT.read_text() if SNAPSHOT.exists() else "{}"
    frozen = json.loads(frozen_text)
    if os.environ.get(UPDATE_ENV, "").strip() not in ("", "0"):
        SNAPSHOT.write_text(_dump(_ordered({**frozen, **part})))
        return
    lightning = set(part) <= set(LIGHTNING_ONLY)
    ours = {k: v for k, v in frozen.items() if (k in LIGHTNING_ONLY) == lightning}
    now, before = _dump(_ordered(part)), _dump(_ordered(ours))
    if now != before:
        diff = "".join(
            difflib.unified_diff(
                before.splitlines(True), now.splitlines(True), f"{SNAPSHOT.name} (frozen)", "the parsers now"
            )
        )
        pytest.fail(
            f"the plm command-line surface changed:\n{diff}\nIf the change is deliberate, regenerate the "
            f"snapshot and commit it with the change:\n    {REGENERATE}",
            pytrace=False,
        )


def test_plain_commands_are_the_frozen_ones(surface):
    assert json.loads(_dump(_ordered(surface))) == surface  # the dump is JSON and loses nothing
    _compare(surface)


def test_lightning_commands_top_level_options_are_the_frozen_ones(lightning_surface):
    assert any(opt["flags"] == ["--run_name"] for opt in lightning_surface["fit"]["options"])
    _compare(lightning_surface)


def test_every_command_is_frozen(surface):
    """Every command `plm --help` lists has a parser here (a new command joins the snapshot)."""
    from plm.cli import COMMANDS, LIGHTNING_SUBCOMMANDS, usage

    listed = usage()
    for name in [*LIGHTNING_SUBCOMMANDS, *COMMANDS]:
        assert f"  {name} " in listed
        assert name in surface or name in ("data", *LIGHTNING_ONLY)
    assert any(opt["flags"] == ["--max-length"] for opt in surface["generate"]["options"])


def test_help_lines_come_from_the_typed_functions():
    """`plm --help` and `plm data --help` list each typed command with its function's docstring, so a
    command's description is written once; only the Lightning-based finetune states its own line."""
    from plm.cli import COMMAND_HELP, COMMANDS, summary
    from plm.command import docstring_parts, help_line
    from plm.data.cli import SUBCOMMANDS, usage

    typed = {name: target for name, target in COMMANDS.items() if name not in (*COMMAND_HELP, "data")}
    for name, target in {**typed, **SUBCOMMANDS}.items():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        first = docstring_parts(main.function)[0].rstrip(".").replace("``", "")
        assert help_line(target).lower() == first.lower(), name
    assert all(summary(name) for name in COMMANDS)
    listed = usage()
    assert all(f"  {name:<18} {help_line(target)}" in listed for name, target in SUBCOMMANDS.items())
