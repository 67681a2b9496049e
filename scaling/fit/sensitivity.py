"""The tuned LR's sensitivity check (``tune.check`` of a study): how far the verdict moves
when the baseline's run at its top budget's middle size trains at a multiple of its tuned LR.

The study trains that run once more at each multiple (stage ``lrcheck``, the first seed).
For each multiple ``m``, ``delta = loss(m x lr) - loss(lr)`` of that seed; the table is
re-analysed with every seed of the baseline at that (size, budget) shifted by ``delta`` (one
seed's difference stands for the mean's), and the report gives each arch's efficiency
factor (or, where it is withheld, its loss gap at that budget) at ``m = 1`` and at each
``m``. A ``delta < 0`` says the tuned LR was not the best there, and the shifted verdict is
the one a better-tuned baseline would have given at that point."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .table import json_float


def _reading(an: Any, arch: str, budget: float) -> dict[str, float | None]:
    """An arch's efficiency factor (None when withheld) and loss gap at ``budget``."""
    eff = an.efficiency_of(arch)
    gap = next((g for g in an.verdicts[arch].loss_gap if math.isclose(g.budget, budget)), None)
    return {"efficiency": json_float(eff.estimate) if eff is not None else None,
            "loss_gap": (json_float(gap.value.estimate) if gap is not None and gap.value is not None
                         else None)}


def lr_check(df: pd.DataFrame, analyse: Callable[..., Any], baseline: str,
             reference: Any | None = None) -> dict[str, Any] | None:
    """The sensitivity check of a results table with ``stage == "lrcheck"`` rows (see the
    module docstring); None without them. ``analyse``: ``scaling.fit.analyse`` (point
    estimates are read, so a few replicates do); ``reference``: the study's own analysis
    (``m = 1``), recomputed when not given."""
    if "stage" not in df:
        return None
    checks = df[(df["stage"] == "lrcheck") & (df["arch"] == baseline)]
    if checks.empty:
        return None
    main = df[df["stage"].fillna("main") == "main"]
    first = checks.iloc[0]
    at = (main["arch"] == baseline) & (main["size"] == first["size"]) & np.isclose(
        main["budget_flops"].astype(float), float(first["budget_flops"]))
    mine = main[at & (main["seed"] == first["seed"])]
    if mine.empty:
        return None
    base_loss, base_lr = float(mine["loss"].iloc[0]), float(mine["lr"].iloc[0])
    budget = float(first["budget_flops"])
    ref = reference if reference is not None else analyse(df, baseline=baseline, n_boot=10,
                                                          conventions=False)
    archs = [a for a in ref.archs if a != baseline]
    out = {"size": str(first["size"]), "flops": budget, "seed": int(first["seed"]),
           "lr": base_lr, "loss": base_loss,
           "tuned": {a: _reading(ref, a, budget) for a in archs}, "runs": []}
    for _, row in checks.sort_values("lr").iterrows():
        delta = float(row["loss"]) - base_loss
        shifted = df.copy()
        rows = (shifted["stage"].fillna("main") == "main") & (shifted["arch"] == baseline) & (
            shifted["size"] == first["size"]) & np.isclose(shifted["budget_flops"].astype(float), budget)
        shifted.loc[rows, "loss"] = shifted.loc[rows, "loss"] + delta
        an = analyse(shifted, baseline=baseline, n_boot=10, conventions=False)
        out["runs"].append({"multiplier": json_float(float(row["lr"]) / base_lr),
                            "lr": float(row["lr"]), "loss": float(row["loss"]), "delta": delta,
                            "archs": {a: _reading(an, a, budget) for a in archs}})
    return out
