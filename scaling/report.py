"""``postformer report DIR``: the verdict of a study, rebuilt from its results table.

Reads ``DIR/results.csv`` (``scaling.table``; rebuilt first by ``scaling.results`` when the
folder has ``runs/`` or ``tune/``), and, where present, ``DIR/study.yaml`` (``name``, ``baseline``) and
``DIR/scope.json`` (corpus, tokenizer, window, validation set, protocol: written by the
runner). Runs :func:`postformer.scaling.analysis.analyse` once and writes

    DIR/report.json        the machine-readable verdict (strict JSON: undefined is null)
    DIR/report.md          Markdown, figures linked from figures/
    DIR/report.html        one self-contained file: figures embedded as base64 PNG
    DIR/figures/*.png      LR sweeps, IsoFLOP parabolas, the frontier with the joint fit,
                           the efficiency forest plot, the seed spread

One convention everywhere: the efficiency factor m, the compute the baseline needs for an
architecture's loss divided by the compute the architecture needs (> 1: the architecture
needs less). The summary is the joint fit's m over every interior IsoFLOP minimum, never
the number of a single budget. Nothing is trained; every point is listed at the end, linked
to its run folder. Every file is written to a temporary name and moved into place, so a
reader never sees half a report.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from postformer.train.fileio import atomic_write

from .analysis import DEFAULT_N_BOOT, Analysis, ArchVerdict, Estimate, Minimum, analyse
from .table import ResultsError, read_results

__all__ = ["DEFAULT_N_BOOT", "write_report", "report_main", "build_report", "fmt"]


# --------------------------------------------------------------------------- inputs


def load_inputs(out_dir: Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """``DIR/results.csv`` (checked by ``read_results``), ``DIR/study.yaml`` and
    ``DIR/scope.json`` as dicts ({} where absent)."""
    csv_path = out_dir / "results.csv"
    if not csv_path.is_file():
        raise ResultsError(f"{csv_path} not found: a report needs the study's results table "
                           "(run `postformer study` on the study first, or put a results.csv "
                           "with columns arch, N, D, C, loss there)")
    df = read_results(csv_path)
    spec: dict[str, Any] = {}
    if (out_dir / "study.yaml").is_file():
        import yaml

        loaded = yaml.safe_load((out_dir / "study.yaml").read_text())
        spec = loaded if isinstance(loaded, dict) else {}
    scope: dict[str, Any] = {}
    if (out_dir / "scope.json").is_file():
        loaded = json.loads((out_dir / "scope.json").read_text())
        scope = loaded if isinstance(loaded, dict) else {}
    return df, spec, scope


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: 3 significant digits, scientific notation for big and small."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
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


def _fixed(x: float, spec: str) -> str:
    return f"{x:{spec}}" if x is not None and math.isfinite(x) else "–"


def fmt_sig(x: float) -> str:
    """3 significant digits, trailing zeros kept (an interval's ends line up: 1.80, 2.07)."""
    if not math.isfinite(x) or x == 0 or not 1e-3 <= abs(x) < 1e5:
        return fmt(x)
    return f"{x:#.3g}".rstrip(".")


def fmt_est(e: Estimate | None, spec: str | None = None) -> str:
    """``estimate [low, high]``; ``spec`` a format spec (e.g. ``+.4f``), else 3 significant
    digits. The summary and the tables format an estimate with this one function."""
    if e is None:
        return "–"
    f = (lambda x: _fixed(x, spec)) if spec else fmt_sig
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return f"{f(e.estimate)} [interval undefined: {e.n_ok} replicates defined]"
    return f"{f(e.estimate)} [{f(e.low)}, {f(e.high)}]"


def fmt_flops(c: float) -> str:
    return f"{c:.1e}" if math.isfinite(c) else "–"


def _ceil_sig(x: float, sig: int = 2) -> float:
    """x rounded up to ``sig`` significant digits."""
    if not x > 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x)) - sig + 1
    return math.ceil(x / 10**e) * 10**e


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _jsonable(x: Any) -> Any:
    """Plain JSON types, non-finite floats as None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _est_dict(e: Estimate | None, mc: bool = False) -> dict[str, Any]:
    if e is None:
        d: dict[str, Any] = {"estimate": None, "low": None, "high": None}
        return {**d, "mc_error": None} if mc else d
    d = e.as_dict()
    return {**d, "mc_error": e.mc_error} if mc else d


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
            out.append(f"![{b.path}]({b.path})\n\n*{b.text}*")
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
            out.append(f'<figure><img alt="{html.escape(b.path, quote=True)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>'
                       f"{_html_inline(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the verdict in words


def _why_no_efficiency(an: Analysis, arch: str) -> str:
    """Why ``arch``'s efficiency factor is not identifiable (empty when it has one)."""
    base = an.baseline
    v = an.verdicts[arch]
    if an.joint is None:
        bmins = an.verdicts[base].minima
        if not any(m.interior for m in bmins):
            why = (f"; e.g. at {fmt_flops(bmins[0].budget)} FLOPs {bmins[0].reason}" if bmins
                   else ": no budget has enough sizes for a parabola")
            return (f"the {base} has no interior IsoFLOP minimum (its optimum "
                    f"lies at the edge of the size grid at every budget{why})")
        w = next((w for w in an.warnings if w.startswith("joint fit:")), "")
        return w.removeprefix("joint fit: ") or "there is no joint fit"
    if arch not in an.joint.design.archs:
        return (f"{arch} has no interior IsoFLOP minimum (every budget's "
                "optimum lies at the edge of its size grid or has too few sizes)")
    if v.efficiency is None or not _finite(v.efficiency.estimate):
        return "the joint fit's exponent is not positive"
    return ""


def _efficiency_of(an: Analysis, arch: str) -> Estimate | None:
    """The headline efficiency factor: 1 for the baseline, else the joint fit's (None when
    there is none)."""
    if arch == an.baseline:
        return Estimate(1.0, 1.0, 1.0, 0.0, an.n_boot)
    e = an.verdicts[arch].efficiency
    return e if e is not None and _finite(e.estimate) else None


def verdict_sentence(an: Analysis, arch: str) -> str:
    """One plain sentence for a non-baseline arch: the joint-fit efficiency factor in words,
    the exponent test, and any note. Starts with the arch's name."""
    base = an.baseline
    v = an.verdicts[arch]
    e = _efficiency_of(an, arch)
    if e is None:
        return (f"{arch}: no efficiency factor against the {base} (not identifiable): "
                f"{_why_no_efficiency(an, arch)}.")
    m = fmt_est(e)
    if not (_finite(e.low) and _finite(e.high)):
        words = f"has efficiency m = {m} against the {base}"
    elif e.low > 1:
        words = f"reaches the {base}'s loss with less compute: efficiency m = {m}"
    elif e.high < 1:
        words = f"needs more compute than the {base} for the same loss: efficiency m = {m}"
    else:
        words = f"is not distinguishable from the {base}: efficiency m = {m}"
    extra = []
    if v.exponent_words == "not testable with these budgets":
        extra.append("whether the exponents differ is not testable with these budgets")
    elif v.exponent_words:
        extra.append(v.exponent_words)
    if v.efficiency_note:
        extra.append(f"note: {v.efficiency_note}")
    return f"{arch} {words}" + ("; " + "; ".join(extra) if extra else "") + "."


def _seed_counts(an: Analysis) -> pd.Series:
    """Runs per (arch, budget, N) point of the fitted table."""
    return an.table.groupby(["arch", "_budget", "N"]).size()


def scope_text(an: Analysis, scope: dict[str, Any]) -> str:
    """The scope of the verdict in one line, from scope.json where present, else the table."""
    parts = []
    corpus, tok = scope.get("corpus"), scope.get("tokenizer")
    if corpus:
        parts.append(f"{corpus} ({tok} tokens)" if tok else str(corpus))
    elif tok:
        parts.append(f"{tok} tokens")
    if scope.get("seq_len"):
        parts.append(f"{int(scope['seq_len'])}-token windows")
    b = an.budgets
    sizes = an.table.groupby(["arch", "_budget"])["N"].nunique()
    lo_s, hi_s = int(sizes.min()), int(sizes.max())
    size_words = f"{lo_s}" if lo_s == hi_s else f"{lo_s}–{hi_s}"
    if len(b) == 1:
        parts.append(f"{fmt_flops(b[0])} FLOPs (1 IsoFLOP budget, {size_words} sizes)")
    else:
        parts.append(f"{fmt_flops(min(b))} to {fmt_flops(max(b))} FLOPs ({len(b)} IsoFLOP "
                     f"budgets, {size_words} sizes each)")
    parts.append(f"{len(an.archs)} architectures")
    if scope.get("seeds"):
        parts.append(str(scope["seeds"]))
    else:
        n = _seed_counts(an)
        if n.max() <= 1:
            parts.append("one run (seed) per point")
        else:
            parts.append(f"up to {int(n.max())} seeds at {int((n > 1).sum())} of {len(n)} "
                         "(arch, budget, size) points")
    val = scope.get("validation")
    if isinstance(val, dict) and val.get("tokens"):
        txt = f"validation on {int(val['tokens']):,} held-out tokens"
        if val.get("windows") and val.get("documents"):
            txt += f" ({int(val['windows']):,} windows from {int(val['documents']):,} documents)"
        parts.append(txt)
    text = "Scope: " + ", ".join(parts)
    mc = [an.verdicts[a].efficiency.mc_error for a in an.archs
          if a != an.baseline and _efficiency_of(an, a) is not None]
    mc = [x for x in mc if _finite(x)]
    if mc:
        text += (f"; Monte Carlo error of the interval endpoints < {fmt(_ceil_sig(max(mc)), 2)} "
                 f"({an.n_boot} bootstrap replicates)")
    return text + "."


def _warnings(an: Analysis) -> list[str]:
    extra = an.joint.warnings if an.joint is not None else []
    return list(dict.fromkeys([*an.warnings, *extra]))


# --------------------------------------------------------------------------- report.json


def _joint_params(an: Analysis) -> dict[str, Any] | None:
    """E, k, gamma of the baseline's joint-fit curve with bootstrap intervals."""
    j = an.joint
    if j is None:
        return None
    from .analysis import percentile

    E, k, g = j.params(an.baseline)
    if j.boot is not None:
        reps = np.array([j.params(an.baseline, th) for th in j.boot])  # (R, 3)
        ests = [percentile(x, reps[:, i]) for i, x in enumerate((E, k, g))]
    else:
        ests = [Estimate(x) for x in (E, k, g)]
    return {"E": ests[0], "k": ests[1], "gamma": ests[2]}


def _free_gammas(an: Analysis) -> dict[str, Estimate] | None:
    f = an.free
    if f is None:
        return None
    from .analysis import percentile

    out = {}
    for a in f.design.archs:
        g = f.params(a)[2]
        reps = (np.array([f.params(a, th)[2] for th in f.boot]) if f.boot is not None
                else np.array([]))
        out[a] = percentile(g, reps)
    return out


def _minimum_dict(m: Minimum) -> dict[str, Any]:
    return {"flops": m.budget, "C": m.C, "N_opt": _est_dict(m.N_ci or Estimate(m.N_opt)),
            "L_opt": _est_dict(m.L_ci or Estimate(m.L_opt)), "interior": m.interior,
            "reason": m.reason, "n_sizes": m.n_sizes, "n_seeds": m.n_seeds}


def report_dict(an: Analysis, verdict: list[str], scope: str) -> dict[str, Any]:
    """The machine-readable report (see the module docstring); strict-JSON-ready."""
    archs: dict[str, Any] = {}
    for a in an.archs:
        v: ArchVerdict = an.verdicts[a]
        e = _efficiency_of(an, a)
        d: dict[str, Any] = {
            "efficiency": _est_dict(e),
            "exponent_differs": v.exponent_differs,
            "loss_gap": [g.as_dict() for g in v.loss_gap],
            "lr": an.lr[a].as_dict() if a in an.lr else None,
        }
        note = f"not identifiable: {_why_no_efficiency(an, a)}" if e is None else None
        if note or v.efficiency_note:
            d["efficiency_note"] = note or v.efficiency_note
        d["efficiency_mc_error"] = e.mc_error if e is not None else None
        d["exponent_words"] = v.exponent_words or None
        d["gamma_diff"] = _est_dict(v.gamma_diff, mc=True) if v.gamma_diff else None
        d["minima"] = [_minimum_dict(m) for m in v.minima]
        d["inverted_multiplier"] = [x.as_dict() for x in v.inverted]
        d["conventions"] = dict(v.conventions)
        d["wallclock_efficiency"] = v.wallclock
        d["extrapolation"] = v.extrapolation
        d["n_runs"] = v.n_runs
        d["n_seeds"] = v.n_seeds
        archs[a] = d
    jp = _joint_params(an)
    joint = None
    if an.joint is not None and jp is not None:
        joint = {"E": jp["E"].estimate, "k": jp["k"].estimate, "gamma": jp["gamma"].estimate,
                 "intervals": {n: _est_dict(x) for n, x in jp.items()},
                 "n_points": an.joint.n_points, "n_params": an.joint.design.P,
                 "E_degenerate": bool(an.joint.E_at_floor()), "archs": an.joint.design.archs,
                 "warnings": list(an.joint.warnings)}
    fg = _free_gammas(an)
    out = {
        "baseline": an.baseline,
        "archs": archs,
        "warnings": _warnings(an),
        "verdict": verdict,
        "scope": scope,
        "budgets": an.budgets,
        "n_boot": an.n_boot,
        "bootstrap_seed": an.seed,
        "joint_fit": joint,
        "free_fit": None if fg is None else {a: {"gamma": _est_dict(x)} for a, x in fg.items()},
        "noise_sd": an.noise_sd,
        "held_out_budget": an.held_out,
    }
    return _jsonable(out)


def dumps_strict(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none wanted
    import matplotlib.pyplot as plt

    return plt


def _arch_colors(archs: Sequence[str]) -> dict[str, Any]:
    cycle = _plt().get_cmap("tab10")
    return {a: cycle(i % 10) for i, a in enumerate(archs)}


def _budget_colors(budgets: Sequence[float]) -> dict[float, Any]:
    cmap = _plt().get_cmap("viridis")
    n = max(len(budgets) - 1, 1)
    return {b: cmap(0.85 * i / n) for i, b in enumerate(budgets)}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _panels(n: int, width: float = 4.2, height: float = 3.4, sharey: bool = False):
    plt = _plt()
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
    from matplotlib.ticker import FuncFormatter

    def label(v: float, _: Any) -> str:
        if not v > 0:
            return ""
        mant = v / 10 ** math.floor(math.log10(v) + 1e-9)
        if not every and not np.isclose(mant, [1, 2, 5]).any():
            return ""
        return f"{v:g}" if plain else f"{mant:.0f}e{math.floor(math.log10(v) + 1e-9)}"

    return FuncFormatter(label)


def _err(est: float, e: Estimate | None) -> tuple[float, float, bool]:
    """Error-bar half lengths (below, above) of an interval around ``est``; False when the
    interval is undefined (drawn without a bar)."""
    if e is None or not (_finite(e.low) and _finite(e.high)):
        return 0.0, 0.0, False
    return max(est - e.low, 0.0), max(e.high - est, 0.0), True


def fig_lr_sweeps(an: Analysis) -> tuple[bytes, str]:
    """Loss vs LR per arch, one line per tuned size, the best LR starred (red: at the edge of
    the grid)."""
    archs = [a for a in an.archs if a in an.lr] + [a for a in an.lr if a not in an.archs]
    fig, axes = _panels(len(archs))
    cmap = _plt().get_cmap("plasma")
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
        ax.set_xscale("log")
        ax.set_title(a, fontsize=10)
        ax.set_xlabel("peak learning rate")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, title="tuned size", title_fontsize=7)
    axes[0].set_ylabel("validation loss [nats/token]")
    fig.tight_layout()
    caption = ("Learning-rate sweeps: validation loss vs peak LR per architecture, one line "
               "per tuned size (seeds averaged); star: the best LR (a parabola in ln LR "
               "through the grid's best point and its neighbours), red and labelled 'edge' "
               "where the best is the smallest or largest LR tried. ")
    caption += (f"Edge optima: {', '.join(edge)}." if edge else "No optimum is at an edge.")
    caption += " The LR power law's parameters are in the table only (point estimates)."
    return _png(fig), caption


def fig_isoflop(an: Analysis) -> tuple[bytes, str]:
    """Per arch: every point of every budget, the fitted parabola (dashed) and its minimum
    with interval bars; edge minima hollow."""
    fig, axes = _panels(len(an.archs))
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
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(_ticks())
        ax.set_title(a, fontsize=10)
        ax.set_xlabel("parameters N")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, title="budget [FLOPs]", title_fontsize=7)
    axes[0].set_ylabel("validation loss [nats/token]")
    fig.tight_layout()
    caption = ("IsoFLOP curves: every run (seeds as separate points) by budget, the parabola in "
               "ln N fitted through them (dashed), and its minimum (diamond) with 95% "
               "intervals of N_opt and L_opt; hollow and labelled 'edge': minima at the edge of "
               "the size grid, left out of the headline.")
    if no_min:
        caption += f" No parabola (fewer than 3 sizes): {', '.join(no_min)}."
    if no_bar:
        caption += f" Interval undefined, drawn without a bar: {', '.join(no_bar)}."
    return _png(fig), caption


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
    plt = _plt()
    colors = _arch_colors(an.archs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    mins = [m for a in an.archs for m in an.verdicts[a].minima]
    Cs = [m.C for m in mins if _finite(m.C)]
    no_curve = []
    if Cs:
        grid = np.geomspace(min(Cs) / 1.5, max(Cs) * 1.5, 120)
    for a in an.archs:
        col = colors[a]
        am = [m for m in an.verdicts[a].minima if _finite(m.C)]
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
    return _png(fig), caption


def fig_efficiency(an: Analysis) -> tuple[bytes, str]:
    """Forest plot: the joint-fit efficiency factor per arch with its interval (log x), the
    per-budget m(C) beneath it; 'not identifiable' written where there is none."""
    plt = _plt()
    colors = _arch_colors(an.archs)
    n = len(an.archs)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.7 * n))
    vals = [1.0]
    missing, outside = [], []
    for i, a in enumerate(an.archs):
        y = n - 1 - i
        e = _efficiency_of(an, a)
        col = colors[a]
        if e is None:
            ax.text(1.0, y, "not identifiable", ha="center", va="center", fontsize=9,
                    color="dimgray", bbox={"fc": "white", "ec": "lightgray"})
            missing.append(a)
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
            if x.status != "ok" or x.value is None or not _finite(x.value.estimate):
                if x.status != "excluded":
                    outside.append(f"{a} at {fmt_flops(x.budget)} ({x.status})")
                continue
            k += 1
            yy = y - 0.12 - 0.1 * k
            lo, hi, _ = _err(x.value.estimate, x.value)
            ax.errorbar([x.value.estimate], [yy], xerr=[[lo], [hi]], fmt="s", ms=3.5,
                        color=col, alpha=0.45, elinewidth=1, capsize=2)
            vals += [x.value.estimate, x.value.low, x.value.high]
    vals = [v for v in vals if _finite(v) and v > 0]
    lo, hi = min(vals + [0.8]), max(vals + [1.25])
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.25, hi * 1.25)
    if hi / lo < 8:  # a narrow axis: more labelled ticks than 1, 2, 5 x 10^k
        from matplotlib.ticker import NullFormatter

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
        caption += f" Not identifiable (written in the plot): {', '.join(missing)}."
    if outside:
        caption += f" m(C) not drawn: {', '.join(outside)}."
    caption += (" The conventions' point estimates are in the table only (no intervals).")
    return _png(fig), caption


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
    plt = _plt()
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
        return _png(fig), caption
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
    return _png(fig), caption


def make_figures(an: Analysis) -> dict[str, tuple[bytes, str]]:
    figs = {}
    if an.lr:
        figs["lr_sweeps"] = fig_lr_sweeps(an)
    figs["isoflop"] = fig_isoflop(an)
    figs["frontier"] = fig_frontier(an)
    figs["efficiency"] = fig_efficiency(an)
    figs["seeds"] = fig_seeds(an)
    return figs


# --------------------------------------------------------------------------- the report


def _joint_text(an: Analysis) -> str:
    j = an.joint
    if j is None:
        w = [w for w in an.warnings if "joint fit" in w or "no efficiency factor" in w]
        return "No joint fit: " + ("; ".join(w) if w else "see the warnings") + "."
    p = _joint_params(an)
    E = ("E ≈ 0 (not identified: it ran to its lower bound, the law is a pure power law "
         "here)" if j.E_at_floor() else f"E = {fmt_est(p['E'])}")
    return (f"Joint fit ln L = ln(E + k (m_a C)^-γ) over {j.n_points} interior minima with "
            f"{j.design.P} parameters ({', '.join(j.design.archs)}): the {an.baseline}'s curve "
            f"has {E}, k = {fmt(p['k'].estimate)}, γ = {fmt_est(p['gamma'])}.")


def _status_words(status: str, base: str) -> str:
    return {"outside support": f"outside the {base}'s support",
            "not identifiable": "not identifiable: loss below the fitted asymptote",
            "excluded": "excluded: no interior minimum"}.get(status, status)


def _validation_text(val: dict[str, Any]) -> str:
    """The validation set in words (scope.json's ``validation``)."""
    if "tokens" not in val or "documents" not in val:
        return "Validation set: " + ", ".join(f"{k} {v}" for k, v in val.items())
    held = val.get("held_out_tokens")
    text = (f"Validation set: {val['tokens']:,} tokens ({val.get('windows', '?')} windows of "
            f"{val.get('seq_len', '?')}) drawn at random (seed {val.get('seed', 0)}) from "
            f"{val['documents']} held-out document(s)")
    if held:
        text += f" ({held:,} tokens held out, {val.get('split', 'by document')})"
    evals = val.get("evals_per_run")
    if evals:
        text += f"; evaluated at {evals} points along every main and tuning run"
        curve = val.get("curve_tokens")
        if curve:
            text += (f" (the points before the last on a fixed {curve:,}-token subset; the "
                     "result of every run on the whole set)")
        text += ", and at the end of every cooldown"
    return text + "."


def build_blocks(an: Analysis, df: pd.DataFrame, name: str, scope: dict[str, Any],
                 scope_line: str, verdict: dict[str, str],
                 figures: dict[str, tuple[str, bytes, str]], out_dir: Path) -> list[Block]:
    base = an.baseline
    others = [a for a in an.archs if a != base]
    B: list[Block] = [Block("h1", f"Scaling report: {name}")]

    # 1. summary
    B.append(Block("h2", "Summary"))
    B.append(Block("p", (
        f"Baseline: **{base}**. One convention throughout: the efficiency factor m is the "
        f"compute the {base} needs to reach an architecture's loss divided by the compute the "
        "architecture needs (m > 1: the architecture needs less compute for the same loss). "
        "It comes from one joint fit over every architecture's interior IsoFLOP minima, never "
        "from a single budget; brackets are 95% intervals of a wild cluster bootstrap "
        f"({an.n_boot} replicates, seed {an.seed}).")))
    if others:
        B.append(Block("ul", items=[f"**{a}**{verdict[a][len(a):]}" for a in others]))
    else:
        B.append(Block("p", f"Only the {base} is in the table: nothing to compare."))
    B.append(Block("p", scope_line))
    proto = []
    if scope.get("lr_protocol"):
        proto.append(f"Learning rate: {scope['lr_protocol']}")
    if scope.get("beta2") is not None:
        proto.append(f"AdamW β2 = {fmt(float(scope['beta2']))}")
    if scope.get("warmup"):
        proto.append(f"Warmup: {scope['warmup']}")
    if isinstance(scope.get("schedule"), str) and scope["schedule"]:
        proto.append(f"Schedule: {scope['schedule']}")
    val = scope.get("validation")
    if isinstance(val, dict) and val:
        proto.append(_validation_text(val))
    proto += [str(x) for x in scope.get("notes") or []]
    if proto:
        B.append(Block("ul", items=proto))
    B.append(Block("p", f"Rebuild with `postformer report {out_dir}`; machine-readable: "
                        "`report.json`."))

    # 2. warnings
    B.append(Block("h2", "Warnings"))
    warn = _warnings(an)
    B.append(Block("ul", "warn", items=warn) if warn else Block("p", "None."))

    # 3. loss gap
    B.append(Block("h2", "Headline 1: loss gap at equal compute"))
    B.append(Block("p", (
        f"L_opt(arch) − L_opt({base}) at each IsoFLOP budget, nats/token (negative: the "
        "architecture is better), with 95% intervals from the same bootstrap replicates of "
        "both minima. Budgets where either minimum is at the edge of its size grid are shown "
        "as excluded.")))
    if others:
        rows = []
        for a in others:
            cells = {g.budget: (fmt_est(g.value, "+.4f") if g.value is not None
                                else f"excluded: {g.excluded}") for g in an.verdicts[a].loss_gap}
            rows.append([a] + [cells.get(b, "–") for b in an.budgets])
        B.append(Block("table", header=["arch"] + [f"C = {fmt_flops(b)}" for b in an.budgets],
                       items=rows))

    # 4. efficiency
    B.append(Block("h2", "Headline 2: efficiency factors"))
    rows = []
    for a in an.archs:
        v = an.verdicts[a]
        e = _efficiency_of(an, a)
        if a == base:
            rows.append([a, "1 (baseline)", "–", "–", "–", ""])
            continue
        note = _why_no_efficiency(an, a) if e is None else v.efficiency_note
        rows.append([a, fmt_est(e) if e is not None else "not identifiable",
                     fmt(e.mc_error) if e is not None else "–",
                     fmt_est(v.gamma_diff) if v.gamma_diff is not None else "–",
                     v.exponent_words or "–", note])
    B.append(Block("table", header=["arch", "efficiency m [95%]", "MC error",
                                    f"γ_arch − γ_{base} [95%]", "exponent", "note"], items=rows))
    B.append(Block("p", _joint_text(an)))
    fg = _free_gammas(an)
    if fg:
        B.append(Block("p", "Free-exponent fit (E shared, k and γ per architecture): " + "; ".join(
            f"γ_{a} = {fmt_est(g)}" for a, g in fg.items()) + "."))

    # 5. inverted multiplier
    B.append(Block("h2", "Inverted-frontier multiplier m(C)"))
    B.append(Block("p", (
        f"m(C) = C_{base}(L_opt(arch, C)) / C: the compute the {base}'s fitted curve needs for "
        "the architecture's measured minimum at C, read only inside the compute range of the "
        f"{base}'s own interior minima (the free-exponent fit where the architecture is in it, "
        "else the joint fit). Per budget, for reading along with the headline, not instead.")))
    if others:
        rows = []
        for a in others:
            cells = {x.budget: (fmt_est(x.value) if x.status == "ok" and x.value is not None
                                else _status_words(x.status, base))
                     for x in an.verdicts[a].inverted}
            none = ("not identifiable: no joint fit" if an.joint is None
                    else "not identifiable: no interior minimum")
            rows.append([a] + [cells.get(b, none) for b in an.budgets])
        B.append(Block("table", header=["arch"] + [f"C = {fmt_flops(b)}" for b in an.budgets],
                       items=rows))

    # 6. minima
    B.append(Block("h2", "IsoFLOP minima"))
    rows = []
    for a in an.archs:
        for m in an.verdicts[a].minima:
            rows.append([a, fmt_flops(m.budget), str(m.n_sizes), str(m.n_seeds),
                         fmt_est(m.N_ci) if m.N_ci else fmt(m.N_opt),
                         fmt_est(m.L_ci, ".4f") if m.L_ci else _fixed(m.L_opt, ".4f"),
                         "interior" if m.interior else f"edge: {m.reason}"])
    B.append(Block("table", header=["arch", "budget", "sizes", "seeds (max per size)",
                                    "N_opt [95%]", "L_opt [95%]", "used / why not"],
                   items=rows) if rows else Block("p", "No group has three sizes."))

    # 7. learning rates
    if an.lr:
        B.append(Block("h2", "Learning rates"))
        rows = []
        for a, s in an.lr.items():
            for x in s.sizes:
                rows.append([a, x["size"] or "–", fmt(x["N"]),
                             ", ".join(fmt(g) for g in x["grid"]), fmt(x["best"]),
                             "yes" if x["interior"] else "no: edge of the grid"])
        B.append(Block("table", header=["arch", "size", "N", "LR grid", "best LR", "interior"],
                       items=rows))
        laws = []
        for a, s in an.lr.items():
            if s.law is None:
                laws.append(f"{a}: one tuned size, no law (the best LR is used at every size)")
            else:
                laws.append(f"{a}: lr = {fmt(math.exp(s.law[0]))} · N^{fmt(s.law[1])}"
                            + (" (exponent clipped to [-1, 0])" if s.clipped else ""))
        B.append(Block("ul", items=laws))

    # 8. conventions
    B.append(Block("h2", "Conventions"))
    labels = list(dict.fromkeys(k for a in an.archs for k in an.verdicts[a].conventions))
    if labels:
        B.append(Block("p", (
            "Point estimates of the efficiency factor when compute and parameters are counted "
            "differently (each a joint refit, no intervals); the headline is \"C, N\" (the "
            "architecture's own FLOP count, parameters with embeddings). \"measured seconds\" "
            "is the wall-clock view: compute measured as training time.")))
        rows = [[a] + [fmt(an.verdicts[a].conventions.get(k)) if _finite(
            an.verdicts[a].conventions.get(k)) else "not identifiable" for k in labels]
            for a in an.archs]
        B.append(Block("table", header=["arch"] + labels, items=rows))
    else:
        B.append(Block("p", "Not computed: there is no joint fit."))

    # 9. extrapolation
    B.append(Block("h2", "Extrapolation check"))
    if an.extrapolation_fit is None:
        w = [w.removeprefix("extrapolation check: ") for w in an.warnings
             if w.startswith("extrapolation check")]
        why = ("there is no joint fit to refit" if an.joint is None
               else "; ".join(w) or "no refit was possible")
        B.append(Block("p", f"Not done: {why}."))
    else:
        B.append(Block("p", (
            f"The joint law refitted without the largest budget ({fmt_flops(an.held_out)} FLOPs) "
            "predicts that budget's minima. Error in loss: predicted − measured (nats/token); "
            "error in ln C: ln of the compute the refit needs for the measured loss over the "
            "compute used.")))
        rows = []
        for a in an.archs:
            x = an.verdicts[a].extrapolation
            if x is None:
                rows.append([a, fmt_flops(an.held_out), "–", "–", "–", "–",
                             "no interior minimum at the held-out budget, or none below it"])
                continue
            rows.append([a, fmt_flops(x["flops"]), _fixed(x["measured"], ".4f"),
                         _fixed(x["predicted"], ".4f"), _fixed(x["error_loss"], "+.4f"),
                         _fixed(x["error_ln_C"], "+.3f") if _finite(x["error_ln_C"])
                         else "not identifiable (below the refit's asymptote)", ""])
        B.append(Block("table", header=["arch", "held-out budget", "measured L_opt",
                                        "predicted", "error in loss", "error in ln C", "note"],
                       items=rows))

    # 10. figures
    B.append(Block("h2", "Figures"))
    for _key, (rel, png, caption) in figures.items():
        B.append(Block("img", caption, path=rel, data=png))

    # 11. points
    B.append(Block("h2", "Points"))
    B.append(Block("p", "Every row of the results table"
                        + (", linked to its run folder." if "run_dir" in df else ".")))
    cols = [c for c in ("arch", "size", "seed", "N", "D", "C", "loss", "stage") if c in df]
    rows = []
    for _, r in df.sort_values(["arch", "stage", "C", "N"], kind="stable").iterrows():
        row: list[Any] = [_fixed(r[c], ".4f") if c == "loss" else fmt(r[c]) for c in cols]
        if "run_dir" in df:
            rd = r["run_dir"]
            row.append(Link(str(rd), str(rd).replace(os.sep, "/"))
                       if isinstance(rd, str) and rd else "–")
        rows.append(row)
    B.append(Block("table", header=cols + (["run_dir"] if "run_dir" in df else []), items=rows))
    return B


def build_report(an: Analysis, df: pd.DataFrame, *, name: str, scope: dict[str, Any],
                 out_dir: Path) -> tuple[dict[str, Any], list[Block], dict[str, bytes]]:
    """(report.json's dict, the blocks of report.md/html, figure name -> PNG)."""
    verdict = {a: verdict_sentence(an, a) for a in an.archs if a != an.baseline}
    line = scope_text(an, scope)
    data = report_dict(an, list(verdict.values()), line)
    pngs = make_figures(an)
    figures = {k: (f"figures/{k}.png", png, cap) for k, (png, cap) in pngs.items()}
    blocks = build_blocks(an, df, name, scope, line, verdict, figures, out_dir)
    return data, blocks, {k: png for k, (png, _) in pngs.items()}


def write_report(out_dir: str | os.PathLike, *, baseline: str | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, Path]:
    """Build ``DIR/report.{json,md,html}`` and ``DIR/figures/*.png`` (see the module
    docstring); returns name -> path of every file written (``"json"``, ``"md"``,
    ``"html"``, one per figure). Raises ResultsError for a missing or bad results table and
    ValueError for an unknown baseline."""
    out_dir = Path(out_dir)
    if (out_dir / "runs").is_dir() or (out_dir / "tune").is_dir():
        from postformer.scaling.results import write_results

        write_results(out_dir)
    df, spec, scope = load_inputs(out_dir)
    baseline = baseline or spec.get("baseline") or None
    an = analyse(df, baseline=baseline, n_boot=n_boot, seed=seed)
    name = str(spec.get("name") or out_dir.resolve().name)
    data, blocks, pngs = build_report(an, df, name=name, scope=scope, out_dir=out_dir)

    written: dict[str, Path] = {}
    for key, png in pngs.items():
        path = out_dir / "figures" / f"{key}.png"
        atomic_write(path, png)
        written[key] = path
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md",
             "html": out_dir / "report.html"}
    atomic_write(paths["json"], dumps_strict(data))
    atomic_write(paths["md"], render_markdown(blocks))
    atomic_write(paths["html"], render_html(blocks, f"Scaling report: {name}"))
    written.update(paths)
    return written


def report_main(argv: list[str]) -> None:
    """``postformer report DIR [--baseline NAME] [--n-boot N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="postformer report",
        description="Rebuild a study's report (report.json, report.md, report.html, figures/) "
                    "from DIR/results.csv (rebuilt from DIR/runs/ when present), without "
                    "training anything.")
    parser.add_argument("dir", metavar="DIR", help="the study folder (or any folder with a "
                                                   "results.csv)")
    parser.add_argument("--baseline", default=None,
                        help="architecture to compare against (default: study.yaml's "
                             "baseline, else transformer, else the table's first)")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT,
                        help=f"bootstrap replicates (default {DEFAULT_N_BOOT})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        parser.error("--n-boot must be >= 1 (intervals need 10 replicates or more)")
    try:
        written = write_report(args.dir, baseline=args.baseline, n_boot=args.n_boot,
                               seed=args.seed)
    except ValueError as err:  # ResultsError (a missing or bad table), an unknown baseline
        parser.error(" ".join(str(err).split()))
    figs = [str(p) for k, p in written.items() if k not in ("json", "md", "html")]
    print(f"postformer report: wrote {written['json']}, {written['md']}, {written['html']} and "
          f"{len(figs)} figures ({', '.join(figs)})", file=sys.stderr)
