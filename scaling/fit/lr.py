"""Learning-rate sweeps of the tuning stage: the best LR per tuned size and the power law
in N the main grid's LRs come from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .table import json_float


@dataclass
class LRSweep:
    """An LR sweep of one arch: per tuned size, the grid, the losses, the best LR."""

    arch: str
    sizes: list[dict[str, Any]]  # {N, size, grid, loss, best, interior}
    law: tuple[float, float] | None  # (ln a, b) of lr = a N^b, None with one size
    clipped: bool = False

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


def lr_sweeps(df: pd.DataFrame, exponent_range: tuple[float, float] = (-1.0, 0.0)
              ) -> dict[str, LRSweep]:
    """LR sweeps from the ``stage == "tune"`` rows (columns arch, N, lr, loss; seeds
    averaged). Per arch: each size's best LR (:func:`best_lr`) and, over two or more sizes,
    the power law ``lr = a N^b`` through the best LRs (least squares in logs), its exponent
    clipped to ``exponent_range`` (``clipped`` says when)."""
    if "stage" not in df or "lr" not in df:
        return {}
    tune = df[df["stage"] == "tune"]
    out = {}
    for arch, sub in tune.groupby("arch", sort=False):
        sizes = []
        for N, s in sub.groupby("N", sort=True):
            agg = s.groupby("lr")["loss"].mean()
            best, interior, _ = best_lr(agg.index.to_numpy(float), agg.to_numpy(float))
            name = str(s["size"].iloc[0]) if "size" in s else ""
            sizes.append({"N": float(N), "size": name, "grid": [float(v) for v in agg.index],
                          "loss": [float(v) for v in agg.to_numpy()], "best": best,
                          "interior": interior})
        law, clipped = None, False
        if len(sizes) >= 2:
            lnN = np.log([s["N"] for s in sizes])
            lnlr = np.log([s["best"] for s in sizes])
            b, ln_a = np.polyfit(lnN, lnlr, 1)
            lo, hi = exponent_range
            if not lo <= b <= hi:
                clipped = True
                b = float(np.clip(b, lo, hi))
                ln_a = float(np.mean(lnlr - b * lnN))
            law = (float(ln_a), float(b))
        out[str(arch)] = LRSweep(str(arch), sizes, law, clipped)
    return out
