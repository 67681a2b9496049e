"""A scaling study: architectures x sizes x seeds x token budgets, as a YAML file, and its plan.

Spec (every key but ``name``, ``archs``, ``sizes`` and ``budgets`` is optional)::

    name: smoke
    baseline: transformer            # an arch label; default: the first one
    archs:                           # label -> a preset arch name, or ModelConfig fields
      transformer: transformer       # PRESETS["transformer"]
      mamba2: mamba2
      hybrid:                        # ModelConfig fields but d_model/n_layers, plus:
        pattern: [mamba2, mamba2, mamba2, attn]
        mixers: {mamba2: {d_state: 16}}
        layer_multiplier: 2          # n_layers = size's n_layers * this
        # preset: mamba2             # start from a preset's pattern and mixer options
    sizes:                           # a preset size name, or an explicit shape
      - tiny
      - {name: s1, d_model: 64, n_layers: 2, n_heads: 2,
         mixers: {mamba2: {headdim: 32}},          # options for every arch using that mixer
         overrides: {mamba2: {n_layers: 3}}}       # ModelConfig fields for one arch label
    budgets: {tokens: [1e6, 4e6]}    # or {tokens_per_param: [5, 20]} or {flops: [1e13, 1e14]}
    seeds: [0]
    model: {lr: 3e-3, warmup_steps: 20}            # LMModule options; schedule: wsd by default
    data: {seq_len: 128, batch_size: 16, max_bytes: 2000000}   # TextDataModule options
    trainer: {accelerator: cpu, devices: 1}        # Trainer options (not max_steps)
    checkpoint: {every_n_train_steps: 200}         # RunCheckpoint options
    cooldowns: true                  # default: true with schedule wsd, false otherwise

Model shapes. A size is a Transformer++ shape: ``d_model``, ``n_layers`` (and attention heads;
the preset sizes are ``arch.config``'s, GPT-3's from 125m up). An arch's ``n_layers`` is the
size's times its ``layer_multiplier``, by default 2 when no block of its pattern has an MLP
(a Mamba-2 block holds about the parameters of half a Transformer++ block, mixer plus MLP;
this is also how ``PRESETS["mamba2"]`` doubles the depth) and 1 otherwise; a preset arch at a
preset size keeps the preset's depth, matched to Transformer++'s parameter count. Options are merged
in this order, later wins: the preset's (a preset arch at a preset size is exactly
``ModelConfig.from_preset``), the size's ``mixers``, the arch's own fields, the size's
``overrides[label]``. ``vocab_size`` is the data tokenizer's. A mixer of the pattern that no
layer reaches (a hybrid shallower than its pattern) is an error.

Budgets. ``tokens`` are the same for every size; ``tokens_per_param`` gives ``D = r N`` and
``flops`` gives ``D = C / (6 N)`` (IsoFLOP; Chinchilla's ``C = 6ND``), both with ``N`` counting
embeddings. A budget is trained as ``steps = ceil(D / tokens_per_step)`` optimizer steps with
``tokens_per_step = batch_size * seq_len * accumulate_grad_batches * devices * num_nodes``;
the D reported is ``steps * tokens_per_step``.

WSD cooldowns (Hägele et al. 2024). With ``schedule: wsd`` one main run per (arch, size,
seed) trains to the largest budget and saves a checkpoint at ``wsd_decay_start(T_b)`` for
every smaller budget of ``T_b`` steps (``T_b - round(decay_fraction * T_b)``, not before the
warmup). Up to that step a wsd run of ``T_b`` steps and the main run have the same LR,
weights and data, so resuming there with ``max_steps = T_b`` (a *cooldown*) gives exactly
the standalone ``T_b`` run; it costs only the decay steps. This needs each branch point to
lie before the main run's own decay; the plan says so when budgets are too close. Any other
schedule (``cosine``) trains every budget as its own full run from scratch: a cosine run
stopped early is not a data point, and ``cooldowns: true`` with it is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postformer.arch import PRESETS, ModelConfig
from postformer.arch.flops import flops_per_token, param_counts

TOP_KEYS = ("name", "baseline", "archs", "sizes", "budgets", "seeds", "model", "data", "trainer",
            "checkpoint", "cooldowns")
BUDGET_KINDS = ("tokens", "tokens_per_param", "flops")
SIZE_KEYS = ("name", "d_model", "n_layers", "n_heads", "mixers", "overrides")
ARCH_EXTRA_KEYS = ("preset", "layer_multiplier")
# set by the runner per run, not by the study
RUNNER_TRAINER_KEYS = ("max_steps", "default_root_dir")
_LABEL = re.compile(r"^[A-Za-z0-9_.+]+$")


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


# ---- the spec ---------------------------------------------------------------------------


@dataclass
class Study:
    """A validated study spec; ``to_dict()`` is the resolved YAML the runner writes."""

    name: str
    baseline: str
    archs: dict[str, Any]  # label -> preset name (str) or a dict of fields
    sizes: list[Any]  # preset size names (str) or dicts with SIZE_KEYS
    budget_kind: str
    budgets: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    cooldowns: bool = True
    source: str = "<study>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "baseline": self.baseline, "archs": copy.deepcopy(self.archs),
            "sizes": copy.deepcopy(self.sizes), "budgets": {self.budget_kind: list(self.budgets)},
            "seeds": list(self.seeds), "model": dict(self.model), "data": dict(self.data),
            "trainer": dict(self.trainer), "checkpoint": dict(self.checkpoint),
            "cooldowns": self.cooldowns,
        }

    @property
    def size_names(self) -> list[str]:
        return [s if isinstance(s, str) else s["name"] for s in self.sizes]

    @property
    def schedule(self) -> str:
        return self.model.get("schedule", "wsd")

    def data_value(self, key: str) -> Any:
        return self.data.get(key, _data_defaults()[key])

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all devices."""
        devices = self.trainer.get("devices", 1)
        n_dev = len(devices) if isinstance(devices, list) else int(devices)
        return (self.data_value("batch_size") * self.data_value("seq_len")
                * int(self.trainer.get("accumulate_grad_batches", 1)) * n_dev
                * int(self.trainer.get("num_nodes", 1)))


def _fail(study: str, where: str, msg: str) -> StudyError:
    return StudyError(f"{study}: {where}: {msg}")


def _check_keys(src: str, where: str, got: dict, allowed: list[str] | tuple[str, ...]) -> None:
    unknown = [k for k in got if k not in allowed]
    if unknown:
        raise _fail(src, where, f"unknown key(s) {unknown}; accepted: {sorted(allowed)}")


def _nonempty_list(src: str, where: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(src, where, f"must be a non-empty list, got {value!r}")
    return value


def _positive_numbers(src: str, where: str, value: Any) -> list[float]:
    out = []
    for v in _nonempty_list(src, where, value):
        try:
            x = float(v)  # YAML reads 1e6 as a string; accept it
        except (TypeError, ValueError):
            raise _fail(src, where, f"{v!r} is not a number") from None
        if not x > 0 or not math.isfinite(x):
            raise _fail(src, where, f"budgets must be positive, got {v!r}")
        out.append(x)
    if len(set(out)) != len(out):
        raise _fail(src, where, f"repeated budgets in {value}")
    return out


def study_from_dict(spec: dict[str, Any], source: str = "<study>") -> Study:
    """Validate a spec (see the module docstring) and fill its defaults."""
    src = source
    if not isinstance(spec, dict):
        raise StudyError(f"{src}: a study is a YAML mapping, got {type(spec).__name__}")
    _check_keys(src, "top level", spec, TOP_KEYS)
    for key in ("name", "archs", "sizes", "budgets"):
        if key not in spec:
            raise _fail(src, key, "missing (required)")
    name = str(spec["name"])

    archs = spec["archs"]
    if not isinstance(archs, dict) or not archs:
        raise _fail(src, "archs", f"must be a non-empty mapping label -> arch, got {archs!r}")
    model_fields = [f.name for f in dataclasses.fields(ModelConfig)]
    for label, arch in archs.items():
        where = f"archs.{label}"
        if not _LABEL.match(str(label)):
            raise _fail(src, where, "labels name run folders: use letters, digits, _ . +")
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
            mult = arch.get("layer_multiplier", 1)
            if not isinstance(mult, int) or mult < 1:
                raise _fail(src, where, f"layer_multiplier must be an integer >= 1, got {mult!r}")
        else:
            raise _fail(src, where, f"must be a preset name or a mapping of fields, got {arch!r}")

    baseline = spec.get("baseline", next(iter(archs)))
    if baseline not in archs:
        raise _fail(src, "baseline", f"{baseline!r} is not one of the archs {list(archs)}")

    sizes = _nonempty_list(src, "sizes", spec["sizes"])
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
                raise _fail(src, where, "size names name run folders: use letters, digits, _ . +")
            for label in size.get("overrides", {}) or {}:
                if label not in archs:
                    raise _fail(src, f"{where}.overrides", f"{label!r} is not one of the archs {list(archs)}")
        else:
            raise _fail(src, where, f"must be a preset size name or a mapping, got {size!r}")
    names = [s if isinstance(s, str) else str(s["name"]) for s in sizes]
    if len(set(names)) != len(names):
        raise _fail(src, "sizes", f"size names repeat: {names}")

    budgets = spec["budgets"]
    if not isinstance(budgets, dict) or len(budgets) != 1:
        raise _fail(src, "budgets", f"give exactly one of {list(BUDGET_KINDS)}, got {budgets!r}")
    ((kind, values),) = budgets.items()
    if kind not in BUDGET_KINDS:
        raise _fail(src, "budgets", f"unknown budget kind {kind!r}; accepted: {list(BUDGET_KINDS)}")
    values = _positive_numbers(src, f"budgets.{kind}", values)

    seeds = _nonempty_list(src, "seeds", spec.get("seeds", [0]))
    if not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise _fail(src, "seeds", f"must be distinct integers >= 0, got {seeds}")

    sections = {}
    for key, allowed in (("model", _model_keys()), ("data", list(_data_defaults())),
                         ("trainer", _trainer_keys()), ("checkpoint", _checkpoint_keys())):
        section = spec.get(key) or {}
        if not isinstance(section, dict):
            raise _fail(src, key, f"must be a mapping, got {section!r}")
        _check_keys(src, key, section, allowed)
        sections[key] = dict(section)
    for key in RUNNER_TRAINER_KEYS:
        if key in sections["trainer"]:
            raise _fail(src, f"trainer.{key}", "is set by the runner for each run; remove it")
    devices = sections["trainer"].get("devices", 1)
    if not (isinstance(devices, list) or (isinstance(devices, int) and devices >= 1)):
        raise _fail(src, "trainer.devices", f"must be a count >= 1 or a list of device ids (the "
                                            f"tokens per step depend on it), got {devices!r}")
    sections["trainer"].setdefault("devices", 1)
    sections["model"].setdefault("schedule", "wsd")

    schedule = sections["model"]["schedule"]
    cooldowns = spec.get("cooldowns", schedule == "wsd")
    if cooldowns and schedule != "wsd":
        raise _fail(src, "cooldowns", f"need schedule wsd, not {schedule!r}: a {schedule} run "
                                      "stopped early is not a data point; each budget must be its own "
                                      "run (cooldowns: false)")

    study = Study(
        name=name, baseline=baseline, archs=copy.deepcopy(archs), sizes=copy.deepcopy(sizes),
        budget_kind=kind, budgets=values, seeds=list(seeds), model=sections["model"],
        data=sections["data"], trainer=sections["trainer"], checkpoint=sections["checkpoint"],
        cooldowns=bool(cooldowns), source=src,
    )
    for label in archs:  # every model must build; errors name the arch and the size
        for size in sizes:
            model_config(study, label, size)
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None
    return study_from_dict(spec, source=str(path))


# ---- model shapes -----------------------------------------------------------------------


def _merge_mixers(into: dict, mixers: dict | None) -> None:
    for name, opts in (mixers or {}).items():
        into[name] = {**into.get(name, {}), **(opts or {})}


def model_config(study: Study, label: str, size: Any) -> ModelConfig:
    """The ``ModelConfig`` of arch ``label`` at ``size`` (a preset name or a size mapping)."""
    from postformer.train.tokenizer import get_tokenizer

    src, arch = study.source, study.archs[label]
    size_name = size if isinstance(size, str) else size["name"]
    where = f"archs.{label} at size {size_name}"
    preset = arch if isinstance(arch, str) else arch.get("preset")
    own = {} if isinstance(arch, str) else {k: v for k, v in arch.items() if k not in ARCH_EXTRA_KEYS}

    if isinstance(size, str):
        shape = PRESETS["transformer"][size]
        d_model, n_layers = shape["d_model"], shape["n_layers"]
        n_heads = shape["mixers"]["attn"]["n_heads"]
        size_mixers, overrides = {}, {}
    else:
        d_model, n_layers, n_heads = size["d_model"], size["n_layers"], size.get("n_heads")
        size_mixers, overrides = size.get("mixers") or {}, (size.get("overrides") or {}).get(label) or {}

    fields: dict[str, Any] = {}
    if preset is not None:
        base = PRESETS[preset][size] if isinstance(size, str) else next(iter(PRESETS[preset].values()))
        # at a custom size only the preset's design carries over (pattern, MLP rule), not its widths
        fields = copy.deepcopy(base) if isinstance(size, str) else {
            k: copy.deepcopy(base[k]) for k in ("pattern", "mlp") if k in base
        }
    fields.update({k: v for k, v in own.items() if k != "mixers"})
    pattern = fields.get("pattern", ["attn"])
    mixers = fields.setdefault("mixers", {})
    if n_heads is not None and "attn" in pattern:
        mixers.setdefault("attn", {}).setdefault("n_heads", n_heads)
    _merge_mixers(mixers, {k: v for k, v in size_mixers.items() if k in pattern})
    _merge_mixers(mixers, own.get("mixers"))
    fields["d_model"] = d_model
    fields.setdefault("vocab_size", get_tokenizer(study.data_value("tokenizer")).vocab_size)

    try:
        probe = ModelConfig(**{**fields, "n_layers": 1})
        if isinstance(arch, dict) and "layer_multiplier" in arch:
            mult = arch["layer_multiplier"]
        else:
            mult = 2 if not any(probe.block_has_mlp(m) for m in probe.pattern) else 1
        if isinstance(size, str) and preset is not None and not (isinstance(arch, dict) and "layer_multiplier" in arch):
            fields["n_layers"] = PRESETS[preset][size]["n_layers"]  # the preset's matched depth
        else:
            fields["n_layers"] = n_layers * mult
        _merge_mixers(mixers, overrides.get("mixers"))
        fields.update({k: v for k, v in overrides.items() if k != "mixers"})
        cfg = ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise _fail(src, where, str(err)) from None
    missing = set(cfg.pattern) - set(cfg.layer_mixers)
    if missing:
        raise _fail(src, where, f"{cfg.n_layers} layers never reach mixer(s) {sorted(missing)} of the "
                                f"pattern {cfg.pattern}; use more layers or a layer_multiplier")
    return cfg


# ---- the plan ---------------------------------------------------------------------------


@dataclass
class RunPlan:
    """One training run: a main run (``kind="final"``) or a cooldown branched off one.

    ``run_dir`` is relative to the study folder. A cooldown starts from the main run's
    checkpoint ``branch_ckpt`` (relative) at step ``start_step``.
    """

    kind: str
    budget_tokens: float  # as asked for (after tokens_per_param / flops conversion)
    steps: int
    tokens: int  # D: steps * tokens_per_step
    run_dir: str
    start_step: int = 0
    branch_ckpt: str | None = None
    save_at: list[int] = field(default_factory=list)  # stable-phase checkpoints to write


@dataclass
class Point:
    """One (arch, size, seed) of a study, with every run that measures its budgets."""

    arch: str
    size: str
    seed: int
    config: ModelConfig
    N: int
    N_non_emb: int
    flops_per_token: float
    seq_len: int
    runs: list[RunPlan]

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.size}-s{self.seed}"


def branch_ckpt_name(step: int) -> str:
    """File name of the stable-phase checkpoint saved at ``step`` (in RUN/checkpoints/)."""
    return f"stable-{step}.ckpt"


def _budget_tokens(study: Study, value: float, N: int) -> float:
    if study.budget_kind == "tokens":
        return value
    if study.budget_kind == "tokens_per_param":
        return value * N
    return value / (6 * N)  # flops


def plan(study: Study) -> list[Point]:
    """Expand archs x sizes x seeds into points, each with its runs (main run first)."""
    from postformer.train.schedule import wsd_decay_start

    tps = study.tokens_per_step
    seq_len = study.data_value("seq_len")
    warmup = study.model.get("warmup_steps", _lm_default("warmup_steps"))
    decay_fraction = study.model.get("decay_fraction", _lm_default("decay_fraction"))
    points = []
    for label in study.archs:
        for size in study.sizes:
            cfg = model_config(study, label, size)
            size_name = size if isinstance(size, str) else str(size["name"])
            N, N_non_emb = param_counts(cfg)
            budgets = sorted(
                ((b, math.ceil(b / tps)) for b in (_budget_tokens(study, v, N) for v in study.budgets)),
                key=lambda x: -x[1],
            )
            steps = [s for _, s in budgets]
            if len(set(steps)) != len(steps):
                raise StudyError(
                    f"{study.source}: budgets: at {label}/{size_name} two budgets round to the same "
                    f"number of steps {steps} ({tps} tokens per step); spread the budgets further"
                )
            for seed in study.seeds:
                name = f"{label}-{size_name}-s{seed}"
                main_dir = f"runs/{name}"
                (b_max, s_max), rest = budgets[0], budgets[1:]
                main = RunPlan("final", b_max, s_max, s_max * tps, main_dir)
                runs = [main]
                for b, s in rest:
                    if not study.cooldowns:
                        runs.append(RunPlan("final", b, s, s * tps, f"{main_dir}/budget-{s * tps}"))
                        continue
                    branch = wsd_decay_start(s, warmup_steps=warmup, decay_fraction=decay_fraction)
                    main_decay = wsd_decay_start(s_max, warmup_steps=warmup, decay_fraction=decay_fraction)
                    if branch >= s:
                        raise StudyError(
                            f"{study.source}: budgets: the {s}-step budget of {name} is not longer "
                            f"than the warmup ({warmup} steps); use a shorter warmup or larger budgets"
                        )
                    if branch < 1 or branch > main_decay:
                        raise StudyError(
                            f"{study.source}: budgets: the {s}-step budget of {name} would branch at "
                            f"step {branch}, but the {s_max}-step main run decays from step "
                            f"{main_decay} (warmup {warmup}); use budgets farther apart, a shorter "
                            "warmup, or cooldowns: false"
                        )
                    main.save_at.append(branch)
                    runs.append(RunPlan(
                        "cooldown", b, s, s * tps, f"{main_dir}/cooldown-{s * tps}",
                        start_step=branch, branch_ckpt=f"{main_dir}/checkpoints/{branch_ckpt_name(branch)}",
                    ))
                main.save_at.sort()
                points.append(Point(
                    arch=label, size=size_name, seed=seed, config=cfg, N=N, N_non_emb=N_non_emb,
                    flops_per_token=flops_per_token(cfg, seq_len), seq_len=seq_len, runs=runs,
                ))
    return points


def _lm_default(key: str) -> Any:
    from postformer.train.module import LMModule

    return inspect.signature(LMModule.__init__).parameters[key].default
