"""Reproduce the downstream comparison: a trained plm checkpoint vs the same architecture with random weights.

    nice -n 10 .venv/bin/python evaluation/results/downstream/run.py --checkpoint /tmp/evalruns/mlm/final \
        --data-root DIR

Runs ``plm evaluate`` twice (trained, --random-init) on every task below with the full task files
(``--data-root``, else ``$PLM_DATA_ROOT``, else the CI layout; the 'Task data' table of docs/evaluation.md says
where each set comes from) and each task YAML's own caps (``--max-train`` / ``--max-test`` override them for all
tasks), then writes results.csv (every row of both runs) and the table in README.md between the RESULTS
markers. The committed table is on the full data: without it the script stops, and ``--small`` runs the
bundled subsets and only prints the table, so the committed files never mix the two.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from plm.evaluation.runner import FIELDS
from plm.evaluation.runner import main as evaluate
from plm.evaluation.tasks import FULL_DATA_HINT, resolve_data

TASKS = "ss3,ss3_mlp,ss3_cb513,ss8,conservation,tmbed,scl,gb1,dms_blat,contacts"
KEY_METRICS = [
    ("ss3", "accuracy"),
    ("ss3", "macro_f1"),
    ("ss3_mlp", "accuracy"),
    ("ss3_cb513", "accuracy"),
    ("ss8", "accuracy"),
    ("ss8", "macro_f1"),
    ("conservation", "accuracy"),
    ("tmbed", "macro_f1"),
    ("tmbed", "accuracy"),
    ("scl", "accuracy"),
    ("scl", "macro_f1"),
    ("gb1", "spearman"),
    ("dms_blat", "spearman"),
    ("contacts", "P@L/5_long"),
    ("contacts", "P@L/5_medium"),
    ("contacts", "P@L_long"),
]
RUNS = [("trained", []), ("random_init", ["--random-init"])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="trained plm export dir or .ckpt")
    p.add_argument("--tasks", default=TASKS, help="tasks to run")
    p.add_argument(
        "--data-root",
        default=None,
        help="directory of the full task files (default: $PLM_DATA_ROOT, else CI's shared/data next to the checkout)",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help="bundled subsets: print the table, leave the committed files alone",
    )
    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="cap on training examples per supervised task (default: each YAML's)",
    )
    p.add_argument(
        "--max-test", type=int, default=None, help="cap on test examples per task (default: each YAML's)"
    )
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/plm_downstream"), help="scratch dir for per-model results"
    )
    p.add_argument(
        "--models",
        default="trained,random_init",
        help="which evaluations to run now (others are read from --work)",
    )
    args = p.parse_args()
    source = resolve_data(args.data_root, args.small)
    if source.bundled and not args.small:
        print(
            f"run.py: the committed table is on the full task data, and none was found; {FULL_DATA_HINT}",
            file=sys.stderr,
        )
        return 2
    for label, extra in RUNS:
        if label not in args.models.split(","):
            continue
        argv = [
            "--checkpoint",
            args.checkpoint,
            "--tasks",
            args.tasks,
            "--out",
            str(args.work / label),
            "--no-progress",
            *extra,
        ]
        for flag, value in (("--max-train", args.max_train), ("--max-test", args.max_test)):
            argv += [flag, str(value)] if value is not None else []
        start = time.monotonic()
        rc = evaluate(argv + (["--small"] if source.bundled else ["--data-root", str(source.root)]))
        if rc:
            return rc
        print(f"{label}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    rows = []
    for label, _ in RUNS:
        path = args.work / label / "results.csv"
        if not path.is_file():
            print(f"{path} not there yet: run with --models {label} to finish the comparison")
            return 0
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    value = {(r["weights"], r["task"], r["metric"]): float(r["value"]) for r in rows}
    n = {(r["task"], r["metric"]): r["n"] for r in rows if r["weights"] == "trained"}
    table = ["| task | metric | n | trained | random init | trained better? |", "|---|---|---|---|---|---|"]
    for task, metric in KEY_METRICS:
        if ("trained", task, metric) in value and ("random_init", task, metric) in value:
            t, r = value[("trained", task, metric)], value[("random_init", task, metric)]
            table.append(
                f"| {task} | {metric} | {n[(task, metric)]} | {t:.4f} | {r:.4f} | {'yes' if t > r else 'no'} |"
            )
    if source.bundled:
        print(
            "\n".join(table)
            + "\n(bundled subsets: the committed results.csv and README.md are left as they are)"
        )
        return 0
    with open(HERE / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "<!-- RESULTS -->\n<!-- /RESULTS -->\n"
    head, rest = text.split("<!-- RESULTS -->", 1)
    tail = rest.split("<!-- /RESULTS -->", 1)[1]
    readme.write_text(f"{head}<!-- RESULTS -->\n" + "\n".join(table) + f"\n<!-- /RESULTS -->{tail}")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
