"""The checkout's root and the two ways tests train: a real ``plm fit`` of the tiny config in a subprocess,
and a few steps of the tiny MLM in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fit_tiny(tmp_path: Path, name: str, *extra: str, env: dict | None = None) -> Path:
    """``plm fit --config configs/train/tiny.yaml`` under ``tmp_path/name`` (``extra`` appended); the run."""
    cmd = [
        sys.executable,
        "-m",
        "plm.cli",
        "fit",
        "--config",
        str(REPO / "configs/train/tiny.yaml"),
        "--run_root",
        str(tmp_path),
        "--run_name",
        name,
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]
    res = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / name


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
