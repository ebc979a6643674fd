"""Issue 23 item 5: a learning rate given on resume is applied (and said), and the NaN guard's advice names
a checkpoint from before the divergence and a command that works."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest

from plm.lit.schedule import cosine_schedule, warmup_steps
from plm.reliability import NaNGuard
from tests.helpers.runs import fit_inprocess

pytestmark = pytest.mark.reliability


class _LearningRates(pl.Callback):
    """The learning rate each optimizer step runs with, by step."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.by_step[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_new_learning_rate_on_resume_is_applied_and_reported(tmp_path, uniprot_fasta, caplog):
    fit_inprocess(tmp_path, uniprot_fasta, 6, lr=1e-2, betas=(0.9, 0.95))
    seen = _LearningRates()
    with caplog.at_level(logging.INFO):
        trainer, _ = fit_inprocess(
            tmp_path,
            uniprot_fasta,
            6,
            [seen],
            lr=1e-3,
            betas=(0.8, 0.9),
            ckpt_path=str(tmp_path / "ckpt" / "step00000003.ckpt"),
        )
    warm = warmup_steps(6)
    assert seen.by_step == pytest.approx(
        {s: 1e-3 * cosine_schedule(s, 6, warm, 0.1) for s in (3, 4, 5)}, rel=1e-9
    )
    group = trainer.optimizers[0].param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["initial_lr"] == 1e-3
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "resumed at step 3 with changed optimizer settings" in said
    assert "lr 0.01 → 0.001" in said and "betas (0.9, 0.95) → (0.8, 0.9)" in said


def test_unchanged_settings_leave_the_restored_optimizer_alone(tmp_path, uniprot_fasta, caplog):
    fit_inprocess(tmp_path, uniprot_fasta, 4, lr=1e-2)
    seen = _LearningRates()
    with caplog.at_level(logging.INFO):
        fit_inprocess(
            tmp_path,
            uniprot_fasta,
            4,
            [seen],
            lr=1e-2,
            ckpt_path=str(tmp_path / "ckpt" / "step00000002.ckpt"),
        )
    assert seen.by_step == pytest.approx(
        {s: 1e-2 * cosine_schedule(s, 4, warmup_steps(4), 0.1) for s in (2, 3)}
    )
    assert "changed optimizer settings" not in " ".join(r.getMessage() for r in caplog.records)


def test_nan_guard_advice_names_the_best_checkpoint_and_a_lower_learning_rate(tmp_path):
    module = SimpleNamespace(peak_lr=1e-3, global_step=812)
    guard = NaNGuard(3, ckpt_dir=tmp_path)
    assert "--ckpt_path last --model.init_args.lr 0.0001" in guard.advice(module)  # nothing better on disk
    (tmp_path / "best.ckpt").write_bytes(b"")
    advice = guard.advice(module)
    assert f"--ckpt_path {tmp_path / 'best.ckpt'} --model.init_args.lr 0.0001" in advice
    assert "before the divergence" in advice and "a resume applies it" in advice
