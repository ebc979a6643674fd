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

import argparse
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from plm.model.config import SIZES, ModelConfig, config_for, peak_lr_for
from plm.scaling.fit import Run
from plm.scaling.laws import law
from plm.scaling.plan import generated_shape

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
        raise ValueError(f"--sizes: {spec!r} is neither a ladder size ({', '.join(SIZES)}) nor LxH / LxHxA "
                         "(e.g. 2x64 or 2x64x4)")
    layers, hidden = nums[0], nums[1]
    heads = nums[2] if len(nums) == 3 else max(1, hidden // 32)
    return ModelConfig(n_layer=layers, n_embd=hidden, n_head=heads, name=f"{layers}x{hidden}x{heads}")


def auto_sizes(objective: str, flops: float) -> list[ModelConfig]:
    """Shapes spanning N_opt/8 … 8·N_opt of the published law at this budget (duplicates dropped)."""
    n_opt = law("clm" if objective == "transfer" else objective).n_opt(flops)
    shapes = {generated_shape(n_opt * f) for f in AUTO_FACTORS}
    return [ModelConfig(n_layer=l, n_embd=h, n_head=a, name=f"{l}x{h}x{a}") for l, h, a in sorted(shapes, key=lambda s: 12 * s[0] * s[1] ** 2)]


def make_jobs(objective: str, budgets: list[float], sizes: str, out: Path, row_len: int, rows_per_batch: int,
              lr: float | None, min_steps: int) -> tuple[list[Job], list[str]]:
    """One job per (budget, size); sizes with fewer than ``min_steps`` steps are dropped with a note."""
    jobs, notes = [], []
    step_tokens = row_len * rows_per_batch
    for c in budgets:
        shapes = auto_sizes(objective, c) if sizes == "auto" else [parse_size(s) for s in sizes.split(",")]
        for cfg in shapes:
            n = cfg.n_params_non_embedding()
            steps = round(c / (6.0 * n) / step_tokens)
            shape = f"{cfg.n_layer}x{cfg.n_embd}x{cfg.n_head}"
            if steps < min_steps:
                notes.append(f"skipped {shape} at C = {c:.3g}: only {steps} steps of {step_tokens} tokens "
                             f"(< --min-steps {min_steps}); use smaller sizes or rows")
                continue
            name = f"{objective}-C{c:.2e}-{shape}".replace("+", "")
            jobs.append(Job(name, objective, c, n, cfg.n_layer, cfg.n_embd, cfg.n_head, steps, steps * step_tokens,
                            lr if lr is not None else peak_lr_for(n), str(out / "configs" / f"{name}.yaml")))
    return jobs, notes


def job_config(job: Job, row_len: int, rows_per_batch: int, val_rows: int, precision: str, seed: int) -> dict:
    """A LightningCLI config whose cosine schedule ends at max_steps = the budget's token count."""
    cls = "plm.lit.CausalLM" if job.objective == "clm" else "plm.lit.MaskedLM"
    return {
        "seed_everything": seed,
        "run_name": job.name,
        "model": {"class_path": cls, "init_args": {
            "size": "tiny", "lr": job.lr, "arch": {"n_layer": job.layers, "n_embd": job.hidden, "n_head": job.heads}}},
        "data": {"row_len": row_len, "rows_per_batch": rows_per_batch, "val_rows": val_rows},
        "trainer": {"max_steps": job.steps, "val_check_interval": job.steps, "check_val_every_n_epoch": None,
                    "log_every_n_steps": max(1, job.steps // 20), "precision": precision, "gradient_clip_val": 1.0,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False},
    }


def fit_command(job: Job, out: Path, base_configs: list[Path]) -> list[str]:
    cmd = [sys.executable, "-m", "plm.cli", "fit"]
    for base in base_configs:
        cmd += ["--config", str(base)]
    return cmd + ["--config", job.config, "--run_root", str(out / "runs"), "--run_name", job.name, "--ckpt_path", "last"]


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
    jobs = [Job(**j) for j in json.loads(manifest.read_text())["jobs"]]
    runs, missing = [], []
    for job in jobs:
        run = out / "runs" / job.name
        loss = final_val_loss(run) if is_finished(out, job.name) else None
        if loss is None:
            missing.append(job.name)
            continue
        exported = run / "final" / "config.json"
        tokens = job.tokens  # real tokens seen (from the export) when recorded: padding excluded
        if exported.is_file():
            tokens = json.loads(exported.read_text()).get("tokens_seen") or job.tokens
        runs.append(Run(job.objective, job.flops, float(job.n_params), float(tokens), loss))
    if not runs:
        raise ValueError(f"{out}: none of the {len(jobs)} runs has finished with a val/loss; run `plm sweep ... --run`")
    if missing:
        print(f"plm sweep: {len(missing)} of {len(jobs)} runs unfinished, left out: {', '.join(missing[:5])}"
              + (" …" if len(missing) > 5 else ""), file=sys.stderr)
    if write:
        with (out / "results.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["objective", "flops", "n_params", "tokens", "loss"])
            for r in runs:
                w.writerow([r.objective, f"{r.flops:.6g}", int(r.n_params), int(r.tokens), f"{r.loss:.6f}"])
    return runs


def write_jobs(out: Path, jobs: list[Job], args: argparse.Namespace) -> None:
    import yaml

    (out / "configs").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        cfg = job_config(job, args.row_len, args.rows_per_batch, args.val_rows, args.precision, args.seed)
        header = (f"# plm sweep: {job.objective} budget C = {job.flops:.3g}, N = {job.n_params:,} non-embedding, "
                  f"D = {job.tokens:,} tokens ({job.steps} steps)\n")
        Path(job.config).write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    manifest = out / "sweep.json"
    known = {j["name"]: j for j in json.loads(manifest.read_text())["jobs"]} if manifest.is_file() else {}
    known.update({j.name: asdict(j) for j in jobs})
    manifest.write_text(json.dumps({"jobs": list(known.values())}, indent=1))


def run_jobs(out: Path, jobs: list[Job], base_configs: list[Path], threads: int | None, parallel: int = 1) -> list[str]:
    """Run the unfinished jobs, ``parallel`` at a time; returns the names that failed (their logs name the cause).

    Tiny CPU models do not use two cores well (their matrix products are too small), so two
    single-threaded runs side by side finish a sweep sooner than one two-threaded run at a time.
    """
    import time

    from tqdm import tqdm

    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
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
                running[job.name] = (subprocess.Popen(fit_command(job, out, base_configs), stdout=fh,
                                                      stderr=subprocess.STDOUT, env=env), fh)
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
                    tqdm.write(f"plm sweep: {name} failed (exit {code}); see {out / 'logs' / (name + '.log')}")
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
        raise ValueError(f"--budgets {text!r}: give comma-separated FLOPs like 1e15,3e15,1e16 ({err})") from err
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"--budgets {text!r}: every budget must be a positive number of FLOPs")
    return sorted(set(values))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plm sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", required=True, choices=["clm", "mlm"], help="training objective of every run")
    p.add_argument("--budgets", required=True, help="comma-separated compute budgets C in FLOPs, e.g. 1e15,3e15,1e16")
    p.add_argument("--sizes", default="auto",
                   help="'auto' (7 generated shapes from N_opt/8 to 8·N_opt of the published law per budget) or "
                        "comma-separated ladder names / LxH / LxHxA shapes used at every budget")
    p.add_argument("--out", type=Path, required=True, help="sweep directory (configs/, runs/, logs/, sweep.json, results.csv)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run the unfinished jobs now, one after another")
    mode.add_argument("--print-jobs", action="store_true", help="print one `plm fit` command per job (for a scheduler)")
    p.add_argument("--row-len", type=int, default=1024, help="tokens per packed row")
    p.add_argument("--rows-per-batch", type=int, default=8, help="rows per optimizer step (tokens/step = row-len × this)")
    p.add_argument("--val-rows", type=int, default=64, help="held-out rows per source for the final val/loss")
    p.add_argument("--lr", type=float, help="peak LR of every run (default: plm.model.config.peak_lr_for(N))")
    p.add_argument("--precision", default="bf16-mixed", help="trainer precision (32-true on CPUs without bf16)")
    p.add_argument("--seed", type=int, default=0, help="seed_everything of every run")
    p.add_argument("--min-steps", type=int, default=20, help="drop (budget, size) pairs with fewer optimizer steps")
    p.add_argument("--base-config", type=Path, action="append", default=[],
                   help="extra plm fit config(s) applied before each job's (e.g. your data: sources); repeatable")
    p.add_argument("--threads", type=int, help="OMP/MKL threads per run (CPU sweeps: 1, with --parallel = cores)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine (--run); default 1")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        for base in args.base_config:
            if not base.is_file():
                raise ValueError(f"--base-config {base}: no such file")
        if args.parallel < 1 or (args.threads is not None and args.threads < 1):
            raise ValueError(f"--parallel {args.parallel} / --threads {args.threads}: give positive counts")
        jobs, notes = make_jobs(args.objective, _budgets(args.budgets), args.sizes, args.out.resolve(), args.row_len,
                                args.rows_per_batch, args.lr, args.min_steps)
    except ValueError as err:
        print(f"plm sweep: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"plm sweep: {note}", file=sys.stderr)
    if not jobs:
        print("plm sweep: no jobs left to run", file=sys.stderr)
        return 2
    out = args.out.resolve()
    write_jobs(out, jobs, args)
    base = [b.resolve() for b in args.base_config]
    if args.print_jobs:
        for job in jobs:
            print(shlex.join(fit_command(job, out, base)))
        return 0
    if not args.run:
        done = sum(is_finished(out, j.name) for j in jobs)
        print(f"wrote {len(jobs)} configs to {out / 'configs'} ({done} finished); add --run or --print-jobs")
        for j in jobs:
            print(f"  {j.name}: N = {j.n_params:,}, D = {j.tokens:,} tokens, {j.steps} steps, lr {j.lr:g}")
        return 0
    failed = run_jobs(out, jobs, base, args.threads, args.parallel)
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
