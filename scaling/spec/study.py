"""A scaling study as a YAML file: the spec and its validation. Its plan (which runs, at
which sizes, budgets, seeds and learning rates) is ``scaling.plan``.

The protocol follows what careful scaling-law papers do (Hoffmann et al. 2022; Besiroglu
et al. 2024; Porian et al. 2024; Hägele et al. 2024; DeepSeek LLM 2024):

- **IsoFLOP budgets** (``budgets.flops``). For each budget and arch, ``budgets.sizes``
  sizes (default 5) from the size ladder whose tokens per parameter fall inside
  ``budgets.tokens_per_param_range`` (default [5, 100]), spread evenly in ln N. D comes from
  the arch's own FLOPs per token (``arch.flops``), not 6N, so the sizes of one group have
  equal true compute (the plan refuses a group whose step rounding moves it by more
  than 2%).
- **A size ladder driven by one knob** (``ladder``): ``width`` (a list of ``d_model`` at a
  fixed depth) or ``depth`` (a list of ``n_layers`` at a fixed width or a fixed aspect
  ratio ``d_model / n_layers``). Heads and state sizes follow the width so they stay
  sensible at every rung: attention heads of ``head_dim`` channels (at least 16), Mamba-2
  heads of ``head_dim`` channels, GLA key dims of at least 32 per head where d_model allows,
  Gated DeltaNet (and DeltaProduct) key heads of at least 32 channels, Kimi Delta Attention
  and RWKV-7 heads of about ``head_dim`` channels, Mamba-3 as Mamba-2.
- **WSD branching** (Hägele et al. 2024) wherever sizes share a trajectory: a size that
  belongs to several IsoFLOP groups trains once, to the largest D it needs, and the smaller
  budgets are cooldowns branched off its stable phase (exactly a standalone wsd run of that
  length: same LR, weights and data up to the branch point).
- **Learning rates tuned per arch** (``tune``): an LR grid (at least 5 values, 2x apart by
  default) at two or more ladder sizes and a small budget (by default the smallest FLOP
  budget, or 20 tokens per parameter with token budgets); a best LR at the grid's edge
  extends that grid once in that direction (the report flags an optimum still at the
  edge); the main grid uses ``lr = a N^b`` fitted to the tuned optima (the nearest tuned
  size's best with one size). ``archs.X.model.lr`` fixes an arch's LR instead.
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
    ladder: {knob: width, d_model: [32, 48, 64, 96, 128], n_layers: 4, head_dim: 16}
    # or sizes: [tiny, {name: s1, d_model: 64, n_layers: 2, n_heads: 2, mixers: {...}}]
    budgets: {flops: [2.0e11, 6.0e11, 2.0e12], sizes: 5, tokens_per_param_range: [5, 100]}
    # or {tokens: [...]} / {tokens_per_param: [...]}: every size at every budget
    tune: {lr: {center: 3.0e-3, points: 5, factor: 2}, sizes: 2, tokens_per_param: 20}
    seeds: [0]
    headline_seeds: {seeds: [1, 2], sizes: 1}
    eval: {tokens: 262144, points: 5, curve_tokens: 32768}
    model: {warmup_fraction: 0.05, betas: [0.9, 0.95], schedule: wsd}   # LMModule options
    data: {seq_len: 512, batch_size: 4}                                 # TextDataModule
    trainer: {accelerator: cpu, devices: 1}                             # Trainer (not max_steps)
    checkpoint: {every_n_train_steps: 200}                              # RunCheckpoint
    cooldowns: true                  # default: true with schedule wsd, false otherwise
    executor: {kind: slurm, partition: gpu, nodes: 1, gpus_per_node: 8, time_min: 240}
                                     # where runs train (scaling.executors); default inprocess.
                                     # nodes sets trainer.num_nodes, gpus_per_node trainer.devices

Model shapes, budgets and the runs themselves: ``scaling.plan``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from postformer.arch import PRESETS, ModelConfig
from postformer.train.schedule import STUDY_SCHEDULE

TOP_KEYS = ("name", "baseline", "archs", "sizes", "ladder", "budgets", "tune", "seeds",
            "headline_seeds", "eval", "model", "data", "trainer", "checkpoint", "cooldowns",
            "executor")
BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")
BUDGET_OPTIONS = ("sizes", "tokens_per_param_range")  # with flops budgets and a ladder
SIZE_KEYS = ("name", "d_model", "n_layers", "n_heads", "mixers", "fields", "overrides")
ARCH_EXTRA_KEYS = ("preset", "layer_multiplier", "match_params", "model")
LADDER_KEYS = ("knob", "d_model", "n_layers", "aspect_ratio", "head_dim", "d_state", "mixers",
               "ff_multiple_of")
TUNE_KEYS = ("lr", "sizes", "tokens_per_param", "flops", "extend", "eval_points")
EVAL_KEYS = ("tokens", "points", "seed", "curve_tokens")
HEADLINE_KEYS = ("seeds", "sizes")
#: model-section keys the planner consumes (not LMModule arguments)
STUDY_MODEL_KEYS = ("warmup_fraction", "vocab_size")
# set by the runner per run, not by the study
RUNNER_TRAINER_KEYS = ("max_steps", "default_root_dir", "val_check_interval",
                       "check_val_every_n_epoch", "limit_val_batches")
RUNNER_DATA_KEYS = ("val_tokens", "val_seed")
MATCH_TOL = 0.05  # match_params: N within 5% of the baseline's
ISOFLOP_TOL = 0.02  # the sizes of an IsoFLOP group have equal compute within 2%
MIN_STEPS = 5
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


class StudyError(ValueError):
    """A study spec that cannot be run; the message names the file and the key."""


def _accepted(cls: Any, skip: tuple[str, ...] = ()) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *skip)]


def _model_keys() -> list[str]:
    from postformer.train.module import LMModule

    return _accepted(LMModule, ("config",))


def _data_defaults() -> dict[str, Any]:
    from postformer.train.data import TextDataModule

    sig = inspect.signature(TextDataModule.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def _trainer_keys() -> list[str]:
    import lightning as L

    return _accepted(L.Trainer)


def _checkpoint_keys() -> list[str]:
    from postformer.train.callbacks import RunCheckpoint

    return _accepted(RunCheckpoint)


def _lm_default(key: str) -> Any:
    from postformer.train.module import LMModule

    return inspect.signature(LMModule.__init__).parameters[key].default


# ---- the spec ---------------------------------------------------------------------------


@dataclass
class Study:
    """A validated study spec; ``to_dict()`` is the resolved YAML the runner writes."""

    name: str
    baseline: str
    archs: dict[str, Any]  # label -> preset name (str) or a dict of fields
    sizes: list[Any]  # preset size names (str) or size dicts (the ladder's rungs, generated)
    budget_kind: str
    budgets: list[float]
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
    _configs: dict[tuple[str, str], ModelConfig] = field(default_factory=dict, repr=False)

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
        return [s if isinstance(s, str) else s["name"] for s in self.sizes]

    @property
    def isoflop(self) -> bool:
        """FLOP budgets with sizes chosen per budget from a ladder."""
        return self.budget_kind == "flops" and self.ladder is not None

    @property
    def schedule(self) -> str:
        return self.model.get("schedule", "wsd")

    def data_value(self, key: str) -> Any:
        return self.data.get(key, _data_defaults()[key])

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

    def tuned(self, label: str) -> bool:
        """Whether arch ``label``'s LR comes from the tuning stage."""
        arch = self.archs[label]
        fixed = isinstance(arch, dict) and "lr" in (arch.get("model") or {})
        return self.tune is not None and not fixed


def n_devices(trainer: dict[str, Any]) -> int:
    """Devices a run trains on: ``trainer.devices`` (a count or a list of ids) x ``num_nodes``."""
    devices = trainer.get("devices", 1)
    n_dev = len(devices) if isinstance(devices, list) else int(devices)
    return n_dev * int(trainer.get("num_nodes", 1))


def _fail(study: str, where: str, msg: str) -> StudyError:
    return StudyError(f"{study}: {where}: {msg}")


def _check_keys(src: str, where: str, got: dict, allowed: list[str] | tuple[str, ...]) -> None:
    unknown = [k for k in got if k not in allowed]
    if unknown:
        raise _fail(src, where, f"unknown key(s) {unknown}; accepted: {sorted(allowed)}")


def _mapping(src: str, where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(src, where, f"must be a mapping, got {value!r}")
    return value


def _nonempty_list(src: str, where: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(src, where, f"must be a non-empty list, got {value!r}")
    return value


def _positive(src: str, where: str, v: Any) -> float:
    try:
        x = float(v)  # YAML reads 1e6 as a string; accept it
    except (TypeError, ValueError):
        raise _fail(src, where, f"{v!r} is not a number") from None
    if not x > 0 or not math.isfinite(x):
        raise _fail(src, where, f"must be positive, got {v!r}")
    return x


def _positive_numbers(src: str, where: str, value: Any) -> list[float]:
    out = [_positive(src, where, v) for v in _nonempty_list(src, where, value)]
    if len(set(out)) != len(out):
        raise _fail(src, where, f"repeated values in {value}")
    return out


def _int(src: str, where: str, v: Any, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise _fail(src, where, f"must be an integer >= {lo}, got {v!r}")
    return v


def _seed_list(src: str, where: str, value: Any, allow_empty: bool = False) -> list[int]:
    if allow_empty and value == []:
        return []
    seeds = _nonempty_list(src, where, value)
    if not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise _fail(src, where, f"must be distinct integers >= 0, got {seeds}")
    return list(seeds)


def _check_archs(src: str, archs: Any) -> None:
    if not isinstance(archs, dict) or not archs:
        raise _fail(src, "archs", f"must be a non-empty mapping label -> arch, got {archs!r}")
    model_fields = [f.name for f in dataclasses.fields(ModelConfig)]
    lm_keys = _model_keys()
    for label, arch in archs.items():
        where = f"archs.{label}"
        if not _LABEL.match(str(label)):
            raise _fail(src, where, "labels name run folders: use letters, digits, _ . + -")
        if isinstance(arch, str):
            if arch not in PRESETS:
                raise _fail(src, where, f"unknown arch {arch!r}; presets: {sorted(PRESETS)}, "
                                        "or give ModelConfig fields as a mapping")
        elif isinstance(arch, dict):
            allowed = [f for f in model_fields if f not in ("d_model", "n_layers")] + list(ARCH_EXTRA_KEYS)
            _check_keys(src, where, arch, allowed)
            if "preset" in arch and arch["preset"] not in PRESETS:
                raise _fail(src, where, f"unknown preset {arch['preset']!r}; known: {sorted(PRESETS)}")
            if "pattern" not in arch and "preset" not in arch:
                raise _fail(src, where, "give a pattern (e.g. [mamba2, attn]) or a preset")
            _int(src, f"{where}.layer_multiplier", arch.get("layer_multiplier", 1), 1)
            if not isinstance(arch.get("match_params", False), bool):
                raise _fail(src, f"{where}.match_params", "must be true or false")
            _check_keys(src, f"{where}.model", _mapping(src, f"{where}.model", arch.get("model")),
                        lm_keys)
        else:
            raise _fail(src, where, f"must be a preset name or a mapping of fields, got {arch!r}")


def _check_sizes(src: str, sizes: Any, archs: dict) -> list:
    sizes = _nonempty_list(src, "sizes", sizes)
    preset_sizes = list(PRESETS["transformer"])
    for i, size in enumerate(sizes):
        where = f"sizes[{i}]"
        if isinstance(size, str):
            if size not in preset_sizes:
                raise _fail(src, where, f"unknown size {size!r}; presets: {preset_sizes}, or give "
                                        "{name, d_model, n_layers}")
        elif isinstance(size, dict):
            _check_keys(src, where, size, SIZE_KEYS)
            for key in ("name", "d_model", "n_layers"):
                if key not in size:
                    raise _fail(src, where, f"missing {key!r}")
            if not _LABEL.match(str(size["name"])):
                raise _fail(src, where, "size names name run folders: use letters, digits, _ . + -")
            for label in size.get("overrides", {}) or {}:
                if label not in archs:
                    raise _fail(src, f"{where}.overrides", f"{label!r} is not one of the archs {list(archs)}")
        else:
            raise _fail(src, where, f"must be a preset size name or a mapping, got {size!r}")
    names = [s if isinstance(s, str) else str(s["name"]) for s in sizes]
    if len(set(names)) != len(names):
        raise _fail(src, "sizes", f"size names repeat: {names}")
    return sizes


def _check_budgets(src: str, budgets: Any, ladder: bool) -> tuple[str, list[float], int, tuple[float, float]]:
    budgets = _mapping(src, "budgets", budgets)
    kinds = [k for k in budgets if k in BUDGET_KINDS]
    if len(kinds) != 1:
        unknown = [k for k in budgets if k not in BUDGET_KINDS + BUDGET_OPTIONS]
        if unknown:
            raise _fail(src, "budgets", f"unknown budget kind {unknown[0]!r}; accepted: "
                                        f"{list(BUDGET_KINDS)}")
        raise _fail(src, "budgets", f"give exactly one of {list(BUDGET_KINDS)}, got {budgets!r}")
    _check_keys(src, "budgets", budgets, list(BUDGET_KINDS) + list(BUDGET_OPTIONS))
    kind = kinds[0]
    values = _positive_numbers(src, f"budgets.{kind}", budgets[kind])
    opts = [k for k in BUDGET_OPTIONS if k in budgets]
    if opts and not (kind == "flops" and ladder):
        raise _fail(src, f"budgets.{opts[0]}", "only with flops budgets and a ladder (IsoFLOP "
                                               "groups choose their sizes from the ladder)")
    n = _int(src, "budgets.sizes", budgets.get("sizes", 5), 3)
    rng = budgets.get("tokens_per_param_range", [5, 100])
    if not (isinstance(rng, list) and len(rng) == 2):
        raise _fail(src, "budgets.tokens_per_param_range", f"must be [low, high], got {rng!r}")
    lo, hi = (_positive(src, "budgets.tokens_per_param_range", v) for v in rng)
    if not lo < hi:
        raise _fail(src, "budgets.tokens_per_param_range", f"needs low < high, got {rng}")
    return kind, sorted(values), n, (lo, hi)


def _check_tune(src: str, tune: Any, model: dict, flops_budget: float | None
                ) -> dict[str, Any] | None:
    if tune is None or tune is False:
        return None
    tune = _mapping(src, "tune", tune)
    _check_keys(src, "tune", tune, TUNE_KEYS)
    lr = tune.get("lr", {})
    if isinstance(lr, list):
        grid = _positive_numbers(src, "tune.lr", lr)
        factor = None
    else:
        lr = _mapping(src, "tune.lr", lr)
        _check_keys(src, "tune.lr", lr, ("center", "points", "factor"))
        center = _positive(src, "tune.lr.center", lr.get("center", model.get("lr", 3e-3)))
        points = _int(src, "tune.lr.points", lr.get("points", 5), 5)
        factor = _positive(src, "tune.lr.factor", lr.get("factor", 2.0))
        if factor <= 1:
            raise _fail(src, "tune.lr.factor", f"must be > 1, got {factor}")
        grid = [center * factor ** (i - (points - 1) / 2) for i in range(points)]
    if len(grid) < 5:
        raise _fail(src, "tune.lr", f"needs at least 5 learning rates, got {len(grid)}")
    grid = sorted(grid)
    if factor is None:
        factor = float(np.exp(np.mean(np.diff(np.log(grid)))))
    sizes = tune.get("sizes", 2)
    if isinstance(sizes, int):
        _int(src, "tune.sizes", sizes, 2)
    else:
        sizes = [str(s) for s in _nonempty_list(src, "tune.sizes", sizes)]
        if len(sizes) < 2:
            raise _fail(src, "tune.sizes", "tune at two sizes or more (the LR law needs two)")
    if "tokens_per_param" in tune and "flops" in tune:
        raise _fail(src, "tune", "give tokens_per_param or flops, not both")
    if "flops" in tune:
        budget = {"flops": _positive(src, "tune.flops", tune["flops"])}
    elif "tokens_per_param" in tune or flops_budget is None:
        budget = {"tokens_per_param": _positive(src, "tune.tokens_per_param",
                                                tune.get("tokens_per_param", 20))}
    else:  # the study's smallest FLOP budget: a tuning run costs one of its cheapest runs
        budget = {"flops": flops_budget}
    if not isinstance(tune.get("extend", True), bool):
        raise _fail(src, "tune.extend", "must be true or false")
    return {"grid": grid, "factor": factor, "sizes": sizes, **budget,
            "extend": tune.get("extend", True),
            "eval_points": (None if tune.get("eval_points") is None
                            else _int(src, "tune.eval_points", tune["eval_points"], 1))}


def study_from_dict(spec: dict[str, Any], source: str = "<study>",
                    executor: dict[str, Any] | None = None) -> Study:
    """Validate a spec (see the module docstring) and fill its defaults. ``executor``: keys
    that override the spec's executor section (``--executor``, ``--executor-opt``; a None
    value removes the key)."""
    src = source
    if not isinstance(spec, dict):
        raise StudyError(f"{src}: a study is a YAML mapping, got {type(spec).__name__}")
    _check_keys(src, "top level", spec, TOP_KEYS)
    for key in ("name", "archs", "budgets"):
        if key not in spec:
            raise _fail(src, key, "missing (required)")
    name = str(spec["name"])
    archs = spec["archs"]
    _check_archs(src, archs)
    baseline = spec.get("baseline", next(iter(archs)))
    if baseline not in archs:
        raise _fail(src, "baseline", f"{baseline!r} is not one of the archs {list(archs)}")

    if ("ladder" in spec) == ("sizes" in spec):
        raise _fail(src, "sizes", "give either sizes (a list) or ladder (one knob), not both"
                    if "ladder" in spec else "missing: give sizes (a list) or a ladder")
    ladder = None
    if "ladder" in spec:
        from .plan import ladder_sizes

        ladder = _mapping(src, "ladder", spec["ladder"])
        sizes = ladder_sizes(src, ladder)
    else:
        sizes = _check_sizes(src, spec["sizes"], archs)
    kind, values, n_sizes, tpp = _check_budgets(src, spec["budgets"], ladder is not None)

    seeds = _seed_list(src, "seeds", spec.get("seeds", [0]))
    hs = _mapping(src, "headline_seeds", spec.get("headline_seeds"))
    _check_keys(src, "headline_seeds", hs, HEADLINE_KEYS)
    headline = _seed_list(src, "headline_seeds.seeds", hs.get("seeds", []), allow_empty=True)
    if set(headline) & set(seeds):
        raise _fail(src, "headline_seeds.seeds", f"repeat seeds of `seeds` {seeds}")
    headline_sizes = _int(src, "headline_seeds.sizes", hs.get("sizes", 1), 1)

    ev = _mapping(src, "eval", spec.get("eval"))
    _check_keys(src, "eval", ev, EVAL_KEYS)
    ev_tokens = ev.get("tokens")
    if ev_tokens is not None:
        ev_tokens = _int(src, "eval.tokens", ev_tokens, 1)
    curve = ev.get("curve_tokens")
    if curve is not None:
        curve = _int(src, "eval.curve_tokens", curve, 1)
        if ev_tokens is not None and curve > ev_tokens:
            raise _fail(src, "eval.curve_tokens", f"{curve} exceeds eval.tokens {ev_tokens}")
    evaluation = {"tokens": ev_tokens, "points": _int(src, "eval.points", ev.get("points", 5), 1),
                  "seed": _int(src, "eval.seed", ev.get("seed", 0), 0), "curve_tokens": curve}

    sections = {}
    for key, allowed in (("model", _model_keys() + list(STUDY_MODEL_KEYS)),
                         ("data", list(_data_defaults())),
                         ("trainer", _trainer_keys()), ("checkpoint", _checkpoint_keys())):
        section = _mapping(src, key, spec.get(key))
        _check_keys(src, key, section, allowed)
        sections[key] = dict(section)
    for key in RUNNER_TRAINER_KEYS:
        if key in sections["trainer"]:
            raise _fail(src, f"trainer.{key}", "is set by the runner for each run (validation: "
                                               "the study's eval section); remove it")
    for key in RUNNER_DATA_KEYS:
        if key in sections["data"]:
            raise _fail(src, f"data.{key}", "is set by the runner from the study's eval section; "
                                            "use eval.tokens / eval.seed")
    devices = sections["trainer"].get("devices", 1)
    if not (isinstance(devices, list) or (isinstance(devices, int) and devices >= 1)):
        raise _fail(src, "trainer.devices", f"must be a count >= 1 or a list of device ids (the "
                                            f"tokens per step depend on it), got {devices!r}")
    sections["trainer"].setdefault("devices", 1)
    from .executors import executor_section  # the executor section lives with the executors

    ex = executor_section(src, spec, sections["trainer"], executor)
    model = sections["model"]
    model.setdefault("schedule", STUDY_SCHEDULE)
    if "warmup_fraction" in model:
        wf = model["warmup_fraction"]
        if not isinstance(wf, int | float) or not 0 < wf < 0.5:
            raise _fail(src, "model.warmup_fraction", f"must be in (0, 0.5), got {wf!r}")
        if "warmup_steps" in model:
            raise _fail(src, "model", "give warmup_fraction or warmup_steps, not both")
    elif "warmup_steps" not in model:
        model["warmup_fraction"] = 0.05
    tune = _check_tune(src, spec.get("tune"), model, min(values) if kind == "flops" else None)
    schedule = model["schedule"]
    cooldowns = spec.get("cooldowns", schedule == "wsd")
    if cooldowns and schedule != "wsd":
        raise _fail(src, "cooldowns", f"need schedule wsd, not {schedule!r}: a {schedule} run "
                                      "stopped early is not a data point; each budget must be its own "
                                      "run (cooldowns: false)")

    study = Study(
        name=name, baseline=baseline, archs=copy.deepcopy(archs), sizes=sizes,
        budget_kind=kind, budgets=values, ladder=ladder, sizes_per_budget=n_sizes,
        tpp_range=tpp, tune=tune, seeds=seeds, headline_seeds=headline,
        headline_sizes=headline_sizes, eval=evaluation, model=model, data=sections["data"],
        trainer=sections["trainer"], checkpoint=sections["checkpoint"],
        cooldowns=bool(cooldowns), executor=ex, source=src, spec=copy.deepcopy(spec),
    )
    if isinstance(tune, dict) and isinstance(tune["sizes"], list):
        for s in tune["sizes"]:
            if s not in study.size_names:
                raise _fail(src, "tune.sizes", f"{s!r} is not a size of the study {study.size_names}")
    from .plan import model_config  # the plan needs a Study: imported here

    for label in archs:  # every model must build; errors name the arch and the size
        for size in sizes:
            model_config(study, label, size)
    return study


def read_spec(path: str | Any, what: str = "study") -> Any:
    """A spec file's YAML; StudyError naming the file when it is missing or not YAML."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{what} file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None


def load_study(path: str | Any, executor: dict[str, Any] | None = None) -> Study:
    """Read and validate a study YAML file (``executor``: see :func:`study_from_dict`)."""
    return study_from_dict(read_spec(path), source=str(path), executor=executor)
