"""The tuned LR's sensitivity check (``scaling.fit.sensitivity.lr_check``): the baseline's run
at its top budget's middle size, retrained at x0.5 and x2 its LR, moves the verdict by what an
independent refit of that budget's parabola says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic import simulate  # tests/scaling/synthetic.py

from postformer.scaling.fit import analyse
from postformer.scaling.fit.sensitivity import lr_check


def _table() -> tuple[pd.DataFrame, str, float]:
    df = simulate({"transformer": 1.0, "gdn": 2.0}, seed=4)
    df["lr"] = 1e-3
    top = df["budget_flops"].max()
    at = df[(df["arch"] == "transformer") & (df["budget_flops"] == top)]
    size = at.groupby("size")["seed"].nunique().idxmax()  # the middle size (extra seeds)
    base = at[(at["size"] == size) & (at["seed"] == 0)].iloc[0]
    checks = []
    for m, delta in ((0.5, 0.01), (2.0, -0.008)):
        row = base.copy()
        row["stage"], row["lr"], row["loss"] = "lrcheck", 1e-3 * m, base["loss"] + delta
        row["trajectory"] = f"lrcheck-{m}"
        checks.append(row)
    return pd.concat([df, pd.DataFrame(checks)], ignore_index=True), size, top


def _vertex(x: np.ndarray, y: np.ndarray) -> float:
    c2, c1, c0 = np.polyfit(x, y, 2)
    t = -c1 / (2 * c2)
    return float(c2 * t * t + c1 * t + c0)


def test_lr_check_moves_the_verdict_by_the_refit():
    df, size, top = _table()
    out = lr_check(df, analyse, "transformer")
    assert out is not None and out["size"] == size and out["flops"] == top
    assert [r["multiplier"] for r in out["runs"]] == pytest.approx([0.5, 2.0])
    assert [r["delta"] for r in out["runs"]] == pytest.approx([0.01, -0.008])
    main = df[df["stage"] == "main"]
    g = main[(main["arch"] == "gdn") & (main["budget_flops"] == top)]
    L_gdn = _vertex(np.log(g["N"].to_numpy()), g["loss"].to_numpy())
    b = main[(main["arch"] == "transformer") & (main["budget_flops"] == top)]
    for run, delta in zip(out["runs"], (0.01, -0.008)):
        y = b["loss"].to_numpy() + np.where(b["size"] == size, delta, 0.0)
        want = L_gdn - _vertex(np.log(b["N"].to_numpy()), y)
        assert run["archs"]["gdn"]["loss_gap"] == pytest.approx(want, abs=1e-6)
    # a worse baseline (x0.5) flatters the challenger, a better one (x2) does not
    eff = [r["archs"]["gdn"]["efficiency"] for r in out["runs"]]
    tuned = out["tuned"]["gdn"]["efficiency"]
    assert eff[0] > tuned > eff[1]
    # the check's rows stay out of the study's own fits
    plain = analyse(df[df["stage"] != "lrcheck"], n_boot=10, conventions=False)
    assert analyse(df, n_boot=10, conventions=False).efficiency_of("gdn").estimate == pytest.approx(
        plain.efficiency_of("gdn").estimate, rel=1e-9)


def test_no_check_rows_no_check():
    df = simulate({"transformer": 1.0, "gdn": 2.0}, seed=1)
    assert lr_check(df, analyse, "transformer") is None
