"""plm.command: a typed function's signature and docstring are its command line (issue #22)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pytest

from plm.command import Exclusive, Flag, Passthrough, command, docstring_parts

calls: list[tuple] = []


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def basic(
    fasta: str,
    /,
    out: Path,
    num: int = 3,
    mode: Literal["a", "b"] = "a",
    scale: float | None = None,
    quick: bool = False,
    extra: tuple[Path, ...] = (),
    inp: Annotated[str, Flag("--in", "--input")] = "x",
    first: bool = False,
    second: bool = False,
) -> int:
    """Do a thing.

    Longer text.

    Args:
        fasta: the input
        out: where to write
        num: how many
        mode: the mode
        scale: a factor
        quick: go fast
        extra: repeatable extras
        inp: other names
        first: one of two
        second: the other of two
    """
    calls.append(("basic", fasta, out, num, mode, scale, quick, extra, inp))
    return 0


def many(
    pairs: Annotated[tuple[tuple[str, str], ...], Flag(type=_pair, metavar="NAME=VALUE")],
    values: list[str],
    maybe: list[int] | None = None,
) -> None:
    """Lists and parsed values.

    Args:
        pairs: NAME=VALUE, repeatable, at least one
        values: one or more values
        maybe: optional numbers
    """
    calls.append(("many", pairs, values, maybe))


@dataclass(frozen=True)
class Engine:
    """Options two commands share.

    Attributes:
        backend: which engine
        threads: how many threads
        quiet: no progress
    """

    backend: Literal["auto", "fast"] = "auto"
    threads: int = 1
    quiet: bool = False


def with_engine(out: str, engine: Engine) -> int:
    """Uses shared options.

    Args:
        out: where
        engine: engine options
    """
    calls.append(("engine", out, engine))
    return 0


def handing_on(size: str | None = None, rest: Annotated[list[str], Passthrough()] = ()) -> int:  # type: ignore[assignment]
    """Hands what it does not know to another command.

    Args:
        size: a size
        rest: the other command's arguments
    """
    calls.append(("rest", size, rest))
    return 0


def failing(path: str) -> int:
    """Fails like a user error.

    Args:
        path: a file
    """
    raise FileNotFoundError(f"{path}: no such file")


@pytest.fixture(autouse=True)
def _clear():
    calls.clear()


def test_signature_gives_positionals_types_defaults_choices_and_switches():
    main = command(basic, "plm basic", exclusive=[Exclusive("first", "second")])
    assert main(["in.fa", "--out", "o", "--extra", "a", "--extra", "b", "--input", "y", "--quick"]) == 0
    assert calls == [("basic", "in.fa", Path("o"), 3, "a", None, True, [Path("a"), Path("b")], "y")]
    p = main.parser()
    by_dest = {a.dest: a for a in p._actions}
    assert by_dest["out"].required and by_dest["num"].default == 3 and by_dest["mode"].choices == ["a", "b"]
    assert by_dest["extra"].default == [] and by_dest["inp"].option_strings == ["--in", "--input"]
    assert p.description.startswith("Do a thing.") and "how many (default: 3)" in p.format_help()
    with pytest.raises(SystemExit) as exit_:
        main(["in.fa", "--out", "o", "--first", "--second"])
    assert exit_.value.code == 2


def test_required_repeatable_nargs_and_custom_parsing(capsys):
    main = command(many, "plm many")
    main(["--pairs", "a=1", "--values", "x", "y", "--pairs", "b=2", "--maybe", "3", "4"])
    assert calls == [("many", [("a", "1"), ("b", "2")], ["x", "y"], [3, 4])]
    main(["--pairs", "a=1", "--values", "x"])
    assert calls[-1] == ("many", [("a", "1")], ["x"], None)
    by_dest = {a.dest: a for a in main.parser()._actions}
    assert by_dest["pairs"].required and isinstance(by_dest["pairs"], argparse._AppendAction)
    assert by_dest["pairs"].default is None and by_dest["pairs"].metavar == "NAME=VALUE"
    assert by_dest["values"].nargs == "+" and by_dest["values"].required and not by_dest["maybe"].required
    for argv in (["--values", "x"], ["--pairs", "a=1"], ["--pairs", "nope", "--values", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "'nope': expected NAME=VALUE" in capsys.readouterr().err


def test_dataclass_parameter_is_a_group_of_options():
    main = command(with_engine, "plm engine")
    main(["--out", "o", "--backend", "fast", "--threads", "4", "--quiet"])
    assert calls == [("engine", "o", Engine("fast", 4, True))]
    main(["--out", "o"])
    assert calls[-1] == ("engine", "o", Engine())
    p = main.parser()
    group = next(g for g in p._action_groups if g.title == "engine options")
    assert sorted(a.dest for a in group._group_actions) == ["backend", "quiet", "threads"]
    assert "which engine" in p.format_help()


def test_a_dataclass_field_may_not_clash_with_a_parameter():
    def clash(threads: int, engine: Engine) -> int:
        """Clashes.

        Args:
            threads: twice
            engine: options
        """
        return 0

    with pytest.raises(TypeError, match="threads defined twice"):
        command(clash, "plm clash").parser()


def test_passthrough_gets_unknown_arguments_and_all_after_double_dash():
    main = command(handing_on, "plm hand")
    main(["--size", "8m", "--trainer.max_steps", "3", "--", "--size", "x"])
    assert calls == [("rest", "8m", ["--trainer.max_steps", "3", "--size", "x"])]
    assert "the other command's arguments" in main.parser().format_help()


def test_expected_errors_are_one_line_with_debug(capsys):
    main = command(failing, "plm failing", expected=(FileNotFoundError,))
    assert main(["--path", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == "plm failing: nope: no such file\n"
    assert main(["--path", "nope", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_every_parameter_needs_its_docstring_line():
    def undocumented(a: int, b: int = 1) -> int:
        """Half documented.

        Args:
            a: documented
        """
        return 0

    with pytest.raises(TypeError, match="check b"):
        command(undocumented, "plm undocumented").parser()
    assert docstring_parts(Engine)[2] == {
        "backend": "which engine",
        "threads": "how many threads",
        "quiet": "no progress",
    }
