"""The verdict: IsoFLOP minima, the efficiency factor of each architecture against a baseline,
honest intervals.

Input: a results table (``scaling.table``): one row per finished run with ``arch, N, D, C,
loss`` and, where known, ``budget_flops`` (the IsoFLOP group), ``trajectory`` (the
bootstrap cluster), ``seed``, ``stage``. ``stage == "tune"`` rows (learning-rate sweeps)
feed :func:`lr_sweeps` only.

The method, step by step:

1. **IsoFLOP minima.** Per arch and FLOP budget, a parabola in ``x = ln N`` through the
   losses of every size and seed (least squares), its minimum ``L_opt`` at
   ``N_opt = exp(x*)``. A group needs 3 distinct sizes. A minimum whose vertex is not
   strictly inside the sampled sizes, or whose lowest mean loss sits at the smallest or
   largest size, or whose parabola opens downwards, is *at the edge*: it is reported, but
   it stays out of the headline (the grid missed the optimum).
2. **Headline 1, the loss gap** at equal measured compute: per budget, ``L_opt(arch) -
   L_opt(baseline)`` in nats per token (negative: the arch is better).
3. **Headline 2, the efficiency factor.** One joint fit over every arch's interior minima,

       ln L = ln(E + k (m_a C)^-gamma),   m_baseline = 1,

   least squares on ln L. E, k, gamma are shared; ``m_a`` is the compute the baseline
   needs for the arch's loss divided by what the arch needs (> 1: the arch needs less).
   In the parametrisation ``ln(E + exp(k_ + nu_a - gamma ln C))`` every term is linear in
   the parameters (``nu_a = -gamma ln m_a``), which is what makes the fit a small, smooth,
   batched Gauss-Newton problem.
4. **Same slope, or not.** The same fit with a free ``gamma_a`` and ``k_a`` per arch (E
   shared); the bootstrap interval of ``gamma_a - gamma_baseline`` says whether the
   exponents differ ("same slope, shifted" or "the gap grows/shrinks with compute").
5. **The inverted-frontier multiplier m(C)**, ``C_base(L_opt(arch, C)) / C``, read off the
   baseline's fitted curve only where the compute it needs lies inside the baseline's
   measured minima (its support); a loss below the fitted asymptote E is *not
   identifiable*, never infinity.
6. **Extrapolation check.** Hold out the largest budget, refit from the grid of starts,
   predict its minima; the error in loss and in ln C.

Intervals: a *wild cluster bootstrap*. Each replicate keeps the design (every size of every
group) and perturbs the losses: ``y* = y_hat + w_c r_i``, with ``y_hat`` and ``r`` the
parabola fits' values and residuals, scaled by ``sqrt(n / (n - 3))`` per group (HC1: a
parabola through a few points leaves small residuals; a group an exact fit passes through
gets the pooled residual sd), and one weight ``w_c`` (Webb's six-point distribution) per *trajectory*: a
main run and the cooldowns branched off it share their stable phase, so their errors move
together. Seeds are separate trajectories. Resampling whole trajectories instead (a pairs
bootstrap) would drop sizes from IsoFLOP groups and leave most replicates without a
parabola. Every refit (parabolas, the joint fit, the free fit) runs on all replicates at
once; each joint refit starts from a grid of starts plus the full-data optimum and keeps
the best. Percentile intervals; their Monte Carlo error (from the order statistics) is
reported with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .table import budget_labels, normalise

CI = 0.95
DEFAULT_N_BOOT = 2000
MIN_SIZES = 3
#: weights of Webb's six-point distribution (mean 0, variance 1)
WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])
E_FLOOR = 1e-4  # E is bounded below by E_FLOOR * (lowest loss): at the floor it is "not identified"


# --------------------------------------------------------------------------- small types


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
        return {"estimate": _num(self.estimate), "low": _num(self.low), "high": _num(self.high)}

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def _num(x: Any) -> float | None:
    """JSON-safe float: None for NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


# --------------------------------------------------------------------------- IsoFLOP minima


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
    seeds = df.loc[g.rows, "seed"].to_numpy()
    n_seeds = int(max(np.sum(np.round(x, 9) == s) for s in sizes)) if len(seeds) else 1
    return Minimum(g.arch, g.budget, x, y, g.x_mid, tuple(float(c) for c in coef),
                   math.exp(x_opt), float(L[0]), not reasons, "; ".join(reasons), len(sizes),
                   n_seeds, comp)


# --------------------------------------------------------------------------- batched fits


def _lm(J: torch.Tensor, Y: torch.Tensor, theta: torch.Tensor, *, e_index: int | None,
        e_floor: torch.Tensor | None, max_iter: int = 200, rtol: float = 1e-10
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt on many least-squares problems at once.

    Model: ``yhat_n = ln(exp(J[n, 0] . theta) + exp(J[n, 1] . theta))`` (two terms, each
    linear in theta). J: (n, 2, P); Y: (B, n) targets (NaN: the point is left out of that
    problem); theta: (B, P) starts. ``e_index``: the parameter bounded below by ``e_floor``
    (B,). A problem stops when an accepted step gains less than ``rtol`` of its objective,
    or when no step is accepted even with heavy damping. Returns the end points (B, P) and
    objectives (B,) (sums of squared residuals)."""
    w = torch.isfinite(Y).to(J.dtype)
    Y = torch.nan_to_num(Y)
    theta = theta.clone()
    B, P = theta.shape
    J0, J1 = J[:, 0, :], J[:, 1, :]  # (n, P)
    dJ = J1 - J0

    def resid(th: torch.Tensor, y: torch.Tensor, ww: torch.Tensor):
        u0, u1 = th @ J0.T, th @ J1.T  # (b, n)
        lse = torch.maximum(u0, u1) + torch.log1p(torch.exp(-(u0 - u1).abs()))
        return u1 - u0, (lse - y) * ww

    _, r = resid(theta, Y, w)
    f = (r * r).sum(-1)
    lam = torch.full((B,), 1e-3, dtype=J.dtype)
    active = torch.arange(B)
    eye = torch.eye(P, dtype=J.dtype)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        th, y, ww, fa, la = theta[active], Y[active], w[active], f[active], lam[active]
        du, ra = resid(th, y, ww)
        p1 = torch.sigmoid(du) * ww  # (b, n): the second term's share of the loss
        jac = J0[None] * ww[..., None] + p1[..., None] * dJ[None]  # (b, n, P)
        g = torch.einsum("bn,bnp->bp", ra, jac)
        H = torch.einsum("bnp,bnq->bpq", jac, jac)
        d = H.diagonal(dim1=-2, dim2=-1).clamp(min=1e-12)
        step, info = torch.linalg.solve_ex(H + torch.diag_embed(la[:, None] * d) + 1e-12 * eye,
                                           -g[..., None])
        trial = th + step[..., 0]
        if e_index is not None:
            trial[:, e_index] = torch.maximum(trial[:, e_index], e_floor[active])
        _, rt = resid(trial, y, ww)
        ft = (rt * rt).sum(-1)
        ok = (info == 0) & torch.isfinite(ft) & torch.isfinite(trial).all(-1) & (ft < fa)
        theta[active[ok]] = trial[ok]
        f[active[ok]] = ft[ok]
        gain = torch.where(ok, fa - ft, torch.zeros_like(fa))
        lam[active] = torch.where(ok, la / 3, la * 4)
        done = (ok & (gain <= rtol * fa)) | (~ok & (la > 1e8)) | (fa < 1e-24)
        active = active[~done]
    return theta, f


@dataclass
class _Design:
    """A fit's design over a list of minima: J (n, 2, P), the parameter names, and how
    to read efficiency factors / exponents out of theta."""

    kind: str  # "joint" | "free"
    archs: list[str]  # archs in the fit, baseline first
    lnC_mid: float
    J: np.ndarray
    names: list[str]

    @property
    def P(self) -> int:
        return self.J.shape[2]


def _design(kind: str, archs: list[str], arch_of: np.ndarray, lnC: np.ndarray) -> _Design:
    """arch_of: (n,) index into archs (0 = baseline); lnC: (n,) ln compute of each minimum."""
    n, A = len(lnC), len(archs)
    mid = float(np.mean(lnC))
    t = lnC - mid
    if kind == "joint":  # (e_, k_, gamma, nu_1..nu_{A-1})
        P = 3 + A - 1
        J = np.zeros((n, 2, P))
        J[:, 0, 0] = 1.0
        J[:, 1, 1] = 1.0
        J[:, 1, 2] = -t
        for i in range(n):
            if arch_of[i] > 0:
                J[i, 1, 2 + arch_of[i]] = 1.0
        names = ["e_", "k_", "gamma"] + [f"nu[{a}]" for a in archs[1:]]
    else:  # free: (e_, k_1..k_A, gamma_1..gamma_A)
        P = 1 + 2 * A
        J = np.zeros((n, 2, P))
        J[:, 0, 0] = 1.0
        J[np.arange(n), 1, 1 + arch_of] = 1.0
        J[np.arange(n), 1, 1 + A + arch_of] = -t
        names = ["e_"] + [f"k[{a}]" for a in archs] + [f"gamma[{a}]" for a in archs]
    return _Design(kind, archs, mid, J, names)


def _grid_starts(d: _Design, arch_of: np.ndarray, lnC: np.ndarray, L: np.ndarray) -> np.ndarray:
    """(S, P) starts: E a share of the lowest loss x gamma in a small grid, k and the arch
    terms matched to the data by least squares given both."""
    t = lnC - d.lnC_mid
    starts = []
    for frac in (E_FLOOR, 0.5, 0.8, 0.93):
        E = frac * L.min()
        z0 = np.log(np.maximum(L - E, 1e-9 * L))
        for gamma in (0.05, 0.15, 0.3, 0.6):
            z = z0 + gamma * t  # = k_ + nu_a (joint) or k_a (free, with its own gamma)
            th = np.zeros(d.P)
            th[0] = math.log(E)
            A = len(d.archs)
            if d.kind == "joint":
                base = z[arch_of == 0].mean()
                th[1], th[2] = base, gamma
                for a in range(1, A):
                    th[2 + a] = z[arch_of == a].mean() - base
            else:
                for a in range(A):
                    th[1 + a] = z[arch_of == a].mean()
                    th[1 + A + a] = gamma
            starts.append(th)
    return np.array(starts)


def _fit_batch(d: _Design, Y: np.ndarray, starts: np.ndarray, e_floor: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Y: (R, n) ln-loss targets (NaN: left out); starts: (S, P) shared by every replicate.
    Returns the best end point of each replicate (R, P) and its objective (R,)."""
    R, S = Y.shape[0], starts.shape[0]
    J = torch.from_numpy(d.J)
    Yb = torch.from_numpy(np.repeat(Y, S, axis=0))
    th0 = torch.from_numpy(np.tile(starts, (R, 1)))
    floor = torch.from_numpy(np.repeat(np.log(e_floor), S))
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny problems: threads only add barriers
    try:
        theta, f = _lm(J, Yb, th0, e_index=0, e_floor=floor)
    finally:
        torch.set_num_threads(n_threads)
    theta, f = theta.numpy().reshape(R, S, -1), f.numpy().reshape(R, S)
    f = np.where(np.isfinite(f), f, np.inf)
    best = np.argmin(f, axis=1)
    return theta[np.arange(R), best], f[np.arange(R), best]


# --------------------------------------------------------------------------- results


@dataclass
class CurveFit:
    """A fitted law over minima: the joint law (shared gamma, one efficiency factor per
    arch) or the free law (gamma and k per arch). ``theta``: full-data optimum; ``boot``:
    (R, P) replicate optima; ``points``: the minima fitted, as (arch, C, L_opt)."""

    design: _Design
    theta: np.ndarray
    objective: float
    boot: np.ndarray | None
    points: list[tuple[str, float, float]]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def E(self) -> float:
        return math.exp(self.theta[0])

    def E_at_floor(self) -> bool:
        lowest = min(p[2] for p in self.points)
        return self.E <= E_FLOOR * lowest * 1.0001

    def params(self, arch: str, theta: np.ndarray | None = None) -> tuple[float, float, float]:
        """(E, k, gamma) of arch's curve L = E + k C^-gamma (k absorbs m^-gamma)."""
        th = self.theta if theta is None else theta
        d = self.design
        a = d.archs.index(arch)
        if d.kind == "joint":
            gamma = th[2]
            ln_k = th[1] + (th[2 + a] if a > 0 else 0.0) + gamma * d.lnC_mid
        else:
            A = len(d.archs)
            gamma = th[1 + A + a]
            ln_k = th[1 + a] + gamma * d.lnC_mid
        return math.exp(th[0]), math.exp(ln_k), float(gamma)

    def predict(self, arch: str, C: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        E, k, g = self.params(arch, theta)
        return E + k * np.asarray(C, float) ** -g

    def compute_for(self, arch: str, L: float, theta: np.ndarray | None = None) -> float:
        """The compute at which arch's curve reaches loss L; NaN when L <= E."""
        E, k, g = self.params(arch, theta)
        if not L > E or g <= 0:
            return math.nan
        return float(((L - E) / k) ** (-1.0 / g))


def _efficiency(fit: CurveFit, arch: str, theta: np.ndarray) -> float:
    """m_a = exp(-nu_a / gamma) from a joint-fit parameter vector (NaN when gamma <= 0)."""
    a = fit.design.archs.index(arch)
    if a == 0:
        return 1.0
    gamma = theta[2]
    if not gamma > 0:
        return math.nan
    with np.errstate(over="ignore"):
        return float(np.exp(-theta[2 + a] / gamma))


@dataclass
class Gap:
    """Loss gap at one budget: L_opt(arch) - L_opt(baseline), nats per token."""

    budget: float
    C: float
    value: Estimate | None  # None when excluded
    excluded: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"flops": _num(self.budget), "C": _num(self.C)}
        if self.value is None:
            d.update(estimate=None, low=None, high=None, excluded=self.excluded)
        else:
            d.update(self.value.as_dict())
        return d


@dataclass
class Inverted:
    """m(C) at one budget: C_baseline(L_opt(arch, C)) / C, or why it is not given."""

    budget: float
    C: float
    value: Estimate | None
    status: str  # "ok" | "outside support" | "not identifiable" | "excluded"

    def as_dict(self) -> dict[str, Any]:
        d = {"flops": _num(self.budget), "status": self.status}
        d.update(self.value.as_dict() if self.value is not None
                 else {"estimate": None, "low": None, "high": None})
        return d


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
            "sizes": [{k: (_num(v) if isinstance(v, float) else v) for k, v in s.items()}
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


@dataclass
class ArchVerdict:
    """Everything the report says about one architecture."""

    arch: str
    efficiency: Estimate | None
    efficiency_note: str
    exponent_differs: bool | None
    exponent_words: str
    gamma_diff: Estimate | None
    loss_gap: list[Gap]
    inverted: list[Inverted]
    minima: list[Minimum]
    n_runs: int
    n_seeds: int
    conventions: dict[str, float] = field(default_factory=dict)
    wallclock: float = math.nan
    extrapolation: dict[str, float] | None = None


@dataclass
class Analysis:
    """The result of :func:`analyse`; :mod:`scaling.report` renders it."""

    baseline: str
    archs: list[str]
    budgets: list[float]
    verdicts: dict[str, ArchVerdict]
    joint: CurveFit | None
    free: CurveFit | None
    lr: dict[str, LRSweep]
    warnings: list[str]
    n_boot: int
    seed: int
    table: pd.DataFrame
    extrapolation_fit: CurveFit | None = None
    held_out: float | None = None
    noise_sd: float = math.nan


# --------------------------------------------------------------------------- the analysis


def _wild_targets(df: pd.DataFrame, groups: list[_Group], n_boot: int, rng: np.random.Generator
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


def _minima_boot(groups: list[_Group], Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replicate minima of every group over its sampled range: L* and ln N*, (R, n_groups)
    each."""
    L_out = np.empty((Y.shape[0], len(groups)))
    x_out = np.empty_like(L_out)
    for j, g in enumerate(groups):
        coef = Y[:, g.rows] @ g.pinv.T  # (R, 3)
        t, L = _parabola_min(coef, g.lo, g.hi)
        L_out[:, j], x_out[:, j] = L, t + g.x_mid
    return L_out, x_out


def _curve_fit(kind: str, archs: list[str], mins: list[Minimum], Lb: np.ndarray | None,
               compute: str = "C", n_boot_starts: bool = True) -> CurveFit | None:
    """Fit the joint or free law over ``mins`` (interior minima of the listed archs);
    ``Lb``: (R, len(mins)) replicate minima, or None for the point estimate only."""
    arch_of = np.array([archs.index(m.arch) for m in mins])
    lnC = np.log([m.compute[compute] for m in mins])
    L = np.array([m.L_opt for m in mins])
    d = _design(kind, archs, arch_of, lnC)
    starts = _grid_starts(d, arch_of, lnC, L)
    floor = np.array([E_FLOOR * L.min()])
    theta, f = _fit_batch(d, np.log(L)[None, :], starts, floor)
    boot = None
    if Lb is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            Yb = np.log(np.where(Lb > 0, Lb, np.nan))
        # the full-data optimum and a spread of the grid's starts
        spread = starts[[5, 6, 9, 10, 13]] if len(starts) > 13 else starts
        st = np.vstack([theta[0][None, :], spread]) if n_boot_starts else theta
        floors = E_FLOOR * np.nanmin(np.where(Lb > 0, Lb, np.inf), axis=1)
        boot, _ = _fit_batch(d, Yb, st, floors)
    return CurveFit(d, theta[0], float(f[0]), boot, [(m.arch, m.C, m.L_opt) for m in mins])


def analyse(df: pd.DataFrame, *, baseline: str | None = None, n_boot: int = DEFAULT_N_BOOT,
            seed: int = 0, params: str = "N", compute: str = "C",
            conventions: bool = True) -> Analysis:
    """The full analysis of a results table (see the module docstring).

    Args:
        df: a results table (``scaling.table``); ``stage == "tune"`` rows feed the LR
            sweeps only.
        baseline: the arch every other is compared with; default ``transformer`` when
            present, else the first arch of the table.
        n_boot: bootstrap replicates (wild cluster bootstrap by trajectory).
        seed: the bootstrap's random seed.
        params, compute: the columns for N and C of the headline.
        conventions: also refit with 6ND, N without embeddings and measured seconds
            (point estimates).
    """
    if n_boot < 10:
        raise ValueError(f"n_boot must be at least 10 (percentile intervals), got {n_boot}")
    df = normalise(df)
    lr = lr_sweeps(df)
    main = df[df["stage"] != "tune"].reset_index(drop=True)
    if main.empty:
        raise ValueError("the results table has no rows outside the LR-tuning stage")
    archs = list(dict.fromkeys(main["arch"]))
    if baseline is None:
        baseline = "transformer" if "transformer" in archs else archs[0]
    if baseline not in archs:
        raise ValueError(f"baseline {baseline!r} is not in the table; archs: {archs}")
    archs = [baseline] + [a for a in archs if a != baseline]
    main["_budget"] = budget_labels(main)
    budgets = sorted(set(main["_budget"].tolist()))
    warnings: list[str] = []
    rng = np.random.default_rng(seed)

    groups, notes = _groups(main, params)
    warnings += notes
    compute_cols = ["C", "C_6ND"]
    if "tokens_per_s" in main and main["tokens_per_s"].notna().all():
        main["_seconds"] = main["D"] / main["tokens_per_s"]
        compute_cols.append("_seconds")
    if compute != "C":
        main["C"], main["_C_arch"] = main[compute], main["C"]
    mins = [_minimum(g, main, params, compute_cols) for g in groups]
    for m in mins:
        if not m.interior:
            warnings.append(f"{m.arch} at C={m.budget:.3g}: minimum at the edge of the size grid "
                            f"({m.reason}); this budget is left out of {m.arch}'s headline")
    Y, noise_sd, notes = _wild_targets(main, groups, n_boot, rng)
    warnings += notes
    Lb, xb = _minima_boot(groups, Y)  # (R, n_groups)
    for j, m in enumerate(mins):
        m.L_ci = percentile(m.L_opt, Lb[:, j])
        m.N_ci = percentile(m.N_opt, np.exp(xb[:, j]))

    by_arch_budget = {(m.arch, m.budget): j for j, m in enumerate(mins)}
    inc = [j for j, m in enumerate(mins) if m.interior]
    inc_archs = [a for a in archs if any(mins[j].arch == a for j in inc)]
    joint = free = None
    if baseline not in inc_archs:
        warnings.append(f"the baseline {baseline} has no interior IsoFLOP minimum: no efficiency "
                        "factor can be estimated")
    else:
        jmins = [mins[j] for j in inc]
        n_base = len({m.budget for m in jmins if m.arch == baseline})
        if n_base == 1:
            warnings.append(f"the baseline {baseline} has an interior IsoFLOP minimum at one "
                            "budget only: every efficiency factor is read against that one point, "
                            "along the curve the other architectures' minima shape")
        joint = _curve_fit("joint", inc_archs, jmins, Lb[:, inc])
        dof = joint.n_points - joint.design.P
        if dof < 0:
            warnings.append(f"joint fit: {joint.n_points} minima for {joint.design.P} parameters: "
                            "not identifiable; the efficiency factors are not reported")
            joint = None
        else:
            if dof == 0:
                joint.warnings.append(f"joint fit: {joint.n_points} minima for {joint.design.P} "
                                      "parameters: exactly determined, nothing checks the law's form")
            if joint.E_at_floor():
                joint.warnings.append("joint fit: E ran to its lower bound (not identified by "
                                      "these budgets); the law is effectively a pure power law")
            warnings += joint.warnings
        # the free law: archs with >= 2 budgets; E shared
        fa = [a for a in inc_archs if len({mins[j].budget for j in inc if mins[j].arch == a}) >= 2]
        if baseline in fa and len(fa) >= 2:
            fj = [j for j in inc if mins[j].arch in fa]
            cand = _curve_fit("free", fa, [mins[j] for j in fj], Lb[:, fj])
            if cand.n_points - cand.design.P >= 1:
                free = cand
            else:
                warnings.append(f"exponent test: {cand.n_points} minima for {cand.design.P} "
                                "parameters of the free-exponent law; it needs a third budget")
        else:
            warnings.append("exponent test: needs the baseline and an arch with interior minima "
                            "at two budgets or more")

    verdicts = {}
    for a in archs:
        amins = [m for m in mins if m.arch == a]
        sub = main[main["arch"] == a]
        v = ArchVerdict(a, None, "", None, "", None, [], [], amins, len(sub),
                        int(sub.groupby(["N", "_budget"])["seed"].nunique().max()))
        if joint is not None and a in joint.design.archs:
            if a == baseline:
                v.efficiency = Estimate(1.0, 1.0, 1.0, 0.0, n_boot)
            else:
                est = _efficiency(joint, a, joint.theta)
                reps = np.array([_efficiency(joint, a, th) for th in joint.boot])
                v.efficiency = percentile(est, reps)
                nb = len({m.budget for m in amins if m.interior})
                if nb == 1:
                    v.efficiency_note = "rests on one budget"
                if v.efficiency.n_ok < 0.95 * n_boot:
                    warnings.append(f"{a}: the efficiency factor is undefined in "
                                    f"{n_boot - v.efficiency.n_ok} of {n_boot} replicates "
                                    "(fitted exponent <= 0)")
        elif a != baseline:
            v.efficiency_note = ("no interior IsoFLOP minimum" if a not in inc_archs
                                 else "no joint fit")
        # exponent test
        if free is not None and a != baseline and a in free.design.archs:
            A = len(free.design.archs)
            ia = free.design.archs.index(a)
            gd = free.theta[1 + A + ia] - free.theta[1 + A]
            reps = free.boot[:, 1 + A + ia] - free.boot[:, 1 + A]
            v.gamma_diff = percentile(gd, reps)
            differs = not v.gamma_diff.contains(0.0)
            v.exponent_differs = differs
            if not differs:
                v.exponent_words = "same slope, shifted"
            elif gd > 0:
                v.exponent_words = (f"{a}'s loss falls faster with compute than {baseline}'s: "
                                    "the gap moves in its favour as compute grows")
            else:
                v.exponent_words = (f"{a}'s loss falls more slowly with compute than "
                                    f"{baseline}'s: the gap moves against it as compute grows")
        elif a != baseline:
            v.exponent_words = "not testable with these budgets"
        # loss gaps
        if a != baseline:
            for b in budgets:
                ja, jb = by_arch_budget.get((a, b)), by_arch_budget.get((baseline, b))
                C = mins[ja].C if ja is not None else float("nan")
                if ja is None or jb is None:
                    who = a if ja is None else baseline
                    v.loss_gap.append(Gap(b, C, None, f"no IsoFLOP minimum for {who}"))
                    continue
                if not (mins[ja].interior and mins[jb].interior):
                    who = a if not mins[ja].interior else baseline
                    v.loss_gap.append(Gap(b, C, None, f"{who}'s minimum is at the edge of its grid"))
                    continue
                est = mins[ja].L_opt - mins[jb].L_opt
                v.loss_gap.append(Gap(b, C, percentile(est, Lb[:, ja] - Lb[:, jb])))
            v.inverted = _inverted(a, baseline, mins, by_arch_budget, budgets, Lb,
                                   free if free is not None and a in free.design.archs else joint)
        verdicts[a] = v

    out = Analysis(baseline, archs, budgets, verdicts, joint, free, lr, warnings, n_boot, seed,
                   main, noise_sd=noise_sd)
    _extrapolation(out, mins)
    if conventions and joint is not None:
        _conventions(out, main, params, compute_cols)
    if lr:
        for s in lr.values():
            if not s.interior:
                edge = [f"N={x['N']:.3g}" for x in s.sizes if not x["interior"]]
                warnings.append(f"{s.arch}: the best LR is at the edge of the tuned grid at "
                                f"{', '.join(edge)}")
            if s.clipped:
                warnings.append(f"{s.arch}: the LR power law's exponent was outside [-1, 0] and "
                                "was clipped")
    return out


def _inverted(a: str, base: str, mins: list[Minimum], where: dict, budgets: list[float],
              Lb: np.ndarray, fit: CurveFit | None) -> list[Inverted]:
    """m(C) read off the baseline's curve, only inside the baseline's support."""
    out = []
    if fit is None:
        return out
    sup = [m.C for m in mins if m.arch == base and m.interior]
    lo, hi = min(sup) * 0.98, max(sup) * 1.02
    for b in budgets:
        j = where.get((a, b))
        if j is None or not mins[j].interior:
            out.append(Inverted(b, math.nan, None, "excluded"))
            continue
        m = mins[j]
        Cb = fit.compute_for(base, m.L_opt)
        if not math.isfinite(Cb):
            out.append(Inverted(b, m.C, None, "not identifiable"))
            continue
        if not lo <= Cb <= hi:
            out.append(Inverted(b, m.C, None, "outside support"))
            continue
        reps = np.array([fit.compute_for(base, L, th) for L, th in zip(Lb[:, j], fit.boot)])
        out.append(Inverted(b, m.C, percentile(Cb / m.C, reps / m.C), "ok"))
    return out


def _extrapolation(an: Analysis, mins: list[Minimum]) -> None:
    """Hold out the largest budget, refit the joint law from its grid of starts on the
    rest, predict the held-out minima."""
    if len(an.budgets) < 3:
        an.warnings.append("extrapolation check: needs three budgets or more")
        return
    if an.joint is None:
        an.warnings.append("extrapolation check: there is no joint fit to refit")
        return
    top = max(an.budgets)
    keep = [m for m in mins if m.interior and m.budget != top]
    held = [m for m in mins if m.interior and m.budget == top]
    archs = [a for a in an.joint.design.archs if any(m.arch == a for m in keep)]
    keep = [m for m in keep if m.arch in archs]
    if an.baseline not in archs or not held:
        an.warnings.append("extrapolation check: no interior minima to fit or to predict")
        return
    fit = _curve_fit("joint", archs, keep, None)
    if fit.n_points < fit.design.P:
        an.warnings.append(f"extrapolation check: {fit.n_points} minima below the largest budget "
                           f"for {fit.design.P} parameters: not identifiable")
        return
    an.extrapolation_fit, an.held_out = fit, top
    for m in held:
        if m.arch not in archs:
            continue
        pred = float(fit.predict(m.arch, np.array([m.C]))[0])
        C_hat = fit.compute_for(m.arch, m.L_opt)
        an.verdicts[m.arch].extrapolation = {
            "flops": m.budget, "measured": m.L_opt, "predicted": pred,
            "error_loss": pred - m.L_opt,
            "error_ln_C": (math.log(C_hat / m.C) if math.isfinite(C_hat) else math.nan),
        }


def _conventions(an: Analysis, main: pd.DataFrame, params: str, compute_cols: list[str]) -> None:
    """Point estimates of the efficiency factors under the other conventions."""
    variants = {"C, N": ("C", params)}
    if "C_6ND" in compute_cols:
        variants["6ND, N"] = ("C_6ND", params)
    if params == "N" and "N_non_emb" in main:
        variants["C, N without embeddings"] = ("C", "N_non_emb")
        if "C_6ND" in compute_cols:
            variants["6ND, N without embeddings"] = ("C_6ND", "N_non_emb")
    if "_seconds" in compute_cols:
        variants["measured seconds, N"] = ("_seconds", params)
    for label, (ccol, pcol) in variants.items():
        groups, _ = _groups(main, pcol)
        mins = [_minimum(g, main, pcol, compute_cols) for g in groups]
        mins = [m for m in mins if m.interior and ccol in m.compute]
        archs = [a for a in an.archs if any(m.arch == a for m in mins)]
        if an.baseline not in archs:
            continue
        for m in mins:
            m.compute["C"] = m.compute[ccol]
        fit = _curve_fit("joint", archs, mins, None)
        ok = fit.n_points >= fit.design.P
        for a in an.archs:
            val = _efficiency(fit, a, fit.theta) if ok and a in archs else math.nan
            an.verdicts[a].conventions[label] = val
            if label.startswith("measured seconds"):
                an.verdicts[a].wallclock = val
