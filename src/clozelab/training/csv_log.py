"""The CSV log of a run (``<run>/csv/metrics.csv``), kept across resumes.

Lightning's CSVLogger deletes ``metrics.csv`` when a logger starts in a directory that has one,
so every resume used to drop the history of the launches before it. ``RunCSVLogger`` keeps the
rows already there, replaces a row that is logged again for the same step with the same columns
(the steps a killed run did after its last checkpoint are redone on resume, so no step appears
twice), writes the file atomically, and flushes it whenever a checkpoint is written, so the
rows of every checkpointed step survive a SIGKILL.
"""

from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

POSITION = ("step", "epoch")  # where a row was logged, not what it logs


def _identity(row: dict) -> tuple:
    """A row's step and the metric columns it fills."""
    filled = sorted(k for k, v in row.items() if k not in POSITION and v not in (None, ""))
    return str(row.get("step")), tuple(filled)


class KeptRowsWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, keeping earlier launches' rows (module docstring)."""

    def __init__(self, log_dir: str) -> None:
        self.rows: list[dict] = []
        self._index: dict[tuple, int] = {}
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        try:
            with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])
        except FileNotFoundError:
            return
        for row in rows:
            self._put(row)

    def _put(self, row: dict) -> None:
        identity = _identity(row)
        if identity in self._index:
            self.rows[self._index[identity]] = row
        else:
            self._index[identity] = len(self.rows)
            self.rows.append(row)

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        for row in self.metrics:
            self._put(row)
        self.metrics = []
        tmp = f"{self.metrics_file_path}.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.metrics_file_path)


class RunCSVLogger(CSVLogger):
    """CSVLogger whose history survives resumes and kills (module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> KeptRowsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptRowsWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()  # the rows of every checkpointed step are on disk
