"""The report's figures (matplotlib, PNG bytes with their captions): LR sweeps, IsoFLOP
parabolas, the frontier with the joint fit and its band, the efficiency forest plot, the
seed spread. Each caption says what is not drawn and why."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..fit import Analysis, Estimate
from ..numbers import finite, fmt, fmt_est, fmt_flops

# --------------------------------------------------------------------------- figures


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib  # heavy (a second to import): only when a figure is drawn

    matplotlib.use("Agg")  # no display here, and none wanted
    import matplotlib.pyplot as plt  # heavy, as above

    return plt


def arch_colors(archs: Sequence[str]) -> dict[str, Any]:
    """One tab10 colour per arch, in order."""
    cycle = pyplot().get_cmap("tab10")
    return {a: cycle(i % 10) for i, a in enumerate(archs)}


def _budget_colors(budgets: Sequence[float]) -> dict[float, Any]:
    cmap = pyplot().get_cmap("viridis")
    n = max(len(budgets) - 1, 1)
    return {b: cmap(0.85 * i / n) for i, b in enumerate(budgets)}


def to_png(fig: Any) -> bytes:
    """The figure as PNG bytes (100 dpi, tight); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def panels(n: int, width: float = 4.2, height: float = 3.4, sharey: bool = False) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, three to a row: (figure, the n axes)."""
    plt = pyplot()
    cols = min(max(n, 1), 3)
    rows = int(math.ceil(max(n, 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _ticks(plain: bool = False, every: bool = False):
    """A log axis' tick labels at 1, 2 and 5 times powers of ten only (every minor tick
    labelled overlaps on a wide axis; ``every``: all of them, for a narrow one); ``plain``:
    0.5, 1, 2 instead of 5e7."""
    from matplotlib.ticker import FuncFormatter  # heavy: only when a figure is drawn

    def label(v: float, _: Any) -> str:
        if not v > 0:
            return ""
        mant = v / 10 ** math.floor(math.log10(v) + 1e-9)
        if not every and not np.isclose(mant, [1, 2, 5]).any():
            return ""
        return f"{v:g}" if plain else f"{mant:.0f}e{math.floor(math.log10(v) + 1e-9)}"

    return FuncFormatter(label)


def _log_panel(ax: Any, title: str, xlabel: str, legend_title: str) -> None:
    """One arch's panel: log x axis, title, label, light grid, a small titled legend."""
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, title=legend_title, title_fontsize=7)


def _err(est: float, e: Estimate | None) -> tuple[float, float, bool]:
    """Error-bar half lengths (below, above) of an interval around ``est``; False when the
    interval is undefined (drawn without a bar)."""
    if e is None or not (finite(e.low) and finite(e.high)):
        return 0.0, 0.0, False
    return max(est - e.low, 0.0), max(e.high - est, 0.0), True


def fig_lr_sweeps(an: Analysis) -> tuple[bytes, str]:
    """Loss vs LR per arch, one line per tuned size, the best LR starred (red: at the edge of
    the grid)."""
    archs = [a for a in an.archs if a in an.lr] + [a for a in an.lr if a not in an.archs]
    fig, axes = panels(len(archs))
    cmap = pyplot().get_cmap("plasma")
    edge = []
    for ax, a in zip(axes, archs):
        sizes = an.lr[a].sizes
        for j, s in enumerate(sizes):
            col = cmap(0.8 * j / max(len(sizes) - 1, 1))
            label = f"{s['size'] or 'N'} ({fmt(s['N'], 2)})"
            ax.plot(s["grid"], s["loss"], "o-", color=col, ms=4, lw=1, label=label)
            y = min(s["loss"])
            ax.plot([s["best"]], [y], marker="*", ms=12, color=col if s["interior"] else "red",
                    mec="black", mew=0.6, ls="none")
            if not s["interior"]:
                ax.annotate("edge", (s["best"], y), textcoords="offset points", xytext=(4, 6),
                            color="red", fontsize=8)
                edge.append(f"{a} at N={fmt(s['N'], 2)}")
        _log_panel(ax, a, "peak learning rate", "tuned size")
    axes[0].set_ylabel("validation loss [nats/token]")
    fig.tight_layout()
    caption = ("Learning-rate sweeps: validation loss vs peak LR per architecture, one line "
               "per tuned size (seeds averaged); star: the best LR (a parabola in ln LR "
               "through the grid's best point and its neighbours), red and labelled 'edge' "
               "where the best is the smallest or largest LR tried. ")
    caption += (f"Edge optima: {', '.join(edge)}." if edge else "No optimum is at an edge.")
    caption += " The LR power law's parameters are in the table only (point estimates)."
    return to_png(fig), caption


def _allocation_panel(an: Analysis, ax: Any) -> list[str]:
    """N_opt vs C of every arch's minima (hollow: at the edge), and the Approach 2 line
    through its interior minima with the exponent in the legend; the archs without one."""
    colors = arch_colors(an.archs)
    none = []
    for a in an.archs:
        col = colors[a]
        ms = [m for m in an.verdicts[a].minima if finite(m.C)]
        for interior in (True, False):
            sel = [m for m in ms if m.interior == interior]
            if sel:
                ax.scatter([m.C for m in sel], [m.N_opt for m in sel], s=30, marker="D",
                           facecolors=col if interior else "white", edgecolors=[col],
                           linewidths=1.2, zorder=4)
        al = an.verdicts[a].allocation
        if al is None:
            none.append(a)
            continue
        ins = [m for m in ms if m.interior]
        lnC = np.log([m.C for m in ins])
        slope, icpt = np.polyfit(lnC, np.log([m.N_opt for m in ins]), 1)
        grid = np.linspace(lnC.min(), lnC.max(), 20)
        label = f"{a}: a = {fmt_est(al['N_opt_exponent'])}"
        ax.plot(np.exp(grid), np.exp(icpt + slope * grid), color=col, lw=1.4, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("N_opt ∝ C^a (Approach 2)", fontsize=10)
    ax.set_xlabel("compute C at the minimum [FLOPs]")
    ax.set_ylabel("N_opt")
    ax.grid(True, alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return none


def fig_isoflop(an: Analysis) -> tuple[bytes, str]:
    """Per arch: every point of every budget, the fitted parabola (dashed) and its minimum
    with interval bars; edge minima hollow. A last panel: N_opt vs C per arch with the
    allocation exponent's line."""
    fig, axes = panels(len(an.archs) + 1)
    no_line = _allocation_panel(an, axes[-1])
    colors = _budget_colors(an.budgets)
    no_bar, no_min = [], []
    t = an.table
    for ax, a in zip(axes, an.archs):
        sub = t[t["arch"] == a]
        mins = {m.budget: m for m in an.verdicts[a].minima}
        for b in an.budgets:
            pts = sub[sub["_budget"] == b]
            if pts.empty:
                continue
            col = colors[b]
            ax.scatter(pts["N"], pts["loss"], s=14, color=col, alpha=0.7, linewidths=0,
                       label=f"{fmt_flops(b)}")
            m = mins.get(b)
            if m is None:
                no_min.append(f"{a} at {fmt_flops(b)}")
                continue
            tt = np.linspace(m.x.min() - m.x_mid, m.x.max() - m.x_mid, 80)
            c2, c1, c0 = m.coef
            ax.plot(np.exp(tt + m.x_mid), c2 * tt * tt + c1 * tt + c0, color=col, lw=1, ls="--")
            xlo, xhi, okx = _err(m.N_opt, m.N_ci)
            ylo, yhi, oky = _err(m.L_opt, m.L_ci)
            if not (okx and oky):
                no_bar.append(f"{a} at {fmt_flops(b)}")
            ax.errorbar([m.N_opt], [m.L_opt], xerr=[[xlo], [xhi]], yerr=[[ylo], [yhi]],
                        fmt="none", ecolor=col, elinewidth=1.2, capsize=3)
            face = col if m.interior else "white"
            ax.scatter([m.N_opt], [m.L_opt], s=55, marker="D", facecolors=[face],
                       edgecolors=[col], linewidths=1.4, zorder=4)
            if not m.interior:
                ax.annotate("edge", (m.N_opt, m.L_opt), textcoords="offset points",
                            xytext=(5, 5), fontsize=8, color=col)
        _log_panel(ax, a, "parameters N", "budget [FLOPs]")
        ax.xaxis.set_minor_formatter(_ticks())
    axes[0].set_ylabel("validation loss [nats/token]")
    fig.tight_layout()
    caption = ("IsoFLOP curves: every run (seeds as separate points) by budget, the parabola in "
               "ln N fitted through them (dashed), and its minimum (diamond) with 95% "
               "intervals of N_opt and L_opt; hollow and labelled 'edge': minima at the edge of "
               "the size grid, left out of the headline.")
    caption += (" Last panel: N_opt against C at every minimum (hollow: at the edge) and, per "
                "architecture with interior minima at two budgets or more, the least-squares "
                "line N_opt ∝ C^a through them, a with its 95% interval in the legend.")
    if no_line:
        caption += f" No line (fewer than two interior budgets): {', '.join(no_line)}."
    if no_min:
        caption += f" No parabola (fewer than 3 sizes): {', '.join(no_min)}."
    if no_bar:
        caption += f" Interval undefined, drawn without a bar: {', '.join(no_bar)}."
    return to_png(fig), caption


def _band(an: Analysis, arch: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """2.5/97.5 percentiles of the joint-fit curve over the bootstrap replicates."""
    j = an.joint
    if j is None or j.boot is None:
        return None
    boot = j.boot
    if len(boot) > 1000:  # a band needs no more; keeps the report fast
        boot = boot[np.linspace(0, len(boot) - 1, 1000).astype(int)]
    par = np.array([j.params(arch, th) for th in boot])  # (R, 3): E, k, gamma
    ok = np.isfinite(par).all(axis=1)
    if ok.sum() < 10:
        return None
    E, k, g = par[ok, 0:1], par[ok, 1:2], par[ok, 2:3]
    with np.errstate(over="ignore", invalid="ignore"):
        curves = E + k * grid[None, :] ** -g  # (R, G)
    lo, hi = np.nanpercentile(curves, [2.5, 97.5], axis=0)
    return lo, hi


def fig_frontier(an: Analysis) -> tuple[bytes, str]:
    """Interior minima vs compute with intervals, edge minima hollow, and each arch's
    joint-fit curve with a 95% bootstrap band."""
    plt = pyplot()
    colors = arch_colors(an.archs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    mins = [m for a in an.archs for m in an.verdicts[a].minima]
    Cs = [m.C for m in mins if finite(m.C)]
    no_curve = []
    if Cs:
        grid = np.geomspace(min(Cs) / 1.5, max(Cs) * 1.5, 120)
    for a in an.archs:
        col = colors[a]
        am = [m for m in an.verdicts[a].minima if finite(m.C)]
        for interior in (True, False):
            sel = [m for m in am if m.interior == interior]
            if not sel:
                continue
            C = np.array([m.C for m in sel])
            L = np.array([m.L_opt for m in sel])
            bars = np.array([_err(m.L_opt, m.L_ci)[:2] for m in sel]).T
            ax.errorbar(C, L, yerr=bars, fmt="none", ecolor=col, elinewidth=1, capsize=2.5)
            ax.scatter(C, L, s=36, facecolors=col if interior else "white", edgecolors=[col],
                       linewidths=1.3, zorder=4,
                       label=a if interior else f"{a}: edge minima (excluded)")
        if an.joint is not None and a in an.joint.design.archs and Cs:
            ax.plot(grid, an.joint.predict(a, grid), color=col, lw=1.5)
            band = _band(an, a, grid)
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=col, alpha=0.15, linewidth=0)
            else:
                no_curve.append(f"{a} (no band: too few defined replicates)")
        else:
            no_curve.append(a)
    ax.set_xscale("log")
    ax.set_xlabel("compute C at the minimum [FLOPs]")
    ax.set_ylabel("IsoFLOP minimum loss L_opt [nats/token]")
    ax.grid(True, alpha=0.25)
    if mins:
        ax.legend(fontsize=7.5)
    else:
        ax.text(0.5, 0.5, "no IsoFLOP minimum", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    caption = ("Frontier: each architecture's IsoFLOP minima (L_opt vs C at the vertex, 95% "
               "intervals; hollow: at the edge of the size grid, excluded from the fits) and "
               "the joint fit L = E + k (m C)^-γ per architecture (line) with its 95% "
               "bootstrap band. The loss gaps of Headline 1 are the vertical distances between "
               "two architectures' minima at one budget (their paired intervals are in the "
               "table only).")
    if no_curve:
        caption += f" No joint-fit curve for: {', '.join(no_curve)}."
    if any(an.verdicts[a].efficiency_withheld for a in an.archs):
        caption += (f" The efficiency factors are withheld: the {an.baseline} has an interior "
                    "minimum at one budget only, so its curve is the other architectures' "
                    "slope through that one point; the lines show the fit, not a verdict.")
    return to_png(fig), caption


def fig_efficiency(an: Analysis) -> tuple[bytes, str]:
    """Forest plot: the joint-fit efficiency factor per arch with its interval (log x), the
    per-budget m(C) beneath it; 'not identifiable' written where there is none."""
    plt = pyplot()
    colors = arch_colors(an.archs)
    n = len(an.archs)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.7 * n))
    vals = [1.0]
    missing, outside = [], []
    for i, a in enumerate(an.archs):
        y = n - 1 - i
        e = an.efficiency_of(a)
        col = colors[a]
        if e is None:
            word = "withheld" if an.verdicts[a].efficiency_withheld else "not identifiable"
            ax.text(1.0, y, word, ha="center", va="center", fontsize=9,
                    color="dimgray", bbox={"fc": "white", "ec": "lightgray"})
            missing.append(f"{a} ({word})")
        else:
            lo, hi, ok = _err(e.estimate, e)
            ax.errorbar([e.estimate], [y], xerr=[[lo], [hi]], fmt="o", color=col, ms=7,
                        capsize=4, elinewidth=2)
            vals += [e.estimate] + ([e.low, e.high] if ok else [])
            label = ("baseline" if a == an.baseline else
                     fmt_est(e) if ok else f"{fmt(e.estimate)} (interval undefined)")
            ax.annotate(label, (e.estimate, y), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=8)
        inv = [x for x in an.verdicts[a].inverted]
        k = 0
        for x in inv:
            if x.status != "ok" or x.value is None or not finite(x.value.estimate):
                if x.status not in ("excluded", "withheld"):
                    outside.append(f"{a} at {fmt_flops(x.budget)} ({x.status})")
                continue
            k += 1
            yy = y - 0.12 - 0.1 * k
            lo, hi, _ = _err(x.value.estimate, x.value)
            ax.errorbar([x.value.estimate], [yy], xerr=[[lo], [hi]], fmt="s", ms=3.5,
                        color=col, alpha=0.45, elinewidth=1, capsize=2)
            vals += [x.value.estimate, x.value.low, x.value.high]
    vals = [v for v in vals if finite(v) and v > 0]
    lo, hi = min(vals + [0.8]), max(vals + [1.25])
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.25, hi * 1.25)
    if hi / lo < 8:  # a narrow axis: more labelled ticks than 1, 2, 5 x 10^k
        from matplotlib.ticker import NullFormatter  # heavy: only when a figure is drawn

        nice = [m * 10.0**k for k in range(-3, 4) for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)]
        ax.set_xticks([t for t in nice if lo / 1.25 <= t <= hi * 1.25])
        ax.xaxis.set_major_formatter(_ticks(plain=True, every=True))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(_ticks(plain=True))
        ax.xaxis.set_minor_formatter(_ticks(plain=True))
    ax.axvline(1.0, color="black", lw=0.8, ls=":")
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(an.archs)))
    ax.set_ylim(-0.9, n - 0.4)
    ax.set_xlabel(f"efficiency factor m vs {an.baseline} (> 1: needs less compute for the "
                  "same loss)")
    ax.grid(True, axis="x", alpha=0.25)
    fig.tight_layout()
    caption = ("Efficiency factors: the joint fit's m per architecture with its 95% interval "
               "(circles, the headline; log axis, dotted line at 1, the baseline at 1 by "
               "definition); small squares beneath: the inverted-frontier multiplier m(C) at "
               "each budget where it is read inside the baseline's support.")
    if missing:
        caption += f" No factor (written in the plot): {', '.join(missing)}."
    if outside:
        caption += f" m(C) not drawn: {', '.join(outside)}."
    caption += (" The conventions' point estimates are in the table only (no intervals).")
    return to_png(fig), caption


def seed_spread(an: Analysis) -> tuple[pd.DataFrame, float]:
    """Deviations of each run's loss from its (arch, budget, N) point's mean, for points
    with 2+ runs, and the pooled seed sd (NaN when there are none)."""
    t = an.table
    key = ["arch", "_budget", "N"]
    n = t.groupby(key)["loss"].transform("size")
    sub = t[n >= 2].copy()
    if sub.empty:
        return sub.assign(dev=[]), math.nan
    sub["dev"] = sub["loss"] - sub.groupby(key)["loss"].transform("mean")
    dof = int((sub.groupby(key).size() - 1).sum())
    return sub, float(math.sqrt((sub["dev"] ** 2).sum() / dof))


def fig_seeds(an: Analysis) -> tuple[bytes, str]:
    """Loss deviations from the mean of their point, one column per arch."""
    plt = pyplot()
    sub, sd = seed_spread(an)
    colors = _budget_colors(an.budgets)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(an.archs) + 2), 3.6))
    if sub.empty:
        ax.text(0.5, 0.5, "no point has two seeds or more:\nthe seed spread is not measured",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        caption = ("Seed spread: not measured, no (arch, budget, size) point of the study has "
                   "two runs or more; the intervals rest on the parabolas' residuals alone.")
        return to_png(fig), caption
    rng = np.random.default_rng(0)
    labelled: set[float] = set()
    for i, a in enumerate(an.archs):
        s = sub[sub["arch"] == a]
        for b in an.budgets:
            sb = s[s["_budget"] == b]
            if sb.empty:
                continue
            x = i + (an.budgets.index(b) - (len(an.budgets) - 1) / 2) * 0.15
            x = x + rng.uniform(-0.03, 0.03, len(sb))
            label = fmt_flops(b) if b not in labelled else None
            labelled.add(b)
            ax.scatter(x, sb["dev"], s=16, color=colors[b], alpha=0.8, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(an.archs)))
    ax.set_xticklabels(an.archs)
    ax.set_ylabel("loss − mean of its point [nats]")
    ax.grid(True, axis="y", alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, title="budget [FLOPs]", title_fontsize=7)
    fig.tight_layout()
    n_pts = sub.groupby(["arch", "_budget", "N"]).ngroups
    caption = (f"Seed spread: at the {n_pts} (arch, budget, size) points with two runs or more, "
               f"each run's loss minus its point's mean; pooled seed sd {fmt(sd)} nats/token "
               f"(the parabolas' residual sd: {fmt(an.noise_sd)}).")
    return to_png(fig), caption


def make_figures(an: Analysis) -> dict[str, tuple[bytes, str]]:
    figs = {}
    if an.lr:
        figs["lr_sweeps"] = fig_lr_sweeps(an)
    figs["isoflop"] = fig_isoflop(an)
    figs["frontier"] = fig_frontier(an)
    figs["efficiency"] = fig_efficiency(an)
    figs["seeds"] = fig_seeds(an)
    return figs
