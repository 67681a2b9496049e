"""The scaling laws fitted over IsoFLOP minima (``scaling.fit.analysis``), for the point
estimate and every bootstrap replicate at once.

Both laws are ``ln L = ln(E + exp(u))`` with ``u`` linear in the parameters:

- the joint law, shared E, k, gamma and one shift per arch: ``u = k_ + nu_a - gamma ln C``,
  so the efficiency factor is ``m_a = exp(-nu_a / gamma)`` (``m = 1`` for the baseline);
- the free law, E shared, k and gamma per arch: ``u = k_a - gamma_a ln C``.

Least squares on ln L by the one solver (``scaling.fit.solver``), batched over (replicate,
start) pairs; each replicate keeps its best start. E is bounded below by ``E_FLOOR`` times the
lowest loss: at that floor it is "not identified" and the law is a pure power law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .solver import lse_fit

E_FLOOR = 1e-4  # E is bounded below by E_FLOOR * (lowest loss): at the floor it is "not identified"


@dataclass
class Design:
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


def make_design(kind: str, archs: list[str], arch_of: np.ndarray, lnC: np.ndarray) -> Design:
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
    return Design(kind, archs, mid, J, names)


def _grid_starts(d: Design, arch_of: np.ndarray, lnC: np.ndarray, L: np.ndarray) -> np.ndarray:
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


def _fit_batch(d: Design, Y: np.ndarray, starts: np.ndarray, e_floor: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Y: (R, n) ln-loss targets (NaN: left out); starts: (S, P) shared by every replicate.
    Returns the best end point of each replicate (R, P) and its objective (R,)."""
    R, S = Y.shape[0], starts.shape[0]
    theta, f = lse_fit(d.J, np.repeat(Y, S, axis=0), np.tile(starts, (R, 1)),
                       lower=(0, np.repeat(np.log(e_floor), S)))
    theta, f = theta.reshape(R, S, -1), f.reshape(R, S)
    best = np.argmin(f, axis=1)
    return theta[np.arange(R), best], f[np.arange(R), best]


# --------------------------------------------------------------------------- results


@dataclass
class CurveFit:
    """A fitted law over minima: the joint law (shared gamma, one efficiency factor per
    arch) or the free law (gamma and k per arch). ``theta``: full-data optimum; ``boot``:
    (R, P) replicate optima; ``points``: the minima fitted, as (arch, C, L_opt)."""

    design: Design
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
        with np.errstate(over="ignore"):  # a wild replicate's k overflows to inf, not an error
            return float(np.exp(th[0])), float(np.exp(ln_k)), float(gamma)

    def predict(self, arch: str, C: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        E, k, g = self.params(arch, theta)
        return E + k * np.asarray(C, float) ** -g

    def compute_for(self, arch: str, L: float, theta: np.ndarray | None = None) -> float:
        """The compute at which arch's curve reaches loss L; NaN when L <= E."""
        E, k, g = self.params(arch, theta)
        if not L > E or g <= 0:
            return math.nan
        return float(((L - E) / k) ** (-1.0 / g))


def efficiency(fit: CurveFit, arch: str, theta: np.ndarray) -> float:
    """m_a = exp(-nu_a / gamma) from a joint-fit parameter vector (NaN when gamma <= 0)."""
    a = fit.design.archs.index(arch)
    if a == 0:
        return 1.0
    gamma = theta[2]
    if not gamma > 0:
        return math.nan
    with np.errstate(over="ignore"):
        return float(np.exp(-theta[2 + a] / gamma))


def _undefined_to_nan(d: Design, boot: np.ndarray, have: np.ndarray, arch_of: np.ndarray
                      ) -> np.ndarray:
    """NaN for the parameters a replicate's kept minima (``have``, (R, n)) do not determine:
    the whole replicate where it keeps fewer minima than parameters or (joint law) none of
    the baseline's, which every shift is relative to; an arch's shift (joint) with none of its
    minima; an arch's k and gamma (free) with fewer than two."""
    boot = boot.copy()
    A = len(d.archs)
    cnt = np.stack([have[:, arch_of == a].sum(axis=1) for a in range(A)], axis=1)  # (R, A)
    dead = have.sum(axis=1) < d.P
    if d.kind == "joint":
        dead |= cnt[:, 0] < 1
        for a in range(1, A):
            boot[cnt[:, a] < 1, 2 + a] = np.nan
    else:
        for a in range(A):
            boot[cnt[:, a] < 2, 1 + a] = np.nan
            boot[cnt[:, a] < 2, 1 + A + a] = np.nan
    boot[dead] = np.nan
    return boot


def curve_fit(kind: str, archs: list[str], mins: list[Any], Lb: np.ndarray | None,
               compute: str = "C") -> CurveFit | None:
    """Fit the joint or free law over ``mins`` (interior IsoFLOP minima of the listed archs,
    baseline first: objects with ``arch``, ``compute[compute]``, ``C`` and ``L_opt``);
    ``Lb``: (R, len(mins)) replicate minima, or None for the point estimate only; NaN leaves
    a minimum out of that replicate's fit (one that fails the interior test there).
    ``compute``: the compute column the law is fitted in (a FLOP convention)."""
    arch_of = np.array([archs.index(m.arch) for m in mins])
    lnC = np.log([m.compute[compute] for m in mins])
    L = np.array([m.L_opt for m in mins])
    d = make_design(kind, archs, arch_of, lnC)
    starts = _grid_starts(d, arch_of, lnC, L)
    floor = np.array([E_FLOOR * L.min()])
    theta, f = _fit_batch(d, np.log(L)[None, :], starts, floor)
    boot = None
    if Lb is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            Yb = np.log(np.where(Lb > 0, Lb, np.nan))
        # the full-data optimum and a spread of the grid's starts
        spread = starts[[5, 6, 9, 10, 13]] if len(starts) > 13 else starts
        st = np.vstack([theta[0][None, :], spread])
        floors = E_FLOOR * np.min(np.where(Lb > 0, Lb, np.inf), axis=1)
        floors = np.where(np.isfinite(floors), floors, floor[0])  # a replicate left empty
        boot, _ = _fit_batch(d, Yb, st, floors)
        boot = _undefined_to_nan(d, boot, np.isfinite(Yb), arch_of)
    return CurveFit(d, theta[0], float(f[0]), boot,
                    [(m.arch, m.compute[compute], m.L_opt) for m in mins])
