"""The report of a probe folder (``scaling.run.probe``): ``DIR/report.{json,md,html}`` and
``DIR/figures/`` from ``DIR/results.csv``.

Scores, as both papers compute them:

- **best of the LR grid** per cell (arch, task, setting, d_model, seed): the highest test
  accuracy over the LRs (ties: the lower test loss); a best LR at an edge of a grid of 3 or
  more is flagged (a better one may lie outside);
- a cell's accuracy is the mean over its seeds (the range is shown with 2 or more);
- a **task score** is the mean over the task's settings (its difficulty sweep);
- the **MAD score** is the mean of the six MAD tasks' scores (Poli et al. 2024 average over
  tasks and settings); it is given only for an arch and width where all six ran, otherwise
  the report says which are missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.stats import rankdata, spearmanr

from postformer.train.fileio import atomic_write
from postformer.train.probes.tasks import TASKS

from ..fit import Analysis
from ..numbers import fmt_est
from ..run.probe import write_results
from .document import Block, render_html, render_markdown
from .figures import arch_colors, panels, pyplot, to_png

MAD_TASKS = ("in_context_recall", "noisy_in_context_recall", "fuzzy_in_context_recall",
             "selective_copying", "compression", "memorization")
CELL = ["arch", "task", "setting", "d_model"]


def best_of_lr(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, task, setting, d_model, seed): the best LR's, with ``n_lrs`` and
    ``lr_at_edge`` (the best LR is the grid's smallest or largest, grid of 3 or more)."""
    keys = CELL + ["seed"]
    ranked = df.assign(_neg=-df["accuracy"]).sort_values(["_neg", "loss"], kind="stable")
    best = ranked.groupby(keys, sort=False).head(1).drop(columns="_neg").sort_index()  # df's order
    grid = df.groupby(keys)["lr"].agg(["min", "max", "nunique"]).reset_index()
    best = best.merge(grid, on=keys, how="left")
    best["n_lrs"] = best["nunique"]
    best["lr_at_edge"] = (best["n_lrs"] >= 3) & ((best["lr"] == best["min"]) | (best["lr"] == best["max"]))
    return best.drop(columns=["min", "max", "nunique"]).reset_index(drop=True)


def cell_scores(best: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, task, setting, d_model): mean accuracy over seeds, its min and max, seeds."""
    g = best.groupby(CELL, sort=False)["accuracy"]
    return g.agg(accuracy="mean", low="min", high="max", seeds="count").reset_index()


def task_scores(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, task, d_model): the mean over the task's settings and how many."""
    g = cells.groupby(["arch", "task", "d_model"], sort=False)["accuracy"]
    return g.agg(score="mean", settings="count").reset_index()


def mad_scores(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, d_model): the MAD score (mean over the six MAD tasks) where all six ran,
    NaN otherwise; ``mad_tasks`` counts the MAD tasks present."""
    mad = tasks[tasks["task"].isin(MAD_TASKS)]
    rows = []
    for (arch, d), g in mad.groupby(["arch", "d_model"], sort=False):
        n = g["task"].nunique()
        rows.append({"arch": arch, "d_model": d, "mad_tasks": n,
                     "mad_score": float(g["score"].mean()) if n == len(MAD_TASKS) else math.nan,
                     "mad_partial": float(g["score"].mean())})
    return pd.DataFrame(rows, columns=["arch", "d_model", "mad_tasks", "mad_score", "mad_partial"])


@dataclass
class Scores:
    """The report's tables, computed once from a results table (see the module docstring)."""

    best: pd.DataFrame  # best_of_lr
    cells: pd.DataFrame  # cell_scores
    tasks: pd.DataFrame  # task_scores
    mad: pd.DataFrame  # mad_scores

    @classmethod
    def of(cls, df: pd.DataFrame) -> Scores:
        best = best_of_lr(df)
        cells = cell_scores(best)
        tasks = task_scores(cells)
        return cls(best, cells, tasks, mad_scores(tasks))


def read_probe_results(out_dir: str | Path) -> pd.DataFrame:
    """``DIR/results.csv`` (rebuilt from ``DIR/runs/`` when there is one)."""
    out = Path(out_dir)
    if (out / "runs").is_dir():
        write_results(out)
    path = out / "results.csv"
    if not path.is_file() or not path.stat().st_size:
        raise ValueError(f"{path}: no probe results (run `postformer probe PROBE.yaml --out {out}`)")
    df = pd.read_csv(path)
    missing = {"arch", "task", "setting", "d_model", "lr", "seed", "accuracy", "loss"} - set(df)
    if missing:
        raise ValueError(f"{path}: not a probe results table (missing columns {sorted(missing)})")
    return _ordered(df.dropna(subset=["accuracy"]), out)


def _ordered(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Rows in the spec's arch order (probe.yaml) and the task registry's order, so tables
    and figures read as the spec was written."""
    spec = yaml_load(out / "probe.yaml") if (out / "probe.yaml").is_file() else {}
    arch_rank = {a: i for i, a in enumerate(spec.get("archs") or {})}
    task_rank = {t: i for i, t in enumerate(TASKS)}
    keyed = df.assign(_a=df["arch"].map(arch_rank).fillna(len(arch_rank)),
                      _t=df["task"].map(task_rank).fillna(len(task_rank)))
    keyed = keyed.sort_values(["_a", "arch", "_t", "task", "setting", "d_model", "lr", "seed"],
                              kind="stable")
    return keyed.drop(columns=["_a", "_t"]).reset_index(drop=True)


def summary(df: pd.DataFrame, scores: Scores | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (report.json)."""
    sc = scores or Scores.of(df)
    best, cells, tasks, mad = sc.best, sc.cells, sc.tasks, sc.mad
    archs = list(dict.fromkeys(df["arch"]))
    per_arch = {}
    for arch in archs:
        entry: dict[str, Any] = {"widths": {}}
        for d in sorted(df.loc[df["arch"] == arch, "d_model"].unique()):
            t = tasks[(tasks["arch"] == arch) & (tasks["d_model"] == d)]
            m = mad[(mad["arch"] == arch) & (mad["d_model"] == d)]
            entry["widths"][int(d)] = {
                "tasks": {r.task: float(r.score) for r in t.itertuples()},
                "mad_score": None if m.empty or math.isnan(m["mad_score"].iloc[0]) else float(m["mad_score"].iloc[0]),
                "mad_tasks": 0 if m.empty else int(m["mad_tasks"].iloc[0]),
            }
        per_arch[arch] = entry
    edges = best[best["lr_at_edge"]]
    return {
        "archs": archs, "tasks": list(dict.fromkeys(df["task"])),
        "widths": sorted(int(d) for d in df["d_model"].unique()),
        "lrs": sorted(float(x) for x in df["lr"].unique()),
        "seeds": sorted(int(s) for s in df["seed"].unique()),
        "per_arch": per_arch,
        "cells": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                  for r in cells.to_dict("records")],
        "lr_at_edge": [f"{r.arch} {r.task}/{r.setting} d{r.d_model} s{r.seed}: lr {r.lr:.3g}"
                       for r in edges.itertuples()],
    }


def probe_scores(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per arch at its largest width: ``{"d_model", "mad_score" (or None), "mad_tasks",
    "tasks": {task: score}}``; what ``postformer report --probes`` sets beside a study."""
    s = summary(read_probe_results(out_dir))
    out = {}
    for arch, entry in s["per_arch"].items():
        d = max(entry["widths"])
        out[arch] = {"d_model": d, **entry["widths"][d]}
    return out


# --------------------------------------------------------------------------- figures


def fig_heatmap(tasks: pd.DataFrame, mad: pd.DataFrame, d_model: int) -> tuple[bytes, str]:
    """Archs x tasks task scores at one width (and the MAD score column where complete)."""
    plt = pyplot()
    t = tasks[tasks["d_model"] == d_model]
    archs, names = list(dict.fromkeys(t["arch"])), list(dict.fromkeys(t["task"]))
    grid = np.full((len(archs), len(names)), np.nan)
    for r in t.itertuples():
        grid[archs.index(r.arch), names.index(r.task)] = r.score
    m = mad[mad["d_model"] == d_model].set_index("arch")["mad_score"]
    if m.notna().any():
        grid = np.column_stack([grid, [m.get(a, np.nan) for a in archs]])
        names = names + ["MAD score"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 0.45 * len(archs) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_yticks(range(len(archs)), archs, fontsize=9)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if grid[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label="test accuracy (best LR)")
    ax.set_title(f"d_model = {d_model}")
    cap = (f"Best-LR test accuracy per arch and task at d_model {d_model}, the mean over each "
           "task's settings and seeds; the MAD score column only where all six MAD tasks ran.")
    return to_png(fig), cap


def fig_mqar(cells: pd.DataFrame) -> tuple[bytes, str] | None:
    """MQAR accuracy vs d_model, a panel per setting (Zoology's figure)."""
    m = cells[cells["task"] == "mqar"]
    if m.empty:
        return None
    settings = list(dict.fromkeys(m["setting"]))
    fig, axes = panels(len(settings), sharey=True)
    colors = arch_colors(list(dict.fromkeys(cells["arch"])))
    for ax, setting in zip(axes, settings):
        s = m[m["setting"] == setting]
        for arch, g in s.groupby("arch", sort=False):
            g = g.sort_values("d_model")
            ax.plot(g["d_model"], g["accuracy"], "o-", color=colors[arch], label=arch)
            if (g["seeds"] > 1).any():
                ax.fill_between(g["d_model"], g["low"], g["high"], color=colors[arch], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(s["d_model"].unique()), [str(d) for d in sorted(s["d_model"].unique())])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"MQAR {setting}", fontsize=9)
        ax.set_xlabel("d_model")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    cap = ("MQAR test accuracy (best LR, mean over seeds; band: min-max over seeds where there "
           "are several) against model width, one panel per (seq_len, kv pairs) setting.")
    return to_png(fig), cap


# --------------------------------------------------------------------------- the document


def _scope_line(df: pd.DataFrame) -> str:
    if {"steps", "epochs", "examples"} <= set(df):
        lengths = df.groupby(["task", "setting"]).agg(
            steps=("steps", "first"), epochs=("epochs", "first"), examples=("examples", "first"))
        steps = ", ".join(f"{t}/{s} {int(r.steps)} steps ({r.epochs:.3g} epochs of {int(r.examples)})"
                          for (t, s), r in lengths.iterrows())
    else:  # a table from elsewhere: no training lengths
        lengths, steps = df.groupby(["task", "setting"]).size(), "not recorded"
    return (f"Scope: {len(set(df['arch']))} archs, {df['task'].nunique()} tasks "
            f"({len(lengths)} settings), widths {sorted(int(d) for d in df['d_model'].unique())}, "
            f"LR grid {[float(f'{x:.3g}') for x in sorted(df['lr'].unique())]} (best per cell), "
            f"seeds {sorted(int(s) for s in df['seed'].unique())}; training: {steps}.")


def build_blocks(df: pd.DataFrame, name: str, sc: Scores,
                 figures: dict[str, tuple[str, bytes, str]]) -> list[Block]:
    best, cells, tasks, mad = sc.best, sc.cells, sc.tasks, sc.mad
    names = list(dict.fromkeys(df["task"]))
    B = [Block("h1", f"Probe report: {name}"), Block("p", _scope_line(df))]
    notes = ["Accuracy is argmax accuracy on the answer positions of the whole test set at the "
             "last step; a cell's result is the best of its LR grid (as Zoology and MAD), "
             "averaged over seeds; a task's score averages its settings."]
    n_mad = mad["mad_tasks"].max() if len(mad) else 0
    if n_mad and n_mad < len(MAD_TASKS):
        notes.append(f"MAD score: not given, only {int(n_mad)} of the {len(MAD_TASKS)} MAD tasks "
                     "ran (the mean over those that ran is in report.json as mad_partial).")
    ran = df.groupby("task")["setting"].nunique()
    short = [f"{t} {ran[t]} of {len(TASKS[t].sweep)}" for t in ran.index
             if t in TASKS and len(TASKS[t].sweep) > ran[t]]
    if short:
        notes.append("Fewer settings than the paper's difficulty sweep (" + ", ".join(short)
                     + "): a task score (and the MAD score) averages only the settings that ran, "
                       "so it is not the paper's protocol score (`sweep: paper` runs them all).")
    B.append(Block("ul", items=notes))
    for d in sorted(int(x) for x in df["d_model"].unique()):
        t = tasks[tasks["d_model"] == d]
        m = mad[mad["d_model"] == d].set_index("arch")
        header = ["arch"] + names + (["MAD score"] if m["mad_score"].notna().any() else [])
        rows = []
        for arch in dict.fromkeys(t["arch"]):
            ta = t[t["arch"] == arch].set_index("task")
            row = [arch] + [f"{ta.loc[n, 'score']:.3f}" if n in ta.index else "–" for n in names]
            if len(header) > len(names) + 1:
                v = m["mad_score"].get(arch, math.nan)
                row.append("–" if math.isnan(v) else f"**{v:.3f}**")
            rows.append(row)
        B += [Block("h2", f"Best-LR accuracy at d_model {d}"), Block("table", header=header, items=rows)]
    for path, png, cap in figures.values():
        B.append(Block("img", cap, path=path, data=png))
    B.append(Block("h2", "Every setting"))
    rows = []
    for r in cells.itertuples():
        chosen = best[(best["arch"] == r.arch) & (best["task"] == r.task) & (best["setting"] == r.setting)
                      & (best["d_model"] == r.d_model)]["lr"]
        rng = f" [{r.low:.3f}, {r.high:.3f}]" if r.seeds > 1 else ""
        rows.append([r.arch, r.task, r.setting, r.d_model, f"{r.accuracy:.3f}{rng}", int(r.seeds),
                     ", ".join(f"{x:.3g}" for x in sorted(set(chosen)))])
    B.append(Block("table", header=["arch", "task", "setting", "d_model", "accuracy", "seeds",
                                    "best lr"], items=rows))
    edges = best[best["lr_at_edge"]]
    if len(edges):
        B.append(Block("p", f"**Best LR at the grid's edge** in {len(edges)} of {len(best)} cells "
                            "(a better LR may lie outside the grid):"))
        B.append(Block("ul", "warn", items=[f"{r.arch} {r.task}/{r.setting} d{r.d_model} s{r.seed}: "
                                            f"lr {r.lr:.3g}" for r in edges.itertuples()]))
    return B


def write_probe_report(out_dir: str | Path) -> dict[str, Path]:
    """Write DIR/report.{json,md,html} and DIR/figures/*.png; returns name -> path."""
    out = Path(out_dir)
    df = read_probe_results(out)
    spec_path = out / "probe.yaml"
    spec = yaml_load(spec_path) if spec_path.is_file() else {}
    name = str(spec.get("name") or out.resolve().name)
    sc = Scores.of(df)
    pngs: dict[str, tuple[bytes, str]] = {}
    for d in sorted(int(x) for x in df["d_model"].unique()):
        pngs[f"probe_heatmap_d{d}"] = fig_heatmap(sc.tasks, sc.mad, d)
    mq = fig_mqar(sc.cells)
    if mq is not None:
        pngs["probe_mqar"] = mq
    figures = {k: (f"figures/{k}.png", png, cap) for k, (png, cap) in pngs.items()}
    blocks = build_blocks(df, name, sc, figures)
    data = summary(df, sc)
    data["name"] = name
    data["scope"] = _scope_line(df)
    written: dict[str, Path] = {}
    for key, (path, png, _) in figures.items():
        atomic_write(out / path, png)
        written[key] = out / path
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["json"], json.dumps(_plain(data), indent=2, allow_nan=False) + "\n")
    atomic_write(paths["md"], render_markdown(blocks))
    atomic_write(paths["html"], render_html(blocks, f"Probe report: {name}"))
    written.update(paths)
    return written


def yaml_load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# --------------------------------------------------------------------------- beside a study


def rank_correlation(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` and its two-sided p-value: exact (every
    permutation) for up to 8 points, else scipy's t approximation. NaN below 3 points."""
    n = len(x)
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    rho = float(spearmanr(x, y).statistic)
    if n > 8:
        return rho, float(spearmanr(x, y).pvalue)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    hits = total = 0
    for perm in permutations(range(n)):
        r = float((rx * ry[list(perm)]).sum() / denom)
        hits += abs(r) >= abs(rho) - 1e-12
        total += 1
    return rho, hits / total


def beside_study(an: Analysis, probe_dir: str | Path) -> tuple[list[Block], dict[str, Any]]:
    """The probe scores of a probe folder beside a study's efficiency factors (``an``: its
    ``scaling.fit.Analysis``), with their rank correlation; (report blocks, report.json entry).
    An arch is matched by its label; the probe score is the MAD score where all six MAD
    tasks ran, else the mean over the tasks that ran (said so)."""
    scores = probe_scores(probe_dir)
    rows, pairs, data = [], [], {"probe_dir": str(probe_dir), "archs": {}}
    for arch in an.archs:
        eff = an.efficiency_of(arch)
        s = scores.get(arch)
        if s is None:
            rows.append([arch, fmt_est(eff), "not in the probe folder", "–", "–"])
            continue
        if s["mad_score"] is not None:
            score, what = s["mad_score"], "MAD score"
        else:
            score, what = float(np.mean(list(s["tasks"].values()))), f"mean of {len(s['tasks'])} tasks"
        mqar = s["tasks"].get("mqar")
        rows.append([arch, fmt_est(eff), f"{score:.3f} ({what})",
                     "–" if mqar is None else f"{mqar:.3f}", str(s["d_model"])])
        data["archs"][arch] = {"efficiency": None if eff is None else eff.estimate,
                               "probe_score": score, "probe_score_kind": what, "mqar": mqar,
                               "d_model": s["d_model"], "tasks": s["tasks"]}
        if eff is not None:
            pairs.append((eff.estimate, score))
    rho, p = rank_correlation([a for a, _ in pairs], [b for _, b in pairs])
    data.update(n_archs=len(pairs), spearman_rho=None if math.isnan(rho) else rho,
                p_value=None if math.isnan(p) else p)
    missing = [a for a in scores if a not in an.archs]
    if math.isnan(rho):
        corr = (f"Rank correlation: undefined, it rests on {len(pairs)} arch(s) with both an "
                "efficiency factor and a probe score (3 or more are needed).")
    else:
        corr = (f"Spearman rank correlation between efficiency factor and probe score: "
                f"**{rho:+.2f}** over {len(pairs)} archs (two-sided permutation p = {p:.2g}"
                + ("; with so few archs it is weak evidence either way" if len(pairs) < 6 else "")
                + ").")
    blocks = [Block("h2", "Synthetic probes beside the verdict"),
              Block("p", f"Probe scores from `{probe_dir}` (best-LR test accuracy at the largest "
                         "width each arch ran; scaling.report.probe), matched to the study's archs "
                         "by label. " + corr),
              Block("table", header=["arch", "efficiency factor", "probe score", "MQAR", "d_model"],
                    items=rows)]
    if missing:
        blocks.append(Block("p", f"In the probe folder but not in the study: {', '.join(missing)}."))
    return blocks, data
