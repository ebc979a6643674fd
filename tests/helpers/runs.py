"""The checkout's root and the two ways tests train: a real ``plm fit`` of the tiny config in a subprocess
(run to the end, or started and waited on until a checkpoint exists) and its metric logs, and a few steps
of the tiny MLM in this process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


TINY = REPO / "configs" / "train" / "tiny.yaml"


def fit_cmd(root: Path, name: str, *extra: str) -> list[str]:
    """``plm fit`` of the tiny config as run ``root/name``, one metrics row per step; ``extra`` appended."""
    return [
        sys.executable,
        "-m",
        "plm.cli",
        "fit",
        "--config",
        str(TINY),
        "--run_root",
        str(root),
        "--run_name",
        name,
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


def run_env(**more: str) -> dict[str, str]:
    """The environment of a ``plm`` subprocess: this checkout importable, output unbuffered."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **more}


def run_fit(
    root: Path, name: str, *extra: str, expect: int | None = 0, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run :func:`fit_cmd` to the end; its exit code must be ``expect`` (None: any)."""
    res = subprocess.run(
        fit_cmd(root, name, *extra),
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=run_env(),
    )
    if expect is not None:
        assert res.returncode == expect, f"exit {res.returncode}:\n{res.stderr[-3000:]}"
    return res


def fit_tiny(tmp_path: Path, name: str, *extra: str, env: dict | None = None) -> Path:
    """``plm fit --config configs/train/tiny.yaml`` under ``tmp_path/name`` (``extra`` appended); the run."""
    res = subprocess.run(
        fit_cmd(tmp_path, name, *extra),
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=run_env(**(env or {})),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / name


def start_fit(root: Path, name: str, *extra: str, step: int, new_session: bool = False) -> subprocess.Popen:
    """Start :func:`fit_cmd` (in its own process group when ``new_session``) and return once the checkpoint
    of ``step`` and its checksum are on disk."""
    from plm.reliability.checkpoint_io import sidecar_path

    proc = subprocess.Popen(
        fit_cmd(root, name, *extra),
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    target = sidecar_path(root / name / "ckpt" / f"step{step:08d}.ckpt")
    deadline = time.monotonic() + 300
    while not target.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"fit ended (exit {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"no checkpoint for step {step} after 300 s"
        time.sleep(0.02)
    return proc


def metric_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's ``csv/metrics.csv``."""
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def logged_steps(run: Path, metric: str) -> list[int]:
    """The ``step`` of every row that holds ``metric``, in file order."""
    return [int(r["step"]) for r in metric_rows(run) if r.get(metric)]


def losses(run: Path) -> dict[int, float]:
    """``train/loss`` by step."""
    return {int(r["step"]): float(r["train/loss"]) for r in metric_rows(run) if r.get("train/loss")}


def fit_inprocess(
    root: Path, fasta: Path, max_steps: int, callbacks=(), ckpt_path=None, keep: int = -1, **model_kw
):
    """A few steps of the tiny MLM on ``fasta`` in this process: a checkpoint every step in ``root/ckpt``
    (the newest ``keep``, -1: all, and last.ckpt) through AtomicCheckpointIO, no loggers, no validation.
    ``model_kw`` go to ``MaskedLM``; returns (trainer, model)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from plm.data.datamodule import ProteinDataModule
    from plm.lit.language_model import MaskedLM
    from plm.reliability import AtomicCheckpointIO

    pl.seed_everything(0, verbose=False)
    model = MaskedLM(size="tiny", total_steps=max_steps, **model_kw)
    dm = ProteinDataModule(sources={"uniprot": str(fasta)}, row_len=64, rows_per_batch=2, val_fraction=0.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(
                dirpath=root / "ckpt",
                filename="step{step:08d}",
                auto_insert_metric_name=False,
                every_n_train_steps=1,
                save_top_k=keep,
                monitor="step",
                mode="max",
                save_last=True,
            ),
            *callbacks,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer, model


def quiet_trainer(root: Path, steps: int, callbacks=()):
    """A CPU Lightning Trainer for a few steps with nothing but the given callbacks: no logger, checkpoints,
    progress bar, summary or validation."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        default_root_dir=root,
    )
