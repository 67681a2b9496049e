"""One run trained in this process, as every executor trains it: ``postformer fit`` on its
RUN/fit.yaml (from RUN/checkpoints/last.ckpt when there is one, else from its branch
checkpoint or afresh), its seconds kept in RUN/timing.json; and Lightning's messages quieted
while a study trains."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from postformer.train import cli as train_cli
from postformer.train.fileio import atomic_write
from postformer.train.locks import RunLocked, is_rank_zero

from .folders import fit_args
from .plan import RunPlan
from .results import TIMING_FIX, read_json


@contextmanager
def quiet_lightning(verbose: bool) -> Iterator[None]:
    """Lightning's loggers at WARNING (unless ``verbose``) and the warnings a study's runs
    raise by design silenced, for the duration."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # a cooldown resumes a checkpoint written by its main run into another folder
        warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*You set `limit_val_batches=0`.*")
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def train_run(out: Path, run: RunPlan) -> tuple[Any, float]:
    """Fit one run of the folder ``out`` in process; returns (the CLI object, seconds spent on
    the run over all its starts). Adds the seconds to timing.json even when training is
    interrupted."""
    run_dir = out / run.run_dir
    args = fit_args(out, run)[1:]
    if run.branch_ckpt is not None and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        branch = out / run.branch_ckpt
        if not branch.is_file():
            raise FileNotFoundError(
                f"{run.run_dir}: the branch checkpoint {branch} is missing (its main run did not "
                "save it); remove the main run folder to retrain it"
            )
    timing = run_dir / "timing.json"
    spent = read_json(timing, TIMING_FIX)["wall_s"] if timing.is_file() else 0.0
    start = time.perf_counter()
    ours = is_rank_zero()  # rank 0 keeps the time; nobody does when another process had the run
    try:
        cli = train_cli.lightning_main(args)
    except RunLocked:
        ours = False
        raise
    finally:
        elapsed = time.perf_counter() - start
        if ours:
            atomic_write(timing, json.dumps({"wall_s": spent + elapsed}) + "\n")
    return cli, spent + elapsed
