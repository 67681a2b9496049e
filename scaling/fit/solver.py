"""The one solver behind every scaling-law fit: Levenberg-Marquardt on many small problems at
once, for laws written as a log-sum-exp of terms linear in the parameters.

Every law fitted here is ``L = sum_k exp(u_k)`` with each ``u_k`` linear in the parameters:
``u = J_n theta`` for point n, ``J_n`` a ``(K, P)`` matrix that depends on the point only
(Chinchilla's ``E + A / N^alpha + B / D^beta`` has K = 3, the efficiency laws'
``E + k (m C)^-gamma`` K = 2). The residual on ln L is ``r_n = logsumexp(J_n theta) - y_n``
and the objective a sum over points of

- ``r^2`` (``loss="squares"``: the efficiency laws, ``scaling.fit.curvefit``), or
- Huber's ``0.5 r^2`` inside ``[-delta, delta]``, ``delta (|r| - delta / 2)`` outside
  (``loss="huber"``: Hoffmann et al.'s Approach 3, ``scaling.fit.chinchilla``).

With ``p = softmax(u)`` (each term's share of L), the gradient of ln L is ``j_n = J_n^T p``.
The curvature is Gauss-Newton, ``sum_n w_n j_n j_n^T`` with ``w = 1`` for squares and Huber's
IRLS weight ``w = min(1, delta / |r|)`` (Huber majorised by a quadratic: positive
semi-definite, and it walks far starts into their basins where Huber's own Hessian, zero on
the linear branch, crawls); ``curvature="newton"`` adds the exact second-order terms, for a
last refinement near an optimum (quadratic convergence).

One damping scheme for every fit (the one the verdict's numbers were first computed with):
solve ``(H + lam diag(H)) s = -g``, accept a step that lowers the objective (``lam / 3``),
else ``lam * 4``; a problem stops when an accepted step gains less than ``rtol`` of its
objective, when no step is accepted even at ``lam > 1e8``, or at an objective below 1e-24.
One parameter may be bounded below (the asymptote E), per problem. Problems run batched in
torch; targets may differ per problem (bootstrap replicates) or be shared (many starts).

Also here: the fits' input checks and their error type, ``FitError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.optimize
import torch


class FitError(ValueError):
    """A fit that cannot give a result: too few points, non-positive values, an IsoFLOP
    minimum at the edge of its grid, ... The message says what and where."""


# --------------------------------------------------------------------------------------
# input checks


def column(name: str, x: Any, *, positive: bool = True) -> np.ndarray:
    """A 1-D float64 copy of ``x``; FitError on non-finite (or non-positive) entries."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0 if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        want = "finite and positive" if positive else "finite"
        raise FitError(f"{name} must be {want}: {bad.sum()} bad entries, first at {i} ({arr[i]})")
    return arr


def columns(min_points: int, what: str, **cols: Any) -> list[np.ndarray]:
    """:func:`column` of each, checked to have one length of at least ``min_points``."""
    arrs = [column(k, v) for k, v in cols.items()]
    sizes = {k: len(a) for k, a in zip(cols, arrs)}
    if len(set(sizes.values())) != 1:
        raise FitError(f"{what}: columns differ in length: {sizes}")
    n = len(arrs[0])
    if n < min_points:
        raise FitError(f"{what} needs at least {min_points} points, got {n}")
    return arrs


# --------------------------------------------------------------------------------------
# the objective


def _huber(r: torch.Tensor | np.ndarray, delta: float) -> Any:
    a = abs(r)
    q = a.clip(max=delta) if isinstance(a, np.ndarray) else a.clamp(max=delta)
    return q * (a - 0.5 * q)  # 0.5 r^2 inside [-delta, delta], delta (|r| - delta / 2) outside


class LseObjective:
    """``sum_n rho(logsumexp(J_n theta) - y_n)`` for a batch of problems (see the module
    docstring).

    J: (n, K, P) numpy; Y: (B, n) targets, one row per problem (NaN: the point is left out
    of that problem), or (n,) shared by every problem. ``loss``: ``"squares"`` or ``"huber"``
    (with ``delta``). Every method takes ``theta`` (b, P) and ``rows`` (b,): the problems
    these are (ignored with shared targets)."""

    def __init__(self, J: np.ndarray, Y: np.ndarray, *, loss: str = "squares",
                 delta: float | None = None, dtype: torch.dtype = torch.float64) -> None:
        if loss not in ("squares", "huber") or (loss == "huber") != (delta is not None):
            raise ValueError(f"loss must be 'squares', or 'huber' with a delta; got {loss!r}, "
                             f"delta {delta!r}")
        self.loss, self.delta, self.dtype = loss, delta, dtype
        self.J_np = np.asarray(J, dtype=np.float64)
        J_t = torch.from_numpy(self.J_np).to(dtype)
        self.K, self.P = J_t.shape[1], J_t.shape[2]
        self.Jk = [J_t[:, k, :] for k in range(self.K)]  # K x (n, P)
        Y_np = np.asarray(Y, dtype=np.float64)
        self.shared = Y_np.ndim == 1
        # the float64 targets of one shared problem, for scipy's polish (value_and_grad_np)
        self.y_np, self.w_np = np.nan_to_num(Y_np), np.isfinite(Y_np).astype(np.float64)
        Y = torch.from_numpy(Y_np).to(dtype)
        self.w = torch.isfinite(Y).to(dtype)  # 0 where a point is left out
        self.Y = torch.nan_to_num(Y)

    def _targets(self, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared or rows is None:
            return self.Y, self.w
        return self.Y[rows], self.w[rows]

    def _terms(self, theta: torch.Tensor, rows: torch.Tensor | None):
        """u (K of (b, n)), lse (b, n), r (b, n) masked, the mask (b, n) or (n,)."""
        y, w = self._targets(rows)
        u = [theta @ Jk.T for Jk in self.Jk]
        lse = u[0]
        for uk in u[1:]:  # pairwise, each step exact for two terms
            lse = torch.maximum(lse, uk) + torch.log1p(torch.exp(-(lse - uk).abs()))
        return u, lse, (lse - y) * w, w

    def _rho(self, r: torch.Tensor) -> torch.Tensor:
        return r * r if self.loss == "squares" else _huber(r, self.delta)

    def value(self, theta: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(b, P) -> the objectives (b,)."""
        return self._rho(self._terms(theta, rows)[2]).sum(-1)

    def derivatives(self, theta: torch.Tensor, rows: torch.Tensor | None = None,
                    curvature: str = "gauss-newton"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, P) -> objective (b,), gradient g (b, P) and curvature H (b, P, P) of the
        objective divided by its factor 2 for squares (the step solves ``(H + lam D) s =
        -g``, so the factor cancels). ``curvature``: ``"gauss-newton"`` or ``"newton"``."""
        u, lse, r, w = self._terms(theta, rows)
        ww = w if w.dim() == 2 else w.expand_as(r)
        J0 = self.Jk[0]
        # j_n = J_n^T p, as J_0 + sum_k p_k (J_k - J_0); with two terms p_1 = sigmoid(u_1 - u_0)
        if self.K == 2:
            shares = [torch.sigmoid(u[1] - u[0])]
        else:
            shares = [torch.exp(uk - lse) for uk in u[1:]]
        jac = J0[None] * ww[..., None]
        for pk, Jk in zip(shares, self.Jk[1:]):
            jac = jac + (pk * ww)[..., None] * (Jk - J0)[None]  # (b, n, P)
        if self.loss == "squares":
            f, psi, weight = (r * r).sum(-1), r, None
        else:
            f = _huber(r, self.delta).sum(-1)
            psi = r.clamp(-self.delta, self.delta)  # Huber'(r)
            weight = r.abs().clamp(max=self.delta) / r.abs().clamp(min=self.delta)  # IRLS: psi / r
        g = torch.einsum("bn,bnp->bp", psi, jac)
        wjac = jac if weight is None else jac * weight[..., None]
        H = torch.einsum("bnp,bnq->bpq", wjac, jac)
        if curvature == "newton":
            if weight is not None:  # Huber'' is 1 inside [-delta, delta], 0 outside
                inside = (r.abs() <= self.delta).to(r.dtype)
                H = torch.einsum("bnp,bnq->bpq", jac * inside[..., None], jac)
            # + psi * Hess(lse) = psi (sum_k p_k J_k J_k^T - j j^T)
            p_all = [torch.exp(uk - lse) for uk in u]
            second = -torch.einsum("bnp,bnq->bpq", jac * psi[..., None], jac)
            for pk, Jk in zip(p_all, self.Jk):
                second = second + torch.einsum("bn,np,nq->bpq", psi * pk * ww, Jk, Jk)
            H = H + second
        elif curvature != "gauss-newton":
            raise ValueError(f"curvature must be 'gauss-newton' or 'newton', got {curvature!r}")
        return f, g, H

    def value_and_grad_np(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective and its gradient (Huber's true gradient, twice ``g`` for squares) in
        float64 numpy, for scipy's polish of a problem with shared targets."""
        if not self.shared:
            raise ValueError("value_and_grad_np needs shared targets Y (n,)")
        u = self.J_np @ theta  # (n, K)
        m = u.max(axis=1, keepdims=True)
        e = np.exp(u - m)
        s = e.sum(axis=1)
        r = (np.log(s) + m[:, 0] - self.y_np) * self.w_np
        p = e / s[:, None]
        psi = 2 * r if self.loss == "squares" else np.clip(r, -self.delta, self.delta)
        g = np.einsum("nk,nkp->p", psi[:, None] * p, self.J_np)
        f = (r * r).sum() if self.loss == "squares" else _huber(r, self.delta).sum()
        return float(f), g


# --------------------------------------------------------------------------------------
# the solver


def levenberg_marquardt(obj: LseObjective, theta: torch.Tensor, *,
                        curvature: str = "gauss-newton", max_iter: int = 200,
                        rtol: float = 1e-10, lower: tuple[int, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt on every problem of ``obj`` at once (the damping scheme and the
    stopping rules: the module docstring). theta: (B, P) starts, one per problem; ``lower``:
    (the index of a parameter, (B,) lower bounds), each trial step projected onto them.
    Returns the end points (B, P) and objectives (B,)."""
    theta = theta.to(obj.dtype).clone()
    B, P = theta.shape
    f = obj.value(theta, torch.arange(B))
    lam = torch.full((B,), 1e-3, dtype=obj.dtype)
    active = torch.arange(B)
    eye = torch.eye(P, dtype=obj.dtype)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        th, fa, la = theta[active], f[active], lam[active]
        _, g, H = obj.derivatives(th, active, curvature)
        d = H.diagonal(dim1=-2, dim2=-1).clamp(min=1e-12)
        step, info = torch.linalg.solve_ex(H + torch.diag_embed(la[:, None] * d) + 1e-12 * eye,
                                           -g[..., None])
        trial = th + step[..., 0]
        if lower is not None:
            index, floor = lower
            trial[:, index] = torch.maximum(trial[:, index], floor.to(obj.dtype)[active])
        ft = obj.value(trial, active)
        ok = (info == 0) & torch.isfinite(ft) & torch.isfinite(trial).all(-1) & (ft < fa)
        theta[active[ok]] = trial[ok]
        f[active[ok]] = ft[ok]
        gain = torch.where(ok, fa - ft, torch.zeros_like(fa))
        lam[active] = torch.where(ok, la / 3, la * 4)
        done = (ok & (gain <= rtol * fa)) | (~ok & (la > 1e8)) | (fa < 1e-24)
        active = active[~done]
    return theta, f


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: results do not depend on the machine's thread count
    (reductions keep their order), and for many tiny problems on a busy machine with few
    cores OpenMP's barriers cost more than the second core gains (``bench/test_fit.py``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def lse_fit(J: np.ndarray, Y: np.ndarray, starts: np.ndarray, *, loss: str = "squares",
            delta: float | None = None, lower: tuple[int, np.ndarray] | None = None,
            dtype: torch.dtype = torch.float64, curvature: str = "gauss-newton",
            max_iter: int = 200, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """:func:`levenberg_marquardt` on numpy arrays, on one thread: ``Y`` (B, n) targets and
    ``starts`` (B, P), one problem each, or ``Y`` (n,) shared by the ``starts``' problems;
    ``lower``: (index, (B,) bounds). Returns the end points (B, P) and objectives (B,)
    (inf where not finite)."""
    obj = LseObjective(J, Y, loss=loss, delta=delta, dtype=dtype)
    theta0 = torch.from_numpy(np.ascontiguousarray(starts, dtype=np.float64))
    bound = None if lower is None else (lower[0], torch.from_numpy(np.asarray(lower[1], float)))
    with one_thread():
        theta, f = levenberg_marquardt(obj, theta0, curvature=curvature, max_iter=max_iter,
                                       rtol=rtol, lower=bound)
    f = f.double().numpy()
    return theta.double().numpy(), np.where(np.isfinite(f), f, np.inf)


def polish(obj: LseObjective, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """One optimum polished by scipy's L-BFGS-B with tight tolerances (float64); the start
    kept when the polish does not improve it."""
    f0, _ = obj.value_and_grad_np(theta)
    res = scipy.optimize.minimize(
        obj.value_and_grad_np, theta, jac=True, method="L-BFGS-B",
        # ftol is relative to max(|f|, 1): with f ~ 1e-3 it must be tiny
        options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 10_000, "maxcor": 20},
    )
    if np.isfinite(res.fun) and res.fun < f0:
        return np.asarray(res.x, dtype=np.float64), float(res.fun)
    return np.asarray(theta, dtype=np.float64), float(f0)


def minimise(J: np.ndarray, y: np.ndarray, delta: float, starts: np.ndarray, *,
             n_refine: int = 4, search: bool = True) -> tuple[np.ndarray, float]:
    """Hoffmann et al.'s global search for a Huber fit of shared targets ``y`` (n,): the
    solver from all ``starts`` (S, P) with the IRLS curvature (float32 for more than 64
    starts; skipped with ``search=False``, for warm starts already near an optimum), the
    ``n_refine`` best distinct end points refined in float64 with the exact Hessian and
    polished by L-BFGS-B; the best wins. Returns (theta (P,), objective)."""
    starts = np.ascontiguousarray(starts, dtype=np.float64)
    if search:
        # small batches are bound by per-call overhead: float32 would only lose accuracy
        dtype = torch.float32 if len(starts) > 64 else torch.float64
        theta, _ = lse_fit(J, y, starts, loss="huber", delta=delta, dtype=dtype, max_iter=120,
                           rtol=1e-6)
    else:
        theta = starts
    obj64 = LseObjective(J, y, loss="huber", delta=delta)
    with one_thread():
        th = torch.from_numpy(theta)
        f = obj64.value(th)
        f = torch.where(torch.isfinite(f) & torch.isfinite(th).all(-1), f, torch.inf)
    chosen: list[int] = []
    for i in torch.argsort(f, stable=True).tolist():
        if not math.isfinite(f[i]) or len(chosen) == n_refine:
            break
        if all(float(np.abs(theta[i] - theta[j]).max()) > 1e-3 for j in chosen):
            chosen.append(i)
    if not chosen:
        raise FitError("the optimiser diverged from every start (non-finite objective)")
    theta, f = lse_fit(J, y, theta[chosen], loss="huber", delta=delta, curvature="newton",
                       max_iter=200, rtol=1e-15)
    best = int(np.argmin(f))
    if not math.isfinite(f[best]):
        raise FitError("the optimiser diverged from every start (non-finite objective)")
    return polish(obj64, theta[best])
