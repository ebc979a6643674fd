"""Run records of a scaling study: what a finished run measured, read from a results CSV or collected
from a ``plm sweep`` directory. ``plm sweep`` writes them, ``plm fit-laws`` reads them; neither imports
the other.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from plm.model.record import read_record

REQUIRED = ("objective", "flops", "n_params", "loss")
NUMERIC = ("flops", "n_params", "tokens", "loss")
RESULTS_HEADER = ["objective", "flops", "n_params", "tokens", "loss"]


@dataclass
class Run:
    objective: str
    flops: float
    n_params: float
    tokens: float
    loss: float


def load_results(path: Path) -> list[Run]:
    """Read a results CSV (or collect a sweep directory); every problem is reported in one message."""
    path = Path(path)
    if path.is_dir():
        return collect(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results CSV or sweep directory")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; the header is {header or 'empty'} "
                f"and must contain {', '.join(REQUIRED)} (tokens optional: C / 6N)"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    runs, problems = [], []
    for line, row in enumerate(rows, start=2):
        before = len(problems)
        values: dict[str, float] = {}
        for col in NUMERIC:
            text = row.get(col, "")
            if col == "tokens" and text == "":
                continue
            try:
                value = float(text)
            except ValueError:
                problems.append(f"line {line}: {col}={text!r} is not a number")
                continue
            if not math.isfinite(value) or value <= 0:
                problems.append(f"line {line}: {col}={text} must be a positive finite number")
            values[col] = value
        if not row.get("objective"):
            problems.append(f"line {line}: objective is empty (use clm or mlm)")
        if len(problems) == before:
            tokens = values.get("tokens", values["flops"] / (6.0 * values["n_params"]))
            runs.append(
                Run(row["objective"].lower(), values["flops"], values["n_params"], tokens, values["loss"])
            )
    if problems:
        shown = problems[:20] + ([f"… and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"{path}: {len(problems)} bad value(s):\n  " + "\n  ".join(shown))
    if not runs:
        raise ValueError(f"{path}: no result rows (only a header)")
    return runs


def is_finished(out: Path, name: str) -> bool:
    return (out / "runs" / name / "final" / "model.safetensors").is_file()


def final_val_loss(run: Path) -> float | None:
    """The last logged val/loss of a run (csv/metrics.csv), or None when it has none."""
    metrics = run / "csv" / "metrics.csv"
    if not metrics.is_file():
        return None
    with metrics.open(newline="") as fh:
        values = [row["val/loss"] for row in csv.DictReader(fh) if row.get("val/loss")]
    return float(values[-1]) if values else None


def collect(out: Path, write: bool = True) -> list[Run]:
    """Results of the finished runs of a sweep directory (and ``results.csv`` written beside them)."""
    out = Path(out)
    manifest = out / "sweep.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{out}: no sweep.json; pass a results CSV or a `plm sweep --out` directory")
    jobs = json.loads(manifest.read_text())["jobs"]
    runs, missing = [], []
    for job in jobs:
        run = out / "runs" / job["name"]
        loss = final_val_loss(run) if is_finished(out, job["name"]) else None
        if loss is None:
            missing.append(job["name"])
            continue
        tokens = read_record(run / "final").tokens_seen or job["tokens"]  # real tokens seen: padding excluded
        runs.append(Run(job["objective"], job["flops"], float(job["n_params"]), float(tokens), loss))
    if not runs:
        raise ValueError(
            f"{out}: none of the {len(jobs)} runs has finished with a val/loss; run `plm sweep ... --run`"
        )
    if missing:
        print(
            f"plm sweep: {len(missing)} of {len(jobs)} runs unfinished, left out: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else ""),
            file=sys.stderr,
        )
    if write:
        write_results(out / "results.csv", runs)
    return runs


def write_results(path: Path, runs: list[Run]) -> None:
    """The CSV ``plm fit-laws`` reads (atomically: a reader never sees half a table)."""
    from plm.utils.atomic import atomic_file

    with atomic_file(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RESULTS_HEADER)
        for r in runs:
            w.writerow([r.objective, f"{r.flops:.6g}", int(r.n_params), int(r.tokens), f"{r.loss:.6f}"])
