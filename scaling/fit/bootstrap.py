"""The wild cluster bootstrap of the verdict (``scaling.fit.analysis``): every replicate keeps
the design (every size of every IsoFLOP group) and perturbs the losses,
``y* = y_hat + w_c r_i``, with ``y_hat`` and ``r`` the parabola fits' values and residuals,
scaled by ``sqrt(n / (n - 3))`` per group (HC1: a parabola through a few points leaves small
residuals; a group an exact fit passes through gets the pooled residual sd), and one weight
``w_c`` (Webb's six-point distribution) per *trajectory*: a main run and the cooldowns
branched off it share their stable phase, so their errors move together. Seeds are separate
trajectories. Resampling whole trajectories instead (a pairs bootstrap) would drop sizes
from IsoFLOP groups and leave most replicates without a parabola."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .isoflop import Group, parabola_min, size_index

#: weights of Webb's six-point distribution (mean 0, variance 1)
WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])


def wild_targets(df: pd.DataFrame, groups: list[Group], n_boot: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, float, list[str]]:
    """(R, n_rows) perturbed losses of the fitted rows (NaN for rows outside the groups)."""
    notes = []
    n = len(df)
    y = df["loss"].to_numpy(float)
    yhat = np.full(n, np.nan)
    scaled = np.full(n, np.nan)
    ss, dof = 0.0, 0
    for g in groups:
        yy = y[g.rows]
        fit = g.X @ (g.pinv @ yy)
        r = yy - fit
        yhat[g.rows] = fit
        n_g = len(yy)
        if n_g > 3:  # HC1: the residuals of a 3-parameter fit, scaled to unbiased variance
            scaled[g.rows] = r * math.sqrt(n_g / (n_g - 3))
        ss += float(r @ r)
        dof += n_g - 3
    pooled = math.sqrt(ss / dof) if dof > 0 else 0.0
    if dof <= 0:
        notes.append("no IsoFLOP group has more points than its parabola has parameters: the "
                     "residuals are all zero and the intervals show no noise at all; add sizes "
                     "or seeds")
    # a group of three points is fitted exactly and carries no residual: the pooled sd
    fitted = np.isfinite(yhat)
    scaled = np.where(fitted & ~np.isfinite(scaled), pooled, scaled)
    clusters, cid = np.unique(df["trajectory"].to_numpy(str), return_inverse=True)
    W = rng.choice(WEBB, size=(n_boot, len(clusters)))
    Y = yhat[None, :] + W[:, cid] * np.nan_to_num(scaled)[None, :]
    Y[:, ~fitted] = np.nan
    return Y, pooled, notes


def minima_boot(groups: list[Group], Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replicate minima of every group over its sampled range: L* and ln N*, (R, n_groups)
    each."""
    L_out = np.empty((Y.shape[0], len(groups)))
    x_out = np.empty_like(L_out)
    for j, g in enumerate(groups):
        coef = Y[:, g.rows] @ g.pinv.T  # (R, 3)
        t, L = parabola_min(coef, g.lo, g.hi)
        L_out[:, j], x_out[:, j] = L, t + g.x_mid
    return L_out, x_out


def interior_boot(groups: list[Group], Y: np.ndarray) -> np.ndarray:
    """(R, n_groups) bool: whether each replicate's minimum passes the interior test of
    ``isoflop.edge_reasons`` on the replicate's own parabola and losses: it opens upwards,
    its vertex lies strictly inside the sampled sizes, and the lowest mean loss of a size
    (the replicate's y) is at neither the smallest nor the largest size. The selection the
    point estimate makes, made again in every replicate (the interval then carries it)."""
    out = np.empty((Y.shape[0], len(groups)), dtype=bool)
    for j, g in enumerate(groups):
        coef = Y[:, g.rows] @ g.pinv.T  # (R, 3)
        c2, c1 = coef[:, 0], coef[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            tv = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
        inside = (c2 > 0) & (tv > g.lo) & (tv < g.hi)
        idx, n_sizes = size_index(g.X[:, 1] + g.x_mid)
        M = np.zeros((n_sizes, len(idx)))
        M[idx, np.arange(len(idx))] = 1.0
        means = (Y[:, g.rows] @ M.T) / M.sum(axis=1)  # (R, n_sizes)
        best = np.argmin(means, axis=1)
        out[:, j] = inside & (best > 0) & (best < n_sizes - 1)
    return out
