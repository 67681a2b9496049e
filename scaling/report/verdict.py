"""``report.json``: the analysis as strict JSON (what ``scaling.report.study`` writes beside
the markdown and HTML), plus the two facts both renderings share: why an arch has no efficiency
factor, and the de-duplicated warnings."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..fit import Analysis, ArchVerdict, Estimate, percentile
from ..fit.isoflop import Minimum
from ..numbers import finite, fmt_est, fmt_flops, fmt_sig


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



#: how the report names each FLOP convention
CONVENTION_NAMES = {"causal": "causal", "chinchilla": "Chinchilla", "6ND": "6ND",
                    "as given": "as given"}


def why_no_efficiency(an: Analysis, arch: str) -> str:
    """Why ``arch``'s efficiency factor is withheld or not identifiable (empty when it has
    one)."""
    base = an.baseline
    v = an.verdicts[arch]
    if v.efficiency_withheld:
        return v.efficiency_withheld
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
    if v.efficiency is None or not finite(v.efficiency.estimate):
        return "the joint fit's exponent is not positive"
    return ""




def all_warnings(an: Analysis) -> list[str]:
    extra = an.joint.warnings if an.joint is not None else []
    return list(dict.fromkeys([*an.warnings, *extra]))


# --------------------------------------------------------------------------- report.json


def joint_params(an: Analysis) -> dict[str, Any] | None:
    """E, k, gamma of the baseline's joint-fit curve with bootstrap intervals."""
    j = an.joint
    if j is None:
        return None
    E, k, g = j.params(an.baseline)
    if j.boot is not None:
        reps = np.array([j.params(an.baseline, th) for th in j.boot])  # (R, 3)
        ests = [percentile(x, reps[:, i]) for i, x in enumerate((E, k, g))]
    else:
        ests = [Estimate(x) for x in (E, k, g)]
    return {"E": ests[0], "k": ests[1], "gamma": ests[2]}


def free_gammas(an: Analysis) -> dict[str, Estimate] | None:
    f = an.free
    if f is None:
        return None
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
            "reason": m.reason, "n_sizes": m.n_sizes, "n_seeds": m.n_seeds,
            "interior_fraction": m.interior_fraction}


def _withheld_dict(e: Estimate | None, withheld: str) -> dict[str, Any]:
    d = _est_dict(e)
    return {**d, "withheld": withheld} if withheld else d


def _allocation_dict(al: dict[str, Any] | None) -> dict[str, Any] | None:
    if al is None:
        return None
    return {"N_opt_exponent": _est_dict(al["N_opt_exponent"]),
            "D_opt_exponent": _est_dict(al["D_opt_exponent"]),
            "n_budgets": al["n_budgets"], "note": al["note"] or None}


def report_dict(an: Analysis, verdict: list[str], scope: str) -> dict[str, Any]:
    """The machine-readable report (see the module docstring); strict-JSON-ready."""
    archs: dict[str, Any] = {}
    for a in an.archs:
        v: ArchVerdict = an.verdicts[a]
        e = an.efficiency_of(a)
        d: dict[str, Any] = {
            "efficiency": _withheld_dict(e, v.efficiency_withheld),
            "exponent_differs": v.exponent_differs,
            "loss_gap": [g.as_dict() for g in v.loss_gap],
            "lr": an.lr[a].as_dict() if a in an.lr else None,
        }
        note = (None if e is not None else f"withheld: {v.efficiency_withheld}"
                if v.efficiency_withheld else f"not identifiable: {why_no_efficiency(an, a)}")
        if note or v.efficiency_note:
            d["efficiency_note"] = note or v.efficiency_note
        d["efficiency_mc_error"] = e.mc_error if e is not None else None
        d["exponent_words"] = v.exponent_words or None
        d["gamma_diff"] = _est_dict(v.gamma_diff, mc=True) if v.gamma_diff else None
        d["minima"] = [_minimum_dict(m) for m in v.minima]
        d["inverted_multiplier"] = [x.as_dict() for x in v.inverted]
        d["efficiency_own_slope"] = (_est_dict(v.efficiency_own_slope)
                                     if v.efficiency_own_slope is not None else None)
        d["efficiency_by_convention"] = {
            n: _withheld_dict(x, v.efficiency_withheld if x is None else "")
            for n, x in v.efficiency_by_convention.items()}
        d["allocation"] = _allocation_dict(v.allocation)
        d["conventions"] = dict(v.conventions)
        d["wallclock_efficiency"] = v.wallclock
        d["extrapolation"] = v.extrapolation
        d["n_runs"] = v.n_runs
        d["n_seeds"] = v.n_seeds
        archs[a] = d
    jp = joint_params(an)
    joint = None
    if an.joint is not None and jp is not None:
        joint = {"E": jp["E"].estimate, "k": jp["k"].estimate, "gamma": jp["gamma"].estimate,
                 "intervals": {n: _est_dict(x) for n, x in jp.items()},
                 "n_points": an.joint.n_points, "n_params": an.joint.design.P,
                 "E_degenerate": bool(an.joint.E_at_floor()), "archs": an.joint.design.archs,
                 "warnings": list(an.joint.warnings)}
    fg = free_gammas(an)
    out = {
        "baseline": an.baseline,
        "archs": archs,
        "warnings": all_warnings(an),
        "verdict": verdict,
        "scope": scope,
        "budgets": an.budgets,
        "headline_convention": an.headline_convention,
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


# --------------------------------------------------------------------------- the terminal


def _fmt_json_est(d: dict[str, Any] | None, spec: str | None = None) -> str:
    """``estimate [low, high]`` of a report.json estimate dict."""
    if d is None or d.get("estimate") is None:
        return "–"
    return fmt_est(Estimate(d["estimate"], *(math.nan if d.get(k) is None else d[k]
                                              for k in ("low", "high"))), spec)


def summary_lines(rep: dict[str, Any]) -> list[str]:
    """One line per architecture of a report.json (what ``postformer report`` prints): the
    efficiency factor under the headline FLOP convention with its interval (or why it is
    withheld), its range across the conventions, the loss gap at the largest budget where
    both minima are interior, and the N_opt exponent."""
    base, conv = rep["baseline"], rep.get("headline_convention", "as given")
    lines = []
    for a, v in rep["archs"].items():
        parts = []
        if a == base:
            parts.append("baseline")
        else:
            e = v["efficiency"]
            if e.get("withheld"):
                parts.append(f"m withheld: {e['withheld']}")
            elif e["estimate"] is None:
                parts.append(f"m {v.get('efficiency_note') or 'not identifiable'}")
            else:
                parts.append(f"m = {_fmt_json_est(e)} ({CONVENTION_NAMES.get(conv, conv)} FLOPs)")
            ests = [x["estimate"] for x in v.get("efficiency_by_convention", {}).values()
                    if x["estimate"] is not None]
            if len(ests) > 1:
                parts.append(f"{fmt_sig(min(ests))}-{fmt_sig(max(ests))} across "
                             f"{len(ests)} FLOP conventions")
            gaps = [g for g in v["loss_gap"] if g["estimate"] is not None]
            parts.append(f"loss gap at {fmt_flops(gaps[-1]['flops'])}: "
                         f"{_fmt_json_est(gaps[-1], '+.4f')} nats" if gaps
                         else "no loss gap (no budget where both minima are interior)")
        al = v.get("allocation")
        parts.append(f"N_opt ~ C^{_fmt_json_est(al['N_opt_exponent'])}"
                     + (" (two budgets)" if al["n_budgets"] == 2 else "") if al
                     else "N_opt exponent: fewer than two interior budgets")
        lines.append(f"{a}: " + "; ".join(parts))
    return lines
