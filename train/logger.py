"""``RunLogger``: metrics as CSV straight into the run folder, live, and kept across resumes.

Layout: ``save_dir/metrics.csv`` and ``save_dir/hparams.yaml`` (no ``lightning_logs/
version_N`` folders), so a run folder is one thing to point at. Built on Lightning's public
``Logger`` base class, not on its CSV writer:

- Every ``log_metrics`` call is one row, appended and flushed at once (a live run can be
  watched with ``tail -f``). When a metric appears that the header does not have yet (the
  first ``val/loss``), the whole file is rewritten with the wider header: to a temporary
  file in the same folder, then renamed over the old one.
- A resumed run extends its history: the rows of the previous run whose step is before the
  first step the new run logs are kept, the rest dropped (a resume from an earlier
  checkpoint replaces what came after it). The merge happens at the new run's first row, by
  the same write-then-rename, so the old file is intact until the merged one exists; a kill
  at any moment loses no row that was on disk. A fresh run into the same folder starts at
  step 0 and so replaces the file.

Only rank zero writes (``rank_zero_only``).
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from .fileio import atomic_write

METRICS = "metrics.csv"
HPARAMS = "hparams.yaml"


def _value(v: Any) -> Any:
    item = getattr(v, "item", None)  # tensors and numpy scalars
    return item() if callable(item) else v


class RunLogger(Logger):
    """CSV metrics in ``save_dir/metrics.csv``, flushed per row, merged on resume.

    Args:
        save_dir: the run folder (``trainer.default_root_dir`` when built by ``train.cli``).
        name, version: shown by Lightning; the files do not move with them.
        prefix: prepended to every metric key (``prefix-key``), as Lightning's loggers do.
    """

    def __init__(self, save_dir: str, name: str = "", version: str = "", prefix: str = "") -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._name = name
        self._version = version
        self._prefix = prefix
        self._fields: list[str] = []
        self._rows: list[dict[str, Any]] | None = None  # None until the first row is logged
        self._previous: list[dict[str, Any]] | None = None  # the resumed run's rows

    # ---- identity --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def root_dir(self) -> str:
        return self._save_dir

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    @property
    def metrics_path(self) -> Path:
        return Path(self._save_dir) / METRICS

    # ---- writing ---------------------------------------------------------------------

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        os.makedirs(self._save_dir, exist_ok=True)
        tmp = Path(self._save_dir) / f".{HPARAMS}.tmp-{os.getpid()}"
        save_hparams_to_yaml(tmp, params)
        os.replace(tmp, Path(self._save_dir) / HPARAMS)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {f"{self._prefix}-{k}" if self._prefix else k: _value(v) for k, v in metrics.items()}
        if step is not None:
            row["step"] = int(step)
        if self._rows is None:
            self._start(row)
            return
        self._rows.append(row)
        new = [k for k in row if k not in self._fields]
        if new:
            self._fields += new
            self._rewrite()
        else:
            with open(self.metrics_path, "a", newline="") as f:
                csv.DictWriter(f, self._fields, lineterminator="\n").writerow(row)
                f.flush()

    def _start(self, first: dict[str, Any]) -> None:
        """The first row of this process: merge with a resumed run's rows, write the file."""
        kept: list[dict[str, Any]] = []
        if self.metrics_path.is_file():
            with open(self.metrics_path, newline="") as f:
                old = list(csv.DictReader(f))
            if "step" in first:
                kept = [{k: v for k, v in r.items() if v not in ("", None)} for r in old
                        if r.get("step") not in (None, "") and int(r["step"]) < first["step"]]
        self._rows = [*kept, first]
        fields: list[str] = []
        for r in self._rows:
            fields += [k for k in r if k not in fields]
        self._fields = fields
        self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self._fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self._rows or [])
        os.makedirs(self._save_dir, exist_ok=True)
        atomic_write(self.metrics_path, buf.getvalue())

    @rank_zero_only
    def save(self) -> None:
        pass  # every row is on disk when log_metrics returns

    @rank_zero_only
    def finalize(self, status: str) -> None:
        pass
