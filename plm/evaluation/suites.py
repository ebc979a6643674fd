"""Named evaluation suites: a published protocol as data (``evaluation/suites/<name>.yaml``), run with controls.

A suite names its tasks, the mode, the seeds, whether the random-init control runs, and the published
numbers to print beside ours (``anchors``: column → task → value of the task's metric; their sources are
in docs/reference.md, "Downstream anchors"). ``plm evaluate --suite NAME`` checks every task first, then
runs each (weights, seed) in turn and writes:

- ``results.csv``: every row of every run (plm evaluate's fields: task, metric, value, …, weights, seed),
  rewritten after each run so a failure keeps what finished;
- ``summary.csv``: per task, metric and weights the mean, the sample standard deviation and the seeds;
- ``results.md``: the suite's table (ours trained and random init as mean ± sd over seeds, then each
  anchor column) and the time each run took;
- ``scores/<weights>/<task>.csv`` for zero-shot tasks: every variant's measured and predicted score (one CSV
  per assay, as ProteinGym keeps them).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from plm import paths
from plm.evaluation.kinds import DEFAULT_METRIC
from plm.evaluation.options import MODES
from plm.evaluation.tasks import DataSource, load_task
from plm.utils.atomic import atomic_file, atomic_write_text

SUITE_DIR = paths.suite_dir()
SUITE_KEYS = {"name", "description", "mode", "seeds", "random_init", "tasks", "anchors"}


@dataclass
class Suite:
    name: str
    tasks: list[str]
    source: Path
    description: str = ""
    mode: str = "frozen"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    random_init: bool = True
    anchors: dict[str, dict[str, float]] = field(default_factory=dict)


def load_suite(name_or_path: str | Path) -> Suite:
    """``evaluation/suites/<name>.yaml`` (or a path), every problem reported at once."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = SUITE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in SUITE_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"suite {str(name_or_path)!r}: {p} not found; known suites: {', '.join(known)}"
        )
    raw = yaml.safe_load(p.read_text()) or {}
    problems = []
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a suite YAML must be a mapping")  # noqa: TRY004 - a bad user file
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (allowed: {sorted(SUITE_KEYS)})")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        problems.append("'tasks' must be a non-empty list of task names")
        tasks = []
    if raw.get("mode", "frozen") not in MODES:
        problems.append(f"mode {raw.get('mode')!r}: use frozen, lora or full")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        problems.append(f"'seeds' must be a list of integers, got {seeds!r}")
    anchors = raw.get("anchors") or {}
    for column, values in anchors.items() if isinstance(anchors, dict) else []:
        if not isinstance(values, dict) or set(values) - set(tasks):
            problems.append(f"anchors: {column!r} must map tasks of this suite to values, got {values!r}")
    if problems:
        raise ValueError(f"{p}: invalid suite: " + "; ".join(problems))
    return Suite(
        name=raw.get("name", p.stem),
        tasks=[str(t) for t in tasks],
        source=p,
        description=raw.get("description", ""),
        mode=raw.get("mode", "frozen"),
        seeds=list(seeds),
        random_init=bool(raw.get("random_init", True)),
        anchors=anchors,
    )


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds per (task, metric, weights)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    seeds: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        key = (r["task"], r["metric"], r["weights"])
        groups.setdefault(key, []).append(float(r["value"]))
        seeds.setdefault(key, []).append(int(r["seed"]))
    return [
        {
            "task": t,
            "metric": m,
            "weights": w,
            "mean": float(np.mean(v)),
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
            "n_seeds": len(v),
            "seeds": " ".join(map(str, seeds[(t, m, w)])),
        }
        for (t, m, w), v in groups.items()
    ]


def _cell(summary: dict[tuple[str, str, str], dict[str, Any]], key: tuple[str, str, str]) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    sd = "" if np.isnan(s["sd"]) else f" ± {s['sd']:.3f}"
    return f"{s['mean']:.3f}{sd} ({s['n_seeds']})"


def suite_markdown(suite: Suite, rows: list[dict[str, Any]], title: str, timings: list[str]) -> str:
    """The suite's table: each task's metric, ours (trained, random init: mean ± sd (seeds)), the anchors."""
    summary = {(s["task"], s["metric"], s["weights"]): s for s in summarise(rows)}
    columns = list(suite.anchors)
    lines = [
        f"# {suite.name}: {title}",
        "",
        suite.description,
        "",
        "| task | metric | ours, trained | ours, random init | " + " | ".join(columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for name in suite.tasks:
        spec = load_task(name)
        metric = spec.metric or DEFAULT_METRIC[spec.kind]
        anchors = [f"{suite.anchors[c][name]:.3f}" if name in suite.anchors[c] else "–" for c in columns]
        lines.append(
            f"| {spec.name} | {metric} | {_cell(summary, (spec.name, metric, 'trained'))} | "
            f"{_cell(summary, (spec.name, metric, 'random_init'))} | " + " | ".join(anchors) + " |"
        )
    legend = (
        "Mean ± sample standard deviation over seeds (number of seeds). Published values and how their "
        'protocol differs from this one: docs/reference.md, "Downstream anchors".'
    )
    lines += ["", legend, "", "Runs:", *[f"- {t}" for t in timings], ""]
    return "\n".join(lines)


def write_suite_results(
    suite: Suite, rows: list[dict[str, Any]], out: Path, title: str, timings: list[str]
) -> None:
    from plm.evaluation.results import FIELDS

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with atomic_file(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["task", "metric", "weights", "mean", "sd", "n_seeds", "seeds"])
        w.writeheader()
        w.writerows(summarise(rows))
    atomic_write_text(out / "results.md", suite_markdown(suite, rows, title, timings))


def run_suite(
    suite: Suite,
    checkpoint: str,
    out: Path,
    source: DataSource,
    overrides: dict[str, Any],
    objective: str | None = None,
    progress: bool = True,
    random_init: bool | None = None,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Every (weights, seed) of the suite in turn; the tasks are checked for every seed before any model
    is loaded."""
    from plm.evaluation.backbone import load_backbone
    from plm.evaluation.loop import prepare_all, run_prepared
    from plm.evaluation.prepared import note
    from plm.evaluation.results import run_metadata
    from plm.model.record import read_record

    record = read_record(checkpoint)
    seeds = seeds or suite.seeds
    prepared = {
        seed: prepare_all(
            suite.tasks,
            None,
            source,
            record.config.max_seq_len,
            {**overrides, "seed": seed},
            say=note if seed == seeds[0] else lambda _: None,
        )
        for seed in seeds
    }
    weights = [False, True] if (suite.random_init if random_init is None else random_init) else [False]
    rows: list[dict[str, Any]] = []
    timings: list[str] = []
    title = f"{checkpoint} (step {record.step if record.step is not None else 'not recorded'}), {source.describe()}"
    for rand in weights:
        for seed in seeds:
            ran = [t for t in prepared[seed] if rand or seed == seeds[0] or t.spec.kind != "zero_shot"]
            if not ran:
                continue  # a trained model's zero-shot scores do not depend on the seed: scored once
            start = time.monotonic()
            model, obj = load_backbone(checkpoint, rand, objective, seed=seed)
            meta = run_metadata(checkpoint, record, rand, obj, source)
            note(f"plm evaluate --suite {suite.name}: {meta['weights']} weights, seed {seed}")
            scores = out / "scores" / (meta["weights"] if not rand else f"random_init_seed{seed}")
            for task in ran:
                rows += [{**r, **meta} for r in run_prepared(task, model, obj, suite.mode, progress, scores)]
            timings.append(
                f"{meta['weights']}, seed {seed}: {', '.join(t.spec.name for t in ran)} in "
                f"{time.monotonic() - start:.0f} s"
            )
            write_suite_results(suite, rows, out, title, timings)
    return rows
