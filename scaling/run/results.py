"""A study folder's finished runs as one tidy table: ``DIR/results.csv``.

One row per finished run, i.e. per (arch, size, seed, budget): the main run of a point
(``kind=final``) and each cooldown branched off it (``kind=cooldown``; with a cosine
schedule every budget is its own ``final`` run). Columns, in this order:

    arch, size, seed      the study's arch label, size name, seed
    stage                 main | tune | lrcheck (learning-rate tuning runs and the tuned LR's
                          sensitivity check stay out of the IsoFLOP fits)
    budget_flops          the IsoFLOP group's nominal compute (empty for token budgets)
    trajectory            the main run's folder: a main run and its cooldowns share one
                          (the bootstrap resamples them together)
    lr, warmup_steps      the peak LR and the warmup of the run
    budget_tokens         the budget asked for (tokens; after tokens_per_param / flops)
    N, N_non_emb          parameters with and without embeddings (``LanguageModel.num_params``)
    D                     tokens trained: steps * tokens_per_step (a cooldown counts the
                          shared stable phase too: it *is* a run of that many tokens)
    C                     arch.flops.flops_per_token(cfg, seq_len) * D under the study's
                          count (budgets.count, default causal)
    C_causal, C_full      the same under the causal count and under Chinchilla's full count
                          (runs laid out before issue 25 have neither; their C is the full count)
    C_6ND                 6 * N * D
    loss, bpb             the final val/loss (nats/token) and val/bpb of the run
    steps                 optimizer steps of the run (a cooldown: from 0, like a standalone run)
    wall_s                seconds this run's own training took (a cooldown: the decay only;
                          for runs launched outside the runner, the sum over its logged steps
                          of batch tokens / train/tokens_per_sec)
    tokens_per_s          median train/tokens_per_sec over the run's logged steps
    kind                  final | cooldown
    run_dir               the run folder, relative to DIR

Where a row comes from: ``RUN/run.json`` (written by the runner when it lays out the study:
arch, size, N, FLOPs per token, steps, ...) plus the run's ``metrics.csv``. A run is
finished when metrics.csv holds a validation at its last step. The runner stores the row as
``RUN/result.json`` when it finishes a run; runs launched by hand or by a scheduler from
``postformer study --list`` have no result.json and are read from their metrics.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from postformer.train.fileio import atomic_write

from ..fit.analysis import CONVENTION_COLUMNS
from ..fit.table import ResultsError

COLUMNS = ["arch", "size", "seed", "stage", "budget_flops", "trajectory", "lr", "warmup_steps",
           "budget_tokens", "N", "N_non_emb", "D", "C", "C_causal", "C_full", "C_6ND", "loss", "bpb", "steps",
           "wall_s", "tokens_per_s", "kind", "run_dir"]
CURVE_COLUMNS = ["arch", "size", "seed", "stage", "trajectory", "run_dir", "kind", "step",
                 "tokens", "val_loss", "val_bpb", "val_tokens"]


#: what to do about a damaged run.json, result.json of a run folder
RUN_JSON_FIX = ("run the study (or probe) again with its spec to rewrite it, or remove the run "
                "folder to train that run again")
RESULT_JSON_FIX = "remove it: the run's row is rebuilt from its metrics.csv"
TIMING_FIX = "remove it (the run's training time then counts from its next start)"


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file of a run or study folder; a damaged one (truncated, not JSON) is a
    ResultsError naming the file, what is wrong and ``fix``, what to do."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not valid JSON ({err}); the file is truncated or "
                           f"damaged: {fix}") from None


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _throughput(rows: list[dict[str, str]], start_step: int, batch_tokens: int) -> tuple[float, float]:
    """(median tokens/s, estimated training seconds) over the steps from ``start_step``."""
    rates = [float(r["train/tokens_per_sec"]) for r in rows
             if r.get("train/tokens_per_sec") and int(r["step"]) >= start_step]
    rates = [r for r in rates if r > 0 and math.isfinite(r)]
    if not rates:
        return math.nan, math.nan
    return statistics.median(rates), sum(batch_tokens / r for r in rates)


def finished_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, str]], dict[str, str]] | None:
    """``(run.json, metrics.csv rows, the validation row of the last step)`` of a run folder
    whose run finished (validated at step ``steps - 1``), else None."""
    info_path = Path(run_dir) / "run.json"
    if not info_path.is_file():
        return None
    info = read_json(info_path, RUN_JSON_FIX)
    rows = read_metrics(run_dir)
    last = next((r for r in reversed(rows) if r.get("val/bpb") and r.get("step")
                 and int(r["step"]) == info["steps"] - 1), None)
    return None if last is None else (info, rows, last)


def make_row(out_dir: Path, run_dir: Path, wall_s: float | None = None) -> dict[str, Any] | None:
    """The results row of a finished run folder, or None when it has not finished."""
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    done = finished_run(run_dir)
    if done is None:
        return None
    info, rows, last = done
    final = float(last["val/loss"]), float(last["val/bpb"])
    tokens_per_s, est_wall = _throughput(rows, info["start_step"], info["tokens_per_step"])
    D = info["tokens"]
    return {
        "arch": info["arch"], "size": info["size"], "seed": info["seed"],
        "stage": info.get("stage", "main"), "budget_flops": info.get("budget_flops"),
        "trajectory": info.get("trajectory"), "lr": info.get("lr"),
        "warmup_steps": info.get("warmup_steps"), "budget_tokens": info["budget_tokens"], "N": info["N"], "N_non_emb": info["N_non_emb"],
        "D": D, "C": info["flops_per_token"] * D,
        **{CONVENTION_COLUMNS[k]: v * D for k, v in info.get("flops_per_token_by_count", {}).items()
           if k in CONVENTION_COLUMNS},
        "C_6ND": 6 * info["N"] * D,
        "loss": final[0], "bpb": final[1], "steps": info["steps"],
        "wall_s": round(wall_s if wall_s is not None else est_wall, 3),
        "tokens_per_s": round(tokens_per_s, 1), "kind": info["kind"],
        "run_dir": run_dir.relative_to(out_dir).as_posix(),
    }


def finished_row(out_dir: Path, run_dir: Path, make: Any = None) -> dict[str, Any] | None:
    """The row of a finished run: its result.json if the runner wrote one, else derived by
    ``make(out_dir, run_dir)`` (default :func:`make_row`; the probe runner's rows differ)."""
    result = Path(run_dir) / "result.json"
    if result.is_file():
        return read_json(result, RESULT_JSON_FIX)
    return (make or make_row)(out_dir, run_dir)


def _run_infos(out_dir: Path) -> list[Path]:
    return sorted(p for folder in ("tune", "runs", "lrcheck") for p in (out_dir / folder).rglob("run.json"))


def collect(out_dir: str | Path) -> pd.DataFrame:
    """Every finished run under ``out_dir/tune/``, ``out_dir/runs/`` and ``out_dir/lrcheck/`` as one DataFrame
    with ``COLUMNS`` (tuning runs first)."""
    out_dir = Path(out_dir)
    rows = []
    for info in _run_infos(out_dir):
        row = finished_row(out_dir, info.parent)
        if row is not None:
            rows.append({c: row.get(c) for c in COLUMNS})
    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df):
        df = df.sort_values(["stage", "arch", "N", "seed", "D", "lr"], kind="stable",
                            ascending=[False, True, True, True, True, True]).reset_index(drop=True)
    return df


def curves(out_dir: str | Path) -> pd.DataFrame:
    """Every validation logged along every run (finished or not) with ``CURVE_COLUMNS``:
    the loss curves. A cooldown's own rows start after its branch point; its curve before
    that is its main run's."""
    out_dir = Path(out_dir)
    rows = []
    for path in _run_infos(out_dir):
        info = read_json(path, RUN_JSON_FIX)
        for r in read_metrics(path.parent):
            if r.get("val/loss") and r.get("step"):
                step = int(r["step"]) + 1  # optimizer steps done when evaluated
                rows.append({"arch": info["arch"], "size": info["size"], "seed": info["seed"],
                             "stage": info.get("stage", "main"),
                             "trajectory": info.get("trajectory"),
                             "run_dir": path.parent.relative_to(out_dir).as_posix(),
                             "kind": info["kind"], "step": step,
                             "tokens": step * info["tokens_per_step"],
                             "val_loss": float(r["val/loss"]), "val_bpb": float(r["val/bpb"]),
                             "val_tokens": float(r["val/tokens"]) if r.get("val/tokens") else None})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def write_results(out_dir: str | Path) -> Path:
    """Write ``out_dir/results.csv`` (from ``collect``) and ``out_dir/curves.csv`` (from
    ``curves``), each atomically; returns the path of results.csv."""
    out_dir = Path(out_dir)
    path = out_dir / "results.csv"
    atomic_write(path, collect(out_dir).to_csv(index=False))
    atomic_write(out_dir / "curves.csv", curves(out_dir).to_csv(index=False))
    return path
