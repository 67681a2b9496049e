"""Chinchilla's scaling-law fits for any table of runs: Approach 3 (parametric), Approach 2
(IsoFLOP parabolas), the loss-vs-compute frontier, and a row bootstrap for any of them.

Everything works on plain array-likes (numpy arrays, lists, pandas Series), one entry per
training run: N parameters, D tokens, C FLOPs, final loss. Natural logarithms throughout.

The parametric and frontier fits follow Hoffmann et al. 2022 (arXiv 2203.15556, appendix
D.2) as re-examined by Besiroglu et al. 2024 (arXiv 2404.10102): the model is written as a
log-sum-exp of terms linear in the parameters,

    log L_hat = logsumexp(a_ - alpha log N,  b_ - beta log D,  e_)     A, B, E = exp(a_, b_, e_)

and the objective is the SUM over runs of Huber_delta(log L_hat - log L), minimised from a
grid of starts, keeping the best. Two traps make published fits irreproducible: a mean
instead of a sum lets L-BFGS stop after a few iterations (the gradient is tiny), and
scipy's default tolerances stop early. Here all starts run at once through the one batched
Levenberg-Marquardt solver of the scaling fits (``scaling.fit.solver``: analytic gradients,
IRLS curvature), the best few end points are refined in float64 with the exact Hessian and
the best is polished by scipy's L-BFGS-B with tight tolerances. ``bench/test_fit.py`` times the fit of
the 240 Chinchilla runs from 4,500 starts.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .isoflop import edge_reasons
from .solver import FitError, column, columns, minimise
from .table import group_budgets

__all__ = [
    "FitError",
    "ParametricFit",
    "FrontierFit",
    "IsoFlopBudget",
    "IsoFlopFit",
    "Interval",
    "fit_parametric",
    "fit_frontier",
    "frontier_mask",
    "fit_isoflop",
    "bootstrap",
    "hoffmann_starts",
]

# --------------------------------------------------------------------------------------
# Approach 3: L(N, D) = E + A / N^alpha + B / D^beta

#: Hoffmann et al.'s grid of starts, as (a_, b_, e_, alpha, beta) with A, B, E = exp(a_, b_, e_)
HOFFMANN_GRID = {
    "a_": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b_": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e_": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}


def _exp_or_fail(where: str, **logs: float) -> list[float]:
    """exp of each fitted log-coefficient; a FitError when one overflows (the optimum ran
    off to a degenerate corner, e.g. gamma -> large on a few bootstrap-resampled points)."""
    out = []
    for name, value in logs.items():
        if not value < 709.0:  # exp(709.78) is the largest float64
            raise FitError(f"{where}: the fit diverged ({name} = exp({value:.4g}) overflows)")
        out.append(math.exp(value))
    return out


def hoffmann_starts() -> np.ndarray:
    """The 4,500 starts of Hoffmann et al.: (S, 5) rows of (a_, b_, e_, alpha, beta)."""
    return np.array(list(itertools.product(*HOFFMANN_GRID.values())), dtype=np.float64)


@dataclass
class ParametricFit:
    """``L = E + A / N^alpha + B / D^beta``; ``objective`` is the summed Huber loss on
    log L at the optimum, ``n_points`` the number of runs fitted."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int

    @property
    def a(self) -> float:
        """Compute-optimal exponent of N: N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Compute-optimal exponent of D: D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def theta(self) -> np.ndarray:
        """The optimum as a start for :func:`fit_parametric`: (log A, log B, log E, alpha, beta)."""
        # a degenerate fit can drive a coefficient to 0 (exp underflow): start from a tiny one
        logs = np.log(np.maximum([self.A, self.B, self.E], 1e-300))
        return np.array([*logs, self.alpha, self.beta])

    def predict(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal_allocation(self, C) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) minimising L under C = 6 N D: N_opt = G (C/6)^a with
        G = (alpha A / (beta B))^(1 / (alpha + beta)), D_opt = C / (6 N_opt)."""
        C = np.asarray(C, dtype=np.float64)
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        N_opt = G * (C / 6.0) ** self.a
        return N_opt, C / (6.0 * N_opt)

    def warm_starts(self, n_grid: int = 4) -> np.ndarray:
        """Starts for refits of perturbed data (the bootstrap): this optimum plus the
        ``n_grid`` points of Hoffmann's grid nearest to it (in grid steps). (1 + n_grid, 5)"""
        grid = hoffmann_starts()
        spacing = np.array([5.0, 5.0, 0.5, 0.5, 0.5])
        dist = np.abs((grid - self.theta) / spacing).max(axis=1)
        return np.vstack([self.theta, grid[np.argsort(dist, kind="stable")[:n_grid]]])

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("E", "A", "B", "alpha", "beta", "a", "b", "objective", "n_points")}


def fit_parametric(
    N,
    D,
    loss,
    *,
    huber_delta: float = 1e-3,
    starts: np.ndarray | int | None = None,
    seed: int = 0,
) -> ParametricFit:
    """Chinchilla Approach 3 by Hoffmann et al.'s procedure (see the module docstring).

    N, D, loss: (n,) positive; n >= 5.
    starts: None for Hoffmann's 4,500-point grid (:func:`hoffmann_starts`); an (S, 5) array
        of (log A, log B, log E, alpha, beta); or an int S for S uniform random starts in the
        grid's box, drawn with ``seed`` (the only use of ``seed``).
    """
    N, D, loss = columns(5, "fit_parametric", N=N, D=D, loss=loss)
    if starts is None:
        starts = hoffmann_starts()
    elif isinstance(starts, int | np.integer):
        lo = np.array([min(v) for v in HOFFMANN_GRID.values()])
        hi = np.array([max(v) for v in HOFFMANN_GRID.values()])
        starts = np.random.default_rng(seed).uniform(lo, hi, size=(int(starts), 5))
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim != 2 or starts.shape[1] != 5 or len(starts) == 0:
        raise FitError(f"starts must be an (S, 5) array, got shape {starts.shape}")

    # Centre log N and log D (a_c = a_ - alpha mN): the same minimiser, better conditioned
    # for L-BFGS, which is not affine-invariant.
    lN, lD = np.log(N), np.log(D)
    mN, mD = lN.mean(), lD.mean()
    n = len(N)
    J = np.zeros((n, 3, 5))
    J[:, 0, 0], J[:, 0, 3] = 1.0, -(lN - mN)
    J[:, 1, 1], J[:, 1, 4] = 1.0, -(lD - mD)
    J[:, 2, 2] = 1.0
    shift = np.array([mN, mD])
    x0 = starts.copy()
    x0[:, :2] -= starts[:, 3:5] * shift
    x, obj = minimise(J, np.log(loss), huber_delta, x0)
    a_, b_ = x[:2] + x[3:5] * shift
    E, A, B = _exp_or_fail("fit_parametric", E=x[2], A=a_, B=b_)
    return ParametricFit(
        E=E,
        A=A,
        B=B,
        alpha=float(x[3]),
        beta=float(x[4]),
        objective=obj,
        n_points=n,
    )


# --------------------------------------------------------------------------------------
# the loss-vs-compute frontier: L(C) = E + k C^-gamma


def frontier_mask(C, loss) -> np.ndarray:
    """(n,) bool: the lower envelope (Pareto points), i.e. no other point has lower-or-equal
    C and lower loss. Ties (same C and same loss) are all kept."""
    C = np.asarray(C, dtype=np.float64).reshape(-1)
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    if len(C) != len(loss):
        raise FitError(f"frontier_mask: C has {len(C)} entries, loss {len(loss)}")
    order = np.argsort(C, kind="stable")
    best_so_far = np.minimum.accumulate(loss[order])  # best loss among C' <= C[order[i]]
    # for ties in C the best loss over the whole tie group counts
    last = np.searchsorted(C[order], C, side="right") - 1
    return loss <= best_so_far[last]


@dataclass
class FrontierFit:
    """``L(C) = E + k * C^-gamma`` on the points ``used`` (the envelope by default)."""

    E: float
    k: float
    gamma: float
    objective: float
    n_points: int
    used: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))
    #: geometric mean of the fitted points' compute (anchors warm_starts)
    C_mid: float | None = field(repr=False, default=None)

    def predict(self, C) -> np.ndarray:
        return self.E + self.k * np.asarray(C, dtype=np.float64) ** -self.gamma

    def compute_for_loss(self, L) -> np.ndarray:
        """The compute at which the frontier reaches loss L: (k / (L - E))^(1 / gamma).
        inf where L <= E (the frontier never gets there), nan where L is nan."""
        L = np.asarray(L, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (self.k / (L - self.E)) ** (1.0 / self.gamma)
        return np.where(L <= self.E, np.inf, out)

    def warm_starts(self) -> np.ndarray:
        """Starts for refits of perturbed data (the bootstrap): this optimum and four
        neighbours with gamma scaled by 0.7 / 1.4 and E by 0.9 / 0.5, as (ln E, ln k, gamma)
        rows (5, 3). Each neighbour's k is re-matched to the optimum's mid-range loss."""
        rows = [(self.E, self.gamma), (self.E, 0.7 * self.gamma), (self.E, 1.4 * self.gamma),
                (0.9 * self.E, self.gamma), (0.5 * self.E, self.gamma)]
        C_mid = 1e15 if self.C_mid is None else self.C_mid
        L_mid = float(self.predict(C_mid))
        return np.array([
            [math.log(E), math.log(max(L_mid - E, 1e-12)) + g * math.log(C_mid), g] for E, g in rows
        ])

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("E", "k", "gamma", "objective", "n_points")}


def fit_frontier(
    C, loss, *, envelope: bool = True, huber_delta: float = 1e-3, starts=None
) -> FrontierFit:
    """Fit ``L(C) = E + k C^-gamma`` like the parametric law: log L = logsumexp(e_,
    k_ - gamma log C), summed Huber on log loss, from a grid of starts (E a fraction of the
    lowest loss, gamma in 0.02..1, k matching the data given both).

    C, loss: (n,) positive. envelope: fit only the lower envelope (:func:`frontier_mask`).
    At least 3 points (after the envelope) are needed. ``starts``: None for the grid, or
    ``(S, 3)`` rows of (ln E, ln k, gamma), e.g. ``FrontierFit.warm_starts()`` of a fit on
    similar data (the bootstrap does this: a refit then takes a few ms instead of ~0.1 s).
    """
    C, loss = columns(1, "fit_frontier", C=C, loss=loss)
    used = frontier_mask(C, loss) if envelope else np.ones(len(C), dtype=bool)
    if used.sum() < 3:
        where = "on the lower envelope" if envelope else ""
        raise FitError(f"fit_frontier needs at least 3 points {where}, got {used.sum()}".strip())
    lC, y = np.log(C[used]), np.log(loss[used])
    mC = lC.mean()
    J = np.zeros((len(lC), 2, 3))  # parameters (e_, k_c, gamma), k_ = k_c + gamma mC
    J[:, 0, 0] = 1.0
    J[:, 1, 1], J[:, 1, 2] = 1.0, -(lC - mC)
    warm = starts is not None
    if starts is None:
        starts = []
        for frac in (0.0, 0.3, 0.6, 0.8, 0.9, 0.97):
            E0 = max(frac * loss[used].min(), 1e-3 * loss[used].min())
            for gamma in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0):
                excess = np.maximum(np.exp(y) - E0, 1e-3 * np.exp(y))
                starts.append([math.log(E0), np.mean(np.log(excess) + gamma * (lC - mC)), gamma])
        starts = np.array(starts)
    else:
        starts = np.array(starts, dtype=np.float64).reshape(-1, 3)
        starts[:, 1] -= starts[:, 2] * mC  # ln k -> the centred k_c the optimiser uses
    x, obj = minimise(J, y, huber_delta, starts, search=not warm)
    E, k = _exp_or_fail("fit_frontier", E=x[0], k=x[1] + x[2] * mC)
    return FrontierFit(
        E=E,
        k=k,
        gamma=float(x[2]),
        objective=obj,
        n_points=int(used.sum()),
        used=used,
        C_mid=math.exp(mC),
    )


# --------------------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas


@dataclass
class IsoFlopBudget:
    """One IsoFLOP budget: ``coef`` = (c2, c1, c0) of loss ~ c2 x^2 + c1 x + c0 with
    x = ln N, minimum at N_opt = exp(-c1 / (2 c2)); N, D, loss: the points used."""

    label: Any
    C: float
    N_opt: float
    D_opt: float
    L_opt: float
    coef: tuple[float, float, float]
    N: np.ndarray = field(repr=False)
    D: np.ndarray = field(repr=False)
    loss: np.ndarray = field(repr=False)


@dataclass
class IsoFlopFit:
    """Power laws N_opt = kN C^a and D_opt = kD C^b over the budgets' parabola minima."""

    a: float
    b: float
    kN: float
    kD: float
    budgets: list[IsoFlopBudget]

    def predict_N_opt(self, C) -> np.ndarray:
        return self.kN * np.asarray(C, dtype=np.float64) ** self.a

    def predict_D_opt(self, C) -> np.ndarray:
        return self.kD * np.asarray(C, dtype=np.float64) ** self.b

    def as_dict(self) -> dict[str, float]:
        return {**{k: getattr(self, k) for k in ("a", "b", "kN", "kD")}, "n_budgets": len(self.budgets)}


def _group(C: np.ndarray, budget, rtol: float) -> list[tuple[Any, np.ndarray]]:
    """[(label, indices)] of the IsoFLOP groups, in increasing compute."""
    if budget is not None:
        labels = np.asarray(budget).reshape(-1)
        if len(labels) != len(C):
            raise FitError(f"fit_isoflop: budget has {len(labels)} labels for {len(C)} points")
        groups = [(lab, np.flatnonzero(labels == lab)) for lab in dict.fromkeys(labels.tolist())]
    else:
        # single linkage in log C (scaling.fit.table.group_budgets), labelled by the geometric mean
        labels = group_budgets(C, rtol)
        groups = [(f"C~{lab:.3g}", np.flatnonzero(labels == lab)) for lab in np.unique(labels)]
    return sorted(groups, key=lambda g: np.log(C[g[1]]).mean())


def fit_isoflop(N, D, loss, *, C=None, budget=None, rtol: float = 0.05) -> IsoFlopFit:
    """Chinchilla Approach 2.

    N, D, loss: (n,) positive. C: (n,) FLOPs per run; default 6 N D. budget: (n,) labels
    of the IsoFLOP budgets; default: cluster log C, a new budget where consecutive
    sorted values are more than ``rtol`` apart (relative).

    Per budget (C_b = geometric mean of its points' C): a parabola in ln N through the
    losses (>= 3 distinct N), whose vertex gives N_opt and L_opt. The minimum must be interior
    by the verdict's rule (``scaling.fit.isoflop.edge_reasons``: the parabola opens upwards,
    its vertex lies inside the sampled N range, the lowest mean loss of a size is at neither
    end); otherwise FitError naming the budget and why. D_opt is
    C_b / (6 N_opt) with the default C; with a given C it is C_b / (C/D)(N_opt), the
    compute per token at N_opt from a log-log line through the budget's (N, C/D).
    Then ln N_opt = ln kN + a ln C_b and ln D_opt = ln kD + b ln C_b by least squares
    (>= 2 budgets).
    """
    N, D, loss = columns(1, "fit_isoflop", N=N, D=D, loss=loss)
    given_C = C is not None
    C = column("C", C) if given_C else 6.0 * N * D
    if len(C) != len(N):
        raise FitError(f"fit_isoflop: C has {len(C)} entries for {len(N)} points")
    budgets = []
    for label, idx in _group(C, budget, rtol):
        Cb = float(np.exp(np.log(C[idx]).mean()))
        name = f"budget {label!r} (C={Cb:.3g}, {len(idx)} points)"
        x = np.log(N[idx])
        if len(np.unique(x)) < 3:
            raise FitError(f"{name}: needs at least 3 distinct N, got {len(np.unique(x))}")
        c2, c1, c0 = np.polyfit(x, loss[idx], 2)
        reasons = edge_reasons(x, loss[idx], (c2, c1, c0), 0.0)  # the verdict's rule
        if reasons:
            raise FitError(
                f"{name}: minimum at the edge of or outside the sampled N range "
                f"[{math.exp(x.min()):.3g}, {math.exp(x.max()):.3g}]: {'; '.join(reasons)}")
        x_opt = -c1 / (2 * c2)
        N_opt = math.exp(x_opt)
        if given_C:
            slope, icpt = np.polyfit(x, np.log(C[idx] / D[idx]), 1)
            D_opt = Cb / math.exp(icpt + slope * x_opt)
        else:
            D_opt = Cb / (6.0 * N_opt)
        budgets.append(
            IsoFlopBudget(
                label=label,
                C=Cb,
                N_opt=N_opt,
                D_opt=D_opt,
                L_opt=float(c0 - c1 * c1 / (4 * c2)),
                coef=(float(c2), float(c1), float(c0)),
                N=N[idx],
                D=D[idx],
                loss=loss[idx],
            )
        )
    if len(budgets) < 2:
        raise FitError(f"fit_isoflop needs at least 2 budgets, got {len(budgets)}")
    lCb = np.log([b.C for b in budgets])
    a, ln_kN = np.polyfit(lCb, np.log([b.N_opt for b in budgets]), 1)
    b, ln_kD = np.polyfit(lCb, np.log([b.D_opt for b in budgets]), 1)
    return IsoFlopFit(
        a=float(a), b=float(b), kN=math.exp(ln_kN), kD=math.exp(ln_kD), budgets=budgets
    )


# --------------------------------------------------------------------------------------
# bootstrap


@dataclass
class Interval:
    """A bootstrap summary: the full-data ``estimate``, the standard deviation ``se`` over
    resamples, the 2.5% / 97.5% percentiles ``lo`` / ``hi``, and ``n_ok`` resamples that fit."""

    estimate: float
    se: float
    lo: float
    hi: float
    n_ok: int


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def bootstrap(
    fit_fn: Callable[..., Any],
    columns: Mapping[str, Sequence | np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    stats: Mapping[str, Callable[[Any], float]] | None = None,
    progress: bool = False,
) -> dict[str, Interval]:
    """Percentile bootstrap over rows.

    fit_fn: called as ``fit_fn(**columns)`` (bind other options with functools.partial).
    columns: name -> (n,) array, all the same length; rows are resampled together.
    stats: name -> function of a fit; default: the float entries of the fit's ``as_dict()``
        (counts such as n_points left out).
    Resamples whose fit raises FitError are skipped (``n_ok`` counts the others); any other
    error propagates. When the full fit offers ``warm_starts()`` and ``fit_fn`` takes a
    ``starts`` argument (fit_parametric), resamples start from those: the full optimum plus
    a few grid points, instead of 4,500 starts.
    """
    cols = {k: np.asarray(v) for k, v in columns.items()}
    sizes = {k: len(v) for k, v in cols.items()}
    if len(set(sizes.values())) != 1:
        raise FitError(f"bootstrap: columns differ in length: {sizes}")
    n = next(iter(sizes.values()))
    full = fit_fn(**cols)
    if stats is None:
        names = [k for k, v in full.as_dict().items() if isinstance(v, float | np.floating)]
        stats = {k: (lambda fit, k=k: fit.as_dict()[k]) for k in names}
    extra = {}
    if hasattr(full, "warm_starts") and _accepts(fit_fn, "starts"):
        extra["starts"] = full.warm_starts()
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in stats}
    steps: Any = range(n_boot)
    if progress:
        steps = tqdm(steps, desc="bootstrap", unit="fit")
    for _ in steps:
        idx = rng.integers(0, n, size=n)
        try:
            fit = fit_fn(**{k: v[idx] for k, v in cols.items()}, **extra)
        except FitError:
            continue
        for k, fn in stats.items():
            draws[k].append(float(fn(fit)))
    out = {}
    for k, fn in stats.items():
        v = np.asarray(draws[k], dtype=np.float64)
        if len(v) == 0:
            out[k] = Interval(float(fn(full)), math.nan, math.nan, math.nan, 0)
            continue
        lo, hi = np.percentile(v, [2.5, 97.5])
        with np.errstate(over="ignore"):
            se = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[k] = Interval(float(fn(full)), se, float(lo), float(hi), len(v))
    return out
