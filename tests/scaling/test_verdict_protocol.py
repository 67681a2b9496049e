"""The verdict's protocol (issue 25): the efficiency factor only where the baseline has a
curve, the interior test made again in every bootstrap replicate, the factor under the
baseline's own slope, every FLOP convention with its interval, Approach 2's allocation
exponents, and the warnings a one-arch table does (not) get. Expected values come from the
synthetic law (tests/scaling/synthetic.py) or from a computation in the test, never from the
code under test."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from synthetic import ALPHA, BETA, frontier, law, simulate

from postformer.scaling.cli import report_main
from postformer.scaling.fit import analyse, read_results
from postformer.scaling.report import write_report

FIVE = (1e18, 4e18, 1.6e19, 6.4e19, 2.56e20)
#: Chinchilla's law at C = 6ND: N_opt ~ C^(beta / (alpha + beta)), D_opt ~ C^(alpha / ...)
A_TRUE, B_TRUE = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)


# --------------------------------------------------------------------------- allocation


def test_allocation_exponents_recover_the_law():
    """N_opt ~ C^a and D_opt ~ C^b over five budgets with noise: within 0.05 of the law's
    beta / (alpha + beta) and alpha / (alpha + beta), the intervals covering them."""
    an = analyse(simulate({"transformer": 1.0}, seed=1, budgets=FIVE), n_boot=600, seed=0)
    al = an.verdicts["transformer"].allocation
    assert al["n_budgets"] == 5 and al["note"] == ""
    a, b = al["N_opt_exponent"], al["D_opt_exponent"]
    assert a.estimate == pytest.approx(A_TRUE, abs=0.05) and a.contains(A_TRUE), a
    assert b.estimate == pytest.approx(B_TRUE, abs=0.05) and b.contains(B_TRUE), b
    assert a.high - a.low < 0.15


def test_allocation_intervals_cover_in_most_studies():
    covered = 0
    for s in range(10):
        an = analyse(simulate({"transformer": 1.0}, seed=200 + s, budgets=FIVE), n_boot=300,
                     seed=s, conventions=False)
        covered += an.verdicts["transformer"].allocation["N_opt_exponent"].contains(A_TRUE)
    assert covered >= 7, covered


def test_allocation_with_two_budgets_says_so():
    an = analyse(simulate({"transformer": 1.0}, seed=3, budgets=(1e18, 4e18)), n_boot=100)
    al = an.verdicts["transformer"].allocation
    assert al["n_budgets"] == 2 and "line through two points" in al["note"]


# --------------------------------------------------------------------------- one arch


def test_one_arch_gets_no_comparison_warnings_and_an_exact_extrapolation_warning():
    """One arch, four budgets: the extrapolation refit has 3 minima for 3 parameters (E, k,
    gamma), exactly determined; nothing about a baseline or an exponent test."""
    an = analyse(simulate({"transformer": 1.0}, seed=5, budgets=FIVE[:4]), n_boot=100)
    assert any("extrapolation check: 3 minima for 3 parameters: exactly determined" in w
               for w in an.warnings), an.warnings
    assert not [w for w in an.warnings if "exponent test" in w or "baseline" in w], an.warnings


# --------------------------------------------------------------------------- withheld


def _parabola_min(x, y):
    c2, c1, c0 = np.polyfit(x, y, 2)
    assert c2 > 0
    return c0 - c1 * c1 / (4 * c2)


def _one_interior_baseline(seed=2):
    """The transformer's sizes at the three lower budgets all below its optimum (noise-free
    losses: the lowest at the largest size), so it is interior at the top budget only."""
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=seed, budgets=FIVE[:4])
    low = sorted(df["budget_flops"].unique())[:3]
    sel = (df["arch"] == "transformer") & df["budget_flops"].isin(low)
    df.loc[sel, "N"] = df.loc[sel, "N"] / 6
    df.loc[sel, "D"] = df.loc[sel, "budget_flops"] / (6 * df.loc[sel, "N"])
    df.loc[sel, "loss"] = law(df.loc[sel, "N"], df.loc[sel, "D"])
    return df


def test_efficiency_is_withheld_when_the_baseline_is_interior_at_one_budget(tmp_path):
    df = _one_interior_baseline()
    an = analyse(df, n_boot=300)
    base = an.verdicts["transformer"]
    assert [m.interior for m in base.minima] == [False, False, False, True]
    v = an.verdicts["fast"]
    assert v.efficiency is None and an.efficiency_of("fast") is None
    assert "interior minimum at one budget only (6.4e+19 FLOPs)" in v.efficiency_withheld
    assert "no curve" in v.efficiency_withheld
    assert all(x is None for x in v.efficiency_by_convention.values())
    assert v.efficiency_own_slope is None
    assert all(math.isnan(x) for x in v.conventions.values())
    # the loss gap at the top budget stands: the difference of the two parabolas' minima
    top = max(df["budget_flops"])
    want = []
    for arch in ("fast", "transformer"):
        g = df[(df["arch"] == arch) & (df["budget_flops"] == top)]
        want.append(_parabola_min(np.log(g["N"].to_numpy()), g["loss"].to_numpy()))
    gap = next(g for g in v.loss_gap if g.budget == top)
    assert gap.value.estimate == pytest.approx(want[0] - want[1], abs=1e-9)
    assert gap.value.low < gap.value.estimate < gap.value.high
    # the report: null with the reason, the summary speaks of the loss gap
    df.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, n_boot=100)
    rep = json.loads((tmp_path / "report.json").read_text())
    e = rep["archs"]["fast"]["efficiency"]
    assert e["estimate"] is None and e["low"] is None and e["high"] is None
    assert "one budget only" in e["withheld"]
    conv = rep["archs"]["fast"]["efficiency_by_convention"]
    assert conv and all(x["estimate"] is None and x["withheld"] for x in conv.values())
    line = next(x for x in rep["verdict"] if x.startswith("fast"))
    assert "withheld" in line and "6.4e+19 FLOPs" in line and "L_opt(fast)" in line
    md = (tmp_path / "report.md").read_text()
    assert "| fast | withheld |" in md


# --------------------------------------------------------------------------- selection


def test_a_minimum_near_the_edge_is_interior_in_some_replicates_only():
    """The baseline's middle budget sampled so its optimum sits near the largest size (the
    sizes, span 2.2 around the optimum, divided by 2.7; the same noise): interior in the point
    fit, at the edge in some replicates. The factor is undefined in the replicates where the
    baseline keeps fewer than two budgets."""
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=8, sd_traj=0.006)
    mid = sorted(df["budget_flops"].unique())[1]
    sel = (df["arch"] == "transformer") & (df["budget_flops"] == mid)
    N0 = df.loc[sel, "N"].copy()
    noise = df.loc[sel, "loss"] / law(N0, mid / (6 * N0))
    df.loc[sel, "N"] = N0 / 2.7
    df.loc[sel, "D"] = mid / (6 * df.loc[sel, "N"])
    df.loc[sel, "loss"] = law(df.loc[sel, "N"], df.loc[sel, "D"]) * noise
    an = analyse(df, n_boot=400)
    m = next(m for m in an.verdicts["transformer"].minima if m.budget == mid)
    assert m.interior, m.reason
    assert 0 < m.interior_fraction < 1, m.interior_fraction
    e = an.verdicts["fast"].efficiency
    assert e is not None and e.n_ok < 400


# --------------------------------------------------------------------------- conventions


def test_flop_conventions_each_with_an_interval():
    """C_causal = C, C_full = 2 C for the baseline only. Under a shared slope the
    baseline's curve L = E + k C^-g reads E + (k 2^g) C_full^-g in the Chinchilla count;
    the arch (C_full = C) keeps E + k (m C)^-g = E + (k 2^g) (m' C)^-g with m' = 2 m. The
    fit's family is closed under that change, so the Chinchilla factor is twice the causal
    one, replicate by replicate (same minima, same bootstrap), and so are the interval ends."""
    df = simulate({"transformer": 1.0, "fast": 2.0, "slow": 0.6}, seed=4)
    df["C_causal"] = df["C"]
    df["C_full"] = np.where(df["arch"] == "transformer", 2 * df["C"], df["C"])
    an = analyse(df, n_boot=400)
    assert an.headline_convention == "causal"
    for arch in ("fast", "slow"):
        conv = an.verdicts[arch].efficiency_by_convention
        assert list(conv) == ["causal", "chinchilla", "6ND"]
        causal, full = conv["causal"], conv["chinchilla"]
        assert causal.estimate == pytest.approx(an.verdicts[arch].efficiency.estimate)
        assert full.estimate == pytest.approx(2 * causal.estimate, rel=1e-3)
        assert full.low == pytest.approx(2 * causal.low, rel=2e-2)
        assert full.high == pytest.approx(2 * causal.high, rel=2e-2)
        # C = 6ND in the synthetic table: 6ND is the causal count here
        assert conv["6ND"].estimate == pytest.approx(causal.estimate, rel=1e-6)
    # the headline column is C when no convention's column equals it
    df2 = df.copy()
    df2["C"] = df2["C"] * np.where(df2["arch"] == "fast", 1.5, 1.0)
    an2 = analyse(df2, n_boot=100)
    assert an2.headline_convention == "as given"
    assert list(an2.verdicts["fast"].efficiency_by_convention) == [
        "as given", "causal", "chinchilla", "6ND"]


def test_summary_gives_the_range_across_conventions(tmp_path):
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=4)
    df["C_causal"] = df["C"]
    df["C_full"] = np.where(df["arch"] == "transformer", 2 * df["C"], df["C"])
    df.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, n_boot=200)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["headline_convention"] == "causal"
    conv = rep["archs"]["fast"]["efficiency_by_convention"]
    assert set(conv) == {"causal", "chinchilla", "6ND"}
    assert all(set(x) == {"estimate", "low", "high"} for x in conv.values())
    line = next(x for x in rep["verdict"] if x.startswith("fast"))
    assert "depending on how FLOPs are counted" in line
    assert "Chinchilla:" in line and "causal, the headline:" in line and "6ND:" in line


# --------------------------------------------------------------------------- own slope


def test_own_slope_factor_on_a_steeper_arch(tmp_path):
    """An arch whose reducible loss shrinks by an extra (C / 1e18)^-0.05: at its top minimum's
    loss L*, the baseline needs C_b with frontier(C_b) = L*, the arch C_top. The factor under
    each arch's own slope is C_b / C_top (the law's frontier, solved here by bisection);
    under the shared slope the factor is an average over the budgets, so it is smaller and
    its interval leaves the own-slope factor out."""
    budgets = (1e18, 4e18, 1.6e19, 6.4e19)
    df = simulate({"transformer": 1.0}, seed=3, budgets=budgets)
    steep = df.copy()
    steep["arch"] = "steep"
    steep["trajectory"] = "steep-" + steep["trajectory"]
    steep["loss"] = 1.69 + (df["loss"] - 1.69) * (df["C"] / 1e18) ** -0.05
    both = pd.concat([df, steep])
    an = analyse(both, n_boot=600)
    top = budgets[-1]
    L_star = 1.69 + (frontier(top)[0] - 1.69) * (top / 1e18) ** -0.05
    lo, hi = math.log(top), math.log(top * 100)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if frontier(math.exp(mid))[0] > L_star else (lo, mid)
    want = math.exp(lo) / top
    own = an.verdicts["steep"].efficiency_own_slope
    shared = an.verdicts["steep"].efficiency
    assert own.estimate == pytest.approx(want, rel=0.25), (own, want)
    assert own.low < want < own.high
    assert shared.high < own.estimate
    both.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, n_boot=200)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert set(rep["archs"]["steep"]["efficiency_own_slope"]) == {"estimate", "low", "high"}
    line = next(x for x in rep["verdict"] if x.startswith("steep"))
    assert "the interval understates model uncertainty: under the baseline's own slope" in line


# --------------------------------------------------------------------------- bare table


def test_bare_published_table_through_analyse_and_the_report(tmp_path, capsys):
    """arch, N, D, C, loss only (a published IsoFLOP table): allocation exponents, the
    factor as given and under 6ND, interior fractions, and the terminal summary."""
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=6, budgets=FIVE[:4], extra_seeds=0)
    rng = np.random.default_rng(0)
    df["C"] = df["C"] * (1 + rng.uniform(-0.01, 0.01, len(df)))
    df[["arch", "N", "D", "C", "loss"]].to_csv(tmp_path / "results.csv", index=False)
    an = analyse(read_results(tmp_path / "results.csv"), n_boot=300)
    assert an.headline_convention == "as given"
    assert list(an.verdicts["fast"].efficiency_by_convention) == ["as given", "6ND"]
    for a in ("transformer", "fast"):
        al = an.verdicts[a].allocation
        assert al is not None and al["N_opt_exponent"].estimate == pytest.approx(A_TRUE, abs=0.1)
    report_main([str(tmp_path), "--n-boot", "200"])
    out = capsys.readouterr().out.strip().splitlines()
    assert [x.split(":")[0] for x in out] == ["transformer", "fast"]
    assert "m = " in out[1] and "loss gap at" in out[1] and "N_opt ~ C^" in out[1]
    assert "across 2 FLOP conventions" in out[1]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["headline_convention"] == "as given"
    al = rep["archs"]["fast"]["allocation"]
    assert set(al["N_opt_exponent"]) == {"estimate", "low", "high"} and al["n_budgets"] >= 3
    assert all(0 <= m["interior_fraction"] <= 1 for m in rep["archs"]["fast"]["minima"])
    md = (tmp_path / "report.md").read_text()
    assert "## Allocation exponents (Approach 2)" in md


def test_lrcheck_rows_are_read_and_left_out_of_the_fits(tmp_path):
    """Rows of the LR check (stage lrcheck: the baseline at 0.5x/2x its tuned LR) parse, and
    no fit sees them: the minima are those of the table without them."""
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=9)
    check = df[(df["arch"] == "transformer") & (df["seed"] == 0)].head(4).copy()
    check["stage"], check["loss"], check["lr"] = "lrcheck", check["loss"] + 5.0, 1e-3
    check["trajectory"] = "check-" + check["trajectory"]
    pd.concat([df, check]).to_csv(tmp_path / "results.csv", index=False)
    df.to_csv(tmp_path / "plain.csv", index=False)
    with_check = analyse(read_results(tmp_path / "results.csv"), n_boot=50)
    without = analyse(read_results(tmp_path / "plain.csv"), n_boot=50)
    got = [m.L_opt for m in with_check.verdicts["transformer"].minima]
    assert got == [m.L_opt for m in without.verdicts["transformer"].minima]
    assert with_check.verdicts["transformer"].n_runs == without.verdicts["transformer"].n_runs


def test_an_aa_table_reads_as_indistinguishable_under_every_count():
    """The baseline against itself under other seeds (the calibration study's A/A arm): every
    convention's interval covers 1 and the summary says so, not that the direction depends on
    the count."""
    from postformer.scaling.report.study import verdict_sentence

    df = simulate({"transformer": 1.0, "again": 1.0}, seed=1)
    df["C_causal"], df["C_full"] = df["C"], 1.3 * df["C"]  # a count scaled alike for both
    an = analyse(df, n_boot=200, conventions=False)
    convs = an.verdicts["again"].efficiency_by_convention
    assert len(convs) >= 2 and all(x.contains(1.0) for x in convs.values())
    text = verdict_sentence(an, "again")
    assert "not distinguishable from the transformer under any FLOP count" in text
    assert "depends on the count" not in text
