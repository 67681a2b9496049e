"""Helpers the train tests share for running the ``postformer`` command in process (imported
by name: tests/train is on pytest's ``pythonpath``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run ``postformer ARGV``: it must exit 2 with one line on stderr, no traceback, holding
    every needle. Returns that line."""
    from postformer.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def fit_losses(config: Path, root: Path, steps: int, *extra: str) -> list[float]:
    """The first ``steps`` train/loss values of ``postformer fit --config config`` into ``root``,
    on the CPU and one thread (reductions keep their order whatever the core count); ``extra``
    arguments go last."""
    from postformer.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root),
              "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps),
              "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--checkpoint.every_n_train_steps", str(steps), *extra])
    finally:
        torch.set_num_threads(threads)
    with open(root / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    return [losses[s] for s in range(steps)]
