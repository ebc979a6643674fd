"""The ``plm`` command: LightningCLI for fit/validate/test, plain subcommands for the rest.

Plain subcommands are a table of ``name → "module:function"``; each function takes ``argv`` and returns
an exit code, and is imported only when called so ``plm --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")

COMMANDS: dict[str, str] = {
    "train": "plm.train:main",
    "plan": "plm.scaling.plan:main",
    "sweep": "plm.scaling.sweep:main",
    "fit-laws": "plm.scaling.fit:main",
    "evaluate": "plm.evaluation.runner:main",
    "finetune": "plm.finetune_cli:main",
    "predict": "plm.predict:main",
    "data": "plm.data.cli:main",
    "generate": "plm.generate.cli:main",
    "score": "plm.generate.score:main",
    "convert": "plm.convert_cli:main",
}

#: ``plm --help`` line of the LightningCLI-based command; the typed commands' lines come from their docstrings
COMMAND_HELP: dict[str, str] = {
    "finetune": "fine-tune on a task YAML like plm fit (frozen / LoRA / full, resume) → a kept model in final/",
}


def summary(name: str) -> str:
    """The ``plm --help`` line of a command: its typed function's docstring (:func:`plm.command.help_line`),
    or for the dispatchers and Lightning commands the line they state."""
    from plm.command import help_line

    if name == "data":
        from plm.data.cli import SUBCOMMANDS

        return f"data tools: {', '.join(SUBCOMMANDS)} (plm data --help)"
    return COMMAND_HELP.get(name) or help_line(COMMANDS[name])


def _lightning_cli(args: list[str]) -> int:
    """``plm fit|validate|test``: :func:`plm.lightning_cli.main` (imported only when called)."""
    from plm.lightning_cli import main as lightning_main

    return lightning_main(args)


def usage() -> str:
    lines = ["usage: plm <command> [options]", "", "Lightning commands (plm <command> --help):"]
    lines += [
        f"  {c:<16} LightningCLI {c} (--config configs/train/mlm.yaml …)" for c in LIGHTNING_SUBCOMMANDS
    ]
    lines += ["", "plm commands:"]
    lines += [f"  {name:<16} {summary(name)}" for name in COMMANDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_SUBCOMMANDS:
        return _lightning_cli([command, *rest])
    if command not in COMMANDS:
        print(f"plm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[command].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


def entry(argv: Any = None) -> None:  # pragma: no cover - console script shim
    raise SystemExit(main(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
