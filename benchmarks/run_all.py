"""`make bench`: run every benchmarks/bench_*.py, then print benchmarks/results.json as a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{script.stem}"], cwd=HERE.parent)
        if rc:
            failed.append(script.name)
    data = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    print(f"\n{'benchmark':<16} {'plm':>12} {'peer':>12} {'ratio':>7}  unit")
    for name, e in sorted(data.items()):
        print(f"{name:<16} {e['plm']:>12.4g} {e['peer']:>12.4g} {e['ratio']:>7.2f}  {e['unit']}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
