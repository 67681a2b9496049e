"""``postformer report DIR``: the study's report, rebuilt from its run folders.

Reads ``DIR/results.csv`` (one row per finished run, see ``scaling.results``) and
``DIR/study.yaml`` (the resolved spec: ``name``, ``baseline``, ``budgets``), runs
:func:`postformer.scaling.compare.compare`, and writes

    DIR/report.md          Markdown, figures linked from figures/
    DIR/report.html        one self-contained file: figures embedded as base64 PNG
    DIR/figures/*.png      loss vs compute with fitted frontiers, compute multipliers,
                           loss vs N per budget (IsoFLOP curves when the design has them),
                           loss vs D per size

Nothing is trained. Every number is traceable: the report ends with the table of points,
each linking its run folder (relative to DIR, so the links work wherever DIR is copied).
Every file is written to a temporary name and moved into place, so a reader never sees
half a report.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from postformer.train.fileio import atomic_write

from .compare import Comparison, compare, compare_table, group_budgets

# Each frontier refit costs ~0.1 s on a CPU core (a grid of starts every time), so 100
# replicates keep a ~30-point study's report under 30 s on 2 cores; raise --n-boot for
# final numbers (the percentile bounds move by a few % between 100 and 1000).
DEFAULT_N_BOOT = 100
COMPUTE_LABEL = {"C": "C (the architecture's own FLOP count, arch/flops.py)", "C_6ND": "C = 6ND"}


# --------------------------------------------------------------------------- inputs


def load_results(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``DIR/results.csv`` as a table and ``DIR/study.yaml`` as a dict ({} if absent).

    Raises FileNotFoundError naming the missing file and how to make it."""
    out_dir = Path(out_dir)
    csv_path = out_dir / "results.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: a report needs the study's results table; run "
            f"`postformer study` on the study first (it collects finished runs into it)")
    df = pd.read_csv(csv_path)
    if df.empty:
        raise ValueError(f"{csv_path} has no rows: no run of the study has finished yet")
    spec: dict[str, Any] = {}
    yaml_path = out_dir / "study.yaml"
    if yaml_path.is_file():
        import yaml

        spec = yaml.safe_load(yaml_path.read_text()) or {}
    return df, spec


def _budget_kind(spec: dict[str, Any]) -> str | None:
    budgets = spec.get("budgets")
    if isinstance(budgets, dict) and len(budgets) == 1:
        return next(iter(budgets))
    return None


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: 3 significant digits, scientific notation for big and small."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else ""
    if isinstance(x, (int, np.integer)):
        return f"{x:.3g}" if abs(x) >= 1e6 else str(x)
    if isinstance(x, (float, np.floating)):
        if np.isnan(x):
            return "–"
        if np.isinf(x):
            return "∞" if x > 0 else "-∞"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_iv(iv: Any, digits: int = 3, suffix: str = "") -> str:
    """``estimate [lo, hi]`` from an Interval (or None)."""
    if iv is None:
        return "–"
    return (f"{fmt(iv.estimate, digits)}{suffix} [{fmt(iv.lo, digits)}, "
            f"{fmt(iv.hi, digits)}]")


# --------------------------------------------------------------------------- documents
# The report is built once as a list of blocks and rendered twice (Markdown, HTML), so the
# two files always say the same thing.


@dataclass
class Link:
    text: str
    href: str


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "ul" | "table" | "img"
    text: str = ""
    items: Sequence[Any] = ()  # ul: strings; table: rows of cells (str | Link)
    header: Sequence[str] = ()
    path: str = ""  # img: relative to DIR
    data: bytes = b""  # img: the PNG


def _md_cell(c: Any) -> str:
    s = f"[{c.text}]({c.href})" if isinstance(c, Link) else str(c)
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.items]
            out.append("\n".join(lines))
        elif b.kind == "img":
            out.append(f"![{b.text}]({b.path})\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; }
ul.warn li { color: #8a4b00; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _html_inline(text: str) -> str:
    """Escape, then turn Markdown's `code` and **bold** into tags (all the report uses)."""
    s = html.escape(text)
    parts = s.split("`")
    s = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = s.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(c: Any) -> str:
    if isinstance(c, Link):
        return f'<a href="{html.escape(c.href, quote=True)}">{html.escape(c.text)}</a>'
    return _html_inline(str(c))


def render_html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_html_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif b.kind == "ul":
            cls = ' class="warn"' if b.text == "warn" else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                           for row in b.items)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode(b.data).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.text, quote=True)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>'
                       f"{_html_inline(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none wanted
    import matplotlib.pyplot as plt

    return plt


def _arch_colors(archs: Sequence[str]) -> dict[str, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {a: cycle(i % 10) for i, a in enumerate(archs)}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def fig_loss_vs_compute(cmp: Comparison) -> bytes:
    """Every point, frontier points ringed, and each fitted frontier (dashed where it runs
    past the architecture's own measured compute)."""
    plt = _plt()
    colors = _arch_colors(list(cmp.archs))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    all_C = np.concatenate([r.data[cmp.compute].to_numpy(float) for r in cmp.archs.values()])
    grid = np.geomspace(all_C.min() / 1.3, all_C.max() * 1.3, 200)
    from .fit import frontier_mask

    for arch, res in cmp.archs.items():
        C = res.data[cmp.compute].to_numpy(float)
        L = res.data[cmp.loss].to_numpy(float)
        col = colors[arch]
        mask = frontier_mask(C, L)
        ax.scatter(C[~mask], L[~mask], s=14, color=col, alpha=0.35, linewidths=0)
        ax.scatter(C[mask], L[mask], s=30, color=col, edgecolors="black", linewidths=0.6,
                   label=f"{arch} ({len(C)} runs)")
        if res.frontier is not None:
            inside = (grid >= C.min()) & (grid <= C.max())
            pred = np.asarray(res.frontier.predict(grid), float)
            ax.plot(grid[inside], pred[inside], color=col, lw=1.6)
            ax.plot(grid, np.where(inside, np.nan, pred), color=col, lw=1, ls="--")
            g = res.intervals.get("frontier.gamma")
            txt = f"{arch}: L = {fmt(res.frontier.E)} + {fmt(res.frontier.k)}·C^-{fmt(res.frontier.gamma)}"
            if g is not None:
                txt += f"  (γ 95%: {fmt(g.lo)}–{fmt(g.hi)})"
            ax.plot([], [], color=col, lw=1.6, label=txt)
    ax.set_xscale("log")
    ax.set_xlabel(f"compute {cmp.compute} [FLOPs]")
    ax.set_ylabel(_loss_label(cmp.loss))
    ax.set_title("Loss vs compute; ringed: frontier points; lines: fitted frontiers")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper right")
    return _png(fig)


def _loss_label(loss: str) -> str:
    return {"loss": "validation loss [nats/token]", "bpb": "validation bits per byte"}.get(
        loss, loss)


def fig_multiplier(cmp: Comparison) -> bytes:
    """Compute multiplier vs C with 95% bootstrap intervals; hollow markers: the baseline's
    frontier is read outside its measured compute (extrapolated)."""
    plt = _plt()
    colors = _arch_colors(list(cmp.archs))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    finite_hi = [r.multiplier.hi for rows in cmp.budgets.values() for r in rows
                 if np.isfinite(r.multiplier.hi)]
    cap = max(finite_hi) * 1.5 if finite_hi else 10.0
    n_arch = max(len(cmp.budgets), 1)
    for i, (arch, rows) in enumerate(cmp.budgets.items()):
        rows = [r for r in rows if np.isfinite(r.multiplier.estimate)]
        if not rows:
            continue
        # a small horizontal offset per arch keeps overlapping error bars apart
        shift = 1.0 + 0.04 * (i - (n_arch - 1) / 2)
        C = np.array([r.C for r in rows]) * shift
        m = np.array([r.multiplier.estimate for r in rows])
        lo = np.array([r.multiplier.lo for r in rows])
        hi = np.minimum(np.array([r.multiplier.hi for r in rows]), cap)
        extra = np.array([r.extrapolated for r in rows])
        col = colors[arch]
        ax.errorbar(C, m, yerr=[np.clip(m - lo, 0, None), np.clip(hi - m, 0, None)], fmt="none",
                    ecolor=col, elinewidth=1, capsize=2.5, alpha=0.8)
        ax.scatter(C[~extra], m[~extra], color=col, s=28, zorder=3, label=arch)
        if extra.any():
            ax.scatter(C[extra], m[extra], facecolors="white", edgecolors=[col], s=28, zorder=3,
                       label=f"{arch} (extrapolated)")
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    # label 1, 2 and 5 times powers of ten only: every minor tick labelled overlaps
    def label(y: float, _: Any) -> str:
        mantissa = y / 10 ** np.floor(np.log10(y))
        return f"{y:g}x" if np.isclose(mantissa, [1, 2, 5]).any() else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))
    ax.tick_params(axis="y", which="minor", labelsize=8)
    ax.set_xlabel(f"compute of the architecture, {cmp.compute} [FLOPs]")
    ax.set_ylabel(f"compute multiplier vs {cmp.baseline}")
    ax.set_title(f"Compute the {cmp.baseline} needs for the same loss, ÷ C  (>1: more efficient)",
                 fontsize=10)
    ax.grid(True, alpha=0.25)
    if cmp.budgets:
        ax.legend(fontsize=8)
    return _png(fig)


def _grid_of_axes(n: int, width: float = 4.2, height: float = 3.4):
    plt = _plt()
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def fig_loss_vs_n(cmp: Comparison, budget_col: str, isoflop: bool) -> bytes:
    """Loss vs N, one curve per budget: IsoFLOP parabolas (Approach 2) where the design has
    them, else one line per token budget with Approach 3's prediction dashed."""
    plt = _plt()
    fig, axes = _grid_of_axes(len(cmp.archs))
    for ax, (arch, res) in zip(axes, cmp.archs.items()):
        df = res.data
        labels = group_budgets(df[budget_col].to_numpy(float))
        uniq = np.unique(labels)
        cmap = plt.get_cmap("viridis")
        for j, lab in enumerate(uniq):
            col = cmap(j / max(len(uniq) - 1, 1))
            sub = df[labels == lab].sort_values(cmp.params)
            N = sub[cmp.params].to_numpy(float)
            ax.plot(N, sub[cmp.loss], "o-", color=col, ms=4, lw=1,
                    label=f"{'C' if isoflop else 'D'} ≈ {fmt(lab, 2)}")
            grid = np.geomspace(N.min() / 1.2, N.max() * 1.2, 60)
            if isoflop and res.isoflop is not None:
                rec = _isoflop_record(res.isoflop, lab)
                if rec is not None and rec.get("coef") is not None:
                    ax.plot(grid, np.polyval(rec["coef"], np.log(grid)), color=col, lw=0.9,
                            ls="--")
                    ax.plot(rec["N_opt"], rec["L_opt"], marker="*", color=col, ms=10,
                            markeredgecolor="black", markeredgewidth=0.5)
            elif not isoflop and res.parametric is not None and cmp.params == "N":
                D = float(np.exp(np.mean(np.log(sub["D"].to_numpy(float)))))
                ax.plot(grid, res.parametric.predict(grid, D), color=col, lw=0.9, ls="--")
        ax.set_xscale("log")
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel(f"parameters {cmp.params}")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=6.5, title=("FLOP budget" if isoflop else "token budget"),
                  title_fontsize=7)
    axes[0].set_ylabel(_loss_label(cmp.loss))
    what = ("IsoFLOP curves: dashed, fitted parabolas in log N; ★ the fitted optimum" if isoflop
            else "Loss vs N per token budget; dashed: Approach 3 fit")
    fig.suptitle(what, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def fig_loss_vs_d(cmp: Comparison) -> bytes:
    """Loss vs D, one line per model size, Approach 3's prediction dashed."""
    plt = _plt()
    fig, axes = _grid_of_axes(len(cmp.archs))
    for ax, (arch, res) in zip(axes, cmp.archs.items()):
        df = res.data
        sizes = np.unique(df[cmp.params].to_numpy(float))
        cmap = plt.get_cmap("plasma")
        for j, n in enumerate(sizes):
            col = cmap(0.85 * j / max(len(sizes) - 1, 1))
            sub = df[df[cmp.params] == n].sort_values("D")
            D = sub["D"].to_numpy(float)
            name = str(sub["size"].iloc[0]) if "size" in sub else fmt(n, 2)
            ax.plot(D, sub[cmp.loss], "o-", color=col, ms=4, lw=1, label=f"{name} ({fmt(n, 2)})")
            if res.parametric is not None and cmp.params == "N" and len(D) > 0:
                grid = np.geomspace(D.min() / 1.2, D.max() * 1.2, 60)
                ax.plot(grid, res.parametric.predict(n, grid), color=col, lw=0.9, ls="--")
        ax.set_xscale("log")
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel("tokens D")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=6.5, title=f"size ({cmp.params})", title_fontsize=7)
    axes[0].set_ylabel(_loss_label(cmp.loss))
    fig.suptitle("Loss vs D per model size; dashed: Approach 3 fit", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _isoflop_record(fit: Any, budget: float) -> dict[str, Any] | None:
    """The IsoFLOP fit's record for the budget nearest ``budget`` (within 5%), as a dict
    with C, N_opt, L_opt and coef (parabola in log N, highest power first) when known."""
    best = None
    for rec in getattr(fit, "budgets", []):
        d = rec if isinstance(rec, dict) else vars(rec)
        if abs(np.log(d["C"] / budget)) < 0.05 and (
                best is None or abs(d["C"] - budget) < abs(best["C"] - budget)):
            best = d
    if best is None:
        return None
    coef = best.get("coef", best.get("coeffs", best.get("parabola")))
    return {**best, "coef": None if coef is None else np.asarray(coef, float)}


# --------------------------------------------------------------------------- the report


def summary_lines(cmp: Comparison) -> list[str]:
    """One plain sentence per non-baseline architecture, at its largest measured budget."""
    base = cmp.baseline
    lines = []
    for arch in cmp.others:
        rows = cmp.budgets.get(arch) or []
        if not rows:
            reason = next((w for w in cmp.archs[arch].warnings if "no comparison" in w
                           or "frontier" in w), "no frontier fit")
            lines.append(f"**{arch}**: no compute multiplier against the {base} ({reason}).")
            continue
        r = rows[-1]
        finite = bool(np.isfinite(r.multiplier.estimate))
        if finite:
            line = f"At {fmt(r.C, 2)} FLOPs, **{arch}** {_multiplier_phrase(r, base)}"
        else:
            line = (f"At {fmt(r.C, 2)} FLOPs, **{arch}** reaches loss {fmt(r.loss_arch)}, below "
                    f"anything the {base}'s fitted frontier ever reaches: multiplier unbounded "
                    f"(∞; 95% interval from {fmt(r.multiplier.lo)}).")
        if r.extrapolated or not finite:
            # also the largest budget that needs no extrapolation and gives a finite number
            inside = [x for x in rows if not x.extrapolated and np.isfinite(x.multiplier.estimate)]
            if r.extrapolated:
                line += f" Extrapolated: the {base} was not measured at the compute this needs"
                line += ";" if inside else "."
            if inside:
                line += (f" at {fmt(inside[-1].C, 2)} FLOPs, the largest budget within the "
                         f"{base}'s range, {arch} "
                         f"{_multiplier_phrase(inside[-1], base, short=True)}.")
        lines.append(line)
    return lines


def _multiplier_phrase(r: Any, base: str, short: bool = False) -> str:
    m, rel = r.multiplier, r.relative_compute
    text = (f"reaches the {base}'s loss with **{fmt(rel.estimate, 2)}x** [{fmt(rel.lo, 2)}, "
            f"{fmt(rel.hi, 2)}] of its compute")
    if short:
        return text
    return (f"{text}: the {base} needs {fmt(m.estimate, 3)}x [{fmt(m.lo, 3)}, {fmt(m.hi, 3)}] "
            f"the compute for loss {fmt(r.loss_arch)}; loss gap at equal compute "
            f"{fmt(r.gap.estimate, 3)} [{fmt(r.gap.lo, 3)}, {fmt(r.gap.hi, 3)}].")


def _parameter_rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["arch", "points", "frontier γ", "frontier E", "A3 α", "A3 β", "A3 a (N∝C^a)",
              "A3 b (D∝C^b)", "A3 E", "A2 a", "A2 b"]
    rows = []
    for arch, res in cmp.archs.items():
        def cell(fit_name: str, name: str, res=res) -> str:
            fit = getattr(res, fit_name)
            if fit is None:
                return "–"
            iv = res.intervals.get(f"{fit_name}.{name}")
            return fmt_iv(iv) if iv is not None else fmt(float(getattr(fit, name)))

        rows.append([arch, str(res.n_points), cell("frontier", "gamma"), cell("frontier", "E"),
                     cell("parametric", "alpha"), cell("parametric", "beta"),
                     cell("parametric", "a"), cell("parametric", "b"), cell("parametric", "E"),
                     cell("isoflop", "a"), cell("isoflop", "b")])
    return header, rows


def build_blocks(cmp: Comparison, df: pd.DataFrame, spec: dict[str, Any], name: str,
                 figures: dict[str, tuple[str, bytes]], out_dir: Path) -> list[Block]:
    base = cmp.baseline
    blocks = [Block("h1", f"Scaling report: {name}")]
    blocks.append(Block("h2", "Summary"))
    blocks.append(Block("ul", items=summary_lines(cmp)))
    n_runs = df["run_dir"].nunique() if "run_dir" in df else len(df)
    blocks.append(Block("p", (
        f"Baseline: **{base}**. Compute: {COMPUTE_LABEL.get(cmp.compute, cmp.compute)}; "
        f"parameters: `{cmp.params}`; loss: {_loss_label(cmp.loss)}. {len(df)} points from "
        f"{n_runs} run folders, {len(cmp.archs)} architectures. The compute multiplier at C "
        f"is C_{base}(L_arch(C)) / C, read off the fitted frontiers L(C) (> 1: the "
        f"architecture is more compute-efficient). Brackets are 95% bootstrap intervals "
        f"({cmp.n_boot} resamples of each architecture's points, every frontier refitted; "
        f"seed {cmp.seed}). Rebuild with `postformer report {out_dir}`.")))

    blocks.append(Block("h2", "Warnings"))
    warn = [f"**{a}**: {w}" for a, ws in cmp.warnings.items() for w in ws]
    if warn:
        blocks.append(Block("ul", "warn", items=warn))
    else:
        blocks.append(Block("p", "None: every fit converged, intervals are narrower than their "
                                 "estimates, and the extrapolation checks hold."))

    blocks.append(Block("h2", "Figures"))
    for _key, (rel, png) in figures.items():
        blocks.append(Block("img", FIGURE_CAPTIONS[_key], path=rel, data=png))

    blocks.append(Block("h2", f"Compute multiplier and loss gap against {base}"))
    table = compare_table(cmp)
    if table.empty:
        blocks.append(Block("p", "No comparison: see the warnings."))
    else:
        rows = [[r.arch, fmt(r.C), fmt(r.loss_arch), fmt(r.loss_base),
                 f"{fmt(r.multiplier)} [{fmt(r.multiplier_lo)}, {fmt(r.multiplier_hi)}]",
                 f"{fmt(r.gap)} [{fmt(r.gap_lo)}, {fmt(r.gap_hi)}]",
                 "yes" if r.extrapolated else ""] for r in table.itertuples()]
        blocks.append(Block("table", header=["arch", "C", "L_arch(C) fit", f"L_{base}(C) fit",
                                             "multiplier [95%]", "loss gap [95%]",
                                             "extrapolated"], items=rows))

    blocks.append(Block("h2", "Fitted parameters"))
    blocks.append(Block("p", (
        "Frontier: L(C) = E + k·C^-γ on each architecture's lower envelope. Approach 3 (A3): "
        "L = E + A/N^α + B/D^β, Huber on log loss; a = β/(α+β) and b = α/(α+β) are the "
        "compute-optimal exponents of N and D. Approach 2 (A2): IsoFLOP parabolas, point "
        "estimates only. – : not fitted (see warnings).")))
    header, rows = _parameter_rows(cmp)
    blocks.append(Block("table", header=header, items=rows))

    iso = [(a, r.isoflop) for a, r in cmp.archs.items() if r.isoflop is not None]
    if iso:
        blocks.append(Block("h2", "IsoFLOP optima (Approach 2)"))
        rows = []
        for arch, fit in iso:
            for rec in fit.budgets:
                d = rec if isinstance(rec, dict) else vars(rec)
                rows.append([arch, fmt(d.get("C")), fmt(d.get("N_opt")), fmt(d.get("D_opt")),
                             fmt(d.get("L_opt"))])
        blocks.append(Block("table", header=["arch", "C", "N_opt", "D_opt", "L_opt"],
                            items=rows))

    blocks.append(Block("h2", "Extrapolation check"))
    blocks.append(Block("p", (
        "Each fit is redone without the largest model and asked to predict it. Approach 3 "
        "predicts every held-out point; the frontier predicts the held-out points on the "
        "full data's frontier. Error = (predicted - measured) / measured.")))
    rows = []
    for arch, res in cmp.archs.items():
        for ex in res.extrapolation:
            rows.append([arch, ex.method, fmt(ex.held_out_N), str(ex.n_train),
                         str(len(ex.measured)), f"{100 * ex.mean_rel_error:+.2f}%",
                         f"{100 * ex.max_abs_rel_error:.2f}%"])
    if rows:
        blocks.append(Block("table", header=["arch", "fit", "held-out N", "train points",
                                             "held-out points", "mean error",
                                             "max |error|"], items=rows))
    else:
        blocks.append(Block("p", "Not possible: no architecture has two sizes or more."))

    blocks.append(Block("h2", "Points"))
    blocks.append(Block("p", "Every point of every fit, linked to its run folder."))
    cols = ["arch", "size", "seed", "N", "D", cmp.compute, "loss", "bpb", "kind"]
    cols = [c for c in dict.fromkeys(cols) if c in df.columns]
    rows = []
    for _, r in df.sort_values(["arch", cmp.params, "D"], kind="stable").iterrows():
        row: list[Any] = [fmt(r[c]) if c != "loss" and c != "bpb" else f"{r[c]:.4f}"
                          for c in cols]
        if "run_dir" in df.columns:
            row.append(Link(str(r["run_dir"]), str(r["run_dir"]).replace(os.sep, "/")))
        rows.append(row)
    blocks.append(Block("table", header=cols + (["run_dir"] if "run_dir" in df else []),
                        items=rows))
    return blocks


FIGURE_CAPTIONS = {
    "loss_vs_compute": "Loss vs compute per architecture, with fitted frontiers L(C) (log x).",
    "multiplier": "Compute multiplier against the baseline at each measured budget, with 95% "
                  "bootstrap intervals (hollow: extrapolated).",
    "loss_vs_n": "Loss vs parameters, one curve per budget.",
    "loss_vs_d": "Loss vs tokens, one curve per model size.",
}


def write_report(out_dir: str | os.PathLike, *, baseline: str | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, compute: str = "C",
                 params: str = "N", loss: str = "loss") -> dict[str, Path]:
    """Build ``DIR/report.md``, ``DIR/report.html`` and ``DIR/figures/*.png`` from
    ``DIR/results.csv`` and ``DIR/study.yaml``; returns name -> path of every file written
    (``"md"``, ``"html"``, and one entry per figure)."""
    out_dir = Path(out_dir)
    df, spec = load_results(out_dir)
    baseline = baseline or spec.get("baseline")
    name = str(spec.get("name") or out_dir.resolve().name)
    # IsoFLOP budgets: the study's nominal FLOP budget per row (6 N D_asked; D was asked
    # as C / (6N)), which groups exactly even where step rounding moved D a little
    budget = None
    if _budget_kind(spec) == "flops" and {"N", "budget_tokens"} <= set(df.columns):
        df = df.assign(budget_flops=6.0 * df["N"] * df["budget_tokens"])
        budget = "budget_flops"
    cmp = compare(df, baseline=baseline, compute=compute, params=params, loss=loss,
                  n_boot=n_boot, seed=seed, budget=budget)

    isoflop = budget is not None or any(r.isoflop is not None for r in cmp.archs.values())
    budget_col = budget or (compute if isoflop else
                            ("budget_tokens" if "budget_tokens" in df.columns else "D"))
    pngs = {
        "loss_vs_compute": fig_loss_vs_compute(cmp),
        "multiplier": fig_multiplier(cmp),
        "loss_vs_n": fig_loss_vs_n(cmp, budget_col, isoflop),
        "loss_vs_d": fig_loss_vs_d(cmp),
    }
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    figures: dict[str, tuple[str, bytes]] = {}
    for key, png in pngs.items():
        path = fig_dir / f"{key}.png"
        atomic_write(path, png)
        written[key] = path
        figures[key] = (f"figures/{key}.png", png)

    blocks = build_blocks(cmp, df, spec, name, figures, out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write(md, render_markdown(blocks).encode())
    atomic_write(page, render_html(blocks, f"Scaling report: {name}").encode())
    written["md"], written["html"] = md, page
    return written


def report_main(argv: list[str]) -> None:
    """``postformer report DIR [--baseline NAME] [--n-boot N] [--seed S] [--compute C|C_6ND]
    [--params N|N_non_emb]``."""
    parser = argparse.ArgumentParser(
        prog="postformer report",
        description="Rebuild a study's report (report.md, report.html, figures/) from "
                    "DIR/results.csv and DIR/study.yaml, without training anything.")
    parser.add_argument("dir", metavar="DIR", help="the study folder")
    parser.add_argument("--baseline", default=None,
                        help="architecture to compare against (default: study.yaml's "
                             "baseline, else transformer, else the first)")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT,
                        help=f"bootstrap resamples (default {DEFAULT_N_BOOT})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--compute", choices=["C", "C_6ND"], default="C",
                        help="compute column: the architecture's own FLOP count (C, default) "
                             "or 6ND")
    parser.add_argument("--params", choices=["N", "N_non_emb"], default="N",
                        help="parameter column (default N, embeddings included)")
    args = parser.parse_args(argv)
    out_dir = Path(args.dir)
    if not (out_dir / "results.csv").is_file():
        parser.error(f"{out_dir / 'results.csv'} not found; a report needs the study's "
                     "results table: run `postformer study` on the study first")
    try:
        written = write_report(out_dir, baseline=args.baseline, n_boot=args.n_boot,
                               seed=args.seed, compute=args.compute, params=args.params)
    except ValueError as err:  # an unknown baseline, an empty table, a missing column
        parser.error(str(err))
    print(f"postformer report: wrote {written['md']} and {written['html']} "
          f"({len(written) - 2} figures)", file=sys.stderr)
