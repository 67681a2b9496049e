"""A probe's grid (``postformer probe PROBE.yaml --out DIR``): archs x tasks x task settings x
widths x learning rates x seeds of synthetic tasks (the spec: ``scaling.spec.probe``).

The grid's cells are trained by the study runner's machinery (``executors.train_points``:
in process, ``--jobs N`` workers, submitit ``local`` or ``slurm`` jobs; ``folders.write_run``
lays out the run folders and refuses a folder that holds another run), so a probe resumes
and skips finished cells exactly as a study does. Each cell is one ``postformer fit`` of a
``ProbeDataModule`` (``train.probes``) with the language-modelling trainer; its result is the
argmax accuracy on the task's answer positions over the whole test set at the last step.

Folder layout::

    DIR/probe.yaml                       the resolved spec
    DIR/runs/<task>/<setting>/<arch>-d<d_model>-lr<lr>-s<seed>/
        fit.yaml, run.json, metrics.csv, checkpoints/last.ckpt, result.json (a run folder)
    DIR/results.csv                      one row per finished cell (``COLUMNS``)
    DIR/report.{json,md,html}, DIR/figures/  ``scaling.report.probe``
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from postformer.arch.flops import flops_per_token, param_counts
from postformer.train.callbacks import EvalAtSteps
from postformer.train.fileio import atomic_write
from postformer.train.locks import STUDY, FolderLock, RunLock
from postformer.train.probes.tasks import input_length, model_vocab

from ..spec import Probe, load_probe
from .executors import train_points
from .folders import check_run, class_path, identity, write_run
from .plan import RunPlan, Trained, eval_steps
from .results import TIMING_FIX, finished_row, finished_run, read_json

DATA_CLASS = "postformer.train.probes.data.ProbeDataModule"
#: results.csv's columns
COLUMNS = ["arch", "task", "setting", "d_model", "lr", "seed", "accuracy", "loss", "params",
           "params_non_emb", "steps", "epochs", "examples", "wall_s", "run_dir"]


@dataclass
class Cell(Trained):
    """One trained cell of the grid: (arch, task, setting, d_model, lr, seed) and its run."""

    task: str = ""
    setting: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    d_model: int = 0
    lr: float = 0.0
    epochs: float = 0.0
    warmup_steps: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}/{self.setting}/{self.arch}-d{self.d_model}-lr{self.lr:.3g}-s{self.seed}"


# ---- the plan ---------------------------------------------------------------------------


def plan_probe(probe: Probe) -> list[Cell]:
    """Every cell of the grid, task by task, setting by setting (the order they train in)."""
    cells, configs = [], {}
    for task, t in probe.tasks.items():
        for settings, label in zip(t["settings"], t["labels"]):
            vocab = model_vocab(task, **settings)
            seq = input_length(task, **settings)
            kind, value = t["length"]
            examples = int(settings["num_train"])
            steps = (int(value) if kind == "steps"
                     else max(1, math.ceil(value * examples / probe.global_batch)))
            epochs = steps * probe.global_batch / examples
            if "warmup_steps" in probe.model:
                warmup = int(probe.model["warmup_steps"])
            else:
                warmup = int(probe.model["warmup_fraction"] * steps)
            tokens_per_step = probe.global_batch * seq
            for arch in probe.archs:
                for d in probe.widths:
                    key = (arch, d, vocab)
                    if key not in configs:
                        cfg = probe.models[key]
                        configs[key] = (cfg, *param_counts(cfg), flops_per_token(cfg, seq))
                    cfg, N, N_ne, fpt = configs[key]
                    for lr in probe.lrs:
                        for seed in probe.seeds:
                            run_dir = f"runs/{task}/{label}/{arch}-d{d}-lr{lr:.3g}-s{seed}"
                            run = RunPlan("probe", steps * tokens_per_step, steps,
                                          steps * tokens_per_step, run_dir,
                                          eval_at=eval_steps(steps, probe.eval_points))
                            cells.append(Cell(arch, seed, copy.deepcopy(cfg), N, N_ne, fpt, seq, [run],
                                              task=task, setting=label, settings=dict(settings),
                                              d_model=d, lr=float(lr), epochs=epochs,
                                              warmup_steps=warmup))
    return cells


def fit_config(probe: Probe, cell: Cell, out: Path) -> dict[str, Any]:
    """The LightningCLI config of a cell (``RUN/fit.yaml``)."""
    run = cell.runs[0]
    trainer: dict[str, Any] = {
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        **probe.trainer, "limit_val_batches": 0,  # validation at the steps chosen (EvalAtSteps)
    }
    trainer["callbacks"] = [
        {"class_path": class_path(RunLock), "init_args": {}},
        *(trainer.get("callbacks") or []),
        {"class_path": class_path(EvalAtSteps),
         "init_args": {"steps": list(run.eval_at)}},
    ]
    trainer["max_steps"] = run.steps
    trainer["default_root_dir"] = str(out / run.run_dir)
    model = {k: v for k, v in probe.model.items() if k != "warmup_fraction"}
    arch = probe.archs[cell.arch]
    if isinstance(arch, dict):
        model.update(arch.get("model") or {})
    model.update(lr=cell.lr, warmup_steps=cell.warmup_steps)
    data = {"task": cell.task, "settings": dict(cell.settings), "seed": cell.seed, **probe.data}
    cfg: dict[str, Any] = {
        "seed_everything": cell.seed,
        "model": {"config": dataclasses.asdict(cell.config), **model},
        "data": {"class_path": DATA_CLASS, "init_args": data},
        "trainer": trainer,
    }
    if probe.checkpoint:
        cfg["checkpoint"] = dict(probe.checkpoint)
    return cfg


def run_info(probe: Probe, cell: Cell, cfg: dict[str, Any]) -> dict[str, Any]:
    """``RUN/run.json`` of a cell: what its results row needs besides metrics.csv."""
    run = cell.runs[0]
    return {"probe": probe.name, "kind": "probe", "arch": cell.arch, "task": cell.task,
            "setting": cell.setting, "settings": cell.settings, "d_model": cell.d_model,
            "lr": cell.lr, "seed": cell.seed, "N": cell.N, "N_non_emb": cell.N_non_emb,
            "steps": run.steps, "start_step": 0, "epochs": cell.epochs,
            "examples": int(cell.settings["num_train"]), "seq_len": cell.seq_len,
            "warmup_steps": cell.warmup_steps, "tokens": run.tokens,
            "identity": identity(cfg, run), "model_config": dataclasses.asdict(cell.config)}


# ---- results ----------------------------------------------------------------------------


def probe_row(out: Path, run_dir: Path, wall_s: float | None = None) -> dict[str, Any] | None:
    """The results row of a finished cell (``COLUMNS``), or None: the test-set accuracy and
    loss on the answers at its last step; ``wall_s``: its training seconds (default: from
    its timing.json)."""
    done = finished_run(run_dir)
    if done is None:
        return None
    info, _, last = done
    timing = Path(run_dir) / "timing.json"
    wall = wall_s
    if wall is None and timing.is_file():
        wall = read_json(timing, TIMING_FIX)["wall_s"]
    return {"arch": info["arch"], "task": info["task"], "setting": info["setting"],
            "d_model": info["d_model"], "lr": info["lr"], "seed": info["seed"],
            "accuracy": float(last["val/accuracy"]), "loss": float(last["val/loss"]),
            "params": info["N"],
            "params_non_emb": info["N_non_emb"], "steps": info["steps"],
            "epochs": round(info["epochs"], 4), "examples": info["examples"],
            "wall_s": None if wall is None else round(wall, 3),
            "run_dir": Path(run_dir).relative_to(out).as_posix()}


def collect(out: str | Path) -> list[dict[str, Any]]:
    """The rows of every finished cell under ``DIR/runs/``."""
    out = Path(out)
    rows = []
    for info in sorted((out / "runs").rglob("run.json")):
        row = finished_row(out, info.parent, probe_row)
        if row is not None:
            rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def write_results(out: str | Path) -> Path:
    """``DIR/results.csv`` (atomically); returns its path."""
    out = Path(out)
    path = out / "results.csv"
    atomic_write(path, pd.DataFrame(collect(out), columns=COLUMNS).to_csv(index=False))
    return path


# ---- running ----------------------------------------------------------------------------


def layout(probe: Probe, cells: list[Cell], out: Path) -> None:
    """DIR/probe.yaml and every cell's fit.yaml and run.json (``folders.write_run``)."""
    runs = [(cell.runs[0], cfg, run_info(probe, cell, cfg))
            for cell in cells for cfg in [fit_config(probe, cell, out)]]
    for run, _, info in runs:  # a refused probe changes nothing: every check before a write
        check_run(out, run, info)
    out.mkdir(parents=True, exist_ok=True)
    header = f"# resolved probe spec ({probe.source}); the runner wrote this\n"
    atomic_write(out / "probe.yaml", header + yaml.safe_dump(probe.to_dict(), sort_keys=False))
    for run, cfg, info in runs:
        write_run(out, run, cfg, info)


def run_probe(probe_path: str | Path, out_dir: str | Path, *, verbose: bool = False,
              report: Callable[[Path], object] | None = None, jobs: int | None = None,
              executor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Lay out, train (skipping finished cells, resuming interrupted ones) and collect a probe
    grid; returns the rows of ``DIR/results.csv``. ``report``: called with the folder once a
    cell has finished, the folder's lock still held (``postformer probe`` passes the probe
    report writer). Raises ``train.locks.FolderLocked`` when another process trains the
    folder."""
    probe = load_probe(probe_path, executor=executor)
    out = Path(out_dir).resolve()
    cells = plan_probe(probe)
    failed: list[str] = []
    with FolderLock(out, STUDY):
        layout(probe, cells, out)
        train_points(probe, cells, out, verbose, failed, f"probe {probe.name}", jobs,
                     make_row=probe_row)
        path = write_results(out)
        rows = collect(out)
        print(f"results: {path} ({len(rows)} of {len(cells)} cells)")
        if failed:
            print(f"not finished: {', '.join(failed)}")
        if report is not None and rows:
            report(out)
    return rows


def print_plan(probe: Probe) -> None:
    """The grid: per task setting its steps and epochs; per arch and width N."""
    cells = plan_probe(probe)
    print(f"probe {probe.name}: {len(cells)} cells = {len(probe.archs)} archs x "
          f"{sum(len(t['labels']) for t in probe.tasks.values())} task settings x "
          f"{len(probe.widths)} widths x {len(probe.lrs)} LRs x {len(probe.seeds)} seeds")
    firsts = {}
    for c in cells:  # the first cell of each task setting, then of each arch and width
        firsts.setdefault(("setting", c.task, c.setting), c)
        firsts.setdefault(("model", c.arch, c.d_model), c)
    for (kind, *_), c in firsts.items():
        if kind == "setting":
            print(f"  {c.task}/{c.setting}: {c.runs[0].steps} steps ({c.epochs:.3g} epochs of "
                  f"{c.settings['num_train']} examples), {c.seq_len} tokens per example")
    for (kind, *_), c in firsts.items():
        if kind == "model":
            print(f"  {c.arch} d_model={c.d_model}: N={c.N} ({c.N_non_emb} non-embedding, "
                  f"task {c.task}), {c.config.n_layers} layers {c.config.pattern}")
