"""The ``zero_shot`` task kind: a DMS assay's variants, each checked against the wild type before any
model loads, scored by the model alone (:mod:`plm.evaluation.zero_shot`) and compared with the measured
scores by Spearman correlation."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

from plm.evaluation.formats import read_task_data
from plm.evaluation.metrics import regression_metrics
from plm.evaluation.options import EvalOptions
from plm.evaluation.prepared import Note, PreparedTask, Row
from plm.evaluation.splits import cap_note
from plm.evaluation.tasks import TaskSpec
from plm.evaluation.zero_shot import parse_mutations, score_variants
from plm.model.transformer import Transformer
from plm.utils.atomic import atomic_file


def prepare_zero_shot(
    spec: TaskSpec, files: dict[str, Path], opts: EvalOptions, origins: dict[str, str], say: Note
) -> PreparedTask:
    """The wild type and every scored variant, each mutation checked against the wild type."""
    wt, variants = read_task_data(spec, files, opts.max_len)
    parsed, problems = [], []
    for i, v in enumerate(variants):
        try:
            parsed.append(parse_mutations(v.mutant, wt, spec.offset))
        except ValueError as err:
            problems.append(f"row {i + 2}: {err}")
    if problems:
        raise ValueError(
            f"{files['table']}: {len(problems)} mutation(s) do not match wild type "
            f"{spec.wildtype_id!r} with offset {spec.offset}: " + "; ".join(problems[:5])
        )
    max_n = opts.max_test
    if max_n is not None and len(variants) > max_n:
        say(cap_note(spec, max_n, len(variants), "variants", "max_test", origins))
        pick = sorted(random.Random(opts.seed).sample(range(len(variants)), max_n))
        variants, parsed = [variants[i] for i in pick], [parsed[i] for i in pick]
    return PreparedTask(spec, opts, test=variants, wildtype=wt, mutations=parsed)


def run_zero_shot(
    task: PreparedTask, model: Transformer, objective: str, progress: bool, scores_dir: Path | None = None
) -> list[Row]:
    """Spearman of the model's scores with the measured ones; ``scores_dir`` also gets ``<task>.csv`` with
    every variant's measured score and the model's (its column named by ``zero_shot.score_name``)."""
    scores = score_variants(model, objective, task.wildtype, task.mutations, progress=progress)
    if scores_dir is not None:
        from plm.evaluation.zero_shot import score_name

        with atomic_file(Path(scores_dir) / f"{task.spec.name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["mutant", "DMS_score", score_name(model, objective)])
            w.writerows([v.mutant, v.score, f"{s:.6g}"] for v, s in zip(task.test, scores))
    m = regression_metrics(torch.tensor(scores), torch.tensor([v.score for v in task.test]))
    return [
        {
            "task": task.spec.name,
            "metric": "spearman",
            "value": m["spearman"],
            "split": "all",
            "mode": f"zero_shot_{objective}",
            "n": len(task.test),
        }
    ]
