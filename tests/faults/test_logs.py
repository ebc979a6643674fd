"""Issue 23 item 4: a resumed run's metrics.csv continues the earlier segments, every step once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from plm.lightning_cli import _loggers
from tests.helpers.runs import logged_steps

pytestmark = pytest.mark.reliability


def _killed_segment(run: Path) -> None:
    """Steps 0-5 logged (validation at step 3), killed after the step-4 checkpoint."""
    (run / "csv").mkdir(parents=True)
    with open(run / "csv" / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch", "step", "train/loss", "val/loss"])
        w.writeheader()
        w.writerows([{"epoch": 0, "step": s, "train/loss": 3.0 - s / 10} for s in range(6)])
        w.writerow({"epoch": 0, "step": 3, "val/loss": 2.9})


def _log(logger, step: int, **metrics: float) -> None:
    logger.log_metrics({"epoch": 0, **metrics}, step=step)


def test_a_resumed_run_keeps_the_earlier_rows_and_logs_each_step_once(tmp_path):
    run = tmp_path / "r"
    _killed_segment(run)
    (csv_logger,) = _loggers(["csv"], run, resume_step=4)
    for step in (4, 5, 6):
        _log(csv_logger, step, **{"train/loss": 1.0, "lr/pg1": 0.1})  # a new column appears as well
    csv_logger.save()
    assert logged_steps(run, "train/loss") == [0, 1, 2, 3, 4, 5, 6]
    assert logged_steps(run, "val/loss") == [3]
    assert logged_steps(run, "lr/pg1") == [4, 5, 6]


def test_a_run_started_from_step_0_begins_a_new_log(tmp_path):
    run = tmp_path / "r"
    _killed_segment(run)
    (csv_logger,) = _loggers(["csv"], run, resume_step=0)
    _log(csv_logger, 0, **{"train/loss": 1.0})
    csv_logger.save()
    assert logged_steps(run, "train/loss") == [0]


def test_outside_fit_the_log_is_appended_to(tmp_path):
    run = tmp_path / "r"
    _killed_segment(run)
    (csv_logger,) = _loggers(["csv"], run, resume_step=None)  # e.g. plm validate on the run
    _log(csv_logger, 6, **{"val/loss": 2.5})
    csv_logger.save()
    assert logged_steps(run, "val/loss") == [3, 6] and len(logged_steps(run, "train/loss")) == 6
