"""What ``plm evaluate`` writes: results.csv (every field of every row) and results.md (a table to read),
and the per-row fields saying what was evaluated.

Apart from the run loop because the suites write results.csv with the same ``FIELDS``, and the loop
rewrites both files after every task so a later failure keeps what finished.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from plm.evaluation.prepared import Row
from plm.evaluation.tasks import DataSource
from plm.utils.atomic import atomic_file, atomic_write_text

# What was measured, then what it was measured on: weights = trained | random_init, step = the
# checkpoint's optimizer step (empty for imported weights), data = full | bundled.
FIELDS = [
    "task",
    "metric",
    "value",
    "split",
    "mode",
    "n",
    "weights",
    "step",
    "seed",
    "objective",
    "data",
    "checkpoint",
]


def write_results(rows: list[Row], out: Path, title: str = "") -> None:
    """results.csv (every field) and results.md, each replaced atomically: a reader never sees half a file."""
    with atomic_file(Path(out) / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"# {title}", ""] if title else []
    lines += ["| task | metric | value | split | mode | n | seed |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {r['split']} | {r['mode']} | {r['n']} | "
        f"{r.get('seed', '')} |"
        for r in rows
    ]
    atomic_write_text(Path(out) / "results.md", "\n".join(lines) + "\n")


def run_metadata(
    checkpoint: str, record: Any, random_init: bool, objective: str, source: DataSource
) -> dict[str, Any]:
    """The per-row fields saying what was evaluated (``record``: plm.model.record.CheckpointRecord)."""
    return {
        "weights": "random_init" if random_init else "trained",
        "step": "" if record.step is None else record.step,
        "objective": objective,
        "data": "bundled" if source.bundled else "full",
        "checkpoint": str(checkpoint),
    }
