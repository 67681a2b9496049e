"""Learning-rate sweeps of the tuning stage: the best LR per tuned size and the power law
in N the main grid's LRs come from, with the exponent's interval.

The law ``lr = a N^b`` is least squares in logs through the tuned sizes' best LRs, its
exponent kept inside the prior range ``[-1, 0]`` (``EXPONENT_RANGE``: the optimal LR does not
grow with N at a fixed recipe, and falls no faster than 1/N, muP's rule for hidden matrices
under Adam being 1/width, i.e. about N^-1/2 at a fixed depth); an estimate outside it is
clipped and the report says so. The interval is a parametric bootstrap of the sweeps
(``EXPONENT_BOOT`` replicates): every loss is perturbed by normal noise of the seed sd
(pooled over the (size, LR) points trained with 2+ seeds, divided by sqrt(seeds) for the
averaged losses; the parabolas' residual sd where no point has two seeds), each size's best
LR refitted, the slope refitted; 2.5/97.5% percentiles (unclipped). A sweep whose depth
near its optimum, the mean loss of the best LR's two neighbours minus the best's, is below
2 seed sds cannot place its optimum: ``flat`` names those sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .table import json_float

#: the prior range of the LR law's exponent (see the module docstring)
EXPONENT_RANGE = (-1.0, 0.0)
EXPONENT_BOOT = 500


@dataclass
class LRSweep:
    """An LR sweep of one arch: per tuned size, the grid, the losses, the best LR."""

    arch: str
    sizes: list[dict[str, Any]]  # {N, size, grid, loss, best, interior}
    law: tuple[float, float] | None  # (ln a, b) of lr = a N^b, None with one size
    clipped: bool = False
    exponent: tuple[float, float, float] | None = None  # (estimate unclipped, low, high)
    seed_sd: float = float("nan")  # of one run's final loss (see the module docstring)
    flat: list[str] = field(default_factory=list)  # sizes whose sweep is flat within seed noise
    span: float = float("nan")  # largest / smallest tuned N

    @property
    def interior(self) -> bool:
        return all(s["interior"] for s in self.sizes)

    def lr_for(self, N: float) -> float:
        """The LR for a model of N parameters: the law, or the nearest tuned size's best."""
        if self.law is None:
            near = min(self.sizes, key=lambda s: abs(math.log(s["N"] / N)))
            return float(near["best"])
        ln_a, b = self.law
        return float(math.exp(ln_a + b * math.log(N)))

    def as_dict(self) -> dict[str, Any]:
        grid = sorted({g for s in self.sizes for g in s["grid"]})
        ref = max(self.sizes, key=lambda s: s["N"])
        return {
            "best": ref["best"], "grid": grid, "interior": self.interior,
            "sizes": [{k: (json_float(v) if isinstance(v, float) else v) for k, v in s.items()}
                      for s in self.sizes],
            "law": None if self.law is None else {"a": math.exp(self.law[0]), "b": self.law[1],
                                                  "clipped": self.clipped},
            "exponent": None if self.exponent is None else dict(zip(
                ("estimate", "low", "high"), (json_float(v) for v in self.exponent))),
            "prior_range": list(EXPONENT_RANGE), "seed_sd": json_float(self.seed_sd),
            "flat": list(self.flat), "N_span": json_float(self.span),
        }


def best_lr(grid: np.ndarray, loss: np.ndarray) -> tuple[float, bool, int]:
    """The best LR of a sweep: the grid's argmin refined by a least-squares parabola in
    ln lr through it and up to two neighbours on each side (single short runs are noisy;
    five points smooth more than three), the vertex kept between the argmin's neighbours.
    Returns (lr, interior, argmin): ``interior`` is False when the argmin is the smallest or
    the largest LR."""
    order = np.argsort(grid)
    g, y = np.log(np.asarray(grid, float)[order]), np.asarray(loss, float)[order]
    i = int(np.nanargmin(y))
    if i in (0, len(g) - 1):
        return float(math.exp(g[i])), False, int(order[i])
    lo, hi = max(0, i - 2), min(len(g), i + 3)
    c2, c1, _ = np.polyfit(g[lo:hi], y[lo:hi], 2)
    v = -c1 / (2 * c2) if c2 > 0 else g[i]
    return float(math.exp(np.clip(v, g[i - 1], g[i + 1]))), True, int(order[i])


def _seed_sd(sub: pd.DataFrame) -> float:
    """The pooled sd of one run's final loss over the (N, lr) points with 2+ seeds; NaN
    when none has two."""
    if "seed" not in sub:
        return math.nan
    g = sub.groupby(["N", "lr"])["loss"]
    var, dof = g.var(ddof=1), g.count() - 1
    ok = dof > 0
    return float(math.sqrt((var[ok] * dof[ok]).sum() / dof[ok].sum())) if ok.any() else math.nan


def _residual_sd(sizes: list[dict[str, Any]]) -> float:
    """The sd of the sweeps' losses about a parabola in ln lr through each (NaN with fewer
    than 4 points a sweep)."""
    ss, dof = 0.0, 0
    for s in sizes:
        x, y = np.log(s["grid"]), np.asarray(s["loss"])
        if len(x) >= 4:
            ss += float(np.sum((np.polyval(np.polyfit(x, y, 2), x) - y) ** 2))
            dof += len(x) - 3
    return math.sqrt(ss / dof) if dof else math.nan


def _slope(lnN: np.ndarray, lnlr: np.ndarray) -> float:
    return float(np.polyfit(lnN, lnlr, 1)[0])


def lr_sweeps(df: pd.DataFrame, exponent_range: tuple[float, float] = EXPONENT_RANGE,
              n_boot: int = EXPONENT_BOOT, seed: int = 0) -> dict[str, LRSweep]:
    """LR sweeps from the ``stage == "tune"`` rows (columns arch, N, lr, loss; seeds
    averaged). Per arch: each size's best LR (:func:`best_lr`) and, over two or more sizes,
    the power law ``lr = a N^b`` through the best LRs (least squares in logs), its exponent
    clipped to ``exponent_range`` (``clipped`` says when), with its bootstrap interval (see
    the module docstring; ``n_boot=0``: the law only, the interval NaN)."""
    if "stage" not in df or "lr" not in df:
        return {}
    tune = df[df["stage"] == "tune"]
    rng = np.random.default_rng(seed)
    out = {}
    for arch, sub in tune.groupby("arch", sort=False):
        sizes, counts = [], []
        for N, s in sub.groupby("N", sort=True):
            agg = s.groupby("lr")["loss"].mean()
            best, interior, _ = best_lr(agg.index.to_numpy(float), agg.to_numpy(float))
            name = str(s["size"].iloc[0]) if "size" in s else ""
            sizes.append({"N": float(N), "size": name, "grid": [float(v) for v in agg.index],
                          "loss": [float(v) for v in agg.to_numpy()], "best": best,
                          "interior": interior})
            counts.append(s.groupby("lr")["loss"].count().to_numpy(float))
        sd = _seed_sd(sub)
        noise = sd if math.isfinite(sd) else _residual_sd(sizes)
        flat = []
        for s in sizes:
            y = np.asarray(s["loss"])
            i = int(np.argmin(y))
            if 0 < i < len(y) - 1 and math.isfinite(noise) and (y[i - 1] + y[i + 1]) / 2 - y[i] < 2 * noise:
                flat.append(s["size"] or f"N={s['N']:.3g}")
        law, clipped, exponent = None, False, None
        span = max(s["N"] for s in sizes) / min(s["N"] for s in sizes)
        if len(sizes) >= 2:
            lnN = np.log([s["N"] for s in sizes])
            lnlr = np.log([s["best"] for s in sizes])
            b, ln_a = np.polyfit(lnN, lnlr, 1)
            if n_boot > 0 and math.isfinite(noise) and noise > 0:
                reps = []
                for _ in range(n_boot):
                    best = []
                    for s, n in zip(sizes, counts):
                        y = np.asarray(s["loss"]) + rng.normal(0.0, noise / np.sqrt(n))
                        best.append(best_lr(np.asarray(s["grid"]), y)[0])
                    reps.append(_slope(lnN, np.log(best)))
                lo_b, hi_b = np.percentile(reps, [2.5, 97.5])
                exponent = (float(b), float(lo_b), float(hi_b))
            else:
                exponent = (float(b), math.nan, math.nan)
            lo, hi = exponent_range
            if not lo <= b <= hi:
                clipped = True
                b = float(np.clip(b, lo, hi))
                ln_a = float(np.mean(lnlr - b * lnN))
            law = (float(ln_a), float(b))
        out[str(arch)] = LRSweep(str(arch), sizes, law, clipped, exponent, sd, flat, span)
    return out
