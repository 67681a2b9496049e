"""Scaling-law fits on CPU: Hoffmann's procedure (4,500 starts) on Epoch's 240 Chinchilla
runs, and one bootstrap refit from warm starts.

    pytest bench/test_fit.py --benchmark-enable
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from postformer.scaling.fit import fit_parametric

CSV = Path(
    os.environ.get(
        "POSTFORMER_CHINCHILLA_CSV",
        Path(__file__).resolve().parents[1] / "tests/scaling/data/chinchilla/svg_extracted_data.csv",
    )
)


@pytest.fixture(scope="module")
def chinchilla():
    if not CSV.is_file():
        pytest.skip(f"Chinchilla data not found at {CSV} (set POSTFORMER_CHINCHILLA_CSV)")
    import pandas as pd

    df = pd.read_csv(CSV).sort_values("loss").iloc[:-5]
    N, C, loss = (df[k].to_numpy() for k in ("Model Size", "Training FLOP", "loss"))
    return N, C / (6 * N), loss


def test_fit_parametric_chinchilla(benchmark, chinchilla):
    benchmark.group = "fit_parametric chinchilla (240 points)"
    benchmark.extra_info["impl"] = "4500 starts"
    fit = benchmark.pedantic(fit_parametric, args=chinchilla, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update(E=fit.E, alpha=fit.alpha, beta=fit.beta)


def test_fit_parametric_bootstrap_refit(benchmark, chinchilla):
    benchmark.group = "fit_parametric chinchilla (240 points)"
    benchmark.extra_info["impl"] = "warm starts"
    N, D, loss = chinchilla
    starts = fit_parametric(N, D, loss).warm_starts()
    idx = np.random.default_rng(0).integers(0, len(N), len(N))
    benchmark.pedantic(
        fit_parametric, args=(N[idx], D[idx], loss[idx]), kwargs={"starts": starts}, rounds=10
    )
