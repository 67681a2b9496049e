"""``postformer compare CONFIG [CONFIG ...] --out DIR [--max_steps N]``.

Trains each config in this process, one after another, into ``DIR/<config stem>/`` (a
normal run folder, see ``train.cli``), then prints validation bits per byte side by side
and writes ``DIR/compare.csv``. A run folder that already finished (``result.json`` and
``checkpoints/last.ckpt`` present) is not trained again, so an interrupted comparison
picks up where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from .cli import lightning_main
from .fileio import atomic_write

COLUMNS = ["run", "arch", "params", "params_non_emb", "steps", "val_bpb", "val_loss", "wall_s"]


def finished(run_dir: Path) -> dict[str, Any] | None:
    """The stored result of a finished run folder, or None."""
    result, last = run_dir / "result.json", run_dir / "checkpoints" / "last.ckpt"
    if result.exists() and last.exists():
        data = json.loads(result.read_text())
        if data.get("val_bpb") is not None:
            return data
    return None


def train_one(config: str, run_dir: Path, max_steps: int | None) -> dict[str, Any]:
    """Fit one config into ``run_dir``; returns its result row (also saved as result.json)."""
    args = ["fit", "--config", config, "--trainer.default_root_dir", str(run_dir)]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # an interrupted run: resume it exactly where it stopped
        print(f"compare: resuming {run_dir} from {last}")
        args += ["--ckpt_path", str(last)]
    start = time.perf_counter()
    cli = lightning_main(args)
    wall = time.perf_counter() - start
    metrics = cli.trainer.callback_metrics
    model = cli.model.model
    row = {
        "run": run_dir.name,
        "arch": "+".join(dict.fromkeys(cli.model.config.pattern)),
        "params": model.num_params(),
        "params_non_emb": model.num_params(include_embeddings=False),
        "steps": cli.trainer.global_step,
        "val_bpb": float(metrics["val/bpb"]) if "val/bpb" in metrics else None,
        "val_loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
        "wall_s": round(wall, 1),  # training and validation, data loading included
    }
    if row["val_bpb"] is None:
        raise RuntimeError(
            f"{config}: training ended without a validation; set trainer.val_check_interval "
            "to a divisor of max_steps (with check_val_every_n_epoch: null)"
        )
    atomic_write(run_dir / "result.json", json.dumps(row, indent=2) + "\n")
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [COLUMNS] + [[_fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def compare(configs: list[str], out: str | Path, max_steps: int | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) every config and write ``out/compare.csv``; returns the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(c).stem for c in configs]
    if len(set(stems)) != len(stems):
        raise ValueError(f"config file names must differ (they name the run folders): {stems}")
    for config in configs:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config {config!r} does not exist")
    rows = []
    for config, stem in zip(configs, stems, strict=True):
        run_dir = out / stem
        row = finished(run_dir)
        if row is not None and max_steps is not None and row.get("steps") != max_steps:
            raise ValueError(
                f"{run_dir} already holds a finished run of {row.get('steps')} steps, not the "
                f"{max_steps} asked for; choose another --out or remove that folder"
            )
        if row is not None:
            print(f"compare: {stem}: already finished, reusing {run_dir / 'result.json'}")
        else:
            print(f"compare: training {config} into {run_dir}")
            row = train_one(config, run_dir, max_steps)
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "compare.csv", buf.getvalue())
    print()
    print(format_table(rows))
    print(f"\nwritten: {out / 'compare.csv'}")
    return rows


def compare_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="postformer compare",
        description="Train each config into OUT/<config stem>/ and compare validation bits per byte.",
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="LightningCLI YAML configs")
    parser.add_argument("--out", required=True, help="folder for the run folders and compare.csv")
    parser.add_argument("--max_steps", type=int, default=None, help="override trainer.max_steps")
    args = parser.parse_args(argv)
    try:
        compare(args.configs, args.out, args.max_steps)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
