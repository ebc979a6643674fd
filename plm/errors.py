"""Expected failures said in one line, tracebacks only when asked for.

A wrong path, a missing column or a malformed YAML is the user's to fix, and the message already names
the file and the fix; wrapped in a traceback it reads like a crash in plm and the one useful line is easy
to miss. A command declares which exceptions are expected by wrapping its ``main(argv) -> int`` in
:func:`one_line_errors`: those print as ``<prog>: <message>`` on stderr with exit code 2, and
``--debug`` (or ``PLM_DEBUG=1``) prints the traceback as well. Anything not declared is a bug and keeps
its traceback.

Adopting it in another command takes two lines::

    @one_line_errors("plm score", expected=(FileNotFoundError, ValueError))
    def main(argv: list[str]) -> int: ...

plus :func:`add_debug_argument` on its parser so ``--debug`` is accepted and listed in ``--help``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ENV_VAR = "PLM_DEBUG"
DEBUG_FLAG = "--debug"
EXIT_CODE = 2  # argparse's code for bad usage: the input, not the program, is wrong

Main = Callable[[list[str]], int]


class PlmError(Exception):
    """An expected failure (bad or missing input) whose message names the file and the fix."""


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """``--debug`` among the options (before a ``--``) or ``PLM_DEBUG`` set to anything but 0/false/no."""
    options = list(argv)[: list(argv).index("--")] if "--" in argv else list(argv)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return DEBUG_FLAG in options or env not in ("", "0", "false", "no")


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"on an expected error also print the Python traceback (or set {ENV_VAR}=1)",
    )


def one_line(err: BaseException) -> str:
    """The exception's message (its type when it has none), for ``<prog>: <message>``."""
    text = str(err).strip()
    return text or type(err).__name__


def report(prog: str, err: BaseException, debug: bool, message: str | None = None) -> int:
    """Print ``<prog>: <message>`` (after the traceback when ``debug``) and return the exit code;
    ``message`` replaces the exception's own (e.g. to say what a library's error means)."""
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{prog}: {message or one_line(err)}", file=sys.stderr)
    return EXIT_CODE


def strip_debug(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug`` (before a ``--``), for parsers that do not know the flag (LightningCLI)."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    return [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]


PACKAGE_DIR = Path(__file__).resolve().parent


def raised_in_package(err: BaseException) -> bool:
    """True when plm's own code raised ``err`` (the innermost traceback frame is in the plm package): a
    ``ValueError`` plm raises about an input is expected; one from deep inside a library is a bug."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def one_line_errors(prog: str, expected: tuple[type[BaseException], ...] = ()) -> Callable[[Main], Main]:
    """Decorate a command's ``main(argv)``: :class:`PlmError` and the ``expected`` types become one line
    and exit code 2 (see the module docstring)."""
    caught = (PlmError, *expected)

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(argv)
            except caught as err:
                return report(prog, err, debug_requested(argv))

        return run

    return wrap
