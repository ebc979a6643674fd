"""The run loop of ``plm evaluate``: every task read and checked before the model is loaded, then the
tasks run in turn with results.csv/.md rewritten after each.

Checking first means a broken task costs seconds, not the hour of tasks before it; writing after each
task means a later failure keeps what finished. Both the CLI and the suites drive runs through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plm.errors import PlmError
from plm.evaluation.contacts import run_contacts
from plm.evaluation.datasets import load_records, load_structures
from plm.evaluation.options import EvalOptions, layered
from plm.evaluation.prepared import Note, PreparedTask, Row, note
from plm.evaluation.results import write_results
from plm.evaluation.splits import near_duplicate_note, split_records, split_structures
from plm.evaluation.supervised import run_supervised
from plm.evaluation.tasks import DataSource, TaskSpec, load_task, resolve_data
from plm.evaluation.zero_shot_task import prepare_zero_shot, run_zero_shot
from plm.model.transformer import Transformer


def task_options(
    spec: TaskSpec, max_seq_len: int, overrides: Mapping[str, Any] | None = None
) -> tuple[EvalOptions, dict[str, str]]:
    """The task's options (plm's defaults < the YAML's ``defaults`` < ``overrides``) and where each came
    from, so a cap that applies can say who set it."""
    return layered(spec.defaults, spec.source.name, max_seq_len, overrides)


def prepare_task(
    spec: TaskSpec,
    source: DataSource,
    max_seq_len: int,
    overrides: Mapping[str, Any] | None = None,
    say: Note = note,
) -> PreparedTask:
    """Read and check the task's files, draw its split and apply its caps (all said when they apply)."""
    files = spec.files_in(source)
    opts, origins = task_options(spec, max_seq_len, overrides)
    if spec.kind == "zero_shot":
        return prepare_zero_shot(spec, files, opts, origins, say)
    if spec.kind == "contacts":
        train, test = split_structures(
            spec, load_structures(spec, files, opts.max_len), opts.max_test, opts.seed, say, origins
        )
    else:
        train, test = split_records(
            spec,
            load_records(spec, files, opts.max_len),
            opts.max_train,
            opts.max_test,
            opts.seed,
            say,
            origins,
        )
    say(near_duplicate_note(spec, train, test))
    return PreparedTask(spec, opts, train, test)


def prepare_all(
    names: list[str],
    task_dir: str | None,
    source: DataSource,
    max_seq_len: int,
    overrides: Mapping[str, Any] | None = None,
    say: Note = note,
) -> list[PreparedTask]:
    """Every task read and checked before the model is loaded; every broken task reported at once, because
    a bad file found after an hour of other tasks costs that hour."""
    tasks, problems = [], []
    for name in names:
        try:
            tasks.append(prepare_task(load_task(name, task_dir), source, max_seq_len, overrides, say))
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise PlmError(problems[0])
    if problems:
        raise PlmError(
            f"{len(problems)} of {len(names)} tasks cannot run (nothing was evaluated):\n  "
            + "\n  ".join(problems)
        )
    return tasks


def run_prepared(
    task: PreparedTask,
    model: Transformer,
    objective: str,
    mode: str = "frozen",
    progress: bool = True,
    scores_dir: Path | None = None,
) -> list[Row]:
    """Evaluate one prepared task; every row records the task's seed (``scores_dir``: zero-shot tasks'
    per-variant scores)."""
    if task.spec.kind == "zero_shot":
        rows = run_zero_shot(task, model, objective, progress, scores_dir)
    elif task.spec.kind == "contacts":
        rows = run_contacts(task, model, objective, mode, progress)
    else:
        rows = run_supervised(task, model, objective, mode, progress)
    return [{**r, "seed": task.opts.seed} for r in rows]


def run_task(
    spec: TaskSpec,
    model: Transformer,
    objective: str,
    mode: str = "frozen",
    data_root: str | Path | None = None,
    small: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[Row]:
    """Evaluate one task; ``overrides`` replace the YAML's defaults (epochs, max_train, …)."""
    source = resolve_data(data_root, small)
    if source.note:
        note(source.note)
    task = prepare_task(spec, source, model.config.max_seq_len, overrides)
    return run_prepared(task, model, objective, mode, progress)


def run_all(
    tasks: list[PreparedTask],
    model: Transformer,
    objective: str,
    mode: str,
    out: Path,
    meta: dict[str, Any],
    title: str = "",
    progress: bool = True,
) -> list[Row]:
    """Run the tasks in turn, rewriting results.csv/.md after each, so a failure keeps what finished."""
    rows: list[Row] = []
    write_results(rows, out, title)  # no stale rows of an earlier run under this run's title
    for done, task in enumerate(tasks):
        try:
            rows += [{**r, **meta} for r in run_prepared(task, model, objective, mode, progress)]
        except Exception:
            if done:
                note(
                    f"plm evaluate: task {task.spec.name} failed; the {done} task(s) before it are in {out / 'results.csv'}"
                )
            raise
        write_results(rows, out, title)
    return rows
