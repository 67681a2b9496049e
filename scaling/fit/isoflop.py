"""IsoFLOP minima: per arch and FLOP budget, a parabola in ``x = ln N`` through the losses of
every size and seed, its minimum, and the one rule for whether that minimum is interior or
at the edge of the sampled sizes (:func:`edge_reasons`), which the verdict
(``scaling.fit.analysis``, step 1) and Chinchilla's Approach 2 (``scaling.fit.chinchilla``)
share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .estimate import Estimate

MIN_SIZES = 3


@dataclass
class Minimum:
    """The IsoFLOP minimum of one arch at one budget.

    ``x``/``y``: ln N and loss of the group's rows; ``coef``: the parabola ``(c2, c1, c0)``
    in ``x - x_mid``; ``interior``: usable for the headline (else ``reason`` says why).
    ``C``: the group's compute at the vertex (``C`` column, ln-linear in x within the
    group); ``compute``: the same for every compute column the table has. ``lnD_line``:
    (slope, intercept) of ln D against ``x - x_mid`` over the group's rows, so ``D_opt`` (the
    tokens at the vertex) and a bootstrap replicate's D at its own vertex are read the same
    way. ``interior_fraction``: the share of bootstrap replicates in which the minimum passes
    the interior test (set by the analysis)."""

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
    lnD_line: tuple[float, float] = (math.nan, math.nan)
    interior_fraction: float = math.nan

    @property
    def C(self) -> float:
        return self.compute["C"]

    def D_at(self, x: np.ndarray | float) -> np.ndarray | float:
        """Tokens at ln N = x, ln-linear in x within the group (as the compute columns)."""
        slope, icpt = self.lnD_line
        return np.exp(icpt + slope * (np.asarray(x, float) - self.x_mid))

    @property
    def D_opt(self) -> float:
        return float(self.D_at(math.log(self.N_opt)))


def parabola_min(coef: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
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
class Group:
    """One IsoFLOP group of a results table: its rows, and the least-squares parabola's
    pseudo-inverse in ``t = ln N - x_mid`` over the sampled range ``[lo, hi]`` (shared by the
    point estimate and every bootstrap replicate)."""

    arch: str
    budget: float
    rows: np.ndarray  # indices into the fitted table
    X: np.ndarray  # (n, 3) design [t^2, t, 1]
    pinv: np.ndarray  # (3, n)
    x_mid: float
    lo: float
    hi: float


def isoflop_groups(df: pd.DataFrame, params: str) -> tuple[list[Group], list[str]]:
    """The IsoFLOP groups with >= MIN_SIZES distinct sizes, per arch and budget (column
    ``_budget``), and a note for each group with fewer."""
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
        out.append(Group(arch, float(budget), idx, X, pinv, x_mid, float(t.min()),
                          float(t.max())))
    return out, notes


def size_index(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The sizes of a group's rows: each row's index into the sorted distinct ln N (rounded
    to 9 digits, so seeds of one size share it) and the number of sizes."""
    _, idx = np.unique(np.round(np.asarray(x, float), 9), return_inverse=True)
    return idx.reshape(-1), int(idx.max()) + 1 if idx.size else 0


def edge_reasons(x: np.ndarray, y: np.ndarray, coef: tuple[float, float, float], x_mid: float
                 ) -> list[str]:
    """Why the minimum of the parabola ``coef`` (``c2 t^2 + c1 t + c0`` in ``t = x - x_mid``)
    through the points ``(x, y)`` (ln N, loss; several seeds per size allowed) is *at the edge*
    of the sampled sizes, or ``[]`` when it is interior: the parabola opens downwards, its
    vertex lies outside the open range of the sampled x, or the lowest mean loss of a size is
    at the smallest or the largest size (the grid missed the optimum)."""
    c2, c1 = coef[0], coef[1]
    lo, hi = float((x - x_mid).min()), float((x - x_mid).max())
    reasons = []
    if c2 <= 0:
        reasons.append("the losses do not curve upwards in ln N")
    else:
        tv = -c1 / (2 * c2)
        if not lo < tv < hi:
            side = "below" if tv <= lo else "above"
            reasons.append(f"the parabola's vertex lies {side} the sampled sizes "
                           f"[{math.exp(lo + x_mid):.3g}, {math.exp(hi + x_mid):.3g}]")
    sizes = np.unique(np.round(x, 9))
    means = np.array([y[np.round(x, 9) == s].mean() for s in sizes])
    best = int(np.argmin(means))
    if best in (0, len(sizes) - 1) and not reasons:
        side = "smallest" if best == 0 else "largest"
        reasons.append(f"the lowest loss is at the {side} size")
    return reasons


def group_minimum(g: Group, df: pd.DataFrame, params: str, compute_cols: list[str]) -> Minimum:
    """The minimum of group ``g`` of the table ``df`` (N in column ``params``), and the
    group's compute at it for each of ``compute_cols`` (ln-linear in ln N within the group)."""
    y = df.loc[g.rows, "loss"].to_numpy(float)
    x = np.log(df.loc[g.rows, params].to_numpy(float))
    coef = g.pinv @ y
    t_best, L = parabola_min(coef[None, :], g.lo, g.hi)
    reasons = edge_reasons(x, y, coef, g.x_mid)
    sizes = np.unique(np.round(x, 9))
    x_opt = float(t_best[0] + g.x_mid)
    comp = {}
    for col in compute_cols:
        vals = df.loc[g.rows, col].to_numpy(float)
        if not np.all(np.isfinite(vals) & (vals > 0)):
            continue
        slope, icpt = np.polyfit(x - g.x_mid, np.log(vals), 1)
        comp[col] = float(math.exp(icpt + slope * (x_opt - g.x_mid)))
    n_seeds = int(max(np.sum(np.round(x, 9) == s) for s in sizes))
    slope, icpt = np.polyfit(x - g.x_mid, np.log(df.loc[g.rows, "D"].to_numpy(float)), 1)
    return Minimum(g.arch, g.budget, x, y, g.x_mid, tuple(float(c) for c in coef),
                   math.exp(x_opt), float(L[0]), not reasons, "; ".join(reasons), len(sizes),
                   n_seeds, comp, lnD_line=(float(slope), float(icpt)))
