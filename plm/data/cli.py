"""``plm data <subcommand>``: one entry point for the data tools, each imported only when called.

The commands belong to the data layer; ``prepare`` is :mod:`plm.data.prepare`, the identity commands
(MMseqs2 or the fallback) are thin mains over the algorithms in :mod:`plm.identity`.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("plm.data.prepare:main", "tokenize FASTA sources into memory-mapped train/val stores"),
    "decontaminate": (
        "plm.identity.decontaminate:main",
        "remove/list training records similar to evaluation sets",
    ),
    "split-by-identity": (
        "plm.identity.split:main",
        "bin held-out sequences by max identity to training data",
    ),
    "cluster": (
        "plm.identity.cluster:main",
        "cluster a FASTA at a min identity (MMseqs2) into a cluster TSV",
    ),
}


def usage() -> str:
    lines = ["usage: plm data <subcommand> [options]   (plm data <subcommand> --help)", ""]
    return "\n".join(lines + [f"  {name:<18} {help_}" for name, (_, help_) in SUBCOMMANDS.items()])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        print(f"plm data: unknown subcommand {sub!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[sub][0].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        print(f"plm data {sub}: not available in this installation ({module} is missing)", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(rest) or 0)
