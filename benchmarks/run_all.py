"""`make bench`: run every benchmarks/bench_*.py, then print benchmarks/results.json as a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    failed = []
    print(f"load average {os.getloadavg()[0]:.2f}, niceness {os.nice(0)}", flush=True)
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{script.stem}"], cwd=HERE.parent)
        if rc:
            failed.append(script.name)
    data = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    print(f"\n{'benchmark':<16} {'plm':>12} {'peer':>12} {'ratio':>7}  {'load':>5}  unit")
    for name, e in sorted(data.items()):
        load = e.get("load_average_after", e.get("load_average", float("nan")))
        print(f"{name:<16} {e['plm']:>12.4g} {e['peer']:>12.4g} {e['ratio']:>7.2f}  {load:>5.1f}  {e['unit']}")
    machines = {json.dumps(e["machine"], sort_keys=True) for e in data.values() if "machine" in e}
    for m in sorted(machines):
        print("machine", m)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
