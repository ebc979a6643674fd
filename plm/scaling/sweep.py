"""`plm sweep`: an IsoFLOP sweep — one `plm fit` config per (budget, size), each run ending exactly at
its budget, run one after another (resumable) or printed as a job list for a cluster scheduler.

    plm sweep --objective clm --budgets 1e18,3e18,1e19 --sizes auto --out sweeps/clm --print-jobs
    plm sweep --objective mlm --budgets 1e11,3e11 --sizes 1x32,2x48,2x64 --out sweeps/tiny --run
    plm fit-laws sweeps/tiny --plots sweeps/tiny/plots

Layout of --out: ``configs/<run>.yaml``, ``runs/<run>/`` (the `plm fit` run: final/, csv/, ckpt/),
``logs/<run>.log``, ``sweep.json`` (every job, merged across invocations so CLM and MLM sweeps can share
a directory) and ``results.csv`` (objective,flops,n_params,tokens,loss — the input of `plm fit-laws`).
A run counts as finished when its ``final/`` export exists; unfinished runs resume from their last
verified checkpoint (``--ckpt_path last``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from plm.command import Exclusive, command
from plm.model.config import SIZES, ModelConfig, config_for
from plm.scaling.laws import law
from plm.scaling.recipe import Layout, fit_config, generated_shape, plan_for_size
from plm.scaling.results import collect, is_finished
from plm.utils.atomic import atomic_write_text

AUTO_FACTORS = [2.0**k for k in range(-3, 4)]  # 7 sizes from N_opt/8 to 8·N_opt per budget


@dataclass
class Job:
    name: str
    objective: str
    flops: float  # the budget C this run belongs to
    n_params: int  # non-embedding N
    layers: int
    hidden: int
    heads: int
    steps: int
    tokens: int  # steps × tokens per step: C / 6N up to rounding to whole steps
    lr: float
    config: str


def parse_size(spec: str) -> ModelConfig:
    """A ladder name (``8m``) or a shape ``LxH`` / ``LxHxA`` (layers × hidden × heads; heads default to
    hidden/32, i.e. 32-dim heads, which suits the tiny shapes a CPU sweep uses)."""
    spec = spec.strip().lower()
    if spec in SIZES:
        return config_for(spec)
    parts = spec.split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or min(nums) <= 0:
        raise ValueError(
            f"--sizes: {spec!r} is neither a ladder size ({', '.join(SIZES)}) nor LxH / LxHxA "
            "(e.g. 2x64 or 2x64x4)"
        )
    layers, hidden = nums[0], nums[1]
    heads = nums[2] if len(nums) == 3 else max(1, hidden // 32)
    return ModelConfig(n_layer=layers, n_embd=hidden, n_head=heads, name=f"{layers}x{hidden}x{heads}")


def auto_sizes(objective: str, flops: float) -> list[ModelConfig]:
    """Shapes spanning N_opt/8 … 8·N_opt of the published law at this budget (duplicates dropped)."""
    n_opt = law(objective).n_opt(flops)
    shapes = {generated_shape(n_opt * f) for f in AUTO_FACTORS}
    return [
        ModelConfig(n_layer=l, n_embd=h, n_head=a, name=f"{l}x{h}x{a}")
        for l, h, a in sorted(shapes, key=lambda s: 12 * s[0] * s[1] ** 2)
    ]


def make_jobs(
    objective: str,
    budgets: list[float],
    sizes: str,
    out: Path,
    row_len: int,
    rows_per_batch: int,
    lr: float | None,
    min_steps: int,
) -> tuple[list[Job], list[str]]:
    """One job per (budget, size), each planned by the one recipe on a fixed small batch of
    ``row_len × rows_per_batch`` tokens; sizes with fewer than ``min_steps`` steps are dropped with a note."""
    jobs, notes = [], []
    layout = Layout(row_len, rows_per_batch)
    for c in budgets:
        shapes = auto_sizes(objective, c) if sizes == "auto" else [parse_size(s) for s in sizes.split(",")]
        for cfg in shapes:
            plan = plan_for_size(
                cfg, objective, layout, flops=c, batch_tokens=row_len * rows_per_batch, lr=lr
            )
            if plan.steps < min_steps:
                notes.append(
                    f"skipped {plan.shape} at C = {c:.3g}: only {plan.steps} steps of {plan.step_tokens} "
                    f"tokens (< --min-steps {min_steps}); use smaller sizes or rows"
                )
                continue
            name = f"{objective}-C{c:.2e}-{plan.shape}".replace("+", "")
            jobs.append(
                Job(
                    name,
                    objective,
                    c,
                    plan.n_params,
                    plan.layers,
                    plan.hidden,
                    plan.heads,
                    plan.steps,
                    plan.train_tokens,
                    plan.peak_lr,
                    str(out / "configs" / f"{name}.yaml"),
                )
            )
    return jobs, notes


def job_config(job: Job, row_len: int, rows_per_batch: int, val_rows: int, precision: str, seed: int) -> dict:
    """The recipe's config for the job, validated once at the end (its cosine ends at max_steps)."""
    cfg = ModelConfig(n_layer=job.layers, n_embd=job.hidden, n_head=job.heads)
    plan = plan_for_size(
        cfg,
        job.objective,
        Layout(row_len, rows_per_batch),
        flops=job.flops,
        batch_tokens=row_len * rows_per_batch,
        lr=job.lr,
    )
    config = fit_config(plan, run_name=job.name)
    config["seed_everything"] = seed
    config["data"]["val_rows"] = val_rows
    config["trainer"].update(
        val_check_interval=job.steps,
        log_every_n_steps=max(1, job.steps // 20),
        precision=precision,
        enable_progress_bar=False,
    )
    return config


def fit_command(job: Job, out: Path, base_configs: list[Path]) -> list[str]:
    cmd = [sys.executable, "-m", "plm.cli", "fit"]
    for base in base_configs:
        cmd += ["--config", str(base)]
    return cmd + [
        "--config",
        job.config,
        "--run_root",
        str(out / "runs"),
        "--run_name",
        job.name,
        "--ckpt_path",
        "last",
    ]


def write_jobs(
    out: Path, jobs: list[Job], row_len: int, rows_per_batch: int, val_rows: int, precision: str, seed: int
) -> None:
    import yaml

    (out / "configs").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        cfg = job_config(job, row_len, rows_per_batch, val_rows, precision, seed)
        header = (
            f"# plm sweep: {job.objective} budget C = {job.flops:.3g}, N = {job.n_params:,} non-embedding, "
            f"D = {job.tokens:,} tokens ({job.steps} steps)\n"
        )
        atomic_write_text(job.config, header + yaml.safe_dump(cfg, sort_keys=False))
    manifest = out / "sweep.json"
    known = {j["name"]: j for j in json.loads(manifest.read_text())["jobs"]} if manifest.is_file() else {}
    known.update({j.name: asdict(j) for j in jobs})
    atomic_write_text(manifest, json.dumps({"jobs": list(known.values())}, indent=1))


def run_jobs(
    out: Path, jobs: list[Job], base_configs: list[Path], threads: int | None, parallel: int = 1
) -> list[str]:
    """Run the unfinished jobs, ``parallel`` at a time; returns the names that failed (their logs name the cause).

    Tiny CPU models do not use two cores well (their matrix products are too small), so two
    single-threaded runs side by side finish a sweep sooner than one two-threaded run at a time.
    """
    import time

    from tqdm import tqdm

    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}),
    }
    todo = [j for j in jobs if not is_finished(out, j.name)]
    failed: list[str] = []
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="sweep", unit="run")
    # the most expensive runs (many steps) first, so the last ones to finish are short
    todo.sort(key=lambda j: -j.steps)

    def stop(signum: int, frame: object) -> None:  # a scheduler's SIGTERM: stop the children (below), exit
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while todo or running:
            while todo and len(running) < max(1, parallel):
                job = todo.pop(0)
                fh = (out / "logs" / f"{job.name}.log").open("w")
                running[job.name] = (
                    subprocess.Popen(
                        fit_command(job, out, base_configs), stdout=fh, stderr=subprocess.STDOUT, env=env
                    ),
                    fh,
                )
                bar.set_postfix_str(", ".join(running))
            time.sleep(0.2)
            for name, (proc, fh) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                fh.close()
                del running[name]
                bar.update(1)
                if code != 0 or not is_finished(out, name):
                    failed.append(name)
                    tqdm.write(
                        f"plm sweep: {name} failed (exit {code}); see {out / 'logs' / (name + '.log')}"
                    )
    finally:
        # interrupted: SIGTERM makes each child save ckpt/last.ckpt and exit; a rerun resumes it from there
        for proc, fh in running.values():
            proc.terminate()
        for proc, fh in running.values():
            proc.wait()
            fh.close()
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    return failed


def _budgets(text: str) -> list[float]:
    try:
        values = [float(b) for b in text.split(",") if b.strip()]
    except ValueError as err:
        raise ValueError(
            f"--budgets {text!r}: give comma-separated FLOPs like 1e15,3e15,1e16 ({err})"
        ) from err
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"--budgets {text!r}: every budget must be a positive number of FLOPs")
    return sorted(set(values))


def sweep(
    objective: Literal["clm", "mlm"],
    budgets: str,
    out: Path,
    sizes: str = "auto",
    run: bool = False,
    print_jobs: bool = False,
    row_len: int = 1024,
    rows_per_batch: int = 8,
    val_rows: int = 64,
    lr: float | None = None,
    precision: str = "bf16-mixed",
    seed: int = 0,
    min_steps: int = 20,
    base_config: tuple[Path, ...] = (),
    threads: int | None = None,
    parallel: int = 1,
) -> int:
    """IsoFLOP sweep: one plm fit config per (budget, size), run in turn (resumable) or as a job list.

    Args:
        objective: training objective of every run
        budgets: comma-separated compute budgets C in FLOPs, e.g. 1e15,3e15,1e16
        out: sweep directory (configs/, runs/, logs/, sweep.json, results.csv)
        sizes: 'auto' (7 generated shapes from N_opt/8 to 8·N_opt of the published law per budget) or
            comma-separated ladder names / LxH / LxHxA shapes used at every budget
        run: run the unfinished jobs now, one after another
        print_jobs: print one `plm fit` command per job (for a scheduler)
        row_len: tokens per packed row
        rows_per_batch: rows per optimizer step (tokens/step = row-len × this)
        val_rows: held-out rows per source for the final val/loss
        lr: peak LR of every run (default: the recipe's peak LR for N)
        precision: trainer precision (32-true on CPUs without bf16)
        seed: seed_everything of every run
        min_steps: drop (budget, size) pairs with fewer optimizer steps
        base_config: extra plm fit config(s) applied before each job's (e.g. your data: sources); repeatable
        threads: OMP/MKL threads per run (CPU sweeps: 1, with --parallel = cores)
        parallel: runs at a time on this machine (--run)
    """
    out = out.resolve()
    try:
        for base in base_config:
            if not base.is_file():
                raise ValueError(f"--base-config {base}: no such file")
        if parallel < 1 or (threads is not None and threads < 1):
            raise ValueError(f"--parallel {parallel} / --threads {threads}: give positive counts")
        jobs, notes = make_jobs(
            objective, _budgets(budgets), sizes, out, row_len, rows_per_batch, lr, min_steps
        )
    except ValueError as err:
        print(f"plm sweep: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"plm sweep: {note}", file=sys.stderr)
    if not jobs:
        print("plm sweep: no jobs left to run", file=sys.stderr)
        return 2
    write_jobs(out, jobs, row_len, rows_per_batch, val_rows, precision, seed)
    base = [b.resolve() for b in base_config]
    if print_jobs:
        for job in jobs:
            print(shlex.join(fit_command(job, out, base)))
        return 0
    if not run:
        done = sum(is_finished(out, j.name) for j in jobs)
        print(f"wrote {len(jobs)} configs to {out / 'configs'} ({done} finished); add --run or --print-jobs")
        for j in jobs:
            print(f"  {j.name}: N = {j.n_params:,}, D = {j.tokens:,} tokens, {j.steps} steps, lr {j.lr:g}")
        return 0
    failed = run_jobs(out, jobs, base, threads, parallel)
    try:
        runs = collect(out)
    except ValueError as err:
        print(f"plm sweep: {err}", file=sys.stderr)
        return 1
    print(f"{len(runs)} finished runs → {out / 'results.csv'}; fit with: plm fit-laws {out}")
    if failed:
        print(f"plm sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


main = command(sweep, "plm sweep", exclusive=[Exclusive("run", "print_jobs")], description=__doc__)
