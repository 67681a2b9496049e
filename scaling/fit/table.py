"""The results table every analysis reads: ``DIR/results.csv``, one row per finished run.

Required columns: ``arch, N, D, C, loss``. Optional columns the analysis uses when present:

    seed          the run's seed (seed spread; several seeds of one point are fitted together)
    budget_flops  the IsoFLOP group (a nominal compute budget); without it, rows whose C lie
                  within 5% of each other (single linkage over the sorted values) form a group
    trajectory    the bootstrap cluster: a main run and the cooldowns branched off it share
                  one; without it every row is its own cluster
    stage         ``tune`` rows (learning-rate sweeps) and ``lrcheck`` rows (the baseline at a
                  multiple of its tuned LR) stay out of every fit; ``main`` or empty rows are
                  fitted
    lr            the peak learning rate of the run (LR sweeps)
    N_non_emb     parameters without embeddings (the conventions table)
    C_6ND         6 N D (a FLOP convention; computed when absent)
    C_causal      the causal FLOP count: attention's causal scores, chunked mixers' causal
                  intra-chunk blocks (a FLOP convention; absent in legacy and published tables)
    C_full        Chinchilla's full count: full T x T scores and chunk blocks (a convention)
    tokens_per_s  measured training throughput (the wall-clock view)
    size, bpb, kind, run_dir, ...   carried along for the report's tables

A row that does not parse is an error naming the file, its line and the column; so is a row
with more or fewer cells than the header (a line cut short: a truncated file).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REQUIRED = ("arch", "N", "D", "C", "loss")
#: numeric optional columns: (name, must be positive)
NUMERIC = {"N": True, "D": True, "C": True, "loss": True, "budget_flops": True,
           "N_non_emb": True, "C_6ND": True, "C_causal": True, "C_full": True, "tokens_per_s": True, "lr": True, "seed": False,
           "bpb": True, "wall_s": False, "steps": False}
STAGES = ("main", "tune", "lrcheck")
GROUP_RTOL = 0.05


class ResultsError(ValueError):
    """A results table that cannot be analysed; the message names the file, line and column."""


def _number(text: str, where: str, positive: bool) -> float:
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise ResultsError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(x) or (positive and x <= 0):
        want = "a finite positive number" if positive else "a finite number"
        raise ResultsError(f"{where}: {text!r} is not {want}")
    return x


def read_results(path: str | Path) -> pd.DataFrame:
    """Read and check a results table (see the module docstring).

    Returns a DataFrame with the required columns as floats (``arch`` as str), the optional
    ones parsed where present, ``stage`` filled with ``main``, ``trajectory`` with one id per
    row where absent, ``C_6ND`` computed where absent. Raises ResultsError naming the line
    (1-based, the header is line 1) of the first bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ResultsError(f"{path}: line 1: missing required column(s) {missing}; "
                               f"required: {list(REQUIRED)}, found: {header}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, object] = dict(raw)
            if None in row:  # more cells than header fields
                raise ResultsError(f"{path}: line {line}: {len(header) + len(row[None])} cells "
                                   f"for {len(header)} columns")
            if None in row.values():  # fewer: a line cut short (a truncated copy, a full disk)
                cells = sum(v is not None for v in row.values())
                raise ResultsError(f"{path}: line {line}: {cells} cells for {len(header)} "
                                   "columns, the line is cut short (a truncated file?); "
                                   "rebuild the table from the study folder (`postformer "
                                   "report DIR` rebuilds DIR/results.csv from DIR/runs/) or "
                                   "mend that line")
            if not (raw.get("arch") or "").strip():
                raise ResultsError(f"{path}: line {line}: column 'arch' is empty")
            row["arch"] = raw["arch"].strip()
            for col, positive in NUMERIC.items():
                text = raw.get(col)
                if text is None:
                    continue
                if col not in REQUIRED and text.strip() == "":
                    row[col] = math.nan  # an optional value left empty
                    continue
                row[col] = _number(text, f"{path}: line {line}: column {col!r}", positive)
            stage = (raw.get("stage") or "main").strip() or "main"
            if stage not in STAGES:
                raise ResultsError(f"{path}: line {line}: column 'stage': {stage!r} is not one "
                                   f"of {list(STAGES)}")
            if stage == "tune" and not (raw.get("lr") or "").strip():
                raise ResultsError(f"{path}: line {line}: a 'tune' row needs its 'lr'")
            row["stage"] = stage
            rows.append(row)
    if not rows:
        raise ResultsError(f"{path}: no rows (no run has finished yet?)")
    return normalise(pd.DataFrame(rows, columns=list(dict.fromkeys([*header, "stage"]))))


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the derived columns of a results table (in a copy): ``stage`` (main),
    ``trajectory`` (one per row), ``C_6ND`` (6ND), ``seed`` (0), ``N_non_emb`` (N).
    ``C_causal`` and ``C_full`` are optional FLOP conventions: floats where present (empty
    cells NaN), never made up where absent."""
    df = df.copy()
    for col in REQUIRED[1:]:
        df[col] = df[col].astype(float)
    for col in ("C_causal", "C_full"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["arch"] = df["arch"].astype(str)
    if "stage" not in df:
        df["stage"] = "main"
    df["stage"] = df["stage"].fillna("main").replace("", "main")
    if "trajectory" not in df or df["trajectory"].isna().all():
        df["trajectory"] = [f"row{i}" for i in range(len(df))]
    else:
        own = [f"row{i}" for i in range(len(df))]
        df["trajectory"] = [str(t) if isinstance(t, str) and t.strip() else o
                            for t, o in zip(df["trajectory"].fillna(""), own)]
    if "C_6ND" not in df or df["C_6ND"].isna().any():
        c6 = 6.0 * df["N"] * df["D"]
        df["C_6ND"] = c6 if "C_6ND" not in df else df["C_6ND"].fillna(c6)
    if "seed" not in df:
        df["seed"] = 0
    df["seed"] = df["seed"].fillna(0).astype(int)
    if "N_non_emb" not in df:
        df["N_non_emb"] = df["N"]
    df["N_non_emb"] = df["N_non_emb"].fillna(df["N"]).astype(float)
    # a trajectory belongs to one arch: make ids unique per arch
    df["trajectory"] = df["arch"] + "/" + df["trajectory"].astype(str)
    return df.reset_index(drop=True)


def group_budgets(values, rtol: float = GROUP_RTOL) -> np.ndarray:
    """Label each value with its budget: sorted values within ``rtol`` (relative) of the
    previous one chain into one group (single linkage), labelled by the group's geometric
    mean. ``(n,)`` -> ``(n,)``."""
    values = np.asarray(values, dtype=float).reshape(-1)
    labels = np.empty_like(values)
    if values.size == 0:
        return labels
    order = np.argsort(values, kind="stable")
    cuts = np.flatnonzero(np.diff(np.log(values[order])) > math.log1p(rtol)) + 1
    for idx in np.split(order, cuts):
        labels[idx] = float(np.exp(np.mean(np.log(values[idx]))))
    return labels


def budget_labels(df: pd.DataFrame, rtol: float = GROUP_RTOL) -> np.ndarray:
    """``(n,)`` the IsoFLOP group of each row: ``budget_flops`` where the table has it, else
    ``C`` grouped within ``rtol`` over all archs together (so archs share budgets)."""
    if "budget_flops" in df and df["budget_flops"].notna().all():
        return df["budget_flops"].to_numpy(float)
    return group_budgets(df["C"].to_numpy(float), rtol)


def json_float(x: Any) -> float | None:
    """JSON-safe float: None for NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
