"""The LR protocol of issue 25: sweeps at 3+ sizes over the whole main grid, more seeds where
asked, the law's exponent with an interval inside its prior range, flat sweeps named, and the
tuned LR's sensitivity check (stage ``lrcheck``) planned at the baseline's top budget."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest

from postformer.scaling.fit.lr import EXPONENT_RANGE, lr_sweeps
from postformer.scaling.run.plan import plan, plan_tune, tune_seeds, tune_sizes
from postformer.scaling.spec import StudyError, study_from_dict

ISO = {
    "name": "iso",
    "archs": {"transformer": "transformer", "mamba2": "mamba2"},
    "ladder": {"knob": "width", "d_model": [16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128],
               "n_layers": 4, "head_dim": 16, "d_state": 16},
    "budgets": {"flops": [4e11, 1.6e12], "sizes": 5},
    "tune": {"lr": {"center": 3e-3, "points": 5, "factor": 2}, "sizes": 3, "flops": 4e11,
             "seeds": {"transformer": [0, 1], "default": [0]}, "check": [0.5, 2]},
    "seeds": [0],
    "headline_seeds": {"seeds": [1, 2]},
    "data": {"seq_len": 64, "batch_size": 2, "max_bytes": 150_000},
    "trainer": {"accelerator": "cpu"},
}


def _sweep_table(b_true: float, seeds: int, noise: float, rng, sizes=(2e4, 5e4, 1.2e5)) -> pd.DataFrame:
    """Loss = 2 + 0.3 (ln lr - ln lr*(N))^2 + noise, lr*(N) = 0.02 (N / 1e4)^b_true, on a grid
    of 7 LRs 2x apart around each size's optimum."""
    rows = []
    for N in sizes:
        opt = 0.02 * (N / 1e4) ** b_true
        for k in range(-3, 4):
            lr = opt * 2.0 ** (k + 0.3)  # the optimum between grid points
            for seed in range(seeds):
                rows.append({"arch": "x", "stage": "tune", "N": N, "lr": lr, "seed": seed,
                             "size": f"n{int(N)}",
                             "loss": 2 + 0.3 * math.log(lr / opt) ** 2 + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_law_exponent_interval_covers_the_truth():
    rng = np.random.default_rng(3)
    hits = 0
    for rep in range(8):
        sw = lr_sweeps(_sweep_table(-0.5, 2, 0.01, rng), seed=rep)["x"]
        est, lo, hi = sw.exponent
        assert lo < est < hi and abs(est + 0.5) < 0.25
        hits += lo <= -0.5 <= hi
        assert sw.seed_sd == pytest.approx(0.01, rel=0.5)
        assert sw.span == pytest.approx(6.0)
        assert not sw.clipped and not sw.flat
    assert hits >= 6  # a 95% interval covers the truth in most of 8 tables


def test_flat_sweep_is_named_and_exponent_clipped_to_the_prior():
    rng = np.random.default_rng(0)
    df = _sweep_table(0.8, 2, 0.2, rng)  # noise far above the sweep's depth near its optimum
    sw = lr_sweeps(df)["x"]
    assert len(sw.flat) >= 2
    quiet = lr_sweeps(_sweep_table(0.8, 2, 0.002, rng))["x"]
    # the noise is in the interval: many times wider than a quiet sweep's
    assert sw.exponent[2] - sw.exponent[1] > 5 * (quiet.exponent[2] - quiet.exponent[1])
    assert quiet.exponent[0] == pytest.approx(0.8, abs=0.05)
    assert quiet.clipped and quiet.law[1] == EXPONENT_RANGE[1]


def test_tune_plan_seeds_sizes_and_budget():
    study = study_from_dict(copy.deepcopy(ISO), source="iso.yaml")
    assert tune_seeds(study, "transformer") == [0, 1] and tune_seeds(study, "mamba2") == [0]
    tune = plan_tune(study)
    for arch, seeds in (("transformer", 2), ("mamba2", 1)):
        mine = [p for p in tune if p.arch == arch]
        assert len(mine) == 3 * 5 * seeds
        names = tune_sizes(study, arch)
        Ns = {p.size: p.N for p in mine}
        # three sizes spread over the whole main grid: its smallest and largest included
        main_sizes = [p for p in plan(study, {}) if p.arch == arch and p.stage == "main"]
        assert min(Ns.values()) == min(p.N for p in main_sizes)
        assert max(Ns.values()) == max(p.N for p in main_sizes)
        assert len(names) == 3 and max(Ns.values()) / min(Ns.values()) >= 4
        for p in mine:
            assert p.runs[0].tokens * p.flops_per_token == pytest.approx(4e11, rel=0.02)
    dirs = [p.runs[0].run_dir for p in tune]
    assert len(set(dirs)) == len(dirs)
    assert any(d.endswith("-s1") for d in dirs) and not any(d.endswith("-s0") for d in dirs)


class _Law:
    def lr_for(self, N: float) -> float:
        return 1e-2 * (N / 1e4) ** -0.5


def test_lr_check_runs_at_the_baselines_top_budget_middle_size():
    study = study_from_dict(copy.deepcopy(ISO), source="iso.yaml")
    points = plan(study, {a: _Law() for a in study.archs})
    checks = [p for p in points if p.stage == "lrcheck"]
    assert len(checks) == 2 and {p.arch for p in checks} == {"transformer"}
    heads = {p.size for p in points if p.stage == "main" and p.arch == "transformer" and p.seed == 1
             and any(r.budget_flops == 1.6e12 for r in p.runs)}
    for p, m in zip(checks, (0.5, 2)):
        assert p.size in heads and p.seed == 0 and len(p.runs) == 1
        assert p.lr == pytest.approx(m * _Law().lr_for(p.N))
        assert p.runs[0].budget_flops == 1.6e12
        assert p.runs[0].tokens * p.flops_per_token == pytest.approx(1.6e12, rel=0.02)
    # before tuning (no LR law) nothing is planned
    assert not [p for p in plan(study, {}) if p.stage == "lrcheck"]


@pytest.mark.parametrize(("tune", "message"), [
    ({"check": [1.0, 2.0]}, r"tune.check: LR multipliers other than 1"),
    ({"seeds": {"nope": [0, 1]}}, r"tune.seeds.nope: is not one of the archs"),
    ({"seeds": []}, r"tune.seeds: must be a non-empty list"),
])
def test_tune_spec_errors(tune, message):
    spec = copy.deepcopy(ISO)
    spec["tune"] = {**spec["tune"], **tune}
    with pytest.raises(StudyError, match=message):
        study_from_dict(spec, source="iso.yaml")


def test_flop_counts_recorded_per_shape():
    study = study_from_dict(copy.deepcopy(ISO), source="iso.yaml")
    shape = study.shapes["transformer"][0]
    assert study.flops_count == "causal"
    assert shape.flops_per_token == shape.flops_by_count["causal"] < shape.flops_by_count["chinchilla"]
    full = study_from_dict({**copy.deepcopy(ISO), "budgets": {**ISO["budgets"], "count": "chinchilla"}})
    assert full.shapes["transformer"][0].flops_per_token == shape.flops_by_count["chinchilla"]
    with pytest.raises(StudyError, match="budgets.count: must be one of"):
        study_from_dict({**copy.deepcopy(ISO), "budgets": {**ISO["budgets"], "count": "6ND"}})


def test_seed_offset_and_borrowed_lr_for_calibration_studies():
    """configs/study/null.yaml's arms: the baseline under another seed stream (seed_offset) and
    the baseline at a quarter of its tuned LR (lr_from + lr_scale), which tunes nothing."""
    spec = copy.deepcopy(ISO)
    spec["archs"] = {"transformer": "transformer",
                     "again": {"preset": "transformer", "seed_offset": 1000},
                     "slow": {"preset": "transformer", "lr_from": "transformer", "lr_scale": 0.25}}
    spec["tune"] = {**spec["tune"], "seeds": [0]}
    study = study_from_dict(spec, source="null.yaml")
    tune = plan_tune(study)
    assert {p.arch for p in tune} == {"transformer", "again"}
    assert {p.seed for p in tune if p.arch == "again"} == {1000}
    points = [p for p in plan(study, {"transformer": _Law(), "again": _Law()}) if p.stage == "main"]
    by = {a: [p for p in points if p.arch == a] for a in study.archs}
    assert {p.seed for p in by["again"]} == {1000, 1001, 1002}
    assert {p.seed for p in by["slow"]} == {0, 1, 2}
    for p in by["slow"]:
        assert p.lr == pytest.approx(0.25 * _Law().lr_for(p.N))
    assert [(p.size, p.runs[0].tokens) for p in by["slow"]] == [(p.size, p.runs[0].tokens) for p in by["transformer"]]
    # a source with a fixed LR lends that LR, scaled
    fixed = copy.deepcopy(spec)
    fixed["archs"]["transformer"] = {"preset": "transformer", "model": {"lr": 4e-3}}
    fx = study_from_dict(fixed, source="null.yaml")
    assert [p.lr for p in plan(fx, {"again": _Law()}) if p.arch == "slow"] == pytest.approx([1e-3] * 12)
    for bad, message in (({"lr_from": "slow2"}, "lr_from: must name another arch"),
                         ({"lr_scale": 0}, "lr_scale: must be positive"),
                         ({"seed_offset": -1}, "seed_offset: must be an integer >= 0")):
        s = copy.deepcopy(spec)
        s["archs"]["slow"] = {"preset": "transformer", **bad}
        with pytest.raises(StudyError, match=message):
            study_from_dict(s, source="null.yaml")
