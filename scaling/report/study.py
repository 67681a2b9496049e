"""``postformer report DIR``: the verdict of a study, rebuilt from its results table.

Reads ``DIR/results.csv`` (``scaling.fit.table``; rebuilt first by ``scaling.run.results``
when the folder has ``runs/`` or ``tune/``), and, where present, ``DIR/study.yaml``
(``name``, ``baseline``) and ``DIR/scope.json`` (corpus, tokenizer, window, validation set,
protocol: written by the runner). Runs :func:`postformer.scaling.fit.analyse` once and
writes

    DIR/report.json        the machine-readable verdict (strict JSON: undefined is null)
    DIR/report.md          Markdown, figures linked from figures/
    DIR/report.html        one self-contained file: figures embedded as base64 PNG
    DIR/figures/*.png      LR sweeps, IsoFLOP parabolas, the frontier with the joint fit,
                           the efficiency forest plot, the seed spread

One convention everywhere: the efficiency factor m, the compute the baseline needs for an
architecture's loss divided by the compute the architecture needs (> 1: the architecture
needs less). The summary is the joint fit's m over every interior IsoFLOP minimum, never
the number of a single budget, as a range over the FLOP conventions the table carries; where
the baseline has interior minima at fewer than two budgets it is withheld and the summary
gives the loss gap at the largest budget where both minima are interior. Nothing is trained; every point is listed at the end, linked
to its run folder. Every file is written to a temporary name and moved into place, so a
reader never sees half a report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from postformer.train.fileio import atomic_write

from ..fit import DEFAULT_N_BOOT, Analysis, Estimate, ResultsError, analyse, lr_check, read_results
from ..numbers import ceil_sig, finite, fmt, fmt_est, fmt_fixed, fmt_flops, fmt_sig
from ..run.results import write_results
from .document import Block, Link, render_html, render_markdown
from .figures import make_figures
from .probe import beside_study
from .verdict import (
    CONVENTION_NAMES,
    all_warnings,
    dumps_strict,
    free_gammas,
    joint_params,
    report_dict,
    why_no_efficiency,
)

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
        loaded = yaml.safe_load((out_dir / "study.yaml").read_text())
        spec = loaded if isinstance(loaded, dict) else {}
    scope: dict[str, Any] = {}
    if (out_dir / "scope.json").is_file():
        loaded = json.loads((out_dir / "scope.json").read_text())
        scope = loaded if isinstance(loaded, dict) else {}
    return df, spec, scope


# --------------------------------------------------------------------------- the verdict in words


def _conv_label(an: Analysis, name: str) -> str:
    label = CONVENTION_NAMES.get(name, name)
    return f"{label}, the headline" if name == an.headline_convention else label


def _direction(e: Estimate, base: str) -> str:
    if not (finite(e.low) and finite(e.high)):
        return "undetermined"
    return "less" if e.low > 1 else "more" if e.high < 1 else "indistinguishable"


def verdict_sentence(an: Analysis, arch: str) -> str:
    """One plain sentence for a non-baseline arch: the joint-fit efficiency factor in words
    (its range over the FLOP conventions where the table has several), the exponent test,
    and any note; where the factor is withheld, the loss gap at the largest budget where both
    minima are interior instead. Starts with the arch's name."""
    base = an.baseline
    v = an.verdicts[arch]
    e = an.efficiency_of(arch)
    if v.efficiency_withheld:
        gaps = [g for g in v.loss_gap if g.value is not None]
        text = f"{arch}: efficiency factor withheld ({v.efficiency_withheld})"
        if gaps:
            g = gaps[-1].value
            side = ("lower than" if g.high < 0 else "higher than" if g.low > 0
                    else "not distinguishable from")
            text += (f"; at {fmt_flops(gaps[-1].budget)} FLOPs, the largest budget where both "
                     f"minima are interior, its loss is {side} the {base}'s: L_opt({arch}) − "
                     f"L_opt({base}) = {fmt_est(g, '+.4f')} nats/token")
        else:
            text += f"; no budget has interior minima of both {arch} and the {base}"
        return text + "."
    if e is None:
        return (f"{arch}: no efficiency factor against the {base} (not identifiable): "
                f"{why_no_efficiency(an, arch)}.")
    convs = [(n, x) for n, x in v.efficiency_by_convention.items()
             if x is not None and finite(x.estimate)]
    if len(convs) > 1:
        lo = min(x.estimate for _, x in convs)
        hi = max(x.estimate for _, x in convs)
        each = "; ".join(f"{_conv_label(an, n)}: {fmt_est(x)}" for n, x in convs)
        span = f"{fmt_sig(lo)}-{fmt_sig(hi)}"
        dirs = {_direction(x, base) for _, x in convs}
        if dirs == {"less"}:
            words = (f"reaches the {base}'s loss with {span}x less compute depending on how "
                     f"FLOPs are counted ({each})")
        elif dirs == {"more"}:
            words = (f"needs more compute than the {base} for the same loss: efficiency m = "
                     f"{span} depending on how FLOPs are counted ({each})")
        elif dirs == {"indistinguishable"}:
            words = (f"is not distinguishable from the {base} under any FLOP count: efficiency "
                     f"m = {span} depending on how FLOPs are counted ({each}), every interval "
                     "covering 1")
        else:
            words = (f"has efficiency m = {span} against the {base} depending on how FLOPs are "
                     f"counted ({each}); whether it needs less or more compute depends on the "
                     "count")
    else:
        m = fmt_est(e)
        if not (finite(e.low) and finite(e.high)):
            words = f"has efficiency m = {m} against the {base}"
        elif e.low > 1:
            words = f"reaches the {base}'s loss with less compute: efficiency m = {m}"
        elif e.high < 1:
            words = f"needs more compute than the {base} for the same loss: efficiency m = {m}"
        else:
            words = f"is not distinguishable from the {base}: efficiency m = {m}"
    extra = []
    own = v.efficiency_own_slope
    if own is not None and finite(own.estimate) and not e.contains(own.estimate):
        extra.append("the interval understates model uncertainty: under the baseline's own "
                     f"slope the factor is {fmt_est(own)}")
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
          if a != an.baseline and an.efficiency_of(a) is not None]
    mc = [x for x in mc if finite(x)]
    if mc:
        text += (f"; Monte Carlo error of the interval endpoints < {fmt(ceil_sig(max(mc)), 2)} "
                 f"({an.n_boot} bootstrap replicates)")
    return text + "."


# --------------------------------------------------------------------------- the report


def _joint_text(an: Analysis) -> str:
    j = an.joint
    if j is None:
        w = [w for w in an.warnings if "joint fit" in w or "no efficiency factor" in w]
        return "No joint fit: " + ("; ".join(w) if w else "see the warnings") + "."
    p = joint_params(an)
    E = ("E ≈ 0 (not identified: it ran to its lower bound, the law is a pure power law "
         "here)" if j.E_at_floor() else f"E = {fmt_est(p['E'])}")
    return (f"Joint fit ln L = ln(E + k (m_a C)^-γ) over {j.n_points} interior minima with "
            f"{j.design.P} parameters ({', '.join(j.design.archs)}): the {an.baseline}'s curve "
            f"has {E}, k = {fmt(p['k'].estimate)}, γ = {fmt_est(p['gamma'])}.")


def _status_words(status: str, base: str) -> str:
    return {"outside support": f"outside the {base}'s support",
            "not identifiable": "not identifiable: loss below the fitted asymptote",
            "excluded": "excluded: no interior minimum",
            "withheld": f"withheld: the {base} has no curve"}.get(status, status)


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
    if scope.get("baseline_recipe"):
        proto.append(f"Baseline recipe: {scope['baseline_recipe']}")
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
    warn = all_warnings(an)
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
    B.append(Block("p", (
        f"Given only where the {base} has interior IsoFLOP minima at two budgets or more (a "
        "curve to read a compute factor off); each bootstrap replicate makes the interior test "
        "again and leaves out of its fit the minima that fail it. Compute: "
        + ("the table's C as given (it equals none of the causal, Chinchilla and 6ND counts)"
           if an.headline_convention == "as given" else
           f"{CONVENTION_NAMES.get(an.headline_convention, an.headline_convention)} FLOPs")
        + " (the headline convention). \"own slope\": the factor on the free-exponent fit's "
        f"curves, C_{base}(L*) / C_arch(L*) at the loss L* of the architecture's largest "
        "interior minimum, each on its own exponent.")))
    rows = []
    for a in an.archs:
        v = an.verdicts[a]
        e = an.efficiency_of(a)
        if a == base:
            rows.append([a, "1 (baseline)", "–", "–", "–", "–", ""])
            continue
        note = why_no_efficiency(an, a) if e is None else v.efficiency_note
        rows.append([a, fmt_est(e) if e is not None else
                     "withheld" if v.efficiency_withheld else "not identifiable",
                     fmt(e.mc_error) if e is not None else "–",
                     fmt_est(v.efficiency_own_slope) if v.efficiency_own_slope is not None
                     else "–",
                     fmt_est(v.gamma_diff) if v.gamma_diff is not None else "–",
                     v.exponent_words or "–", note])
    B.append(Block("table", header=["arch", "efficiency m [95%]", "MC error",
                                    "own slope [95%]", f"γ_arch − γ_{base} [95%]", "exponent",
                                    "note"], items=rows))
    B.append(Block("p", _joint_text(an)))
    fg = free_gammas(an)
    if fg:
        B.append(Block("p", "Free-exponent fit (E shared, k and γ per architecture): " + "; ".join(
            f"γ_{a} = {fmt_est(g)}" for a, g in fg.items()) + "."))
    names = list(dict.fromkeys(n for a in an.archs
                               for n in an.verdicts[a].efficiency_by_convention))
    if names and others:
        B.append(Block("p", (
            "The efficiency factor under every FLOP convention the table carries, each a "
            "joint refit over the same minima with the same bootstrap replicates: causal (the "
            "causal count of attention's scores and chunked mixers' blocks), Chinchilla (full "
            "T x T scores and chunk blocks), 6ND; \"as given\": the table's C where it is none "
            "of these.")))
        rows = []
        for a in others:
            v = an.verdicts[a]
            rows.append([a] + [fmt_est(x) if x is not None else
                               "withheld" if v.efficiency_withheld else "not identifiable"
                               for x in (v.efficiency_by_convention.get(n) for n in names)])
        B.append(Block("table", header=["arch"] + [
            f"{_conv_label(an, n)} [95%]" for n in names], items=rows))

    # 4b. allocation
    B.append(Block("h2", "Allocation exponents (Approach 2)"))
    B.append(Block("p", (
        "Per architecture with interior minima at two budgets or more: ln N_opt and ln D_opt "
        "against ln C over its interior minima (least squares; D at the vertex read "
        "ln-linearly in ln N within its group), N_opt ∝ C^a and D_opt ∝ C^b, with 95% "
        "intervals from the same bootstrap replicates (each keeping the minima interior in "
        "it).")))
    rows = []
    for a in an.archs:
        al = an.verdicts[a].allocation
        if al is None:
            rows.append([a, str(len({m.budget for m in an.verdicts[a].minima if m.interior})),
                         "–", "–", "fewer than two interior budgets"])
            continue
        rows.append([a, str(al["n_budgets"]), fmt_est(al["N_opt_exponent"]),
                     fmt_est(al["D_opt_exponent"]), al["note"]])
    B.append(Block("table", header=["arch", "interior budgets", "N_opt exponent a [95%]",
                                    "D_opt exponent b [95%]", "note"], items=rows))

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
                         fmt_est(m.L_ci, ".4f") if m.L_ci else fmt_fixed(m.L_opt, ".4f"),
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
                ex = s.exponent
                ci = (f", exponent {fmt(ex[0])} [{fmt(ex[1])}, {fmt(ex[2])}] before clipping"
                      if ex is not None and finite(ex[1]) else "")
                laws.append(f"{a}: lr = {fmt(math.exp(s.law[0]))} · N^{fmt(s.law[1])}"
                            + (" (exponent clipped to its prior range [-1, 0])" if s.clipped else "")
                            + ci + f"; tuned sizes span {fmt(s.span)}x in N"
                            + (f"; one run's seed sd {s.seed_sd:.4f} nats" if finite(s.seed_sd) else "")
                            + (f"; flat within seed noise at {', '.join(s.flat)}" if s.flat else ""))
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
        rows = [[a] + [fmt(an.verdicts[a].conventions.get(k)) if finite(
            an.verdicts[a].conventions.get(k)) else "withheld" if an.verdicts[a].efficiency_withheld
            else "not identifiable" for k in labels] for a in an.archs]
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
            rows.append([a, fmt_flops(x["flops"]), fmt_fixed(x["measured"], ".4f"),
                         fmt_fixed(x["predicted"], ".4f"), fmt_fixed(x["error_loss"], "+.4f"),
                         fmt_fixed(x["error_ln_C"], "+.3f") if finite(x["error_ln_C"])
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
        row: list[Any] = [fmt_fixed(r[c], ".4f") if c == "loss" else fmt(r[c]) for c in cols]
        if "run_dir" in df:
            rd = r["run_dir"]
            row.append(Link(str(rd), str(rd).replace(os.sep, "/"))
                       if isinstance(rd, str) and rd else "–")
        rows.append(row)
    B.append(Block("table", header=cols + (["run_dir"] if "run_dir" in df else []), items=rows))
    return B


def lr_check_blocks(check: dict[str, Any] | None, base: str) -> list[Block]:
    """The LR check's section: the baseline at multiples of its tuned LR at one point, and
    each arch's factor (or loss gap) with the baseline's point shifted by what it did."""
    if not check:
        return []
    out = [Block("h2", "Learning-rate check"), Block("p", (
        f"The {base} at its top budget ({fmt_flops(check['flops'])} FLOPs), size "
        f"{check['size']}, seed {check['seed']}, trained again at multiples of its tuned LR "
        f"({fmt(check['lr'])}, loss {check['loss']:.4f}). Each column re-analyses the study "
        f"with every seed of the {base} at that point shifted by that run's loss difference "
        "(one seed's difference standing for the mean's): how far the verdict moves if the "
        "tuned LR was off by that factor. A negative difference means the tuned LR was not "
        "the best there."))]
    runs = check["runs"]
    rows = [[f"{base}: loss (difference)", f"{check['loss']:.4f}"]
            + [f"{r['loss']:.4f} ({r['delta']:+.4f})" for r in runs]]

    def cell(x: dict[str, Any]) -> str:
        if x["efficiency"] is not None:
            return f"m = {fmt(x['efficiency'])}"
        return (f"gap {x['loss_gap']:+.4f}" if x["loss_gap"] is not None else "–")

    for a, x in check["tuned"].items():
        rows.append([a, cell(x)] + [cell(r["archs"][a]) for r in runs])
    out.append(Block("table", header=["", "tuned LR"] + [f"x{fmt(r['multiplier'])}" for r in runs],
                     items=rows))
    return out


def build_report(an: Analysis, df: pd.DataFrame, *, name: str, scope: dict[str, Any],
                 out_dir: Path) -> tuple[dict[str, Any], list[Block], dict[str, bytes]]:
    """(report.json's dict, the blocks of report.md/html, figure name -> PNG)."""
    verdict = {a: verdict_sentence(an, a) for a in an.archs if a != an.baseline}
    line = scope_text(an, scope)
    data = report_dict(an, list(verdict.values()), line)
    check = lr_check(df, analyse, an.baseline, reference=an)
    data["lr_check"] = check
    data["baseline_recipe"] = scope.get("baseline_recipe")
    pngs = make_figures(an)
    figures = {k: (f"figures/{k}.png", png, cap) for k, (png, cap) in pngs.items()}
    blocks = build_blocks(an, df, name, scope, line, verdict, figures, out_dir)
    at = next((i for i, b in enumerate(blocks) if b.kind == "h2" and b.text == "Conventions"),
              len(blocks))
    blocks[at:at] = lr_check_blocks(check, an.baseline)
    return data, blocks, {k: png for k, (png, _) in pngs.items()}


def write_report(out_dir: str | os.PathLike, *, baseline: str | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                 probes: str | os.PathLike | None = None) -> dict[str, Path]:
    """Build ``DIR/report.{json,md,html}`` and ``DIR/figures/*.png`` (see the module
    docstring); returns name -> path of every file written (``"json"``, ``"md"``,
    ``"html"``, one per figure). ``probes``: a probe folder (``postformer probe``) whose
    scores are set beside the efficiency factors (``scaling.report.probe.beside_study``).
    Raises ResultsError for a missing or bad results table and ValueError for an unknown
    baseline or a probe folder without results."""
    out_dir = Path(out_dir)
    if (out_dir / "runs").is_dir() or (out_dir / "tune").is_dir():
        write_results(out_dir)
    df, spec, scope = load_inputs(out_dir)
    baseline = baseline or spec.get("baseline") or None
    an = analyse(df, baseline=baseline, n_boot=n_boot, seed=seed)
    name = str(spec.get("name") or out_dir.resolve().name)
    data, blocks, pngs = build_report(an, df, name=name, scope=scope, out_dir=out_dir)
    if probes is not None:
        probe_blocks, data["probes"] = beside_study(an, probes)
        at = next((i for i, b in enumerate(blocks) if b.kind == "h2" and b.text == "Figures"),
                  len(blocks))
        blocks[at:at] = probe_blocks

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
