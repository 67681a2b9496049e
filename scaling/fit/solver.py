"""The solver behind the scaling-law fits (``scaling/fit.py``): a robust (Huber) fit of a
log-sum-exp of terms linear in the parameters, from many starts at once.

Also the fits' input checks and their error type, ``FitError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.optimize
import torch


class FitError(ValueError):
    """A fit that cannot give a result: too few points, non-positive values, an IsoFLOP
    minimum at the edge of its grid, ... The message says what and where."""


# --------------------------------------------------------------------------------------
# input checks


def _column(name: str, x: Any, *, positive: bool = True) -> np.ndarray:
    """A 1-D float64 copy of ``x``; FitError on non-finite (or non-positive) entries."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0 if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        want = "finite and positive" if positive else "finite"
        raise FitError(f"{name} must be {want}: {bad.sum()} bad entries, first at {i} ({arr[i]})")
    return arr


def _columns(min_points: int, what: str, **cols: Any) -> list[np.ndarray]:
    arrs = [_column(k, v) for k, v in cols.items()]
    sizes = {k: len(a) for k, a in zip(cols, arrs)}
    if len(set(sizes.values())) != 1:
        raise FitError(f"{what}: columns differ in length: {sizes}")
    n = len(arrs[0])
    if n < min_points:
        raise FitError(f"{what} needs at least {min_points} points, got {n}")
    return arrs


# --------------------------------------------------------------------------------------
# the shared solver: sum of Huber(logsumexp(J theta) - y) over points, from many starts
#
# Both fitted laws are L = sum_k exp(u_k) with every u_k linear in the parameters:
# u = J_n theta for run n, J_n a (K, P) matrix that depends on the run only. With
# p = softmax(u) (the share of each term in the loss), r = logsumexp(u) - y and
# h1 = Huber'(r) = clip(r, -delta, delta), h2 = Huber''(r) = [|r| <= delta]:
#
#     grad = sum_n J_n^T (h1 p)
#     Hess = sum_n J_n^T [ (h2 - h1) p p^T + h1 diag(p) ] J_n                    (newton)
#     Hess ~ sum_n J_n^T [ w p p^T ] J_n,   w = min(1, delta / |r|)              (irls)
#
# With delta = 1e-3 almost every residual sits on Huber's linear branch, where the true
# Hessian is indefinite and Newton steps from far starts crawl. The IRLS / Gauss-Newton
# curvature (Huber majorised by a quadratic with weight psi(r)/r) is positive
# semi-definite and walks the 4,500 starts into their basins in about half the work, in
# float32 (six times cheaper exp, half the memory traffic). The best few end points are
# then refined in float64 with the true Hessian (quadratic convergence) and polished by
# L-BFGS-B with tight tolerances.


def _huber(r, delta: float):
    a = abs(r)
    q = a.clip(max=delta) if isinstance(a, np.ndarray) else a.clamp(max=delta)
    return q * (a - 0.5 * q)  # 0.5 r^2 inside [-delta, delta], delta (|r| - delta / 2) outside


class _LseHuber:
    """Objective, gradient and Hessian of sum_n Huber(logsumexp(J_n theta) - y_n).

    J: (n, K, P); y: (n,). Each term k touches only a few parameters (the nonzero columns
    of J[:, k, :]), so terms are kept as separate (S, n) arrays and every product runs on
    those columns alone: the 4,500 x 240 batch is memory-bound, and this is several
    times faster than (S, n, K) tensors and a dense (P x P) contraction.
    """

    def __init__(self, J: np.ndarray, y: np.ndarray, delta: float, dtype=torch.float64):
        n, K, P = J.shape
        self.n, self.K, self.P, self.delta, self.dtype = n, K, P, float(delta), dtype
        self.J_np, self.y_np = J, y
        self.y = torch.from_numpy(y).to(dtype)  # (n,)
        self.cols = [
            torch.from_numpy(np.flatnonzero(np.any(J[:, k] != 0, axis=0))) for k in range(K)
        ]
        # Jk[k]: (m_k, n), the nonzero columns of term k
        self.Jk = [
            torch.from_numpy(J[:, k, c.numpy()].T.copy()).to(dtype) for k, c in enumerate(self.cols)
        ]
        # Q[k, l]: (n, m_k * m_l), Q[k, l][n, (i, j)] = Jk[k][i, n] Jk[l][j, n]
        self.Q = {
            (k, l): torch.einsum("in,jn->nij", self.Jk[k], self.Jk[l]).reshape(n, -1)
            for k in range(K)
            for l in range(k, K)
        }

    def _terms(self, theta: torch.Tensor):
        """(S, P) -> exp(u_k - m) (K of (S, n)), their sum s and the max m (S, n)"""
        u = [theta[:, c] @ Jk for c, Jk in zip(self.cols, self.Jk)]  # K x (S, n)
        m = u[0]
        for uk in u[1:]:
            m = torch.maximum(m, uk)
        e = [torch.exp(uk - m) for uk in u]
        s = e[0]
        for ek in e[1:]:
            s = s + ek
        return e, s, m

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """(S, P) -> (S,)"""
        _, s, m = self._terms(theta)
        r = torch.log(s) + m - self.y  # (S, n)
        return _huber(r, self.delta).sum(-1)

    def derivatives(self, theta: torch.Tensor, hessian: str = "newton"):
        """(S, P) -> value (S,), gradient (S, P), Hessian (S, P, P) ("newton" or "irls")"""
        S, K, d = theta.shape[0], self.K, self.delta
        e, s, m = self._terms(theta)
        r = torch.log(s) + m - self.y  # (S, n)
        a = r.abs()
        q = a.clamp(max=d)
        f = (q * (a - 0.5 * q)).sum(-1)
        h1 = r.clamp(-d, d) / s  # Huber'(r), with softmax's 1/s folded in
        if hessian == "newton":
            c = (a <= d).to(r.dtype) / (s * s) - h1 / s  # (h2 - h1) / s^2
        else:
            c = q / (a.clamp(min=d) * s * s)  # w / s^2
        g = theta.new_zeros(S, self.P)
        H = theta.new_zeros(S, self.P, self.P)
        for k in range(K):
            g[:, self.cols[k]] += (h1 * e[k]) @ self.Jk[k].T
        for (k, l), Q in self.Q.items():
            W = c * e[k] * e[l]
            if k == l and hessian == "newton":
                W = W + h1 * e[k]
            block = (W @ Q).view(S, len(self.cols[k]), len(self.cols[l]))
            H[:, self.cols[k][:, None], self.cols[l][None, :]] += block
            if k != l:
                H[:, self.cols[l][:, None], self.cols[k][None, :]] += block.transpose(1, 2)
        return f, g, H

    def value_and_grad_np(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Single-start float64 numpy version, for scipy's polish."""
        u = self.J_np @ theta  # (n, K)
        m = u.max(axis=1, keepdims=True)
        e = np.exp(u - m)
        s = e.sum(axis=1)
        r = np.log(s) + m[:, 0] - self.y_np
        p = e / s[:, None]
        h1 = np.clip(r, -self.delta, self.delta)
        g = np.einsum("nk,nkp->p", h1[:, None] * p, self.J_np)
        return float(_huber(r, self.delta).sum()), g


def _levenberg_marquardt(
    obj: _LseHuber, starts: torch.Tensor, *, hessian: str, max_iter: int, rtol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton from every start at once. Per start: solve (H + lam diag|H|) s = -g,
    accept s if it lowers the objective (lam /= 4), else lam *= 8. A start stops when an
    accepted step gains less than ``rtol`` relatively, or when no step is accepted even at
    lam = 1e12. starts: (S, P) -> end points (S, P), objectives (S,)."""
    theta = starts.to(obj.dtype).clone()
    S, P = theta.shape
    f, g, H = obj.derivatives(theta, hessian)
    lam = torch.full((S,), 1e-3, dtype=obj.dtype)
    active = torch.arange(S)
    eye = torch.eye(P, dtype=obj.dtype)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        Ha, ga, fa, la = H[active], g[active], f[active], lam[active]
        diag = Ha.diagonal(dim1=-2, dim2=-1).abs()
        diag = diag.clamp(min=1e-12 * diag.amax(-1, keepdim=True) + 1e-30)
        L, info = torch.linalg.cholesky_ex(Ha + la[:, None, None] * diag[..., None] * eye)
        step = -torch.cholesky_solve(ga[..., None], L)[..., 0]  # (S_active, P)
        trial = theta[active] + step
        f_trial = obj.value(trial)
        accept = (info == 0) & torch.isfinite(step).all(-1) & (f_trial < fa)
        gain = torch.where(accept, fa - f_trial, 0.0)
        done = (accept & (gain <= rtol * fa)) | (~accept & (la > 1e12))
        acc = active[accept]
        if acc.numel():
            theta[acc] = trial[accept]
            f[acc], g[acc], H[acc] = obj.derivatives(theta[acc], hessian)
        lam[active] = torch.where(accept, la / 4, la * 8)
        active = active[~done]
    return theta, f


class _single_thread:
    """Run torch on one thread: results do not depend on the machine's thread count
    (reductions keep their order), and on a busy machine with few cores OpenMP's barriers
    cost more than the second core gains (``bench/test_fit.py`` times it)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _minimise(
    J: np.ndarray, y: np.ndarray, delta: float, starts: np.ndarray, *, n_refine: int = 4,
    search: bool = True,
) -> tuple[np.ndarray, float]:
    """Global search from all ``starts`` (S, P) (float32 for big batches), the ``n_refine`` best distinct
    end points refined in float64 (true Hessian) and polished by L-BFGS-B; the best wins.
    Returns (theta (P,), objective)."""
    obj64 = _LseHuber(J, y, delta, torch.float64)
    with _single_thread():
        theta0 = torch.from_numpy(np.ascontiguousarray(starts, dtype=np.float64))
        # small batches are bound by per-call overhead: float32 would only lose accuracy
        if search:  # skipped for warm starts, which are near an optimum already
            coarse = _LseHuber(J, y, delta, torch.float32) if len(starts) > 64 else obj64
            theta, _ = _levenberg_marquardt(coarse, theta0, hessian="irls", max_iter=120, rtol=1e-6)
            theta = theta.double()
        else:
            theta = theta0
        f = obj64.value(theta)
        f = torch.where(torch.isfinite(f) & torch.isfinite(theta).all(-1), f, torch.inf)
        chosen: list[int] = []
        for i in torch.argsort(f, stable=True).tolist():
            if not math.isfinite(f[i]) or len(chosen) == n_refine:
                break
            if all(float((theta[i] - theta[j]).abs().max()) > 1e-3 for j in chosen):
                chosen.append(i)
        if not chosen:
            raise FitError("the optimiser diverged from every start (non-finite objective)")
        theta0 = theta[chosen]
        theta, f = _levenberg_marquardt(obj64, theta0, hessian="newton", max_iter=200, rtol=1e-15)
    f = torch.where(torch.isfinite(f), f, torch.inf)
    best = int(torch.argmin(f))
    best_theta, best_f = theta[best].numpy(), float(f[best])
    if not math.isfinite(best_f):
        raise FitError("the optimiser diverged from every start (non-finite objective)")
    res = scipy.optimize.minimize(
        obj64.value_and_grad_np,
        best_theta,
        jac=True,
        method="L-BFGS-B",
        # ftol is relative to max(|f|, 1): with f ~ 1e-3 it must be tiny
        options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 10_000, "maxcor": 20},
    )
    if np.isfinite(res.fun) and res.fun < best_f:
        best_theta, best_f = res.x, float(res.fun)
    return np.asarray(best_theta, dtype=np.float64), best_f
