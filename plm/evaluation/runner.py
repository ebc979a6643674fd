"""``plm evaluate``: run task YAMLs against one backbone and write results.csv + results.md.

This module is the command (its arguments and ``main``); the stages live beside it: task data
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

import argparse
from pathlib import Path
from typing import Any

import torch

from plm.errors import PlmError, add_debug_argument, one_line_errors
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
from plm.evaluation.options import EvalOptions
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

__all__ = [
    "FIELDS", "MAX_NAMED", "NEAR_IDENTITY", "EvalOptions", "Note", "PreparedTask", "Row", "_pad_stack",
    "attention_maps", "build_parser", "cap_note", "capped", "embed", "fit_head", "load_backbone", "load_multilabel",
    "load_records", "load_structures", "main", "make_batches", "near_duplicate_note", "note", "pad_tokens", "predict",
    "prepare_all", "prepare_task", "prepare_zero_shot", "probe_rows", "read_objective", "run_all", "run_contacts",
    "run_metadata", "run_prepared", "run_suite_command", "run_supervised", "run_task", "run_zero_shot",
    "split_by_rule", "split_records", "split_structures", "task_options", "without_test_overlap", "write_results",
]


def run_suite_command(args: argparse.Namespace, source: DataSource, overrides: dict[str, Any]) -> int:
    """``--suite``: the suite runs its own seeds and random-init control, so the single-run flags for those
    are refused rather than silently ignored."""
    from plm.evaluation.suites import load_suite, run_suite

    suite = load_suite(args.suite)
    if args.random_init or args.seed is not None:
        raise PlmError("--suite runs its own seeds and random-init control: use --seeds and --no-random-init-control")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    run_suite(suite, args.checkpoint, args.out, source, overrides, args.objective, not args.no_progress,
              False if args.no_random_init_control else None, seeds)
    print((args.out / "results.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``plm evaluate`` arguments (also what ``plm evaluate --help`` prints)."""
    p = argparse.ArgumentParser(prog="plm evaluate", description="Evaluate a plm checkpoint or export on downstream tasks.")
    p.add_argument("--checkpoint", required=True, help="plm export directory or Lightning .ckpt (imported weights are export dirs)")
    p.add_argument("--tasks", help="comma-separated task names (evaluation/tasks/<name>.yaml) or YAML paths")
    p.add_argument("--suite", help="a named protocol (evaluation/suites/<name>.yaml: schmirler2024, proteingym_dms): "
                                   "its tasks over its seeds, with the random-init control and the published numbers")
    p.add_argument("--seeds", default=None, help="--suite: comma-separated seeds (default: the suite's)")
    p.add_argument("--no-random-init-control", action="store_true", help="--suite: skip the random-init runs")
    p.add_argument("--out", required=True, type=Path, help="output directory for results.csv and results.md")
    p.add_argument("--mode", default="frozen", choices=["frozen", "lora", "full"], help="supervised training mode")
    p.add_argument("--data-root", default=None,
                   help="directory holding the full task files the YAMLs' 'data' paths name (default: $PLM_DATA_ROOT, "
                        "else a shared/data folder next to the checkout's folder (CI's layout); without any, the bundled subsets)")
    p.add_argument("--small", action="store_true", help="use the bundled subsets (evaluation/data) instead of the full files")
    p.add_argument("--task-dir", default=None, help="directory of task YAMLs (default evaluation/tasks)")
    p.add_argument("--random-init", action="store_true", help="same architecture, freshly initialised weights (baseline)")
    p.add_argument("--objective", choices=["mlm", "clm"], default=None, help="override the recorded training objective")
    p.add_argument("--epochs", type=int, default=None, help="override the task's training epochs")
    p.add_argument("--max-train", type=int, default=None,
                   help="cap training examples per task (default: the task's own cap, else all; printed when it applies)")
    p.add_argument("--max-test", type=int, default=None,
                   help="cap test examples / variants per task (default: the task's own cap, else all; printed when it applies)")
    p.add_argument("--seed", type=int, default=None,
                   help="override the tasks' seed (sampling, head init) and draw --random-init weights with it (default 0)")
    p.add_argument("--layer", type=int, default=None,
                   help="representation to probe: 0 = embeddings, i = after block i, -1 = final after the final norm (default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_argument(p)
    return p


@one_line_errors("plm evaluate", expected=(ValueError, FileNotFoundError))
def main(argv: list[str]) -> int:
    """Check the checkpoint and every task's data, then load the model and run the tasks in turn."""
    from plm.model.record import read_record

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.tasks) == bool(args.suite):
        raise PlmError("give --tasks (task names or YAML paths) or --suite (a named protocol), one of them")
    record = read_record(args.checkpoint)  # without the weights: a wrong path fails before any data is read
    source = resolve_data(args.data_root, args.small)
    if source.note:
        note(source.note)
    overrides = {"epochs": args.epochs, "max_train": args.max_train, "max_test": args.max_test, "seed": args.seed,
                 "layer": args.layer}
    if args.suite:
        return run_suite_command(args, source, overrides)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = prepare_all(names, args.task_dir, source, record.config.max_seq_len, overrides)
    model, objective = load_backbone(args.checkpoint, args.random_init, args.objective,
                                     seed=args.seed if args.seed is not None else EvalOptions.seed)
    meta = run_metadata(args.checkpoint, record, args.random_init, objective, source)
    title = (f"{args.checkpoint} ({meta['weights']}, step {meta['step'] if meta['step'] != '' else 'not recorded'}), "
             f"objective {objective}, {source.describe()}")
    note(f"plm evaluate: {title}")
    run_all(tasks, model, objective, args.mode, args.out, meta, title, not args.no_progress)
    print((args.out / "results.md").read_text())
    return 0
