"""IsoFLOP minima (``scaling.analysis``, step 1): per arch and FLOP budget, a parabola in
``x = ln N`` through the losses of every size and seed, its minimum, and whether that
minimum is interior or at the edge of the sampled sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .analysis import Estimate

MIN_SIZES = 3


@dataclass
class Minimum:
    """The IsoFLOP minimum of one arch at one budget.

    ``x``/``y``: ln N and loss of the group's rows; ``coef``: the parabola ``(c2, c1, c0)``
    in ``x - x_mid``; ``interior``: usable for the headline (else ``reason`` says why).
    ``C``: the group's compute at the vertex (``C`` column, ln-linear in x within the
    group); ``compute``: the same for every compute column the table has."""

    arch: str
    budget: float
    x: np.ndarray
    y: np.ndarray
    x_mid: float
    coef: tuple[float, float, float]
    N_opt: float
    L_opt: float
    interior: bool
    reason: str
    n_sizes: int
    n_seeds: int
    compute: dict[str, float] = field(default_factory=dict)
    L_ci: Estimate | None = None
    N_ci: Estimate | None = None

    @property
    def C(self) -> float:
        return self.compute["C"]


def _parabola_min(coef: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """coef (R, 3) of c2 t^2 + c1 t + c0 -> (t*, L*) (R,), the minimum over t in [lo, hi]."""
    c2, c1, c0 = coef[:, 0], coef[:, 1], coef[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    inside = np.isfinite(t) & (t > lo) & (t < hi)
    f = lambda tt: c2 * tt * tt + c1 * tt + c0
    f_lo, f_hi = f(np.full_like(c0, lo)), f(np.full_like(c0, hi))
    t_edge = np.where(f_lo <= f_hi, lo, hi)
    t_best = np.where(inside, t, t_edge)
    return t_best, f(t_best)


@dataclass
class _Group:
    arch: str
    budget: float
    rows: np.ndarray  # indices into the fitted table
    X: np.ndarray  # (n, 3) design [t^2, t, 1]
    pinv: np.ndarray  # (3, n)
    x_mid: float
    lo: float
    hi: float


def _groups(df: pd.DataFrame, params: str) -> tuple[list[_Group], list[str]]:
    """The IsoFLOP groups with >= MIN_SIZES distinct sizes, per arch and budget."""
    notes = []
    out = []
    x_all = np.log(df[params].to_numpy(float))
    for (arch, budget), sub in df.groupby(["arch", "_budget"], sort=True):
        idx = sub.index.to_numpy()
        x = x_all[idx]
        n_sizes = len(np.unique(np.round(x, 9)))
        if n_sizes < MIN_SIZES:
            notes.append(f"{arch} at C={budget:.3g}: {n_sizes} size(s), an IsoFLOP minimum needs "
                         f"{MIN_SIZES}")
            continue
        x_mid = float(np.mean(x))
        t = x - x_mid
        X = np.stack([t * t, t, np.ones_like(t)], axis=1)
        pinv = np.linalg.pinv(X)
        out.append(_Group(arch, float(budget), idx, X, pinv, x_mid, float(t.min()),
                          float(t.max())))
    return out, notes


def _minimum(g: _Group, df: pd.DataFrame, params: str, compute_cols: list[str]) -> Minimum:
    y = df.loc[g.rows, "loss"].to_numpy(float)
    x = np.log(df.loc[g.rows, params].to_numpy(float))
    coef = g.pinv @ y
    t_best, L = _parabola_min(coef[None, :], g.lo, g.hi)
    c2, c1, _ = coef
    reasons = []
    if c2 <= 0:
        reasons.append("the losses do not curve upwards in ln N")
    else:
        tv = -c1 / (2 * c2)
        if not g.lo < tv < g.hi:
            side = "below" if tv <= g.lo else "above"
            reasons.append(f"the parabola's vertex lies {side} the sampled sizes "
                           f"[{math.exp(g.lo + g.x_mid):.3g}, {math.exp(g.hi + g.x_mid):.3g}]")
    sizes = np.unique(np.round(x, 9))
    means = np.array([y[np.round(x, 9) == s].mean() for s in sizes])
    best = int(np.argmin(means))
    if best in (0, len(sizes) - 1) and not reasons:
        side = "smallest" if best == 0 else "largest"
        reasons.append(f"the lowest loss is at the {side} size")
    x_opt = float(t_best[0] + g.x_mid)
    comp = {}
    for col in compute_cols:
        vals = df.loc[g.rows, col].to_numpy(float)
        if not np.all(np.isfinite(vals) & (vals > 0)):
            continue
        slope, icpt = np.polyfit(x - g.x_mid, np.log(vals), 1)
        comp[col] = float(math.exp(icpt + slope * (x_opt - g.x_mid)))
    n_seeds = int(max(np.sum(np.round(x, 9) == s) for s in sizes))
    return Minimum(g.arch, g.budget, x, y, g.x_mid, tuple(float(c) for c in coef),
                   math.exp(x_opt), float(L[0]), not reasons, "; ".join(reasons), len(sizes),
                   n_seeds, comp)
