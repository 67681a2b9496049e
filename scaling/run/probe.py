"""``postformer probe PROBE.yaml --out DIR``: synthetic probes (MQAR, the MAD suite) over
archs x tasks x task settings x widths x learning rates x seeds, trained like a study's runs.

The grid's cells are trained by the study runner's machinery (``executors.train_points``:
in process, ``--jobs N`` workers, submitit ``local`` or ``slurm`` jobs; ``runner.write_run``
lays out the run folders and refuses a folder that holds another run), so a probe resumes
and skips finished cells exactly as a study does. Each cell is one ``postformer fit`` of a
``ProbeDataModule`` (``train.probes``) with the language-modelling trainer; its result is the
argmax accuracy on the task's answer positions over the whole test set at the last step.

Folder layout::

    DIR/probe.yaml                       the resolved spec
    DIR/runs/<task>/<setting>/<arch>-d<d_model>-lr<lr>-s<seed>/
        fit.yaml, run.json, metrics.csv, checkpoints/last.ckpt, result.json (a run folder)
    DIR/results.csv                      one row per finished cell (``COLUMNS``)
    DIR/report.{json,md,html}, DIR/figures/  ``scaling.probe_report``

Spec (``name``, ``archs``, ``tasks`` and ``widths`` are required)::

    name: smoke
    archs:                               # as in a study (scaling.study): a preset name, or
      attention: {pattern: [attn], mlp: true}   # ModelConfig fields (+ preset, model, ...)
      mamba2: {preset: mamba2, mlp: true}
    tasks:                               # task name -> how to run it (train.probes.tasks)
      mqar:
        sweep: paper                     # paper: the paper's settings; default: its defaults
                                         # only; or a list of overrides [{seq_len: 64}, ...]
        settings: {num_train: 2000}      # overrides applied to every setting
        epochs: 4                        # or steps: N (default: the spec's train section)
      in_context_recall: {}
    widths: [64, 128]                    # d_model grid
    n_layers: 2                          # blocks; an arch without MLP gets twice as many,
                                         # unless its layer_multiplier says otherwise
    head_dim: 16                         # heads follow the width (as a study's ladder)
    d_state: 16                          # Mamba-2's state size
    lrs: [1.0e-3, 3.0e-3]                # the LR grid; a cell's result is its best LR's
    seeds: [0]                           # each seed draws its own data and initialisation
    train: {epochs: 1}                   # or {steps: N}: every task unless it says otherwise
    eval: {points: 1}                    # test-set evaluations along a run (the last counts)
    model: {warmup_fraction: 0.05, schedule: cosine, weight_decay: 0.0}   # LMModule options
    data: {batch_size: 64}               # ProbeDataModule options but task/settings
    trainer: {accelerator: cpu}          # Trainer options but max_steps
    checkpoint: {every_n_train_steps: 500}
    executor: {kind: inprocess}          # as a study's (scaling.executors)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postformer.arch import ModelConfig
from postformer.arch.flops import flops_per_token, param_counts
from postformer.train.fileio import atomic_write
from postformer.train.schedule import DEFAULT_SCHEDULE

from .plan import RunPlan, Trained, _eval_steps, _rung_mixers, _shape_config
from .results import TIMING_FIX, finished_run, read_json
from .study import (
    StudyError,
    _check_archs,
    _check_keys,
    _checkpoint_keys,
    _fail,
    _int,
    _mapping,
    _model_keys,
    _nonempty_list,
    _positive,
    _positive_numbers,
    _seed_list,
    _trainer_keys,
    n_devices,
    read_spec,
)

TOP_KEYS = ("name", "baseline", "archs", "tasks", "widths", "n_layers", "head_dim", "d_state",
            "lrs", "seeds", "train", "eval", "model", "data", "trainer", "checkpoint", "executor")
TASK_KEYS = ("sweep", "settings", "epochs", "steps")
LENGTH_KEYS = ("epochs", "steps")
DATA_CLASS = "postformer.train.probes.data.ProbeDataModule"
#: results.csv's columns
COLUMNS = ["arch", "task", "setting", "d_model", "lr", "seed", "accuracy", "loss", "params",
           "params_non_emb", "steps", "epochs", "examples", "wall_s", "run_dir"]


@dataclass
class Probe:
    """A validated probe spec (see the module docstring); ``tasks`` maps a task name to
    ``{"settings": [resolved settings, ...], "labels": [setting label, ...], "length":
    ("epochs" | "steps", value)}``."""

    name: str
    baseline: str
    archs: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    widths: list[int]
    n_layers: int
    head_dim: int
    d_state: int | None
    lrs: list[float]
    seeds: list[int]
    eval_points: int
    model: dict[str, Any]
    data: dict[str, Any]
    trainer: dict[str, Any]
    checkpoint: dict[str, Any]
    executor: dict[str, Any]
    source: str = "<probe>"
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (``DIR/probe.yaml``)."""
        return {"name": self.name, "baseline": self.baseline, "archs": self.archs,
                "tasks": {t: {"sweep": v["overrides"], "settings": v["common"],
                              v["length"][0]: v["length"][1]} for t, v in self.tasks.items()},
                "widths": self.widths, "n_layers": self.n_layers, "head_dim": self.head_dim,
                "d_state": self.d_state, "lrs": self.lrs, "seeds": self.seeds,
                "eval": {"points": self.eval_points}, "model": self.model, "data": self.data,
                "trainer": self.trainer, "checkpoint": self.checkpoint, "executor": self.executor}

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over every device and accumulation."""
        return (int(self.data.get("batch_size", 64))
                * int(self.trainer.get("accumulate_grad_batches", 1)) * n_devices(self.trainer))


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


# ---- the spec ---------------------------------------------------------------------------


def setting_label(overrides: dict[str, Any]) -> str:
    """A task setting's name (folder and results column): ``default`` for the defaults, else
    its overrides, e.g. ``seq_len=128,num_kv_pairs=8``; folder-safe with ``=`` and ``,``."""
    if not overrides:
        return "default"
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def _length(src: str, where: str, section: dict[str, Any]) -> tuple[str, float] | None:
    given = [k for k in LENGTH_KEYS if k in section]
    if len(given) > 1:
        raise _fail(src, where, "give epochs or steps, not both")
    if not given:
        return None
    key = given[0]
    value = (_positive(src, f"{where}.epochs", section[key]) if key == "epochs"
             else _int(src, f"{where}.steps", section[key], 1))
    return key, value


def _check_tasks(src: str, tasks: Any, default_length: tuple[str, float]) -> dict[str, dict]:
    from postformer.train.probes.tasks import TASKS, task_settings

    if not isinstance(tasks, dict) or not tasks:
        raise _fail(src, "tasks", f"must be a non-empty mapping task -> options, got {tasks!r}; "
                                  f"tasks: {sorted(TASKS)}")
    out = {}
    for name, opts in tasks.items():
        where = f"tasks.{name}"
        if name not in TASKS:
            raise _fail(src, where, f"unknown task; known: {sorted(TASKS)}")
        opts = _mapping(src, where, opts)
        _check_keys(src, where, opts, TASK_KEYS)
        common = dict(_mapping(src, f"{where}.settings", opts.get("settings")))
        sweep = opts.get("sweep", "default")
        if sweep == "paper":
            overrides = [dict(o) for o in TASKS[name].sweep] or [{}]
        elif sweep == "default":
            overrides = [{}]
        elif isinstance(sweep, list) and sweep and all(isinstance(o, dict) for o in sweep):
            overrides = [dict(o) for o in sweep]
        else:
            raise _fail(src, f"{where}.sweep", f"must be paper, default or a non-empty list of "
                                               f"setting mappings, got {sweep!r}")
        resolved, labels = [], []
        for i, o in enumerate(overrides):
            try:
                resolved.append(task_settings(name, **{**common, **o}))
            except (TypeError, ValueError) as err:
                raise _fail(src, f"{where}.sweep[{i}]", str(err)) from None
            labels.append(setting_label(o))
        if len(set(labels)) != len(labels):
            raise _fail(src, f"{where}.sweep", f"settings repeat: {labels}")
        out[name] = {"settings": resolved, "labels": labels, "overrides": overrides,
                     "common": common, "length": _length(src, where, opts) or default_length}
    return out


def probe_from_dict(spec: dict[str, Any], source: str = "<probe>",
                    executor: dict[str, Any] | None = None) -> Probe:
    """Validate a probe spec (the module docstring) and fill its defaults; ``executor``
    overrides keys of its executor section (a None value removes one)."""
    src = source
    if not isinstance(spec, dict):
        raise StudyError(f"{src}: a probe spec is a YAML mapping, got {type(spec).__name__}")
    _check_keys(src, "top level", spec, TOP_KEYS)
    for key in ("name", "archs", "tasks", "widths"):
        if key not in spec:
            raise _fail(src, key, "missing (required)")
    archs = spec["archs"]
    _check_archs(src, archs)
    for label, arch in archs.items():
        if isinstance(arch, dict) and "lr" in (arch.get("model") or {}):
            raise _fail(src, f"archs.{label}.model.lr", "the LR grid is the spec's lrs; remove it")
    baseline = spec.get("baseline", next(iter(archs)))
    if baseline not in archs:
        raise _fail(src, "baseline", f"{baseline!r} is not one of the archs {list(archs)}")
    widths = [_int(src, "widths", w, 1) for w in _nonempty_list(src, "widths", spec["widths"])]
    if len(set(widths)) != len(widths):
        raise _fail(src, "widths", f"repeat: {widths}")
    lrs = _positive_numbers(src, "lrs", spec.get("lrs", [1e-3]))
    train = _mapping(src, "train", spec.get("train"))
    _check_keys(src, "train", train, LENGTH_KEYS)
    tasks = _check_tasks(src, spec["tasks"], _length(src, "train", train) or ("epochs", 1.0))
    ev = _mapping(src, "eval", spec.get("eval"))
    _check_keys(src, "eval", ev, ("points",))

    sections = {}
    from postformer.train.probes.data import ProbeDataModule

    data_keys = [p for p in inspect.signature(ProbeDataModule.__init__).parameters
                 if p not in ("self", "task", "settings")]
    for key, allowed in (("model", _model_keys() + ["warmup_fraction"]), ("data", data_keys),
                         ("trainer", _trainer_keys()), ("checkpoint", _checkpoint_keys())):
        section = _mapping(src, key, spec.get(key))
        _check_keys(src, key, section, allowed)
        sections[key] = dict(section)
    for key in ("max_steps", "default_root_dir", "val_check_interval"):
        if key in sections["trainer"]:
            raise _fail(src, f"trainer.{key}", "is set by the runner for each cell; remove it")
    if "lr" in sections["model"]:
        raise _fail(src, "model.lr", "the LR grid is the spec's lrs; remove it")
    model = sections["model"]
    model.setdefault("schedule", DEFAULT_SCHEDULE)
    if "warmup_fraction" in model and "warmup_steps" in model:
        raise _fail(src, "model", "give warmup_fraction or warmup_steps, not both")
    if "warmup_steps" not in model:
        wf = model.setdefault("warmup_fraction", 0.05)
        if not isinstance(wf, int | float) or not 0 <= wf < 0.5:
            raise _fail(src, "model.warmup_fraction", f"must be in [0, 0.5), got {wf!r}")
    sections["trainer"].setdefault("devices", 1)
    from .executors import executor_section

    ex = executor_section(src, spec, sections["trainer"], executor)
    probe = Probe(
        name=str(spec["name"]), baseline=baseline, archs=copy.deepcopy(archs), tasks=tasks,
        widths=widths, n_layers=_int(src, "n_layers", spec.get("n_layers", 2), 1),
        head_dim=_int(src, "head_dim", spec.get("head_dim", 16), 1),
        d_state=None if spec.get("d_state") is None else _int(src, "d_state", spec["d_state"], 1),
        lrs=lrs, seeds=_seed_list(src, "seeds", spec.get("seeds", [0])),
        eval_points=_int(src, "eval.points", ev.get("points", 1), 1), model=model,
        data=sections["data"], trainer=sections["trainer"], checkpoint=sections["checkpoint"],
        executor=ex, source=src, spec=copy.deepcopy(spec),
    )
    plan_probe(probe)  # every model builds and every cell trains at least one step
    return probe


def load_probe(path: str | Path, executor: dict[str, Any] | None = None) -> Probe:
    """Read and validate a probe YAML file."""
    return probe_from_dict(read_spec(path, "probe"), source=str(path), executor=executor)


# ---- the plan ---------------------------------------------------------------------------


def probe_config(probe: Probe, label: str, d_model: int, vocab: int) -> ModelConfig:
    """The model of arch ``label`` at width ``d_model`` for a task of ``vocab`` tokens:
    ``n_layers`` blocks (twice as many without MLP unless the arch's ``layer_multiplier``
    says otherwise), heads and states following the width as a study's ladder does."""
    size = {"name": f"d{d_model}", "d_model": d_model, "n_layers": probe.n_layers,
            "mixers": _rung_mixers(d_model, probe.head_dim, probe.d_state)}
    fields = _shape_config(probe, label, size, vocab=vocab)
    try:
        cfg = ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise _fail(probe.source, f"archs.{label} at d_model {d_model}", str(err)) from None
    missing = set(cfg.pattern) - set(cfg.layer_mixers)
    if missing:
        raise _fail(probe.source, f"archs.{label}", f"{cfg.n_layers} layers never reach mixer(s) "
                                                    f"{sorted(missing)} of the pattern {cfg.pattern}")
    return cfg


def plan_probe(probe: Probe) -> list[Cell]:
    """Every cell of the grid, task by task, setting by setting (the order they train in)."""
    from postformer.train.probes.tasks import input_length, model_vocab

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
                        cfg = probe_config(probe, arch, d, vocab)
                        configs[key] = (cfg, *param_counts(cfg), flops_per_token(cfg, seq))
                    cfg, N, N_ne, fpt = configs[key]
                    for lr in probe.lrs:
                        for seed in probe.seeds:
                            run_dir = f"runs/{task}/{label}/{arch}-d{d}-lr{lr:.3g}-s{seed}"
                            run = RunPlan("probe", steps * tokens_per_step, steps,
                                          steps * tokens_per_step, run_dir,
                                          eval_at=_eval_steps(steps, probe.eval_points))
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
        {"class_path": "postformer.scaling.locks.RunLock", "init_args": {}},
        *(trainer.get("callbacks") or []),
        {"class_path": "postformer.train.callbacks.EvalAtSteps",
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
    from .runner import _identity

    run = cell.runs[0]
    return {"probe": probe.name, "kind": "probe", "arch": cell.arch, "task": cell.task,
            "setting": cell.setting, "settings": cell.settings, "d_model": cell.d_model,
            "lr": cell.lr, "seed": cell.seed, "N": cell.N, "N_non_emb": cell.N_non_emb,
            "steps": run.steps, "start_step": 0, "epochs": cell.epochs,
            "examples": int(cell.settings["num_train"]), "seq_len": cell.seq_len,
            "warmup_steps": cell.warmup_steps, "tokens": run.tokens,
            "identity": _identity(cfg, run), "model_config": dataclasses.asdict(cell.config)}


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
    from .results import finished_row

    out = Path(out)
    rows = []
    for info in sorted((out / "runs").rglob("run.json")):
        row = finished_row(out, info.parent, probe_row)
        if row is not None:
            rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def write_results(out: str | Path) -> Path:
    """``DIR/results.csv`` (atomically); returns its path."""
    import pandas as pd

    out = Path(out)
    path = out / "results.csv"
    atomic_write(path, pd.DataFrame(collect(out), columns=COLUMNS).to_csv(index=False))
    return path


# ---- running ----------------------------------------------------------------------------


def layout(probe: Probe, cells: list[Cell], out: Path) -> None:
    """DIR/probe.yaml and every cell's fit.yaml and run.json (``runner.write_run``)."""
    from .runner import check_run, write_run

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
              report: bool = True, jobs: int | None = None,
              executor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Lay out, train (skipping finished cells, resuming interrupted ones), collect and report
    a probe grid; returns the rows of ``DIR/results.csv``. Raises ``locks.FolderLocked`` when
    another process trains the folder."""
    from .executors import train_points
    from .locks import STUDY, FolderLock

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
        if report and rows:
            from .probe_report import write_probe_report

            written = write_probe_report(out)
            print(f"report: {written['html']}")
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


def probe_main(argv: list[str]) -> None:
    """``postformer probe PROBE.yaml --out DIR [--plan] [--jobs N] [--executor KIND] ...``"""
    from .runner import add_run_options, cli_errors, executor_overrides

    parser = argparse.ArgumentParser(
        prog="postformer probe",
        description="Train synthetic probes (MQAR, the MAD tasks) over archs x tasks x widths x "
                    "LRs x seeds into DIR: results.csv and a report; a rerun skips finished cells.")
    parser.add_argument("probe", metavar="PROBE.yaml", help="the probe spec (see configs/probe/)")
    parser.add_argument("--plan", action="store_true", help="print the grid; trains nothing")
    add_run_options(parser, "probe")
    args = parser.parse_args(argv)
    overrides = executor_overrides(parser, args)
    with cli_errors(parser, args, "probe"):
        if args.plan:
            print_plan(load_probe(args.probe, executor=overrides))
            return
        run_probe(args.probe, args.out, verbose=args.verbose, report=not args.no_report,
                  jobs=args.jobs, executor=overrides)
