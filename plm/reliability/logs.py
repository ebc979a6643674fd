"""Metric logs that continue across resumes: every optimizer step once in ``<run>/csv/metrics.csv``.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it opens a directory that has one, so each resume
lost the log of the segment before it. :class:`ContinuedCSVLogger` keeps the rows logged before the step
the run resumes from and drops the later ones (a killed segment logged steps past its last checkpoint;
the resumed run logs them again), then appends. Rows before the newest checkpoint's step are written as
soon as the checkpoint is, so a SIGKILL cannot leave a gap a resume would not fill. TensorBoard is given
the same step as ``purge_step``.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from plm.utils.atomic import atomic_write_text


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def trim_metrics(path: str, keep_before_step: int | None) -> list[str]:
    """Keep the rows of ``path`` logged before ``keep_before_step`` (all of them when None; none when 0);
    returns the header kept, [] when the file is gone. Rewritten atomically: a kill leaves either file."""
    if not os.path.isfile(path):
        return []
    if keep_before_step is not None and keep_before_step <= 0:
        os.remove(path)
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if keep_before_step is not None:
        rows = [r for r in rows if (s := _step(r)) is not None and s < keep_before_step]
    if not rows:
        os.remove(path)
        return []
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())
    return header


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        self.metrics_keys = trim_metrics(self.metrics_file_path, self._keep_before_step)


class ContinuedCSVLogger(CSVLogger):
    def __init__(self, *args: Any, keep_before_step: int | None = None, **kwargs: Any) -> None:
        """
        Args:
            keep_before_step: the optimizer step the run starts at (0 for a fresh run: earlier rows go;
                None: keep every row and append, e.g. ``plm validate`` on a run's directory).
            *args, **kwargs: as for Lightning's ``CSVLogger``.
        """
        super().__init__(*args, **kwargs)
        self._keep_before_step = keep_before_step

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Rows before a checkpoint's step are never logged again by a resume: write them now, not at the
        next periodic flush, or a SIGKILL leaves a gap. Rows of that step's validation and its last train
        row arrive just after the save; :meth:`log_metrics` writes those at once too."""
        self._saved_step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        self.save()

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        saved = getattr(self, "_saved_step", None)
        if saved is not None and step is not None and step < saved:
            self.save()

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._keep_before_step)
        return self._experiment
