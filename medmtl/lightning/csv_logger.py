"""``CSVLogger``: Lightning's CSV logger, except that a run resumed into its own folder keeps its log.

Lightning's writer deletes ``metrics.csv`` when it finds the log folder not empty, so a run killed and resumed
with ``--ckpt_path last`` into a fixed ``version`` (as medmtl's configs use, so that paths stay put) lost every
row logged before the kill. This writer reads the existing header and appends instead; when new metric names
appear it rewrites the file with the wider header, keeping the rows (Lightning's own behaviour). Rows logged
between the last checkpoint and the kill are logged again by the resumed run, so a step may appear twice: the
later row is the resumed run's.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same arguments) that appends to an existing ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
