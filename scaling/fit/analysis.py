"""The verdict: IsoFLOP minima, the efficiency factor of each architecture against a baseline,
honest intervals.

Input: a results table (``scaling.fit.table``): one row per finished run with ``arch, N, D, C,
loss`` and, where known, ``budget_flops`` (the IsoFLOP group), ``trajectory`` (the
bootstrap cluster), ``seed``, ``stage``. ``stage == "tune"`` rows (learning-rate sweeps)
feed :func:`lr_sweeps` only; ``stage == "lrcheck"`` rows (the baseline at a multiple of its
tuned LR) stay out of every fit here.

The method, step by step:

1. **IsoFLOP minima.** Per arch and FLOP budget, a parabola in ``x = ln N`` through the
   losses of every size and seed (least squares), its minimum ``L_opt`` at
   ``N_opt = exp(x*)``. A group needs 3 distinct sizes. A minimum whose vertex is not
   strictly inside the sampled sizes, or whose lowest mean loss sits at the smallest or
   largest size, or whose parabola opens downwards, is *at the edge*: it is reported, but
   it stays out of the headline (the grid missed the optimum). The compute columns and D
   at the vertex are read ln-linearly in x within the group.
2. **Headline 1, the loss gap** at equal measured compute: per budget, ``L_opt(arch) -
   L_opt(baseline)`` in nats per token (negative: the arch is better). It needs per-budget
   minima only, so it stands whatever step 3 says.
3. **Headline 2, the efficiency factor.** One joint fit over every arch's interior minima,

       ln L = ln(E + k (m_a C)^-gamma),   m_baseline = 1,

   least squares on ln L. E, k, gamma are shared; ``m_a`` is the compute the baseline
   needs for the arch's loss divided by what the arch needs (> 1: the arch needs less).
   In the parametrisation ``ln(E + exp(k_ + nu_a - gamma ln C))`` every term is linear in
   the parameters (``nu_a = -gamma ln m_a``), which is what makes the fit a small, smooth,
   batched Gauss-Newton problem. **Only where the baseline has a curve**: with interior
   minima of the baseline at fewer than two budgets the factor of every other arch is
   withheld (``ArchVerdict.efficiency_withheld`` says why; one baseline point read along
   the slope of the other archs' minima is not a measurement of the baseline's curve), and
   so are the conventions' factors and m(C).
4. **Every FLOP convention.** The same joint fit with each FLOP count the table carries as C
   (``CONVENTION_COLUMNS``: ``C_causal`` causal, ``C_full`` Chinchilla's full count,
   ``C_6ND``), over the same minima and the same bootstrap replicates, so each has an
   interval (``efficiency_by_convention``). The headline convention is the one whose column
   equals C on every row, else "as given" (C itself, then also an entry).
5. **Same slope, or not.** The same fit with a free ``gamma_a`` and ``k_a`` per arch (E
   shared); the bootstrap interval of ``gamma_a - gamma_baseline`` says whether the
   exponents differ ("same slope, shifted" or "the gap grows/shrinks with compute"). Its
   curves also give the factor **under each arch's own slope**,
   ``C_base(L*) / C_arch(L*)`` at the loss ``L*`` of the arch's largest interior minimum
   (``efficiency_own_slope``): where it lies outside the shared-slope interval, that
   interval understates the uncertainty of the law's form, and the report says so.
6. **Allocation exponents (Approach 2).** Per arch with interior minima at two budgets or
   more: ``ln N_opt`` and ``ln D_opt`` against ``ln C`` by least squares (``N_opt ~ C^a``,
   ``D_opt ~ C^b``; two budgets are a line through two points, and the report says so).
7. **The inverted-frontier multiplier m(C)**, ``C_base(L_opt(arch, C)) / C``, read off the
   baseline's fitted curve only where the compute it needs lies inside the baseline's
   measured minima (its support); a loss below the fitted asymptote E is *not
   identifiable*, never infinity.
8. **Extrapolation check.** Hold out the largest budget, refit from the grid of starts,
   predict its minima; the error in loss and in ln C. A refit with as many minima as
   parameters is exactly determined and tests nothing beyond itself: a warning says so.

Intervals: a *wild cluster bootstrap* by trajectory (``scaling.fit.bootstrap``): every
replicate keeps the design and perturbs the losses by the parabolas' residuals, one weight
per trajectory (a main run and its cooldowns move together). **The selection is inside the
interval**: every replicate makes the interior test of step 1 again on its own parabolas
and losses (``bootstrap.interior_boot``), and a minimum that fails it there is left out of
that replicate's fits (its target NaN); a replicate in which the baseline keeps fewer than
two interior budgets, or an arch none, has no factor for it (counted in the "undefined in k
of n replicates" warning), and a fit parameter no kept minimum determines is NaN
(``curvefit``). ``Minimum.interior_fraction`` is the share of replicates in which a minimum
is interior. Minima at the edge in the point fit stay out of every replicate (the design is
the point fit's). Every refit (parabolas, the joint fit per convention, the free fit, the
allocation slopes) runs on all replicates at once; each joint refit starts from a grid of
starts plus the full-data optimum and keeps the best. Percentile intervals; their Monte
Carlo error (from the order statistics) is reported with them. The loss gaps and the minima's
own intervals use every replicate (a minimum at the edge of a replicate's grid is still its
lowest fitted loss in the sampled range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import interior_boot, minima_boot, wild_targets
from .curvefit import CurveFit, curve_fit, efficiency
from .estimate import Estimate, percentile
from .isoflop import Minimum, group_minimum, isoflop_groups
from .lr import LRSweep, lr_sweeps
from .table import budget_labels, json_float, normalise

DEFAULT_N_BOOT = 2000
WALLCLOCK = "measured seconds, N"  # the conventions entry of the wall-clock view
#: the FLOP conventions the efficiency factor is given under, each from its column: the
#: causal count (attention's causal scores, chunked mixers' causal intra-chunk blocks),
#: Chinchilla's full count (full T x T scores and chunk blocks), and 6 N D
CONVENTION_COLUMNS = {"causal": "C_causal", "chinchilla": "C_full", "6ND": "C_6ND"}
AS_GIVEN = "as given"  # the headline convention when C equals none of the columns
TWO_BUDGETS = "two budgets: the exponent is a line through two points"


# --------------------------------------------------------------------------- small types


@dataclass
class Gap:
    """Loss gap at one budget: L_opt(arch) - L_opt(baseline), nats per token."""

    budget: float
    C: float
    value: Estimate | None  # None when excluded
    excluded: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"flops": json_float(self.budget), "C": json_float(self.C)}
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
    status: str  # "ok" | "outside support" | "not identifiable" | "excluded" | "withheld"

    def as_dict(self) -> dict[str, Any]:
        d = {"flops": json_float(self.budget), "status": self.status}
        d.update(self.value.as_dict() if self.value is not None
                 else {"estimate": None, "low": None, "high": None})
        return d


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
    extrapolation: dict[str, float] | None = None
    #: why the efficiency factor is withheld though a joint fit exists ("" when it is not)
    efficiency_withheld: str = ""
    #: the factor under the free-exponent fit: C_base(L*) / C_arch(L*) at the arch's top
    #: interior minimum's loss L*, each arch on its own slope
    efficiency_own_slope: Estimate | None = None
    #: the efficiency factor under every FLOP convention the table carries (None: withheld
    #: or not identifiable), the headline convention first
    efficiency_by_convention: dict[str, Estimate | None] = field(default_factory=dict)
    #: Approach 2's allocation exponents: N_opt ~ C^a, D_opt ~ C^b over the arch's interior
    #: minima ({"N_opt_exponent", "D_opt_exponent": Estimate, "n_budgets": k, "note": str})
    allocation: dict[str, Any] | None = None

    @property
    def wallclock(self) -> float:
        """The efficiency factor with compute counted as measured training seconds."""
        return self.conventions.get(WALLCLOCK, math.nan)


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
    #: the convention whose column equals C on every row, else "as given"
    headline_convention: str = AS_GIVEN

    def efficiency_of(self, arch: str) -> Estimate | None:
        """The headline efficiency factor: 1 for the baseline, else the joint fit's (None
        when there is none or it is not finite)."""
        if arch == self.baseline:
            return Estimate(1.0, 1.0, 1.0, 0.0, self.n_boot)
        e = self.verdicts[arch].efficiency
        return e if e is not None and math.isfinite(e.estimate) else None


# --------------------------------------------------------------------------- the analysis


def analyse(df: pd.DataFrame, *, baseline: str | None = None, n_boot: int = DEFAULT_N_BOOT,
            seed: int = 0, params: str = "N", compute: str = "C",
            conventions: bool = True) -> Analysis:
    """The full analysis of a results table (see the module docstring).

    Args:
        df: a results table (``scaling.fit.table``); ``stage == "tune"`` rows feed the LR
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
    main = df[df["stage"] == "main"].reset_index(drop=True)  # not tune, not lrcheck
    if main.empty:
        raise ValueError("the results table has no rows of the main stage (outside LR tuning "
                         "and its check)")
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

    groups, notes = isoflop_groups(main, params)
    warnings += notes
    compute_cols = ["C", "C_6ND"]
    for col in ("C_causal", "C_full"):
        if col in main and main[col].notna().all():
            compute_cols.append(col)
        elif col in main and main[col].notna().any():
            warnings.append(f"the {col} column is empty in some rows: that FLOP convention is "
                            "left out")
    if "tokens_per_s" in main and main["tokens_per_s"].notna().all():
        main["_seconds"] = main["D"] / main["tokens_per_s"]
        compute_cols.append("_seconds")
    if compute != "C":
        main["C"] = main[compute]
    comparison = len(archs) >= 2
    mins = [group_minimum(g, main, params, compute_cols) for g in groups]
    for m in mins:
        if not m.interior:
            warnings.append(f"{m.arch} at C={m.budget:.3g}: minimum at the edge of the size grid "
                            f"({m.reason}); this budget is left out of {m.arch}'s headline")
    Y, noise_sd, notes = wild_targets(main, groups, n_boot, rng)
    warnings += notes
    Lb, xb = minima_boot(groups, Y)  # (R, n_groups)
    Ib = interior_boot(groups, Y)  # (R, n_groups): the interior test, made in every replicate
    for j, m in enumerate(mins):
        m.L_ci = percentile(m.L_opt, Lb[:, j])
        m.N_ci = percentile(m.N_opt, np.exp(xb[:, j]))
        m.interior_fraction = float(Ib[:, j].mean())

    by_arch_budget = {(m.arch, m.budget): j for j, m in enumerate(mins)}
    inc = [j for j, m in enumerate(mins) if m.interior]
    inc_archs = [a for a in archs if any(mins[j].arch == a for j in inc)]
    base_budgets = sorted(mins[j].budget for j in inc if mins[j].arch == baseline)
    withheld = ""
    if len(base_budgets) == 1:
        withheld = (f"the baseline {baseline} has an interior minimum at one budget only "
                    f"({base_budgets[0]:.3g} FLOPs): no curve to read a compute factor off; the "
                    "loss gaps stand")
    # which minima each replicate keeps: those interior in it (NaN leaves the rest out)
    Lsel = np.where(Ib, Lb, np.nan)
    joint = free = None
    if baseline not in inc_archs:
        if comparison:
            warnings.append(f"the baseline {baseline} has no interior IsoFLOP minimum: no "
                            "efficiency factor can be estimated")
    else:
        jmins = [mins[j] for j in inc]
        if withheld and comparison:
            warnings.append(f"the baseline {baseline} has an interior IsoFLOP minimum at one "
                            f"budget only ({base_budgets[0]:.3g} FLOPs): the efficiency factors "
                            "are withheld (no curve to read a compute factor off); the loss "
                            "gaps stand")
        joint = curve_fit("joint", inc_archs, jmins, Lsel[:, inc])
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
            cand = curve_fit("free", fa, [mins[j] for j in fj], Lsel[:, fj])
            if cand.n_points - cand.design.P >= 1:
                free = cand
            else:
                warnings.append(f"exponent test: {cand.n_points} minima for {cand.design.P} "
                                "parameters of the free-exponent law; it needs a third budget")
        elif comparison:
            warnings.append("exponent test: needs the baseline and an arch with interior minima "
                            "at two budgets or more")
    # per replicate: interior minima of each arch among those each fit uses
    kept = {a: Ib[:, [j for j in inc if mins[j].arch == a]].sum(axis=1) for a in inc_archs}

    def replicate_ok(fit: CurveFit, need: dict[str, int]) -> np.ndarray:
        """(R,) the replicates in which ``fit`` is defined: as many points as parameters
        and, per arch, the interior minima ``need`` asks."""
        cols = [j for j in inc if mins[j].arch in fit.design.archs]
        ok = Ib[:, cols].sum(axis=1) >= fit.design.P
        for a, k in need.items():
            ok &= kept[a] >= k
        return ok

    conv_cols = {n: c for n, c in CONVENTION_COLUMNS.items() if c in compute_cols}
    headline = next((n for n, c in conv_cols.items()
                     if np.allclose(main[c].to_numpy(float), main["C"].to_numpy(float))),
                    AS_GIVEN)
    conv_order = [(headline, "C")] + [(n, c) for n, c in conv_cols.items() if n != headline]
    conv_fits: dict[str, CurveFit | None] = {}
    if joint is not None:
        for name, col in conv_order:
            if col == "C":
                conv_fits[name] = joint
                continue
            jmins = [mins[j] for j in inc]
            if not all(col in m.compute for m in jmins):
                conv_fits[name] = None
                continue
            conv_fits[name] = curve_fit("joint", inc_archs, jmins, Lsel[:, inc], compute=col)

    verdicts = {}
    for a in archs:
        amins = [m for m in mins if m.arch == a]
        sub = main[main["arch"] == a]
        v = ArchVerdict(a, None, "", None, "", None, [], [], amins, len(sub),
                        int(sub.groupby(["N", "_budget"])["seed"].nunique().max()))
        v.allocation = _allocation([m for m in amins if m.interior],
                                   [j for j in inc if mins[j].arch == a], xb, Ib)
        if withheld and a != baseline:  # the headline rule: no curve, no factor
            v.efficiency_withheld = withheld
            v.efficiency_by_convention = dict.fromkeys(n for n, _ in conv_order)
        elif joint is not None and a in joint.design.archs:
            if a == baseline:
                v.efficiency = Estimate(1.0, 1.0, 1.0, 0.0, n_boot)
                v.efficiency_by_convention = {n: v.efficiency for n, _ in conv_order}
            else:
                for name, fit in conv_fits.items():
                    if fit is None or fit.n_points < fit.design.P:
                        v.efficiency_by_convention[name] = None
                        continue
                    ok = replicate_ok(fit, {baseline: 2, a: 1})
                    est = efficiency(fit, a, fit.theta)
                    reps = np.array([efficiency(fit, a, th) if o else math.nan
                                     for th, o in zip(fit.boot, ok)])
                    v.efficiency_by_convention[name] = percentile(est, reps)
                    if fit is joint:
                        v.efficiency = v.efficiency_by_convention[name]
                        n_sel = int((~ok).sum())
                        n_bad = int(n_boot - v.efficiency.n_ok - n_sel)
                nb = len({m.budget for m in amins if m.interior})
                if nb == 1:
                    v.efficiency_note = "rests on one budget"
                if v.efficiency.n_ok < 0.95 * n_boot:
                    why = []
                    if n_sel:
                        why.append(f"{n_sel} where the {baseline} is interior at fewer than two "
                                   f"budgets or {a} at none (the interior test, made again in "
                                   "each replicate)")
                    if n_bad:
                        why.append(f"{n_bad} where the fitted exponent is <= 0")
                    warnings.append(f"{a}: the efficiency factor is undefined in "
                                    f"{n_boot - v.efficiency.n_ok} of {n_boot} replicates "
                                    f"({'; '.join(why)})")
        elif a != baseline:
            v.efficiency_note = ("no interior IsoFLOP minimum" if a not in inc_archs
                                 else "no joint fit")
        # exponent test, and the factor under each arch's own slope
        if free is not None and a != baseline and a in free.design.archs:
            A = len(free.design.archs)
            ia = free.design.archs.index(a)
            ok = replicate_ok(free, {baseline: 2, a: 2})
            gd = free.theta[1 + A + ia] - free.theta[1 + A]
            reps = np.where(ok, free.boot[:, 1 + A + ia] - free.boot[:, 1 + A], np.nan)
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
            top = max((m for m in amins if m.interior), key=lambda m: m.budget)
            v.efficiency_own_slope = _own_slope(free, baseline, a, top.L_opt, ok)
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
            if withheld:  # a compute factor per budget needs the baseline's curve too
                v.inverted = [Inverted(b, math.nan, None, "withheld") for b in budgets]
            else:
                v.inverted = _inverted(a, baseline, mins, by_arch_budget, budgets, Lb,
                                       free if free is not None and a in free.design.archs
                                       else joint)
        verdicts[a] = v

    out = Analysis(baseline, archs, budgets, verdicts, joint, free, lr, warnings, n_boot, seed,
                   main, noise_sd=noise_sd, headline_convention=headline)
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
            if s.flat:
                warnings.append(f"{s.arch}: the LR sweep is flat within seed noise at "
                                f"{', '.join(s.flat)} (the best LR's neighbours are within 2 seed "
                                "sds of it): its optimum there is not resolved")
    return out


def _own_slope(free: CurveFit, base: str, arch: str, L: float, ok: np.ndarray) -> Estimate:
    """The efficiency factor under each arch's own slope: C_base(L) / C_arch(L) on the free
    fit's curves at the loss L (the arch's top interior minimum), over the replicates ``ok``
    keeps (NaN where a curve does not reach L)."""
    def ratio(th: np.ndarray | None) -> float:
        return free.compute_for(base, L, th) / free.compute_for(arch, L, th)

    reps = np.array([ratio(th) if o else math.nan for th, o in zip(free.boot, ok)])
    return percentile(ratio(None), reps)


def _slopes(x: np.ndarray, Y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of Y (R, k) on x (k,) over the points W (R, k) keeps;
    NaN where a row keeps fewer than two distinct x."""
    w = W.astype(float)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * x).sum(axis=1) / n
        ym = (w * np.nan_to_num(Y)).sum(axis=1) / n
        dx = x[None, :] - xm[:, None]
        sxx = (w * dx * dx).sum(axis=1)
        sxy = (w * dx * (np.nan_to_num(Y) - ym[:, None])).sum(axis=1)
        out = sxy / sxx
    return np.where((n >= 2) & (sxx > 1e-12), out, np.nan)


def _allocation(imins: list[Minimum], cols: list[int], xb: np.ndarray, Ib: np.ndarray
                ) -> dict[str, Any] | None:
    """Approach 2's allocation exponents of one arch: ln N_opt and ln D_opt against ln C over
    its interior minima (``imins``, the columns ``cols`` of the replicate arrays), least
    squares; the interval from the bootstrap replicates' vertices (``xb``: ln N_opt, D read
    at it as at the point estimate), each replicate keeping the minima interior in it (``Ib``).
    None with fewer than two budgets."""
    k = len({m.budget for m in imins})
    if k < 2:
        return None
    lnC = np.log([m.C for m in imins])
    lnN = np.log([m.N_opt for m in imins])
    lnD = np.log([m.D_opt for m in imins])
    X = xb[:, cols]
    lnDb = np.log(np.stack([m.D_at(X[:, i]) for i, m in enumerate(imins)], axis=1))
    W = Ib[:, cols]
    a = float(np.polyfit(lnC, lnN, 1)[0])
    b = float(np.polyfit(lnC, lnD, 1)[0])
    return {"N_opt_exponent": percentile(a, _slopes(lnC, X, W)),
            "D_opt_exponent": percentile(b, _slopes(lnC, lnDb, W)),
            "n_budgets": k, "note": TWO_BUDGETS if k == 2 else ""}


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
    fit = curve_fit("joint", archs, keep, None)
    if fit.n_points < fit.design.P:
        an.warnings.append(f"extrapolation check: {fit.n_points} minima below the largest budget "
                           f"for {fit.design.P} parameters: not identifiable")
        return
    if fit.n_points == fit.design.P:
        an.warnings.append(f"extrapolation check: {fit.n_points} minima for {fit.design.P} "
                           "parameters: exactly determined, the prediction tests nothing beyond "
                           "the fit")
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
        variants[WALLCLOCK] = ("_seconds", params)
    for label, (ccol, pcol) in variants.items():
        groups, _ = isoflop_groups(main, pcol)
        mins = [group_minimum(g, main, pcol, compute_cols) for g in groups]
        mins = [m for m in mins if m.interior and ccol in m.compute]
        archs = [a for a in an.archs if any(m.arch == a for m in mins)]
        if an.baseline not in archs:
            continue
        for m in mins:
            m.compute["C"] = m.compute[ccol]
        fit = curve_fit("joint", archs, mins, None)
        # the headline's rule: no factor where the baseline has no curve
        n_base = len({m.budget for m in mins if m.arch == an.baseline})
        ok = fit.n_points >= fit.design.P and n_base >= 2
        for a in an.archs:
            val = efficiency(fit, a, fit.theta) if ok and a in archs else math.nan
            an.verdicts[a].conventions[label] = 1.0 if a == an.baseline else val
