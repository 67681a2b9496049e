"""Compare architectures against a baseline on a results table.

The input is the study's tidy table (``results.csv``: one row per run and budget, columns
``arch, size, seed, budget_tokens, N, N_non_emb, D, C, C_6ND, loss, bpb, ...``). For every
architecture we fit

- the compute frontier ``L(C)`` (always, given 3 or more points),
- Chinchilla Approach 3, ``L = E + A/N^alpha + B/D^beta`` (given >= 6 points covering
  >= 2 sizes and >= 2 token budgets),
- Approach 2, IsoFLOP parabolas (only where points share compute budgets: >= 2 budgets
  with >= 3 sizes each),

and compare each non-baseline architecture with the baseline:

- the **compute multiplier** at each compute budget ``C`` the architecture was measured
  at, ``m(C) = C_base(L_arch(C)) / C``: the compute the baseline's fitted frontier needs
  to reach the loss the architecture's fitted frontier reaches with ``C``, as a multiple of
  ``C``. ``m > 1`` means the architecture is more compute-efficient;
- the **loss gap** at equal compute, ``L_arch(C) - L_base(C)`` (negative is better);
- fitted exponents side by side;
- an **extrapolation check**: fit without the largest model, predict its points.

Intervals come from a stratified bootstrap: every replicate resamples each
architecture's points with replacement *within* that architecture (so no replicate loses
an architecture or changes its point count) and refits every frontier; replicate ``b`` of
the multiplier pairs replicate ``b`` of the baseline with replicate ``b`` of the
architecture, which is the same as resampling both tables jointly. Intervals are
percentile intervals.

Problems are returned as data (``ArchResult.warnings``), never printed: the report
shows them next to the numbers they concern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .fit import (
    FitError,
    Interval,
    bootstrap,
    fit_frontier,
    fit_isoflop,
    fit_parametric,
    frontier_mask,
)

MIN_FRONTIER_POINTS = 3
MIN_PARAMETRIC_POINTS = 6
MIN_ISOFLOP_SIZES = 3  # a parabola through fewer points has no curvature to trust
EXPONENT_NAMES = ("gamma", "alpha", "beta", "a", "b")


@dataclass
class Extrapolation:
    """Fit on every size but the largest, predict the largest size's points.

    ``method`` is ``"parametric"`` (Approach 3 predicts each held-out point from its N and
    D) or ``"frontier"`` (the frontier predicts the held-out points that lie on the full
    data's compute frontier; points off the frontier are not compute-optimal, so the
    frontier does not describe them).
    """

    method: str
    held_out_N: float
    n_train: int
    C: np.ndarray  # (n_test,) compute of the held-out points
    measured: np.ndarray  # (n_test,)
    predicted: np.ndarray  # (n_test,)

    @property
    def rel_errors(self) -> np.ndarray:
        return (self.predicted - self.measured) / self.measured

    @property
    def mean_rel_error(self) -> float:
        """Signed: positive means the small-model fit predicted a higher loss than measured."""
        return float(np.mean(self.rel_errors))

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_errors)))


@dataclass
class ArchResult:
    """Every fit of one architecture, with intervals and warnings."""

    arch: str
    data: pd.DataFrame  # this architecture's rows of the input table
    frontier: Any = None  # FrontierFit | None
    parametric: Any = None  # ParametricFit | None
    isoflop: Any = None  # IsoFlopFit | None
    # "frontier.gamma", "frontier.E", "parametric.alpha", ... -> Interval
    intervals: dict[str, Interval] = field(default_factory=dict)
    extrapolation: list[Extrapolation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_points(self) -> int:
        return len(self.data)


@dataclass
class BudgetComparison:
    """One architecture against the baseline at one of its measured compute budgets."""

    arch: str
    C: float
    loss_arch: float  # the architecture's fitted frontier at C
    loss_base: float  # the baseline's fitted frontier at C
    multiplier: Interval  # C_base(loss_arch) / C; > 1: the architecture is more efficient
    gap: Interval  # loss_arch - loss_base; < 0: the architecture is better
    extrapolated: bool  # C_base(loss_arch) lies outside the baseline's measured compute

    @property
    def relative_compute(self) -> Interval:
        """1 / multiplier: the architecture's compute as a fraction of the baseline's."""
        m = self.multiplier
        return Interval(estimate=_reciprocal(m.estimate), se=float("nan"),
                        lo=_reciprocal(m.hi), hi=_reciprocal(m.lo), n_ok=m.n_ok)


@dataclass
class Comparison:
    """The output of :func:`compare`; :mod:`postformer.scaling.report` renders it."""

    baseline: str
    archs: dict[str, ArchResult]  # every architecture, baseline included, in table order
    budgets: dict[str, list[BudgetComparison]]  # non-baseline arch -> one entry per budget
    compute: str = "C"
    params: str = "N"
    loss: str = "loss"
    n_boot: int = 0
    seed: int = 0

    @property
    def others(self) -> list[str]:
        return [a for a in self.archs if a != self.baseline]

    @property
    def warnings(self) -> dict[str, list[str]]:
        return {a: r.warnings for a, r in self.archs.items() if r.warnings}


# --------------------------------------------------------------------------- helpers


def group_budgets(values: Sequence[float] | np.ndarray, rtol: float = 0.05) -> np.ndarray:
    """Label each value with its budget: values within ``rtol`` of a group's smallest value
    share the group, labelled by the group's geometric mean. Shape ``(n,)`` -> ``(n,)``."""
    values = np.asarray(values, dtype=float)
    labels = np.empty_like(values)
    order = np.argsort(values, kind="stable")
    start, members = None, []
    groups: list[list[int]] = []
    for i in order:
        if start is None or values[i] > start * (1 + rtol):
            start, members = values[i], []
            groups.append(members)
        members.append(i)
    for members in groups:
        labels[members] = float(np.exp(np.mean(np.log(values[members]))))
    return labels


def _percentile_interval(estimate: float, samples: np.ndarray, ci: float) -> Interval:
    """A percentile interval; infinite replicates (a loss the frontier never reaches) count
    towards the quantiles, so they widen the interval instead of vanishing."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return Interval(estimate=float(estimate), se=float("nan"), lo=float("nan"),
                        hi=float("nan"), n_ok=0)
    q = (1 - ci) / 2
    with np.errstate(invalid="ignore"):  # interpolating between two infs gives NaN
        lo, hi = np.quantile(samples, [q, 1 - q])
    lo, hi = (np.inf if np.isnan(lo) else lo), (np.inf if np.isnan(hi) else hi)
    finite = samples[np.isfinite(samples)]
    with np.errstate(over="ignore"):  # a wild replicate may overflow the square: se is inf
        se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return Interval(estimate=float(estimate), se=se, lo=float(lo), hi=float(hi),
                    n_ok=int(samples.size))


def _is_huge(iv: Interval) -> bool:
    """An interval wider than its own estimate (or unbounded) says the fit pins little down."""
    if not np.isfinite(iv.estimate):
        return False
    width = iv.hi - iv.lo
    return bool(not np.isfinite(width) or width > abs(iv.estimate))


def _reciprocal(x: float) -> float:
    if x == 0:
        return float("inf")
    return 0.0 if np.isinf(x) else 1.0 / x


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def isoflop_budgets(C: np.ndarray, N: np.ndarray, rtol: float = 0.05) -> np.ndarray | None:
    """Budget labels for the rows that belong to an IsoFLOP grid (a compute budget with
    >= 3 distinct sizes), NaN elsewhere; None when fewer than 2 budgets form grids."""
    labels = group_budgets(C, rtol)
    out = np.full(len(C), np.nan)
    n_grids = 0
    for lab in np.unique(labels):
        rows = labels == lab
        if len(np.unique(N[rows])) >= MIN_ISOFLOP_SIZES:
            out[rows] = lab
            n_grids += 1
    return out if n_grids >= 2 else None


# --------------------------------------------------------------------------- per-arch fits


def _fit_arch(res: ArchResult, *, compute: str, params: str, loss: str, budget: str | None,
              n_boot: int, seed: int, ci: float, rtol: float, extrap_tol: float,
              parametric_boot: int) -> list[Any]:
    """Fit one architecture in place; returns its frontier bootstrap replicates."""
    df = res.data
    C = df[compute].to_numpy(float)
    N = df[params].to_numpy(float)
    D = df["D"].to_numpy(float)
    L = df[loss].to_numpy(float)
    n_sizes, n_budgets = len(np.unique(N)), len(np.unique(group_budgets(D, rtol)))

    # frontier, with stratified bootstrap replicates kept for the pairwise comparisons
    replicates: list[Any] = []
    if len(df) < MIN_FRONTIER_POINTS:
        res.warnings.append(f"only {len(df)} point(s): no frontier fit (needs >= "
                            f"{MIN_FRONTIER_POINTS}), so no comparison")
    else:
        try:
            res.frontier = fit_frontier(C, L)
        except FitError as err:
            res.warnings.append(f"frontier fit failed: {err}")
    if res.frontier is not None:
        rng = np.random.default_rng(seed)
        warm = res.frontier.warm_starts()  # refits start near the full-data optimum: fast
        for _ in range(n_boot):
            idx = rng.integers(0, len(df), len(df))
            try:
                replicates.append(fit_frontier(C[idx], L[idx], starts=warm))
            except FitError:
                replicates.append(None)
        for name in ("gamma", "E", "k"):
            samples = np.array([getattr(r, name) if r is not None else np.nan
                                for r in replicates])
            res.intervals[f"frontier.{name}"] = _percentile_interval(
                getattr(res.frontier, name), samples, ci)
        n_failed = sum(r is None for r in replicates)
        if n_boot and n_failed > 0.1 * n_boot:
            res.warnings.append(f"frontier refit failed on {n_failed} of {n_boot} bootstrap "
                                "resamples")

    # Approach 3
    if len(df) >= MIN_PARAMETRIC_POINTS and n_sizes >= 2 and n_budgets >= 2:
        try:
            res.parametric = fit_parametric(N, D, L, seed=seed)
        except FitError as err:
            res.warnings.append(f"Approach 3 fit failed: {err}")
        else:
            p = res.parametric
            if p.E < 0.05 * float(np.min(L)) or min(p.alpha, p.beta) < 1e-3:
                res.warnings.append(
                    f"Approach 3 fit is degenerate (E={p.E:.3g}, alpha={p.alpha:.3g}, "
                    f"beta={p.beta:.3g}): the points do not pin down five parameters; "
                    "add sizes or budgets before reading its exponents")
    else:
        res.warnings.append(
            f"Approach 3 skipped: needs >= {MIN_PARAMETRIC_POINTS} points over >= 2 sizes and "
            f">= 2 token budgets (have {len(df)} points, {n_sizes} sizes, {n_budgets} budgets)")
    if res.parametric is not None and parametric_boot > 0:
        # a resample is a small perturbation of the data: start from the full fit's optimum
        # alone instead of the 4,500-point grid (each extra start costs a damped-Newton run)
        starts = res.parametric.theta[None, :]  # (1, 5)
        fit = lambda N, D, loss: fit_parametric(N, D, loss, starts=starts)
        try:
            stats = {k: (lambda f, k=k: getattr(f, k)) for k in ("E", "alpha", "beta", "a", "b")}
            ivs = bootstrap(fit, {"N": N, "D": D, "loss": L}, n_boot=parametric_boot,
                            seed=seed, stats=stats)
        except FitError as err:
            res.warnings.append(f"Approach 3 bootstrap failed: {err}")
        else:
            res.intervals.update({f"parametric.{k}": v for k, v in ivs.items()})

    # Approach 2, only where the design has IsoFLOP grids
    nominal = df[budget].to_numpy(float) if budget is not None else C
    budgets = isoflop_budgets(nominal, N, rtol)
    if budgets is not None:
        rows = ~np.isnan(budgets)
        try:
            res.isoflop = fit_isoflop(N[rows], D[rows], L[rows], C=C[rows],
                                      budget=budgets[rows], rtol=rtol)
        except FitError as err:
            res.warnings.append(f"Approach 2 (IsoFLOP) fit failed: {err}")

    for name, iv in res.intervals.items():
        # exponents only: E and k are scales, often loosely pinned without harm
        if name.rsplit(".", 1)[-1] in EXPONENT_NAMES and _is_huge(iv):
            res.warnings.append(f"{name} = {_fmt(iv.estimate)} has a wide interval "
                                f"[{_fmt(iv.lo)}, {_fmt(iv.hi)}]: the data pin it down poorly")

    _extrapolation_check(res, C, N, D, L, extrap_tol=extrap_tol, rtol=rtol, seed=seed)
    return replicates


def _extrapolation_check(res: ArchResult, C: np.ndarray, N: np.ndarray, D: np.ndarray,
                         L: np.ndarray, *, extrap_tol: float, rtol: float, seed: int) -> None:
    sizes = np.unique(N)
    if len(sizes) < 2:
        return
    test = N == sizes[-1]
    train = ~test
    n_train_sizes = len(sizes) - 1
    n_train_budgets = len(np.unique(group_budgets(D[train], rtol)))
    if res.parametric is not None:
        if (train.sum() >= MIN_PARAMETRIC_POINTS and n_train_sizes >= 2
                and n_train_budgets >= 2):
            try:
                # warm: the full fit's optimum plus grid corners, not the 4,500-start grid
                fit = fit_parametric(N[train], D[train], L[train],
                                     starts=res.parametric.warm_starts())
            except FitError as err:
                res.warnings.append(f"extrapolation check (Approach 3) failed: {err}")
            else:
                res.extrapolation.append(Extrapolation(
                    "parametric", float(sizes[-1]), int(train.sum()), C[test], L[test],
                    np.asarray(fit.predict(N[test], D[test]), float)))
        else:
            res.warnings.append("extrapolation check (Approach 3) skipped: too few points "
                                "without the largest size")
    if res.frontier is not None:
        on_frontier = test & frontier_mask(C, L)
        if train.sum() < MIN_FRONTIER_POINTS:
            res.warnings.append("extrapolation check (frontier) skipped: too few points "
                                "without the largest size")
        elif on_frontier.any():
            try:
                fit = fit_frontier(C[train], L[train])
            except FitError as err:
                res.warnings.append(f"extrapolation check (frontier) failed: {err}")
            else:
                res.extrapolation.append(Extrapolation(
                    "frontier", float(sizes[-1]), int(train.sum()), C[on_frontier],
                    L[on_frontier], np.asarray(fit.predict(C[on_frontier]), float)))
    for ex in res.extrapolation:
        if ex.max_abs_rel_error > extrap_tol:
            res.warnings.append(
                f"extrapolation check ({ex.method}): fitted without N={_fmt(ex.held_out_N)}, "
                f"the prediction of its loss is off by up to {100 * ex.max_abs_rel_error:.1f}% "
                f"(tolerance {100 * extrap_tol:.0f}%)")


# --------------------------------------------------------------------------- comparison


def _compare_pair(arch: ArchResult, base: ArchResult, arch_reps: list[Any],
                  base_reps: list[Any], *, compute: str, ci: float,
                  rtol: float) -> list[BudgetComparison]:
    C_arch = arch.data[compute].to_numpy(float)
    C_base = base.data[compute].to_numpy(float)
    budgets = np.unique(group_budgets(C_arch, rtol))  # (n_budgets,)
    fa, fb = arch.frontier, base.frontier
    loss_arch = np.asarray(fa.predict(budgets), float)
    loss_base = np.asarray(fb.predict(budgets), float)
    with np.errstate(all="ignore"):
        mult = np.asarray(fb.compute_for_loss(loss_arch), float) / budgets
    # bootstrap: pair replicate b of one with replicate b of the other
    m_samples, g_samples = [], []
    for ra, rb in zip(arch_reps, base_reps):
        if ra is None or rb is None:
            continue
        la = np.asarray(ra.predict(budgets), float)
        with np.errstate(all="ignore"):
            m = np.asarray(rb.compute_for_loss(la), float) / budgets
        m_samples.append(np.where(np.isnan(m), np.inf, m))  # NaN: loss below E, unreachable
        g_samples.append(la - np.asarray(rb.predict(budgets), float))
    m_samples = np.array(m_samples).reshape(-1, len(budgets))  # (n_ok, n_budgets)
    g_samples = np.array(g_samples).reshape(-1, len(budgets))
    lo_c, hi_c = C_base.min() * (1 - rtol), C_base.max() * (1 + rtol)
    out = []
    for j, c in enumerate(budgets):
        needed = mult[j] * c
        out.append(BudgetComparison(
            arch=arch.arch, C=float(c), loss_arch=float(loss_arch[j]),
            loss_base=float(loss_base[j]),
            multiplier=_percentile_interval(mult[j] if np.isfinite(mult[j]) else np.inf,
                                            m_samples[:, j], ci),
            gap=_percentile_interval(loss_arch[j] - loss_base[j], g_samples[:, j], ci),
            extrapolated=bool(not np.isfinite(needed) or needed < lo_c or needed > hi_c)))
    return out


def _pair_warnings(arch: ArchResult, base: str, rows: list[BudgetComparison]) -> None:
    unreachable = [r for r in rows if not np.isfinite(r.multiplier.estimate)]
    if unreachable:
        arch.warnings.append(
            f"at {len(unreachable)} budget(s) the loss reached is below the {base} frontier's "
            "asymptote E: the multiplier is unbounded (reported as inf)")
    extrapolated = [r for r in rows if r.extrapolated and np.isfinite(r.multiplier.estimate)]
    if extrapolated:
        cs = ", ".join(_fmt(r.C) for r in extrapolated)
        arch.warnings.append(
            f"multiplier at C = {cs} reads the {base} frontier outside the compute range the "
            f"{base} was measured at (extrapolated)")
    huge = [r for r in rows if np.isfinite(r.multiplier.estimate) and _is_huge(r.multiplier)]
    if huge:
        cs = ", ".join(_fmt(r.C) for r in huge)
        arch.warnings.append(f"multiplier interval wider than the estimate at C = {cs}")


def compare(df: pd.DataFrame, *, baseline: str | None = None, compute: str = "C",
            params: str = "N", loss: str = "loss", budget: str | None = None,
            n_boot: int = 200,
            parametric_boot: int | None = None, seed: int = 0, ci: float = 0.95,
            rtol: float = 0.05, extrap_tol: float = 0.03) -> Comparison:
    """Fit every architecture of ``df`` and compare each with ``baseline``.

    Args:
        df: the results table (columns ``arch``, ``D``, and those named below).
        baseline: architecture label to compare against; default ``transformer`` if the
            table has it, else the first architecture in the table.
        compute: the compute column, ``"C"`` (the architecture's own FLOP count) or
            ``"C_6ND"``.
        params: the parameter-count column, ``"N"`` or ``"N_non_emb"``.
        loss: the loss column (``"loss"`` in nats, or ``"bpb"``).
        budget: a column of nominal compute budgets that defines IsoFLOP groups (a study
            with FLOP budgets: ``6 N budget_tokens``); default: ``compute`` grouped within
            ``rtol``.
        n_boot: bootstrap replicates for frontier parameters, multipliers and gaps.
        parametric_boot: replicates for Approach 3 intervals (each refit is far dearer than
            a frontier refit); default ``min(n_boot, 50)``; 0 skips them.
        ci: interval coverage.
        rtol: relative tolerance that makes two compute (or token) values one budget.
        extrap_tol: relative loss error above which the extrapolation check warns.
    """
    missing = {"arch", "D", compute, params, loss} - set(df.columns) - {None}
    if budget is not None and budget not in df.columns:
        missing.add(budget)
    if missing:
        raise ValueError(f"results table lacks column(s) {sorted(missing)}; has "
                         f"{list(df.columns)}")
    df = df[np.isfinite(df[loss].to_numpy(float))]
    archs = list(dict.fromkeys(df["arch"].astype(str)))
    if not archs:
        raise ValueError("results table has no rows with a finite loss")
    if baseline is None:
        baseline = "transformer" if "transformer" in archs else archs[0]
    if baseline not in archs:
        raise ValueError(f"baseline {baseline!r} is not in the table; architectures: {archs}")
    if parametric_boot is None:
        parametric_boot = min(n_boot, 50)

    results: dict[str, ArchResult] = {}
    replicates: dict[str, list[Any]] = {}
    for i, arch in enumerate(archs):
        res = ArchResult(arch, df[df["arch"].astype(str) == arch].reset_index(drop=True))
        # a distinct stream per architecture: resampling one never shifts another's draws
        replicates[arch] = _fit_arch(
            res, compute=compute, params=params, loss=loss, budget=budget, n_boot=n_boot,
            seed=seed + i,
            ci=ci, rtol=rtol, extrap_tol=extrap_tol, parametric_boot=parametric_boot)
        results[arch] = res

    base = results[baseline]
    budgets: dict[str, list[BudgetComparison]] = {}
    for arch in archs:
        if arch == baseline:
            continue
        res = results[arch]
        if base.frontier is None or res.frontier is None:
            who = baseline if base.frontier is None else arch
            res.warnings.append(f"no comparison with {baseline}: no frontier fit for {who}")
            budgets[arch] = []
            continue
        rows = _compare_pair(res, base, replicates[arch], replicates[baseline],
                             compute=compute, ci=ci, rtol=rtol)
        _pair_warnings(res, baseline, rows)
        budgets[arch] = rows
    return Comparison(baseline=baseline, archs=results, budgets=budgets, compute=compute,
                      params=params, loss=loss, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------- tables


def compare_table(result: Comparison | pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """The main numbers, one row per (non-baseline architecture, compute budget).

    Accepts a :class:`Comparison` or a results table (then ``kwargs`` go to
    :func:`compare`). Columns: ``arch, baseline, C, loss_arch, loss_base, gap, gap_lo,
    gap_hi, multiplier, multiplier_lo, multiplier_hi, extrapolated``.
    """
    if isinstance(result, pd.DataFrame):
        result = compare(result, **kwargs)
    rows = []
    for arch, entries in result.budgets.items():
        for r in entries:
            rows.append({
                "arch": arch, "baseline": result.baseline, "C": r.C,
                "loss_arch": r.loss_arch, "loss_base": r.loss_base,
                "gap": r.gap.estimate, "gap_lo": r.gap.lo, "gap_hi": r.gap.hi,
                "multiplier": r.multiplier.estimate, "multiplier_lo": r.multiplier.lo,
                "multiplier_hi": r.multiplier.hi, "extrapolated": r.extrapolated,
            })
    columns = ["arch", "baseline", "C", "loss_arch", "loss_base", "gap", "gap_lo", "gap_hi",
               "multiplier", "multiplier_lo", "multiplier_hi", "extrapolated"]
    return pd.DataFrame(rows, columns=columns)


EXPONENTS = [("frontier", "gamma"), ("frontier", "E"), ("parametric", "alpha"),
             ("parametric", "beta"), ("parametric", "a"), ("parametric", "b"),
             ("parametric", "E"), ("isoflop", "a"), ("isoflop", "b")]


def exponent_table(result: Comparison) -> pd.DataFrame:
    """Fitted exponents side by side: one row per architecture, columns ``<fit>.<name>``,
    ``<fit>.<name>_lo`` and ``<fit>.<name>_hi`` (NaN where a fit or interval is absent).
    Approach 2 has point estimates only."""
    rows = []
    for arch, res in result.archs.items():
        row: dict[str, Any] = {"arch": arch, "n_points": res.n_points}
        for fit_name, name in EXPONENTS:
            key = f"{fit_name}.{name}"
            fit = getattr(res, fit_name)
            row[key] = float(getattr(fit, name)) if fit is not None else np.nan
            iv = res.intervals.get(key)
            row[f"{key}_lo"] = iv.lo if iv is not None else np.nan
            row[f"{key}_hi"] = iv.hi if iv is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
