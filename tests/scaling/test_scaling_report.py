"""Comparison and report on synthetic studies whose answer is known.

The baseline follows Chinchilla's fitted law L(N, D) = E + A/N^alpha + B/D^beta with
C = 6ND. An architecture "k times more compute-efficient" has, at every (N, D), the
baseline's loss at (sqrt(k) N, sqrt(k) D): its whole compute frontier is the baseline's
shifted by k in compute, L_arch(C) = L_base(k C), so the true multiplier is k at every C.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from postformer.scaling.compare import compare, compare_table, exponent_table, group_budgets
from postformer.scaling.report import report_main, write_report

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
SIZES = np.logspace(7, 9, 5)
TOKENS = np.logspace(8.5, 10.5, 6)


def law(N, D):
    return E + A / np.asarray(N) ** ALPHA + B / np.asarray(D) ** BETA


def synthetic(archs: dict[str, float], *, noise: float = 0.0, seed: int = 0,
              sizes=SIZES, tokens=TOKENS) -> pd.DataFrame:
    """archs: label -> true compute multiplier against the law. Multiplicative log-normal
    noise of relative size ``noise`` on every loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for arch, k in archs.items():
        for i, N in enumerate(sizes):
            for D in tokens:
                loss = law(np.sqrt(k) * N, np.sqrt(k) * D) * np.exp(noise * rng.standard_normal())
                rows.append({
                    "arch": arch, "size": f"s{i}", "seed": 0, "budget_tokens": D, "N": N,
                    "N_non_emb": 0.9 * N, "D": D, "C": 6 * N * D, "C_6ND": 6 * N * D,
                    "loss": loss, "bpb": loss / np.log(2) / 3.6, "steps": int(D / 4096),
                    "wall_s": 1.0, "tokens_per_s": 1e5, "kind": "final",
                    "run_dir": f"runs/{arch}/s{i}/budget-{int(D)}",
                })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def noisy_comparison():
    df = synthetic({"transformer": 1.0, "fast": 2.0, "slow": 0.6}, noise=0.005, seed=1)
    return compare(df, n_boot=40, parametric_boot=0, seed=0)


def test_group_budgets():
    labels = group_budgets([1e18, 1.02e18, 4e18, 3.9e18, 1e19])
    assert len(np.unique(labels)) == 3
    assert labels[0] == labels[1] and labels[2] == labels[3]


@pytest.mark.parametrize("arch,k", [("fast", 2.0), ("slow", 0.6)])
def test_multiplier_recovers_known_k(noisy_comparison, arch, k):
    rows = noisy_comparison.budgets[arch]
    assert len(rows) >= 10
    # away from the ends of the measured range (where the envelope is thinnest), the
    # estimate is within 15% of k and the 95% interval covers k
    inner = [r for r in rows if not r.extrapolated][2:-2]
    assert inner
    for r in inner:
        assert r.multiplier.estimate == pytest.approx(k, rel=0.15), r
        assert r.multiplier.lo <= k <= r.multiplier.hi, r
        assert r.multiplier.n_ok >= 36


def test_loss_gap_sign(noisy_comparison):
    table = compare_table(noisy_comparison)
    fast, slow = table[table.arch == "fast"], table[table.arch == "slow"]
    assert (fast.gap < 0).all() and (slow.gap > 0).all()
    # the interval excludes 0 except, perhaps, at the ends of the measured range
    assert (fast.gap_hi.iloc[2:-2] < 0).all() and (slow.gap_lo.iloc[2:-2] > 0).all()
    assert (fast.multiplier > 1).all() and (slow.multiplier < 1).all()
    # the gap is the difference of the two fitted frontiers
    np.testing.assert_allclose(table.gap, table.loss_arch - table.loss_base)


def test_exponents_side_by_side_and_noise_free_extrapolation():
    df = synthetic({"transformer": 1.0, "fast": 2.0})
    cmp = compare(df, n_boot=10, parametric_boot=5)
    ex = exponent_table(cmp).set_index("arch")
    for arch in ("transformer", "fast"):
        # Approach 3 on noise-free data recovers the law's exponents (a shift in N and D
        # leaves alpha and beta unchanged)
        assert ex.loc[arch, "parametric.alpha"] == pytest.approx(ALPHA, rel=1e-3)
        assert ex.loc[arch, "parametric.beta"] == pytest.approx(BETA, rel=1e-3)
        assert ex.loc[arch, "parametric.a"] == pytest.approx(BETA / (ALPHA + BETA), rel=1e-3)
        assert np.isfinite(ex.loc[arch, "frontier.gamma_lo"])
        checks = {e.method: e for e in cmp.archs[arch].extrapolation}
        assert set(checks) == {"parametric", "frontier"}
        assert checks["parametric"].held_out_N == SIZES[-1]
        assert checks["parametric"].max_abs_rel_error < 1e-4
        assert checks["frontier"].max_abs_rel_error < 0.02
        assert not any("extrapolation check" in w for w in cmp.archs[arch].warnings)


def test_warnings_are_data():
    df = synthetic({"transformer": 1.0})
    lonely = synthetic({"tiny": 1.5}, sizes=SIZES[:1], tokens=TOKENS[:2])
    cmp = compare(pd.concat([df, lonely]), n_boot=5, parametric_boot=0)
    warnings = cmp.archs["tiny"].warnings
    assert any("only 2 point" in w for w in warnings)
    assert any("Approach 3 skipped" in w for w in warnings)
    assert any("no comparison" in w for w in warnings)
    assert cmp.budgets["tiny"] == []
    # a biased extrapolation is flagged: the largest size of "bent" is 10% worse than
    # the law predicts
    bent = synthetic({"bent": 1.0})
    bent.loc[bent.N == SIZES[-1], "loss"] *= 1.10
    cmp = compare(pd.concat([df, bent]), n_boot=5, parametric_boot=0)
    assert any("extrapolation check (parametric)" in w for w in cmp.archs["bent"].warnings)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        compare(df, baseline="nope")


def test_multiplier_beyond_baseline_range_is_flagged():
    # the baseline only measured small compute; "fast" at its largest budgets reaches losses
    # the baseline would need far more compute for
    base = synthetic({"transformer": 1.0}, sizes=SIZES[:3], tokens=TOKENS[:4])
    fast = synthetic({"fast": 4.0})
    cmp = compare(pd.concat([base, fast]), n_boot=10, parametric_boot=0)
    rows = cmp.budgets["fast"]
    assert rows[-1].extrapolated and not rows[0].extrapolated
    assert any("extrapolated" in w for w in cmp.archs["fast"].warnings)


def _study_dir(tmp_path, archs, baseline="transformer", name="synthetic"):
    df = synthetic(archs, noise=0.005, seed=2)
    df.to_csv(tmp_path / "results.csv", index=False)
    spec = {"name": name, "baseline": baseline, "archs": {a: a for a in archs},
            "budgets": {"tokens": [float(t) for t in TOKENS]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    return df


def test_write_report(tmp_path):
    archs = {"transformer": 1.0, "mamba2": 1.8, "gla": 0.7}
    df = _study_dir(tmp_path, archs)
    written = write_report(tmp_path, n_boot=20)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert written["md"] == tmp_path / "report.md"
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(pngs) >= 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = md.split("## Summary", 1)[1].split("##", 1)[0]
    for arch in ("mamba2", "gla"):
        line = next(x for x in summary.splitlines() if f"**{arch}**" in x)
        assert "reaches the transformer's loss with" in line and "x [" in line
    assert "synthetic" in md.splitlines()[0]
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "<table>" in page and "<img" in page and 'src="figures/' not in page
    # every point is in the points table, linked to its run folder
    for run_dir in df.run_dir:
        assert f"]({run_dir})" in md
        assert f'href="{run_dir}"' in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_main(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        report_main([str(tmp_path)])
    assert err.value.code == 2
    assert "results.csv not found" in capsys.readouterr().err

    _study_dir(tmp_path, {"transformer": 1.0, "mamba2": 2.0}, baseline="mamba2")
    report_main([str(tmp_path), "--n-boot", "5"])
    md = (tmp_path / "report.md").read_text()
    assert "reaches the mamba2's loss" in md  # study.yaml's baseline, not "transformer"
    assert "5 resamples" in md
    with pytest.raises(SystemExit):  # refused before any fit
        report_main([str(tmp_path), "--baseline", "nope"])
    assert "baseline 'nope'" in capsys.readouterr().err
