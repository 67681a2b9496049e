"""A scaling study as a YAML file: the spec, validated into a frozen ``Study`` that holds the
model of every arch at every size (``scaling.spec.models``). Its plan (which runs, at which
sizes, budgets, seeds and learning rates) is ``scaling.run.plan``.

The protocol follows what careful scaling-law papers do (Hoffmann et al. 2022; Besiroglu
et al. 2024; Porian et al. 2024; Hägele et al. 2024; DeepSeek LLM 2024):

- **IsoFLOP budgets** (``budgets.flops``). For each budget and arch, ``budgets.sizes``
  sizes (default 5) from the size ladder whose tokens per parameter fall inside
  ``budgets.tokens_per_param_range`` (default [5, 100]), spread evenly in ln N. D comes from
  the arch's own FLOPs per token (``arch.flops``), not 6N, so the sizes of one group have
  equal true compute (the plan refuses a group whose step rounding moves it by more
  than 2%). FLOPs are counted causally by default (``budgets.count: causal``): attention's
  causal scores and the chunked mixers' causal intra-chunk blocks, what kernels that skip
  masked work compute, the same rule for every mixer (``arch.flops``); ``chinchilla`` counts
  the full T x T scores and C x C blocks. Every run records both counts (and 6ND), and the
  report gives the verdict under each.
- **A size ladder driven by one knob** (``ladder``): ``width`` (a list of ``d_model`` at a
  fixed depth) or ``depth`` (a list of ``n_layers`` at a fixed width or a fixed aspect
  ratio ``d_model / n_layers``). Heads and state sizes follow the width so they stay
  sensible at every rung, by each mixer's own rule (``Mixer.width_options``; ``postformer list
  mixers`` and the mixers' docstrings say each), parametrised by ``head_dim`` (at least 16)
  and ``d_state``: e.g. attention heads of ``head_dim`` channels, Mamba-2 heads of
  ``head_dim`` channels and ``d_state`` states, GLA key dims of at least 32 per head where
  d_model allows.
- **WSD branching** (Hägele et al. 2024) wherever sizes share a trajectory: a size that
  belongs to several IsoFLOP groups trains once, to the largest D it needs, and the smaller
  budgets are cooldowns branched off its stable phase (exactly a standalone wsd run of that
  length: same LR, weights and data up to the branch point).
- **Learning rates tuned per arch** (``tune``): an LR grid (at least 5 values, 2x apart by
  default) at two or more ladder sizes and a budget (``tune.flops``; by default the smallest
  FLOP budget, or 20 tokens per parameter with token budgets). ``tune.sizes: k`` spreads k
  sizes over the arch's whole main grid with a FLOP budget (up to its median size with a
  tokens-per-parameter one, whose cost grows as N^2); ``tune.seeds`` (a list, or a mapping
  arch -> list with a ``default``) sweeps more seeds where seed spread exceeds the sweep's
  depth (losses averaged). A best LR at the grid's edge extends that grid once in that
  direction (the report flags an optimum still at the edge); the main grid uses
  ``lr = a N^b`` fitted to the tuned optima, b inside the prior range [-1, 0]
  (``scaling.fit.lr``; the nearest tuned size's best with one size). ``tune.check: [0.5, 2]``
  trains the baseline at its top budget's middle size once more at each multiple of its
  tuned LR (stage ``lrcheck``): the report says how far the factor moves.
  ``archs.X.model.lr`` fixes an arch's LR instead.
- **Warmup as a share of steps** (``model.warmup_fraction``, default 0.05 of the shortest
  run of a trajectory, so every run of it shares one warmup); AdamW's ``model.betas``.
- **Seeds**: ``seeds`` for every trajectory, ``headline_seeds`` more at the middle
  ``headline_seeds.sizes`` sizes of every IsoFLOP group (the points the minima rest on).
- **Evaluation** (``eval``): a fixed, shuffled validation set of ``eval.tokens`` tokens
  drawn from every held-out document (``data.val_tokens``), evaluated at ``eval.points``
  steps along every main run (plus its branch points) and tuning run (``tune.eval_points``),
  and at the end of every cooldown (whose curve before its branch point is its main run's).
  The result of a run is always the whole set at its last step; ``eval.curve_tokens``
  evaluates the points before it on a fixed random subset of that many tokens (the loss
  curve, cheaper).

Spec (``name``, ``archs``, ``budgets`` and one of ``ladder``/``sizes`` are required)::

    name: default
    baseline: transformer            # an arch label; default: the first one
    archs:                           # label -> a preset arch name, or ModelConfig fields
      transformer: transformer
      hybrid: {preset: gdn-hybrid, match_params: true}   # d_ff matched to the baseline's N
      transformer-conv: {preset: transformer, mixers: {attn: {conv_size: 4}}}
      mamba2-fixed-lr: {preset: mamba2, model: {lr: 3.0e-3}}   # LMModule options of one arch
      again: {preset: transformer, seed_offset: 1000}  # the same arch under other seeds (A/A)
      slow: {preset: transformer, lr_from: transformer, lr_scale: 0.25}  # its LR law, x0.25
    ladder: {knob: width, d_model: [32, 48, 64, 96, 128], n_layers: 4, head_dim: 16}
    # or sizes: [tiny, {name: s1, d_model: 64, n_layers: 2, n_heads: 2, mixers: {...}}]
    budgets: {flops: [2.0e11, 6.0e11, 2.0e12], sizes: 5, tokens_per_param_range: [5, 100],
              count: causal}       # or chinchilla: the FLOP count budgets and C use
    # or {tokens: [...]} / {tokens_per_param: [...]}: every size at every budget
    tune: {lr: {center: 3.0e-3, points: 5, factor: 2}, sizes: 3, flops: 6.0e11,
           seeds: {transformer: [0, 1], default: [0]}, check: [0.5, 2]}
    seeds: [0]
    headline_seeds: {seeds: [1, 2], sizes: 1}
    eval: {tokens: 262144, points: 5, curve_tokens: 32768}
    model: {warmup_fraction: 0.05, betas: [0.9, 0.95], schedule: wsd}   # LMModule options
    data: {seq_len: 512, batch_size: 4}                                 # TextDataModule
    trainer: {accelerator: cpu, devices: 1}                             # Trainer (not max_steps)
    checkpoint: {every_n_train_steps: 200}                              # RunCheckpoint
    cooldowns: true                  # default: true with schedule wsd, false otherwise
    executor: {kind: slurm, partition: gpu, nodes: 1, gpus_per_node: 8, time_min: 240}
                                     # where runs train (scaling.run.executors); default inprocess.
                                     # nodes sets trainer.num_nodes, gpus_per_node trainer.devices

Model shapes: ``scaling.spec.models``; budgets and the runs themselves: ``scaling.run.plan``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from postformer.arch import PRESETS, ModelConfig
from postformer.train.schedule import STUDY_SCHEDULE

from .checks import (
    LABEL,
    StudyError,
    check_archs,
    check_keys,
    checkpoint_keys,
    data_defaults,
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
from .models import FLOP_COUNTS, Shape, ladder_sizes, shapes_of, size_name

TOP_KEYS = ("name", "baseline", "archs", "sizes", "ladder", "budgets", "tune", "seeds",
            "headline_seeds", "eval", "model", "data", "trainer", "checkpoint", "cooldowns",
            "executor")
BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")
BUDGET_OPTIONS = ("sizes", "tokens_per_param_range")  # with flops budgets and a ladder
BUDGET_COUNT = "count"  # which FLOP count budgets and C use: causal (default) or chinchilla
SIZE_KEYS = ("name", "d_model", "n_layers", "n_heads", "mixers", "fields", "overrides")
TUNE_KEYS = ("lr", "sizes", "tokens_per_param", "flops", "extend", "eval_points", "seeds", "check")
EVAL_KEYS = ("tokens", "points", "seed", "curve_tokens")
HEADLINE_KEYS = ("seeds", "sizes")
#: model-section keys the planner consumes (not LMModule arguments)
STUDY_MODEL_KEYS = ("warmup_fraction", "vocab_size")
# set by the runner per run, not by the study
RUNNER_TRAINER_KEYS = ("max_steps", "default_root_dir", "val_check_interval",
                       "check_val_every_n_epoch", "limit_val_batches")
RUNNER_DATA_KEYS = ("val_tokens", "val_seed")


# ---- the spec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """A validated study spec (:func:`study_from_dict`); ``to_dict()`` is the resolved YAML the
    runner writes. ``shapes``: arch label -> the arch at every size (its ModelConfig, N, FLOPs
    per token), resolved once when the spec is read."""

    name: str
    baseline: str
    archs: dict[str, Any]  # label -> preset name (str) or a dict of fields
    sizes: list[Any]  # preset size names (str) or size dicts (the ladder's rungs, generated)
    budget_kind: str
    budgets: list[float]
    flops_count: str = "causal"  # budgets.count: which arch.flops count C uses
    ladder: dict[str, Any] | None = None
    sizes_per_budget: int = 5
    tpp_range: tuple[float, float] = (5.0, 100.0)
    tune: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    headline_seeds: list[int] = field(default_factory=list)
    headline_sizes: int = 1
    eval: dict[str, Any] = field(default_factory=lambda: {"tokens": None, "points": 5, "seed": 0})
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    cooldowns: bool = True
    executor: dict[str, Any] = field(default_factory=lambda: {"kind": "inprocess"})
    source: str = "<study>"
    spec: dict[str, Any] = field(default_factory=dict)  # the input, for to_dict
    shapes: dict[str, tuple[Shape, ...]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.spec)
        out.update({"baseline": self.baseline, "seeds": list(self.seeds),
                    "eval": dict(self.eval), "model": dict(self.model), "data": dict(self.data),
                    "trainer": dict(self.trainer), "cooldowns": self.cooldowns})
        if self.tune is not None:
            out["tune"] = copy.deepcopy(self.tune)
        out["executor"] = copy.deepcopy(self.executor)
        return out

    @property
    def size_names(self) -> list[str]:
        return [size_name(s) for s in self.sizes]

    @property
    def isoflop(self) -> bool:
        """FLOP budgets with sizes chosen per budget from a ladder."""
        return self.budget_kind == "flops" and self.ladder is not None

    @property
    def schedule(self) -> str:
        return self.model.get("schedule", "wsd")

    def data_value(self, key: str) -> Any:
        return self.data.get(key, data_defaults()[key])

    @property
    def seq_len(self) -> int:
        return int(self.data_value("seq_len"))

    @property
    def n_devices(self) -> int:
        return n_devices(self.trainer)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all devices."""
        return (self.data_value("batch_size") * self.seq_len
                * int(self.trainer.get("accumulate_grad_batches", 1)) * self.n_devices)

    def arch_model(self, label: str) -> dict[str, Any]:
        """LMModule options of arch ``label``: the study's ``model`` (minus the planner's own
        keys), updated by the arch's ``model`` mapping."""
        base = {k: v for k, v in self.model.items() if k not in STUDY_MODEL_KEYS}
        arch = self.archs[label]
        if isinstance(arch, dict):
            base.update(arch.get("model") or {})
        return base

    def _extra(self, label: str, key: str, default: Any) -> Any:
        arch = self.archs[label]
        return arch.get(key, default) if isinstance(arch, dict) else default

    def tuned(self, label: str) -> bool:
        """Whether arch ``label`` runs LR sweeps of its own in the tuning stage."""
        fixed = "lr" in (self._extra(label, "model", None) or {})
        return self.tune is not None and not fixed and self.lr_source(label) == label

    def lr_source(self, label: str) -> str:
        """The arch whose tuned LR law arch ``label`` trains with: ``archs.X.lr_from``, else
        itself; ``archs.X.lr_scale`` multiplies it (a known handicap: the baseline at a
        quarter of its tuned LR)."""
        return self._extra(label, "lr_from", label)

    def lr_scale(self, label: str) -> float:
        return float(self._extra(label, "lr_scale", 1.0))

    def seed_offset(self, label: str) -> int:
        """``archs.X.seed_offset``: added to every seed of arch ``label`` (its runs' init and
        data order): the baseline under another seed stream, for an A/A study."""
        return int(self._extra(label, "seed_offset", 0))

    def shape(self, label: str, size: str) -> Shape:
        """Arch ``label`` at the size named ``size``."""
        for shape in self.shapes[label]:
            if shape.name == size:
                return shape
        raise KeyError(f"{self.source}: no size {size!r} in the study; sizes: {self.size_names}")

    def model_config(self, label: str, size: str) -> ModelConfig:
        """A copy of the ModelConfig of arch ``label`` at the size named ``size``."""
        return copy.deepcopy(self.shape(label, size).config)


def _check_sizes(src: str, sizes: Any, archs: dict) -> list:
    sizes = nonempty_list(src, "sizes", sizes)
    preset_sizes = list(PRESETS["transformer"])
    for i, size in enumerate(sizes):
        where = f"sizes[{i}]"
        if isinstance(size, str):
            if size not in preset_sizes:
                raise fail(src, where, f"unknown size {size!r}; presets: {preset_sizes}, or give "
                                       "{name, d_model, n_layers}")
        elif isinstance(size, dict):
            check_keys(src, where, size, SIZE_KEYS)
            for key in ("name", "d_model", "n_layers"):
                if key not in size:
                    raise fail(src, where, f"missing {key!r}")
            if not LABEL.match(str(size["name"])):
                raise fail(src, where, "size names name run folders: use letters, digits, _ . + -")
            for label in size.get("overrides", {}) or {}:
                if label not in archs:
                    raise fail(src, f"{where}.overrides", f"{label!r} is not one of the archs {list(archs)}")
        else:
            raise fail(src, where, f"must be a preset size name or a mapping, got {size!r}")
    names = [size_name(s) for s in sizes]
    if len(set(names)) != len(names):
        raise fail(src, "sizes", f"size names repeat: {names}")
    return sizes


def _check_count(src: str, budgets: Any) -> str:
    count = (budgets or {}).get(BUDGET_COUNT, "causal") if isinstance(budgets, dict) else "causal"
    if count not in FLOP_COUNTS:
        raise fail(src, "budgets.count", f"must be one of {list(FLOP_COUNTS)}, got {count!r}")
    return count


def _check_budgets(src: str, budgets: Any, ladder: bool) -> tuple[str, list[float], int, tuple[float, float]]:
    budgets = mapping(src, "budgets", budgets)
    kinds = [k for k in budgets if k in BUDGET_KINDS]
    if len(kinds) != 1:
        unknown = [k for k in budgets if k not in (*BUDGET_KINDS, *BUDGET_OPTIONS, BUDGET_COUNT)]
        if unknown:
            raise fail(src, "budgets", f"unknown budget kind {unknown[0]!r}; accepted: "
                                       f"{list(BUDGET_KINDS)}")
        raise fail(src, "budgets", f"give exactly one of {list(BUDGET_KINDS)}, got {budgets!r}")
    check_keys(src, "budgets", budgets, [*BUDGET_KINDS, *BUDGET_OPTIONS, BUDGET_COUNT])
    kind = kinds[0]
    values = positive_numbers(src, f"budgets.{kind}", budgets[kind])
    opts = [k for k in BUDGET_OPTIONS if k in budgets]
    if opts and not (kind == "flops" and ladder):
        raise fail(src, f"budgets.{opts[0]}", "only with flops budgets and a ladder (IsoFLOP "
                                              "groups choose their sizes from the ladder)")
    n = integer(src, "budgets.sizes", budgets.get("sizes", 5), 3)
    rng = budgets.get("tokens_per_param_range", [5, 100])
    if not (isinstance(rng, list) and len(rng) == 2):
        raise fail(src, "budgets.tokens_per_param_range", f"must be [low, high], got {rng!r}")
    lo, hi = (positive(src, "budgets.tokens_per_param_range", v) for v in rng)
    if not lo < hi:
        raise fail(src, "budgets.tokens_per_param_range", f"needs low < high, got {rng}")
    return kind, sorted(values), n, (lo, hi)


def _check_tune(src: str, tune: Any, model: dict, flops_budget: float | None
                ) -> dict[str, Any] | None:
    if tune is None or tune is False:
        return None
    tune = mapping(src, "tune", tune)
    check_keys(src, "tune", tune, TUNE_KEYS)
    lr = tune.get("lr", {})
    if isinstance(lr, list):
        grid = positive_numbers(src, "tune.lr", lr)
        factor = None
    else:
        lr = mapping(src, "tune.lr", lr)
        check_keys(src, "tune.lr", lr, ("center", "points", "factor"))
        center = positive(src, "tune.lr.center", lr.get("center", model.get("lr", 3e-3)))
        points = integer(src, "tune.lr.points", lr.get("points", 5), 5)
        factor = positive(src, "tune.lr.factor", lr.get("factor", 2.0))
        if factor <= 1:
            raise fail(src, "tune.lr.factor", f"must be > 1, got {factor}")
        grid = [center * factor ** (i - (points - 1) / 2) for i in range(points)]
    if len(grid) < 5:
        raise fail(src, "tune.lr", f"needs at least 5 learning rates, got {len(grid)}")
    grid = sorted(grid)
    if factor is None:
        factor = float(np.exp(np.mean(np.diff(np.log(grid)))))
    sizes = tune.get("sizes", 2)
    if isinstance(sizes, int):
        integer(src, "tune.sizes", sizes, 2)
    else:
        sizes = [str(s) for s in nonempty_list(src, "tune.sizes", sizes)]
        if len(sizes) < 2:
            raise fail(src, "tune.sizes", "tune at two sizes or more (the LR law needs two)")
    if "tokens_per_param" in tune and "flops" in tune:
        raise fail(src, "tune", "give tokens_per_param or flops, not both")
    if "flops" in tune:
        budget = {"flops": positive(src, "tune.flops", tune["flops"])}
    elif "tokens_per_param" in tune or flops_budget is None:
        budget = {"tokens_per_param": positive(src, "tune.tokens_per_param",
                                               tune.get("tokens_per_param", 20))}
    else:  # the study's smallest FLOP budget: a tuning run costs one of its cheapest runs
        budget = {"flops": flops_budget}
    if not isinstance(tune.get("extend", True), bool):
        raise fail(src, "tune.extend", "must be true or false")
    seeds = tune.get("seeds")
    if isinstance(seeds, dict):
        seeds = {str(k): seed_list(src, f"tune.seeds.{k}", v) for k, v in seeds.items()}
    elif seeds is not None:
        seeds = {"default": seed_list(src, "tune.seeds", seeds)}
    check = tune.get("check")
    if check is not None:
        check = sorted(positive_numbers(src, "tune.check", check))
        if any(abs(c - 1) < 1e-9 for c in check):
            raise fail(src, "tune.check", f"LR multipliers other than 1 (the tuned LR is the "
                                          f"main run), got {check}")
    return {"grid": grid, "factor": factor, "sizes": sizes, **budget, "seeds": seeds,
            "check": check,
            "extend": tune.get("extend", True),
            "eval_points": (None if tune.get("eval_points") is None
                            else integer(src, "tune.eval_points", tune["eval_points"], 1))}


def study_from_dict(spec: dict[str, Any], source: str = "<study>",
                    executor: dict[str, Any] | None = None) -> Study:
    """Validate a spec (see the module docstring) and fill its defaults. ``executor``: keys
    that override the spec's executor section (``--executor``, ``--executor-opt``; a None
    value removes the key)."""
    src = source
    if not isinstance(spec, dict):
        raise StudyError(f"{src}: a study is a YAML mapping, got {type(spec).__name__}")
    check_keys(src, "top level", spec, TOP_KEYS)
    for key in ("name", "archs", "budgets"):
        if key not in spec:
            raise fail(src, key, "missing (required)")
    name = str(spec["name"])
    archs = spec["archs"]
    check_archs(src, archs)
    baseline = spec.get("baseline", next(iter(archs)))
    if baseline not in archs:
        raise fail(src, "baseline", f"{baseline!r} is not one of the archs {list(archs)}")

    if ("ladder" in spec) == ("sizes" in spec):
        raise fail(src, "sizes", "give either sizes (a list) or ladder (one knob), not both"
                   if "ladder" in spec else "missing: give sizes (a list) or a ladder")
    ladder = None
    if "ladder" in spec:
        ladder = mapping(src, "ladder", spec["ladder"])
        sizes = ladder_sizes(src, ladder)
    else:
        sizes = _check_sizes(src, spec["sizes"], archs)
    kind, values, n_sizes, tpp = _check_budgets(src, spec["budgets"], ladder is not None)
    flops_count = _check_count(src, spec["budgets"])

    seeds = seed_list(src, "seeds", spec.get("seeds", [0]))
    hs = mapping(src, "headline_seeds", spec.get("headline_seeds"))
    check_keys(src, "headline_seeds", hs, HEADLINE_KEYS)
    headline = seed_list(src, "headline_seeds.seeds", hs.get("seeds", []), allow_empty=True)
    if set(headline) & set(seeds):
        raise fail(src, "headline_seeds.seeds", f"repeat seeds of `seeds` {seeds}")
    headline_sizes = integer(src, "headline_seeds.sizes", hs.get("sizes", 1), 1)

    ev = mapping(src, "eval", spec.get("eval"))
    check_keys(src, "eval", ev, EVAL_KEYS)
    ev_tokens = ev.get("tokens")
    if ev_tokens is not None:
        ev_tokens = integer(src, "eval.tokens", ev_tokens, 1)
    curve = ev.get("curve_tokens")
    if curve is not None:
        curve = integer(src, "eval.curve_tokens", curve, 1)
        if ev_tokens is not None and curve > ev_tokens:
            raise fail(src, "eval.curve_tokens", f"{curve} exceeds eval.tokens {ev_tokens}")
    evaluation = {"tokens": ev_tokens, "points": integer(src, "eval.points", ev.get("points", 5), 1),
                  "seed": integer(src, "eval.seed", ev.get("seed", 0), 0), "curve_tokens": curve}

    sections = {}
    for key, allowed in (("model", model_keys() + list(STUDY_MODEL_KEYS)),
                         ("data", list(data_defaults())),
                         ("trainer", trainer_keys()), ("checkpoint", checkpoint_keys())):
        section = mapping(src, key, spec.get(key))
        check_keys(src, key, section, allowed)
        sections[key] = dict(section)
    for key in RUNNER_TRAINER_KEYS:
        if key in sections["trainer"]:
            raise fail(src, f"trainer.{key}", "is set by the runner for each run (validation: "
                                              "the study's eval section); remove it")
    for key in RUNNER_DATA_KEYS:
        if key in sections["data"]:
            raise fail(src, f"data.{key}", "is set by the runner from the study's eval section; "
                                           "use eval.tokens / eval.seed")
    devices = sections["trainer"].get("devices", 1)
    if not (isinstance(devices, list) or (isinstance(devices, int) and devices >= 1)):
        raise fail(src, "trainer.devices", f"must be a count >= 1 or a list of device ids (the "
                                           f"tokens per step depend on it), got {devices!r}")
    sections["trainer"].setdefault("devices", 1)
    ex = executor_section(src, spec, sections["trainer"], executor)
    model = sections["model"]
    model.setdefault("schedule", STUDY_SCHEDULE)
    if "warmup_fraction" in model:
        wf = model["warmup_fraction"]
        if not isinstance(wf, int | float) or not 0 < wf < 0.5:
            raise fail(src, "model.warmup_fraction", f"must be in (0, 0.5), got {wf!r}")
        if "warmup_steps" in model:
            raise fail(src, "model", "give warmup_fraction or warmup_steps, not both")
    elif "warmup_steps" not in model:
        model["warmup_fraction"] = 0.05
    tune = _check_tune(src, spec.get("tune"), model, min(values) if kind == "flops" else None)
    schedule = model["schedule"]
    cooldowns = spec.get("cooldowns", schedule == "wsd")
    if cooldowns and schedule != "wsd":
        raise fail(src, "cooldowns", f"need schedule wsd, not {schedule!r}: a {schedule} run "
                                     "stopped early is not a data point; each budget must be its own "
                                     "run (cooldowns: false)")

    study = Study(
        name=name, baseline=baseline, archs=copy.deepcopy(archs), sizes=sizes,
        budget_kind=kind, budgets=values, flops_count=flops_count, ladder=ladder, sizes_per_budget=n_sizes,
        tpp_range=tpp, tune=tune, seeds=seeds, headline_seeds=headline,
        headline_sizes=headline_sizes, eval=evaluation, model=model, data=sections["data"],
        trainer=sections["trainer"], checkpoint=sections["checkpoint"],
        cooldowns=bool(cooldowns), executor=ex, source=src, spec=copy.deepcopy(spec),
    )
    if isinstance(tune, dict) and tune["seeds"] is not None:
        for label in tune["seeds"]:
            if label != "default" and label not in archs:
                raise fail(src, f"tune.seeds.{label}", f"is not one of the archs {list(archs)} "
                                                       "(or default)")
    if isinstance(tune, dict) and isinstance(tune["sizes"], list):
        for s in tune["sizes"]:
            if s not in study.size_names:
                raise fail(src, "tune.sizes", f"{s!r} is not a size of the study {study.size_names}")
    # every model must build (errors name the arch and the size); resolved once, stored
    return dataclasses.replace(study, shapes={label: shapes_of(study, label) for label in archs})


def load_study(path: str | Path, executor: dict[str, Any] | None = None) -> Study:
    """Read and validate a study YAML file (``executor``: see :func:`study_from_dict`)."""
    return study_from_dict(read_spec(path), source=str(path), executor=executor)
