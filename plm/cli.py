"""The ``plm`` command: LightningCLI for fit/validate/test, plain subcommands for the rest.

Plain subcommands are a table of ``name → "module:function"``; each function takes ``argv`` and returns
an exit code, and is imported only when called so ``plm --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")

COMMANDS: dict[str, str] = {
    "train": "plm.train:main",
    "plan": "plm.scaling.plan:main",
    "sweep": "plm.scaling.sweep:main",
    "fit-laws": "plm.scaling.fit:main",
    "evaluate": "plm.evaluation.runner:main",
    "finetune": "plm.finetune_cli:main",
    "predict": "plm.predict:main",
    "data": "plm.data.cli:main",
    "generate": "plm.generate.cli:main",
    "score": "plm.generate.score:main",
    "convert": "plm.convert_cli:main",
}

COMMAND_HELP: dict[str, str] = {
    "train": "train a ladder size (SIZE=…, OBJECTIVE=…) with resource checks; wraps `plm fit`",
    "plan": "compute budget (FLOPs or GPU-hours) → model size, tokens, schedule, and a plm fit config",
    "sweep": "IsoFLOP sweep: one plm fit config per (budget, size), run in turn (resumable) or as a job list",
    "fit-laws": "fit N_opt(C), D_opt(C) (bootstrap CIs) and L(N, D) to sweep results; table, JSON, PNG plots",
    "evaluate": "downstream tasks (probes, LoRA, zero-shot DMS, contacts) → results.csv/.md",
    "finetune": "fine-tune on a task YAML like plm fit (frozen / LoRA / full, resume) → a kept model in final/",
    "predict": "FASTA → predictions of a fine-tuned model, or embeddings / log-probabilities of a plm LM",
    "data": "data tools: prepare, decontaminate, split-by-identity, cluster (plm data --help)",
    "generate": "sample proteins from a CLM checkpoint into a FASTA (temperature, top-p, prompts, seed)",
    "score": "score generated proteins: pLDDT (ESMFold), perplexity, diversity, novelty, repeats",
    "convert": "weights ⇄ fair-esm ESM-2 .pt, HF EsmForMaskedLM, ProGen2, HF GPT-J (--from … --to plm|hf)",
}


def _lightning_cli(args: list[str]) -> int:
    """Run LightningCLI; expected errors (bad input, busy or foreign run directory, full disk, numerical
    blow-up) print one line with exit code 2, the traceback only with --debug or PLM_DEBUG=1. Exit code
    0 after a finished run, a run that needed nothing more, or a SIGTERM/SIGUSR1 save; 130 after a Ctrl-C
    save."""
    from plm.errors import debug_requested, report, strip_debug
    from plm.lightning_cli import expected_error_message, run_lightning_cli
    from plm.reliability.run_dir import RunComplete
    from plm.reliability.signals import preemption_exit_code

    prog = f"plm {args[0]}"
    saved = sys.argv
    sys.argv = [saved[0], *strip_debug(args)]  # LightningCLI reads sys.argv; passing args as well makes it warn
    try:
        cli = run_lightning_cli(None)
    except RunComplete as done:
        print(f"{prog}: {done}", file=sys.stderr)
        return 0
    except Exception as err:
        message = expected_error_message(err)
        if message is None:
            raise
        return report(prog, err, debug_requested(args), message)
    finally:
        sys.argv = saved
    return preemption_exit_code(getattr(cli, "trainer", None))


def usage() -> str:
    lines = ["usage: plm <command> [options]", "", "Lightning commands (plm <command> --help):"]
    lines += [f"  {c:<16} LightningCLI {c} (--config configs/train/mlm.yaml …)" for c in LIGHTNING_SUBCOMMANDS]
    lines += ["", "plm commands:"]
    lines += [f"  {name:<16} {COMMAND_HELP.get(name, '')}" for name in COMMANDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_SUBCOMMANDS:
        return _lightning_cli([command, *rest])
    if command not in COMMANDS:
        print(f"plm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[command].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


def repo_root() -> Path:
    """Root of the source checkout (configs/, data/ live there)."""
    return Path(__file__).resolve().parents[1]


def entry(argv: Any = None) -> None:  # pragma: no cover - console script shim
    raise SystemExit(main(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
