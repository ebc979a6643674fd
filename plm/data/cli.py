"""``plm data <subcommand>``: one entry point for the data tools, each imported only when called.

The commands belong to the data layer; ``prepare`` is :mod:`plm.data.prepare`, the identity commands
(MMseqs2 or the fallback) are thin mains over the algorithms in :mod:`plm.identity`.
"""

from __future__ import annotations

import importlib
import sys

from plm.command import help_line

#: subcommand → the typed command that runs it; ``plm data --help`` reads each one's help from its docstring
SUBCOMMANDS: dict[str, str] = {
    "prepare": "plm.data.prepare.command:main",
    "decontaminate": "plm.identity.decontaminate:main",
    "split-by-identity": "plm.identity.split:main",
    "cluster": "plm.identity.cluster:main",
}


def usage() -> str:
    lines = ["usage: plm data <subcommand> [options]   (plm data <subcommand> --help)", ""]
    return "\n".join(lines + [f"  {name:<18} {help_line(target)}" for name, target in SUBCOMMANDS.items()])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        print(f"plm data: unknown subcommand {sub!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[sub].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        print(f"plm data {sub}: not available in this installation ({module} is missing)", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(rest) or 0)
