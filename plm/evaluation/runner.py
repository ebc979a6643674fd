"""``plm evaluate``: run task YAMLs against one backbone and write results.csv + results.md.

This module is the command (the typed function :func:`evaluate`, whose signature and docstring are its
arguments, see :mod:`plm.command`); the stages live beside it: task data
(:mod:`~plm.evaluation.datasets`, formats registered in :mod:`~plm.evaluation.formats`), the options each
task runs with (:mod:`~plm.evaluation.options`), splits
(:mod:`~plm.evaluation.splits`), the run loop (:mod:`~plm.evaluation.loop`), one module per task kind
(:mod:`~plm.evaluation.supervised`, :mod:`~plm.evaluation.zero_shot_task`, :mod:`~plm.evaluation.contacts`),
the model (:mod:`~plm.evaluation.backbone`) and the result files (:mod:`~plm.evaluation.results`). Their
names stay importable from here, where callers have always found them.

Per task kind: supervised tasks train a head (frozen probe on cached embeddings, LoRA or full
fine-tuning through ``plm.evaluation.finetune.FineTune``), ``zero_shot`` scores DMS variants without labels,
``contacts`` fits the ESM attention logistic regression (or a pairwise head) on training chains and
reports precision at L, L/2, L/5 on the rest.

A run reads and checks every task's files (columns, labels, mutations, the split) before it loads the
model, so a broken task costs seconds, not the tasks before it; then it writes results.csv/.md after each
task, so a later failure keeps what finished. Each row says what was evaluated (trained or random
weights, the checkpoint's step, the objective, the seed, full or bundled data). Anything the run changes
about a task (a cap on examples, training records dropped as duplicates of test ones) is printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from plm.command import command
from plm.errors import PlmError
from plm.evaluation.backbone import embed, load_backbone, pad_tokens, read_objective
from plm.evaluation.contacts import attention_maps, run_contacts
from plm.evaluation.datasets import load_multilabel, load_records, load_structures
from plm.evaluation.loop import (
    prepare_all,
    prepare_task,
    run_all,
    run_prepared,
    run_task,
    task_options,
)
from plm.evaluation.options import EvalOptions, Mode
from plm.evaluation.prepared import Note, PreparedTask, Row, note
from plm.evaluation.results import FIELDS, run_metadata, write_results
from plm.evaluation.splits import (
    MAX_NAMED,
    NEAR_IDENTITY,
    cap_note,
    capped,
    near_duplicate_note,
    split_by_rule,
    split_records,
    split_structures,
    without_test_overlap,
)
from plm.evaluation.supervised import _pad_stack, fit_head, make_batches, predict, probe_rows, run_supervised
from plm.evaluation.tasks import DataSource, resolve_data
from plm.evaluation.zero_shot_task import prepare_zero_shot, run_zero_shot
from plm.model.record import Objective

__all__ = [
    "FIELDS",
    "MAX_NAMED",
    "NEAR_IDENTITY",
    "EvalOptions",
    "Note",
    "PreparedTask",
    "Row",
    "_pad_stack",
    "attention_maps",
    "build_parser",
    "cap_note",
    "capped",
    "embed",
    "evaluate",
    "fit_head",
    "load_backbone",
    "load_multilabel",
    "load_records",
    "load_structures",
    "main",
    "make_batches",
    "near_duplicate_note",
    "note",
    "pad_tokens",
    "predict",
    "prepare_all",
    "prepare_task",
    "prepare_zero_shot",
    "probe_rows",
    "read_objective",
    "run_all",
    "run_contacts",
    "run_metadata",
    "run_prepared",
    "run_suite_command",
    "run_supervised",
    "run_task",
    "run_zero_shot",
    "split_by_rule",
    "split_records",
    "split_structures",
    "task_options",
    "without_test_overlap",
    "write_results",
]


def run_suite_command(
    suite: str,
    checkpoint: str,
    out: Path,
    source: DataSource,
    overrides: Mapping[str, Any],
    objective: str | None,
    progress: bool,
    random_init_control: bool,
    seeds: str | None,
) -> int:
    """``--suite``: the suite's tasks over its seeds, with its random-init control unless refused."""
    from plm.evaluation.suites import load_suite, run_suite

    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    run_suite(
        load_suite(suite),
        checkpoint,
        out,
        source,
        overrides,
        objective,
        progress,
        None if random_init_control else False,
        seed_list,
    )
    print((out / "results.md").read_text())
    return 0


def evaluate(
    *,
    checkpoint: str,
    tasks: str | None = None,
    suite: str | None = None,
    seeds: str | None = None,
    no_random_init_control: bool = False,
    out: Path,
    mode: Mode = "frozen",
    data_root: str | None = None,
    small: bool = False,
    task_dir: str | None = None,
    random_init: bool = False,
    objective: Objective | None = None,
    epochs: int | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int | None = None,
    layer: int | None = None,
    threads: int | None = None,
    no_progress: bool = False,
) -> int:
    """Evaluate a checkpoint on downstream tasks (probes, LoRA, zero-shot DMS, contacts) → results.csv/.md.

    Checks the checkpoint and every task's data, then loads the model and runs the tasks in turn. The
    options a task runs with are plm's (plm.evaluation.options.EvalOptions), replaced by the task YAML's
    defaults: block and then by --epochs, --max-train, --max-test, --seed and --layer.

    Args:
        checkpoint: plm export directory or Lightning .ckpt (imported weights are export dirs)
        tasks: comma-separated task names (evaluation/tasks/<name>.yaml) or YAML paths
        suite: a named protocol (evaluation/suites/<name>.yaml: schmirler2024, proteingym_dms): its tasks
            over its seeds, with the random-init control and the published numbers
        seeds: --suite: comma-separated seeds (default: the suite's)
        no_random_init_control: --suite: skip the random-init runs
        out: output directory for results.csv and results.md
        mode: supervised training mode
        data_root: directory holding the full task files the YAMLs' 'data' paths name (default: $PLM_DATA_ROOT,
            else a shared/data folder next to the checkout's folder (CI's layout); without any, the bundled
            subsets)
        small: use the bundled subsets (evaluation/data) instead of the full files
        task_dir: directory of task YAMLs (default evaluation/tasks)
        random_init: same architecture, freshly initialised weights (baseline)
        objective: override the recorded training objective
        epochs: override the task's training epochs
        max_train: cap training examples per task (default: the task's own cap, else all; printed when it
            applies)
        max_test: cap test examples / variants per task (default: the task's own cap, else all; printed when
            it applies)
        seed: override the tasks' seed (sampling, head init) and draw --random-init weights with it (default:
            the task's, else 0)
        layer: representation to probe: 0 = embeddings, i = after block i, -1 = final after the final norm
            (default: the task's, else -1)
        threads: torch CPU threads
        no_progress: hide progress bars
    """
    from plm.model.record import read_record

    if threads:
        torch.set_num_threads(threads)
    if bool(tasks) == bool(suite):
        raise PlmError("give --tasks (task names or YAML paths) or --suite (a named protocol), one of them")
    if suite and (random_init or seed is not None):
        # the suite runs its own seeds and random-init control: the single-run flags are refused, not ignored
        raise PlmError(
            "--suite runs its own seeds and random-init control: use --seeds and --no-random-init-control"
        )
    record = read_record(checkpoint)  # without the weights: a wrong path fails before any data is read
    source = resolve_data(data_root, small)
    if source.note:
        note(source.note)
    # over every task's own options; None leaves the task's (names checked against EvalOptions' fields)
    overrides = {"epochs": epochs, "max_train": max_train, "max_test": max_test, "seed": seed, "layer": layer}
    if suite:
        return run_suite_command(
            suite,
            checkpoint,
            out,
            source,
            overrides,
            objective,
            not no_progress,
            not no_random_init_control,
            seeds,
        )
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    prepared = prepare_all(names, task_dir, source, record.config.max_seq_len, overrides)
    model, objective = load_backbone(
        checkpoint, random_init, objective, seed=seed if seed is not None else EvalOptions.seed
    )
    meta = run_metadata(checkpoint, record, random_init, objective, source)
    title = (
        f"{checkpoint} ({meta['weights']}, step {meta['step'] if meta['step'] != '' else 'not recorded'}), "
        f"objective {objective}, {source.describe()}"
    )
    note(f"plm evaluate: {title}")
    run_all(prepared, model, objective, mode, out, meta, title, not no_progress)
    print((out / "results.md").read_text())
    return 0


main = command(evaluate, "plm evaluate", expected=(ValueError, FileNotFoundError))
build_parser = main.parser  # type: ignore[attr-defined]  # the parser ``plm evaluate --help`` prints
