"""What the stages of ``plm evaluate`` hand each other: a task made ready to run, the result rows it
yields, and the channel through which the run says what it changed or checked (stderr)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plm.evaluation.options import EvalOptions
from plm.evaluation.tasks import TaskSpec

Row = dict[str, Any]
Note = Callable[[str], None]


def note(message: str) -> None:
    """Tell the user what the run changed or checked about a task (stderr: results.md goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class PreparedTask:
    """A task whose files were read and checked and whose split was drawn and capped: everything its run
    needs except the model, so every task can be checked before the model is loaded."""

    spec: TaskSpec
    opts: EvalOptions
    train: list[Any] = field(default_factory=list)
    test: list[Any] = field(default_factory=list)  # zero-shot: the scored variants
    wildtype: str = ""
    mutations: list[Any] = field(default_factory=list)  # zero-shot: the parsed mutations of each variant
