"""A probe as a YAML file (``postformer probe PROBE.yaml --out DIR``): synthetic probes (MQAR,
the MAD suite) over archs x tasks x task settings x widths x learning rates x seeds. The spec,
validated into a frozen ``Probe`` that holds every model of its grid. The grid is
run by ``scaling.run.probe`` (folder layout there) and reported by ``scaling.report.probe``.

Spec (``name``, ``archs``, ``tasks`` and ``widths`` are required)::

    name: smoke
    archs:                               # as in a study (scaling.spec.study): a preset name, or
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
    executor: {kind: inprocess}          # as a study's (scaling.run.executors)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postformer.arch import ModelConfig
from postformer.train.probes.data import ProbeDataModule
from postformer.train.probes.tasks import TASKS, model_vocab, task_settings
from postformer.train.schedule import DEFAULT_SCHEDULE

from .checks import (
    StudyError,
    check_archs,
    check_keys,
    checkpoint_keys,
    fail,
    integer,
    mapping,
    model_keys,
    n_devices,
    nonempty_list,
    positive,
    positive_numbers,
    read_spec,
    seed_list,
    trainer_keys,
)
from .executor import executor_section
from .models import probe_config

TOP_KEYS = ("name", "baseline", "archs", "tasks", "widths", "n_layers", "head_dim", "d_state",
            "lrs", "seeds", "train", "eval", "model", "data", "trainer", "checkpoint", "executor")
TASK_KEYS = ("sweep", "settings", "epochs", "steps")
LENGTH_KEYS = ("epochs", "steps")


@dataclass(frozen=True)
class Probe:
    """A validated probe spec (see the module docstring); ``tasks`` maps a task name to
    ``{"settings": [resolved settings, ...], "labels": [setting label, ...], "length":
    ("epochs" | "steps", value)}``; ``models``: (arch, d_model, vocab) -> the ModelConfig of
    every model the grid trains, resolved once when the spec is read."""

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
    models: dict[tuple[str, int, int], ModelConfig] = field(default_factory=dict, repr=False)

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


def setting_label(overrides: dict[str, Any]) -> str:
    """A task setting's name (folder and results column): ``default`` for the defaults, else
    its overrides, e.g. ``seq_len=128,num_kv_pairs=8``; folder-safe with ``=`` and ``,``."""
    if not overrides:
        return "default"
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def _length(src: str, where: str, section: dict[str, Any]) -> tuple[str, float] | None:
    given = [k for k in LENGTH_KEYS if k in section]
    if len(given) > 1:
        raise fail(src, where, "give epochs or steps, not both")
    if not given:
        return None
    key = given[0]
    value = (positive(src, f"{where}.epochs", section[key]) if key == "epochs"
             else integer(src, f"{where}.steps", section[key], 1))
    return key, value


def _check_tasks(src: str, tasks: Any, default_length: tuple[str, float]) -> dict[str, dict]:
    if not isinstance(tasks, dict) or not tasks:
        raise fail(src, "tasks", f"must be a non-empty mapping task -> options, got {tasks!r}; "
                                 f"tasks: {sorted(TASKS)}")
    out = {}
    for name, opts in tasks.items():
        where = f"tasks.{name}"
        if name not in TASKS:
            raise fail(src, where, f"unknown task; known: {sorted(TASKS)}")
        opts = mapping(src, where, opts)
        check_keys(src, where, opts, TASK_KEYS)
        common = dict(mapping(src, f"{where}.settings", opts.get("settings")))
        sweep = opts.get("sweep", "default")
        if sweep == "paper":
            overrides = [dict(o) for o in TASKS[name].sweep] or [{}]
        elif sweep == "default":
            overrides = [{}]
        elif isinstance(sweep, list) and sweep and all(isinstance(o, dict) for o in sweep):
            overrides = [dict(o) for o in sweep]
        else:
            raise fail(src, f"{where}.sweep", f"must be paper, default or a non-empty list of "
                                              f"setting mappings, got {sweep!r}")
        resolved, labels = [], []
        for i, o in enumerate(overrides):
            try:
                resolved.append(task_settings(name, **{**common, **o}))
            except (TypeError, ValueError) as err:
                raise fail(src, f"{where}.sweep[{i}]", str(err)) from None
            labels.append(setting_label(o))
        if len(set(labels)) != len(labels):
            raise fail(src, f"{where}.sweep", f"settings repeat: {labels}")
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
    check_keys(src, "top level", spec, TOP_KEYS)
    for key in ("name", "archs", "tasks", "widths"):
        if key not in spec:
            raise fail(src, key, "missing (required)")
    archs = spec["archs"]
    check_archs(src, archs)
    for label, arch in archs.items():
        if isinstance(arch, dict) and "lr" in (arch.get("model") or {}):
            raise fail(src, f"archs.{label}.model.lr", "the LR grid is the spec's lrs; remove it")
    baseline = spec.get("baseline", next(iter(archs)))
    if baseline not in archs:
        raise fail(src, "baseline", f"{baseline!r} is not one of the archs {list(archs)}")
    widths = [integer(src, "widths", w, 1) for w in nonempty_list(src, "widths", spec["widths"])]
    if len(set(widths)) != len(widths):
        raise fail(src, "widths", f"repeat: {widths}")
    lrs = positive_numbers(src, "lrs", spec.get("lrs", [1e-3]))
    train = mapping(src, "train", spec.get("train"))
    check_keys(src, "train", train, LENGTH_KEYS)
    tasks = _check_tasks(src, spec["tasks"], _length(src, "train", train) or ("epochs", 1.0))
    ev = mapping(src, "eval", spec.get("eval"))
    check_keys(src, "eval", ev, ("points",))

    sections = {}
    data_keys = [p for p in inspect.signature(ProbeDataModule.__init__).parameters
                 if p not in ("self", "task", "settings")]
    for key, allowed in (("model", model_keys() + ["warmup_fraction"]), ("data", data_keys),
                         ("trainer", trainer_keys()), ("checkpoint", checkpoint_keys())):
        section = mapping(src, key, spec.get(key))
        check_keys(src, key, section, allowed)
        sections[key] = dict(section)
    for key in ("max_steps", "default_root_dir", "val_check_interval"):
        if key in sections["trainer"]:
            raise fail(src, f"trainer.{key}", "is set by the runner for each cell; remove it")
    if "lr" in sections["model"]:
        raise fail(src, "model.lr", "the LR grid is the spec's lrs; remove it")
    model = sections["model"]
    model.setdefault("schedule", DEFAULT_SCHEDULE)
    if "warmup_fraction" in model and "warmup_steps" in model:
        raise fail(src, "model", "give warmup_fraction or warmup_steps, not both")
    if "warmup_steps" not in model:
        wf = model.setdefault("warmup_fraction", 0.05)
        if not isinstance(wf, int | float) or not 0 <= wf < 0.5:
            raise fail(src, "model.warmup_fraction", f"must be in [0, 0.5), got {wf!r}")
    sections["trainer"].setdefault("devices", 1)
    ex = executor_section(src, spec, sections["trainer"], executor)
    probe = Probe(
        name=str(spec["name"]), baseline=baseline, archs=copy.deepcopy(archs), tasks=tasks,
        widths=widths, n_layers=integer(src, "n_layers", spec.get("n_layers", 2), 1),
        head_dim=integer(src, "head_dim", spec.get("head_dim", 16), 1),
        d_state=None if spec.get("d_state") is None else integer(src, "d_state", spec["d_state"], 1),
        lrs=lrs, seeds=seed_list(src, "seeds", spec.get("seeds", [0])),
        eval_points=integer(src, "eval.points", ev.get("points", 1), 1), model=model,
        data=sections["data"], trainer=sections["trainer"], checkpoint=sections["checkpoint"],
        executor=ex, source=src, spec=copy.deepcopy(spec),
    )
    return dataclasses.replace(probe, models=_models(probe))  # every model builds


def _models(probe: Probe) -> dict[tuple[str, int, int], ModelConfig]:
    """The model of every (arch, width, task vocabulary) of the grid, in the order the grid
    trains them (tasks, settings, archs, widths), so an error names the first that fails."""
    out: dict[tuple[str, int, int], ModelConfig] = {}
    for task, t in probe.tasks.items():
        for settings in t["settings"]:
            vocab = model_vocab(task, **settings)
            for arch in probe.archs:
                for d in probe.widths:
                    if (arch, d, vocab) not in out:
                        out[(arch, d, vocab)] = probe_config(probe, arch, d, vocab)
    return out


def load_probe(path: str | Path, executor: dict[str, Any] | None = None) -> Probe:
    """Read and validate a probe YAML file."""
    return probe_from_dict(read_spec(path, "probe"), source=str(path), executor=executor)
