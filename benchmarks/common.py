"""Shared by the benchmark scripts: machine/version info and merging entries into results.json."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("results.json")


def machine() -> dict[str, Any]:
    import lightning
    import transformers

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
    }


def record(name: str, plm: float, peer: float, unit: str, **extra: Any) -> dict[str, Any]:
    """Merge one entry into results.json (other benchmarks' entries are kept) and print it."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = {
        "plm": plm,
        "peer": peer,
        "ratio": plm / peer if peer else float("nan"),
        "unit": unit,
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        # other jobs share this machine: the 1-minute load when the entry was written, and our niceness
        "load_average": round(os.getloadavg()[0], 2),
        "nice": os.nice(0),
        **extra,
    }
    data[name] = entry
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"{name:<16} plm {plm:>12.4g}  peer {peer:>12.4g}  ratio {entry['ratio']:6.2f}  {unit}")
    return entry


def interleaved(fns: dict[str, Callable[[], float]], rounds: int = 3) -> dict[str, float]:
    """Run each measurement ``rounds`` times, interleaved, and keep the best: fair under background load."""
    best: dict[str, float] = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = max(best[k], fn())
    return best
