"""Commands from typed functions: the signature and the docstring are the command line (issue #22).

A plm command is a plain function; :func:`command` derives its argparse parser and returns the
``main(argv) -> int`` that ``plm <name>`` calls::

    def generate_fasta(checkpoint: str, out: str, num: int = 100, greedy: bool = False) -> int:
        \"\"\"Sample proteins from a CLM checkpoint into a FASTA file.

        Args:
            checkpoint: plm export directory or Lightning .ckpt of a CLM
            out: FASTA file to write
            num: number of sequences
            greedy: arg-max decoding instead of sampling
        \"\"\"

    main = command(generate_fasta, "plm generate", expected=(ValueError, FileNotFoundError))

The rules, all of argparse's own behaviour kept (errors, ``--help``, the flags the docs show):

- a parameter is ``--its-name`` (underscores become dashes); without a default it is required; parameters
  before a ``/`` are positional arguments;
- the type gives ``type=``: ``int``, ``float``, ``str``, ``Path``; ``X | None`` is an optional ``X``;
  ``Literal[...]`` gives ``choices``; ``bool`` (default False) is a switch; ``tuple[X, ...]`` is a repeatable
  option collected in a list (required without a default); ``list[X]`` takes one or more values after the
  flag (``nargs="+"``);
- a parameter whose type is a dataclass contributes the dataclass's fields as options (an argument group
  titled by the parameter's help, each field's help from the dataclass's ``Attributes:`` section) and
  receives the instance: a set of options several commands share is written once;
- the docstring's first paragraph is the description (and the line ``plm --help`` shows); its ``Args:``
  section gives each flag's help — every parameter must have one; a default is appended to the help;
- ``Annotated[T, Flag("--in", "--alias", choices=..., type=parse, metavar=...)]`` sets other option
  strings, choices, or a parser of the text (``type=``, then ``T`` is not checked);
  :class:`Exclusive` groups options;
- ``Annotated[list[str], Passthrough()]`` receives the arguments the parser does not know and everything
  after ``--`` (for a command that hands them on to another);
- ``expected=`` wraps the command in :func:`plm.errors.one_line_errors` and adds ``--debug``.

Defaults therefore live once, in the signature (which may take them from a dataclass).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plm.errors import Main, add_debug_argument, one_line_errors


class Flag:
    """Option strings other than ``--its-name`` (``Annotated[Path, Flag("--in")]``), choices kept in a
    constant elsewhere (``Annotated[str, Flag(choices=OBJECTIVES)]``), or a parser of the option's text
    (``Annotated[int, Flag(type=parse_size, metavar="SIZE")]``, argparse's ``type=``)."""

    def __init__(
        self,
        *names: str,
        choices: Sequence[str] | None = None,
        type: Callable[[str], Any] | None = None,
        metavar: str | None = None,
    ) -> None:
        self.names, self.choices, self.type, self.metavar = names, choices, type, metavar


class Passthrough:
    """Marks the parameter (``Annotated[list[str], Passthrough()]``) that receives the arguments the parser
    does not know and everything after ``--``, for a command that hands them on (``plm train`` → ``plm fit``)."""


class Exclusive:
    """Parameters of which at most one (``required``: exactly one) may be given."""

    def __init__(self, *params: str, required: bool = False) -> None:
        self.params, self.required = params, required


def docstring_parts(func: Callable) -> tuple[str, str, dict[str, str]]:
    """(summary, description, {parameter: help}) of a Google-style docstring."""
    doc = inspect.cleandoc(func.__doc__ or "")
    body, *section = re.split(r"^(?:Args|Attributes):\n", doc, maxsplit=1, flags=re.MULTILINE)
    args, body = (section[0] if section else ""), body.strip()
    helps: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        if line.strip() and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        m = re.match(r"^ {4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if m:
            name, helps[m.group(1)] = m.group(1), m.group(2)
        elif name and line.strip():
            helps[name] += " " + line.strip()
    summary = " ".join(body.split("\n\n")[0].split())
    return summary, body, helps


def _argument(name: str, hint: Any, default: Any, help_: str, positional: bool) -> tuple[list[str], dict]:
    names: Sequence[str] = ["--" + name.replace("_", "-")]
    kwargs: dict[str, Any] = {"help": help_}
    parse = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        for flag in (e for e in extras if isinstance(e, Flag)):
            names = flag.names or names
            if flag.choices is not None:
                kwargs["choices"] = list(flag.choices)
            if flag.metavar is not None:
                kwargs["metavar"] = flag.metavar
            parse = flag.type or parse
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        hint
    )
    if optional:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        if default is not False:
            raise TypeError(f"{name}: a bool option is a switch and must default to False")
        return list(names), {**kwargs, "action": "store_true", "dest": name}
    if typing.get_origin(hint) in (tuple, list):
        if typing.get_origin(hint) is tuple:
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+"
        hint = typing.get_args(hint)[0]
        if default is not inspect.Parameter.empty:
            kwargs["default"] = None if default is None else list(default)
        elif not positional:
            kwargs["required"] = True
    elif default is inspect.Parameter.empty:
        if not positional:
            kwargs["required"] = True
    else:
        kwargs["default"] = default
    if parse is not None:
        kwargs["type"] = parse
    elif typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(hint))
    elif hint in (int, float, Path):
        kwargs["type"] = hint
    elif hint is not str:
        raise TypeError(f"{name}: unsupported type {hint!r} for a command-line option")
    shown = not any(default is v for v in (None, False, inspect.Parameter.empty)) and default not in ((), "")
    if shown and "default" not in help_:
        kwargs["help"] = f"{help_} (default: %(default)s)"
    if positional:
        return [name], kwargs
    return list(names), {**kwargs, "dest": name}


def _is_passthrough(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Annotated and any(
        isinstance(e, Passthrough) for e in typing.get_args(hint)[1:]
    )


def _options(func: Callable) -> dict[str, tuple[Any, Any, str, bool]]:
    """``{dest: (hint, default, help, positional)}`` of every option ``func`` takes, its dataclass
    parameters expanded into their fields; checks that the docstrings document exactly the parameters."""
    hints = typing.get_type_hints(func, include_extras=True)
    params = inspect.signature(func).parameters
    _, _, helps = docstring_parts(func)
    missing = [n for n in params if n not in helps] + [
        f"{n} (not a parameter)" for n in helps if n not in params
    ]
    if missing:
        raise TypeError(
            f"{func.__qualname__}: the docstring's Args section must document exactly the parameters; "
            f"check {', '.join(missing)}"
        )
    options: dict[str, tuple[Any, Any, str, bool]] = {}
    for name, param in params.items():
        if _is_passthrough(hints[name]):
            continue
        found = (
            _options(hints[name])
            if dataclasses.is_dataclass(hints[name])
            else {
                name: (
                    hints[name],
                    param.default,
                    helps[name],
                    param.kind is inspect.Parameter.POSITIONAL_ONLY,
                )
            }
        )
        twice = sorted(set(found) & set(options))
        if twice:
            raise TypeError(f"{func.__qualname__}: option(s) {', '.join(twice)} defined twice")
        options.update(found)
    return options


def build_parser(
    func: Callable,
    prog: str,
    expected: bool = False,
    exclusive: Sequence[Exclusive] = (),
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """The argparse parser of ``func`` (see the module docstring for the rules)."""
    _, body, helps = docstring_parts(func)
    hints = typing.get_type_hints(func, include_extras=True)
    options = _options(func)
    rest = [f"other arguments, and all after --: {helps[n]}" for n, h in hints.items() if _is_passthrough(h)]
    epilog = "\n\n".join(e for e in (epilog, *rest) if e) or None
    p = argparse.ArgumentParser(
        prog=prog,
        description=description or body,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, Any] = {}
    for g in exclusive:
        group = p.add_mutually_exclusive_group(required=g.required)
        groups.update(dict.fromkeys(g.params, group))
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint) and name in helps:  # its fields: one titled group
            group = p.add_argument_group(helps[name])
            groups.update({field: group for field in _options(hint) if field not in groups})
    for name, (hint, default, help_, positional) in options.items():
        names, kwargs = _argument(name, hint, default, help_, positional)
        groups.get(name, p).add_argument(*names, **kwargs)
    if expected:
        add_debug_argument(p)
    return p


def _arguments(func: Callable, args: dict[str, Any], rest: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments of ``func`` from the parsed ``args``: dataclass parameters built
    from their fields, the passthrough parameter given ``rest``."""
    hints = typing.get_type_hints(func, include_extras=True)
    positional, keywords = [], {}
    for name, param in inspect.signature(func).parameters.items():
        if dataclasses.is_dataclass(hints[name]):
            inner, named = _arguments(hints[name], args, rest)
            value = hints[name](*inner, **named)
        elif _is_passthrough(hints[name]):
            value = rest
        else:
            value = args[name]
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(value)
        else:
            keywords[name] = value
    return positional, keywords


def command(
    func: Callable[..., int | None],
    prog: str,
    *,
    expected: tuple[type[BaseException], ...] | None = None,
    exclusive: Sequence[Exclusive] = (),
    description: str | None = None,
    epilog: str | None = None,
) -> Main:
    """``main(argv) -> int`` for the typed ``func``: parse ``argv`` with the derived parser, call ``func``.

    ``expected``: exceptions that print as one line with exit code 2 (and ``--debug``), as
    :func:`plm.errors.one_line_errors`; ``description`` replaces the docstring's text in ``--help``.
    """

    def parser() -> argparse.ArgumentParser:
        return build_parser(func, prog, expected is not None, exclusive, description, epilog)

    def main(argv: list[str]) -> int:
        rest: list[str] = []
        if any(_is_passthrough(h) for h in typing.get_type_hints(func, include_extras=True).values()):
            if "--" in argv:
                argv, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
            namespace, unknown = parser().parse_known_args(argv)
            rest = unknown + rest
        else:
            namespace = parser().parse_args(argv)
        positional, keywords = _arguments(func, vars(namespace), rest)
        return int(func(*positional, **keywords) or 0)

    if expected is not None:
        main = one_line_errors(prog, expected)(main)
    main.parser = parser  # type: ignore[attr-defined]
    main.function = func  # type: ignore[attr-defined]
    main.__doc__ = func.__doc__
    return main


def help_line(target: str) -> str:
    """The one-line help of the command at ``"module:main"``: the first paragraph of the typed function that
    ``main = command(func, …)`` wraps, read from the source without importing it (so a dispatcher's
    ``--help`` lists its commands without loading torch); empty when the target is not such a command."""
    import ast
    import importlib.util

    module, func = target.split(":")
    spec = importlib.util.find_spec(module)
    if not (spec and spec.origin):
        return ""
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == [func]
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "command"
            and node.value.args
            and isinstance(node.value.args[0], ast.Name)
        ):
            func = node.value.args[0].id
    doc = next(
        (ast.get_docstring(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None
    )
    if not doc:
        return ""
    first = " ".join(doc.split("\n\n")[0].split()).rstrip(".").replace("``", "")
    word = first.split(" ", 1)[0]
    return first[:1].lower() + first[1:] if word[1:].islower() else first  # "Compute …", not "IsoFLOP …"
