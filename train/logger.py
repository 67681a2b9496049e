"""``RunLogger``: Lightning's CSVLogger, flat in the run folder, and kept across resumes.

Layout: ``save_dir/metrics.csv`` and ``save_dir/hparams.yaml`` (no ``lightning_logs/
version_N`` folders), so a run folder is one thing to point at.

Lightning's CSV writer deletes an existing metrics.csv when it starts. A resumed run
should extend its history instead: this writer keeps the old rows whose step is before
the first step the new run logs, and drops the rest (a resume from an earlier checkpoint
replaces what came after it). A fresh run into the same folder starts at step 0 and so
replaces the file, as before.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        self._previous: list[dict[str, Any]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self._previous = list(csv.DictReader(f))
            os.remove(self.metrics_file_path)

    def save(self) -> None:
        if self._previous is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [
                {k: v for k, v in row.items() if v not in ("", None)}
                for row in self._previous
                if row.get("step") and int(row["step"]) < first
            ]
            self.metrics = kept + self.metrics
            self._previous = None
        super().save()


class RunLogger(CSVLogger):
    """CSV metrics straight into ``save_dir`` (``name`` and ``version`` empty by default)."""

    def __init__(self, save_dir: str, name: str = "", version: str = "", prefix: str = "",
                 flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
