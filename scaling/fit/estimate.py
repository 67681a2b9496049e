"""A number with its interval: ``Estimate`` (a point estimate and the percentile interval of
its bootstrap replicates, with the interval's Monte Carlo error) and :func:`percentile`,
which makes one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .table import json_float

CI = 0.95


@dataclass
class Estimate:
    """A point estimate with its percentile interval over the bootstrap replicates.

    ``mc_error``: the Monte Carlo standard error of the interval's endpoints (the larger of
    the two), from the order statistics of the replicates; ``n_ok``: replicates where the
    quantity was defined. NaN where undefined."""

    estimate: float
    low: float = math.nan
    high: float = math.nan
    mc_error: float = math.nan
    n_ok: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": json_float(self.estimate), "low": json_float(self.low), "high": json_float(self.high)}

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def percentile(estimate: float, samples: np.ndarray, ci: float = CI) -> Estimate:
    """Percentile interval of ``samples`` (non-finite ones dropped) around ``estimate``."""
    s = np.sort(np.asarray(samples, dtype=float)[np.isfinite(samples)])
    n = s.size
    if n < 10:
        return Estimate(float(estimate), n_ok=int(n))
    q = (1 - ci) / 2
    lo, hi = np.quantile(s, [q, 1 - q])
    # order-statistic standard error of a quantile: the values at ranks n q +- sqrt(n q (1-q))
    spread = math.sqrt(n * q * (1 - q))
    errs = []
    for qq in (q, 1 - q):
        j0 = int(np.clip(math.floor(n * qq - spread), 0, n - 1))
        j1 = int(np.clip(math.ceil(n * qq + spread), 0, n - 1))
        errs.append((s[j1] - s[j0]) / 2)
    return Estimate(float(estimate), float(lo), float(hi), float(max(errs)), int(n))
