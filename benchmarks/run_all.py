"""`make bench`: run every benchmarks/bench_*.py, then print benchmarks/results.json as a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
#: The ratio each benchmark must reach (issue #9 and the data-pipeline issue); printed beside the results.
TARGETS = {
    "train_mlm_8m": 5.0,
    "train_mlm_35m": 5.0,
    "mfu_35m_bf16": 0.45,
    "packing": 0.95,
    "generate": 1.0,
    "loader": 20.0,
    "prepare": 2.0,
}


def verdict(name: str, ratio: float) -> str:
    """'≥ target met' / '≥ target NOT met' for a benchmark with a target (its _compiled variant shares it), else ''."""
    target = TARGETS.get(name.removesuffix("_compiled"))
    return "" if target is None else f"≥ {target:g} " + ("met" if ratio >= target else "NOT met")


def main() -> int:
    failed = []
    print(f"load average {os.getloadavg()[0]:.2f}, niceness {os.nice(0)}", flush=True)
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{script.stem}"], cwd=HERE.parent)
        if rc:
            failed.append(script.name)
    data = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    width = max([len("benchmark"), *map(len, data)])
    print(f"\n{'benchmark':<{width}} {'plm':>12} {'peer':>12} {'ratio':>7} {'target':>12}  {'load':>5}  unit")
    for name, e in sorted(data.items()):
        load = e.get("load_average_after", e.get("load_average", float("nan")))
        print(
            f"{name:<{width}} {e['plm']:>12.4g} {e['peer']:>12.4g} {e['ratio']:>7.2f} {verdict(name, e['ratio']):>12}  "
            f"{load:>5.1f}  {e['unit']}"
        )
    machines = {json.dumps(e["machine"], sort_keys=True) for e in data.values() if "machine" in e}
    for m in sorted(machines):
        print("machine", m)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
