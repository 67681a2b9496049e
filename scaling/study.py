"""A scaling study as a YAML file, and its plan: which runs, at which sizes, budgets, seeds
and learning rates.

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
  Gated DeltaNet key heads of at least 32 channels.
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

Model shapes. A size is a Transformer++ shape (``d_model``, ``n_layers``, attention heads;
``fields``: ModelConfig fields for every arch at that size, such as the ladder's
``ff_multiple_of``, default 16).
An arch's ``n_layers`` is the size's times its ``layer_multiplier``, by default 2 when no
block of its pattern has an MLP (a Mamba-2 block holds about the parameters of half a
Transformer++ block) and 1 otherwise; a preset arch at a preset size keeps the preset's
matched depth. Options merge in this order, later wins: the preset's, the size's
``mixers``, the arch's own fields, the size's ``overrides[label]``. ``match_params: true``
sets the arch's ``d_ff`` at every size so that its N is within 5% of the baseline's.

Budgets. ``tokens`` are the same for every size; ``tokens_per_param`` gives ``D = r N``;
``flops`` gives ``D = C / flops_per_token`` (N counts embeddings). A run trains
``steps = round(D / tokens_per_step)`` optimizer steps, ``tokens_per_step = batch_size *
seq_len * accumulate_grad_batches * devices * num_nodes``; the D reported is
``steps * tokens_per_step``. Any schedule but wsd (``cosine``) trains every budget as its
own run from scratch (a cosine run stopped early is not a data point).
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
from postformer.arch.flops import flops_per_token, param_counts

TOP_KEYS = ("name", "baseline", "archs", "sizes", "ladder", "budgets", "tune", "seeds",
            "headline_seeds", "eval", "model", "data", "trainer", "checkpoint", "cooldowns")
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
STUDY_MODEL_KEYS = ("warmup_fraction",)
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
        devices = self.trainer.get("devices", 1)
        n_dev = len(devices) if isinstance(devices, list) else int(devices)
        return n_dev * int(self.trainer.get("num_nodes", 1))

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


def ladder_sizes(src: str, ladder: dict) -> list[dict[str, Any]]:
    """The size dicts of a ladder (see the module docstring), smallest first."""
    _check_keys(src, "ladder", ladder, LADDER_KEYS)
    knob = ladder.get("knob", "width")
    head_dim = _int(src, "ladder.head_dim", ladder.get("head_dim", 16), 16)
    mixers = _mapping(src, "ladder.mixers", ladder.get("mixers"))
    if knob == "width":
        widths = [_int(src, "ladder.d_model", d, 8) for d in _nonempty_list(src, "ladder.d_model", ladder.get("d_model"))]
        depth = _int(src, "ladder.n_layers", ladder.get("n_layers", 4), 1)
        shapes = [(d, depth) for d in widths]
        name = lambda d, L: f"w{d}"
    elif knob == "depth":
        depths = [_int(src, "ladder.n_layers", L, 1) for L in _nonempty_list(src, "ladder.n_layers", ladder.get("n_layers"))]
        if ("d_model" in ladder) == ("aspect_ratio" in ladder):
            raise _fail(src, "ladder", "with knob depth give d_model (a fixed width) or "
                                       "aspect_ratio (d_model = aspect_ratio * n_layers), not both")
        if "d_model" in ladder:
            shapes = [(_int(src, "ladder.d_model", ladder["d_model"], 8), L) for L in depths]
        else:
            ar = _positive(src, "ladder.aspect_ratio", ladder["aspect_ratio"])
            shapes = [(max(head_dim, int(round(ar * L / head_dim)) * head_dim), L) for L in depths]
        name = lambda d, L: f"L{L}"
    else:
        raise _fail(src, "ladder.knob", f"must be width or depth, got {knob!r}")
    if len(set(shapes)) != len(shapes):
        raise _fail(src, "ladder", f"rungs repeat: {shapes}")
    d_state = ladder.get("d_state")
    # the MLP width rounds to a multiple of this: 64 (the ModelConfig default) would move a
    # 32-wide model's d_ff from 85 to 128, a jump in N the ladder's spacing does not intend
    ff_mult = _int(src, "ladder.ff_multiple_of", ladder.get("ff_multiple_of", 16), 1)
    out = []
    for d, L in sorted(shapes):
        opts = _rung_mixers(d, head_dim, d_state)
        for m, o in mixers.items():
            opts[m] = {**opts.get(m, {}), **(o or {})}
        out.append({"name": name(d, L), "d_model": d, "n_layers": L,
                    "n_heads": opts["attn"]["n_heads"], "mixers": opts,
                    "fields": {"ff_multiple_of": ff_mult}})
    return out


def _heads(channels: int, per_head: int, *, even: bool = False, divides: int | None = None) -> int:
    """The most heads of at least ``per_head`` channels that divide ``channels`` (and
    ``divides``), with an even head dim when asked; at least one."""
    for h in range(max(1, channels // per_head), 0, -1):
        if channels % h or (divides is not None and divides % h):
            continue
        if even and (channels // h) % 2:
            continue
        return h
    return 1


def _rung_mixers(d: int, head_dim: int, d_state: int | None) -> dict[str, dict[str, Any]]:
    """Mixer options that keep heads and states sensible at width d (see the docstring)."""
    attn = _heads(d, head_dim, even=True)
    inner = 2 * d  # mamba2's d_inner at expand 2
    mamba_hd = inner // _heads(inner, head_dim)
    key_gla, val_gla = d // 2, d  # GLA: expand_k 0.5, expand_v 1
    gla = _heads(key_gla, 32, divides=val_gla) if key_gla >= 32 else 1
    key_gdn = int(round(0.75 * d))
    gdn = max(1, key_gdn // 32)
    return {
        "attn": {"n_heads": attn},
        "swa": {"n_heads": attn},
        "mamba2": {"headdim": mamba_hd, **({"d_state": int(d_state)} if d_state else {})},
        "gla": {"n_heads": gla},
        "gdn": {"n_heads": gdn, "head_dim": max(1, key_gdn // gdn)},
        "deltanet": {"n_heads": max(1, d // 32), "head_dim": d // max(1, d // 32)},
    }


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


def study_from_dict(spec: dict[str, Any], source: str = "<study>") -> Study:
    """Validate a spec (see the module docstring) and fill its defaults."""
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
    model = sections["model"]
    model.setdefault("schedule", "wsd")
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
        cooldowns=bool(cooldowns), source=src, spec=copy.deepcopy(spec),
    )
    if isinstance(tune, dict) and isinstance(tune["sizes"], list):
        for s in tune["sizes"]:
            if s not in study.size_names:
                raise _fail(src, "tune.sizes", f"{s!r} is not a size of the study {study.size_names}")
    for label in archs:  # every model must build; errors name the arch and the size
        for size in sizes:
            model_config(study, label, size)
    return study


def load_study(path: str | Any) -> Study:
    """Read and validate a study YAML file."""
    from pathlib import Path

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


def _shape_config(study: Study, label: str, size: Any) -> dict[str, Any]:
    """ModelConfig fields of arch ``label`` at ``size`` before parameter matching."""
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
        size_mixers, overrides, size_fields = {}, {}, {}
    else:
        d_model, n_layers, n_heads = size["d_model"], size["n_layers"], size.get("n_heads")
        size_mixers, overrides = size.get("mixers") or {}, (size.get("overrides") or {}).get(label) or {}
        size_fields = size.get("fields") or {}

    fields: dict[str, Any] = {}
    if preset is not None:
        base = PRESETS[preset][size] if isinstance(size, str) else next(iter(PRESETS[preset].values()))
        # at a custom size only the preset's design carries over (pattern, MLP rule), not its widths
        fields = copy.deepcopy(base) if isinstance(size, str) else {
            k: copy.deepcopy(base[k]) for k in ("pattern", "mlp") if k in base
        }
    fields.update(size_fields)
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
        ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise _fail(src, where, str(err)) from None
    return fields


def model_config(study: Study, label: str, size: Any) -> ModelConfig:
    """The ``ModelConfig`` of arch ``label`` at ``size`` (a preset name or a size mapping);
    with ``match_params`` its ``d_ff`` makes N match the baseline's within 5%."""
    key = (label, size if isinstance(size, str) else size["name"])
    cached = study._configs.get(key)
    if cached is None:
        cached = study._configs[key] = _model_config(study, label, size)
    return copy.deepcopy(cached)


def _model_config(study: Study, label: str, size: Any) -> ModelConfig:
    fields = _shape_config(study, label, size)
    cfg = ModelConfig(**fields)
    size_name = size if isinstance(size, str) else size["name"]
    where = f"archs.{label} at size {size_name}"
    arch = study.archs[label]
    if isinstance(arch, dict) and arch.get("match_params") and label != study.baseline:
        target = param_counts(ModelConfig(**_shape_config(study, study.baseline, size)))[0]
        if not any(cfg.block_has_mlp(m) for m in cfg.pattern):
            raise _fail(study.source, where, "match_params sets d_ff, but no block of the pattern "
                                             "has an MLP")
        # N is linear in d_ff: solve, then try the multiples of 8 around the solution
        n8, n16 = (param_counts(ModelConfig(**{**fields, "d_ff": f}))[0] for f in (8, 16))
        guess = 8 + (target - n8) * 8 / max(n16 - n8, 1)
        best = None
        for d_ff in {max(8, 8 * int(guess // 8) + k) for k in (-8, 0, 8, 16)}:
            N = param_counts(ModelConfig(**{**fields, "d_ff": d_ff}))[0]
            if best is None or abs(N - target) < abs(best[1] - target):
                best = (d_ff, N)
        if abs(best[1] / target - 1) > MATCH_TOL:
            raise _fail(study.source, where, f"match_params: no d_ff brings N within "
                                             f"{MATCH_TOL:.0%} of the baseline's {target} (best "
                                             f"{best[1]} at d_ff={best[0]})")
        cfg = ModelConfig(**{**fields, "d_ff": best[0]})
    missing = set(cfg.pattern) - set(cfg.layer_mixers)
    if missing:
        raise _fail(study.source, where, f"{cfg.n_layers} layers never reach mixer(s) "
                                         f"{sorted(missing)} of the pattern {cfg.pattern}; use "
                                         "more layers or a layer_multiplier")
    return cfg


# ---- the plan ---------------------------------------------------------------------------


@dataclass
class RunPlan:
    """One training run: a main run (``kind="final"``) or a cooldown branched off one.

    ``run_dir`` is relative to the study folder. A cooldown starts from the main run's
    checkpoint ``branch_ckpt`` (relative) at step ``start_step``. ``eval_at``: the global
    steps validated at (the last one included); ``budget_flops``: the IsoFLOP group (None
    for token budgets and tuning runs).
    """

    kind: str
    budget_tokens: float  # as asked for (after tokens_per_param / flops conversion)
    steps: int
    tokens: int  # D: steps * tokens_per_step
    run_dir: str
    start_step: int = 0
    branch_ckpt: str | None = None
    save_at: list[int] = field(default_factory=list)  # stable-phase checkpoints to write
    eval_at: list[int] = field(default_factory=list)
    budget_flops: float | None = None


@dataclass
class Point:
    """One trajectory of a study: (arch, size, seed) of the main grid, or (arch, size, lr)
    of the tuning stage, with every run that measures its budgets (main run first).

    ``lr`` is None for a main-grid point whose LR awaits the tuning stage."""

    arch: str
    size: str
    seed: int
    config: ModelConfig
    N: int
    N_non_emb: int
    flops_per_token: float
    seq_len: int
    runs: list[RunPlan]
    stage: str = "main"
    lr: float | None = None
    warmup_steps: int = 0

    @property
    def name(self) -> str:
        if self.stage == "tune":
            return f"{self.arch}-{self.size}-lr{self.lr:.3g}"
        return f"{self.arch}-{self.size}-s{self.seed}"


def branch_ckpt_name(step: int) -> str:
    """File name of the stable-phase checkpoint saved at ``step`` (in RUN/checkpoints/)."""
    return f"stable-{step}.ckpt"


@dataclass
class _Shape:
    size: Any
    name: str
    config: ModelConfig
    N: int
    N_non_emb: int
    fpt: float


def _shapes(study: Study, label: str) -> list[_Shape]:
    key = ("shapes", label)
    if key not in study._configs:
        out = []
        for size in study.sizes:
            cfg = model_config(study, label, size)
            N, N_ne = param_counts(cfg)
            out.append(_Shape(size, size if isinstance(size, str) else str(size["name"]), cfg, N,
                              N_ne, flops_per_token(cfg, study.seq_len)))
        study._configs[key] = out
    return study._configs[key]


def _pick(n_cand: int, k: int) -> list[int]:
    """k indices of n_cand spread evenly (ends included)."""
    if n_cand <= k:
        return list(range(n_cand))
    return sorted({int(round(x)) for x in np.linspace(0, n_cand - 1, k)})


def isoflop_sizes(study: Study, label: str) -> dict[float, list[str]]:
    """budget -> the size names of arch ``label``'s IsoFLOP group (smallest first)."""
    shapes = _shapes(study, label)
    lo, hi = study.tpp_range
    out = {}
    for C in study.budgets:
        cand = [s for s in shapes if lo <= C / s.fpt / s.N <= hi]
        if len(cand) < 3:
            tpp = ", ".join(f"{s.name}: {C / s.fpt / s.N:.3g}" for s in shapes)
            raise StudyError(
                f"{study.source}: budgets.flops: at C={C:.3g} arch {label} has {len(cand)} ladder "
                f"size(s) with tokens per parameter in [{lo:g}, {hi:g}] (an IsoFLOP group needs 3); "
                f"tokens per parameter by size: {tpp}; extend the ladder or move the budget")
        out[C] = [cand[i].name for i in _pick(len(cand), study.sizes_per_budget)]
    return out


def _budgets_of(study: Study, label: str) -> list[tuple[_Shape, list[tuple[float | None, float]], set]]:
    """Per size: its (budget_flops, D) list and the budgets where it gets headline seeds."""
    shapes = _shapes(study, label)
    out = []
    if study.isoflop:
        groups = isoflop_sizes(study, label)
        for s in shapes:
            mine = [(C, C / s.fpt) for C, names in groups.items() if s.name in names]
            middle = set()
            for C, names in groups.items():
                k = min(study.headline_sizes, len(names))
                start = (len(names) - k) // 2
                if s.name in names[start:start + k]:
                    middle.add(C)
            if mine:
                out.append((s, mine, middle))
        return out
    k = min(study.headline_sizes, len(shapes))
    start = (len(shapes) - k) // 2
    for i, s in enumerate(shapes):
        mine = []
        for v in study.budgets:
            if study.budget_kind == "tokens":
                mine.append((None, v))
            elif study.budget_kind == "tokens_per_param":
                mine.append((None, v * s.N))
            else:
                mine.append((v, v / s.fpt))
        out.append((s, mine, {b for b, _ in mine} if start <= i < start + k else set()))
    return out


def _eval_steps(steps: int, points: int, extra: list[int] = ()) -> list[int]:
    at = {max(1, int(round(steps * i / points))) for i in range(1, points + 1)}
    return sorted(at | {s for s in extra if 1 <= s <= steps} | {steps})


def _trajectory(study: Study, label: str, shape: _Shape, seed: int, budgets: list,
                base_dir: str, stage: str, lr: float | None, eval_points: int) -> Point:
    """One trajectory: a main run to the largest budget and a cooldown (or, without wsd
    cooldowns, a full run) for each smaller one."""
    from postformer.train.schedule import wsd_decay_start

    tps = study.tokens_per_step
    runs_spec = []
    for C, D in budgets:
        steps = max(1, int(round(D / tps)))
        if C is not None:
            actual = steps * tps * shape.fpt
            if abs(actual / C - 1) > ISOFLOP_TOL:
                raise StudyError(
                    f"{study.source}: budgets: {label} at size {shape.name} trains {steps} steps of "
                    f"{tps} tokens for C={C:.3g}, which rounds its compute to {actual:.3g} (off by "
                    f"more than {ISOFLOP_TOL:.0%}); use a smaller batch_size or larger budgets")
        if steps < MIN_STEPS:
            what = f"C={C:.3g}" if C else f"D={D:.3g}"
            raise StudyError(
                f"{study.source}: budgets: {label} at size {shape.name} would train only {steps} "
                f"steps for {what} ({tps} tokens per step; at least {MIN_STEPS}); use a smaller "
                "batch_size or larger budgets")
        runs_spec.append((C, D, steps))
    runs_spec.sort(key=lambda r: -r[2])
    steps_list = [r[2] for r in runs_spec]
    if len(set(steps_list)) != len(steps_list):
        raise StudyError(
            f"{study.source}: budgets: at {label}/{shape.name} two budgets round to the same "
            f"number of steps {steps_list} ({tps} tokens per step); spread the budgets further")
    if "warmup_steps" in study.arch_model(label):
        warmup = int(study.arch_model(label)["warmup_steps"])
    else:
        warmup = max(1, int(study.model["warmup_fraction"] * min(steps_list)))
    decay = study.arch_model(label).get("decay_fraction", _lm_default("decay_fraction"))
    (C_max, D_max, s_max), rest = runs_spec[0], runs_spec[1:]
    main = RunPlan("final", D_max, s_max, s_max * tps, base_dir, budget_flops=C_max)
    runs = [main]
    branches = []
    for C, D, s in rest:
        if not study.cooldowns:
            runs.append(RunPlan("final", D, s, s * tps, f"{base_dir}/budget-{s * tps}",
                                eval_at=_eval_steps(s, eval_points), budget_flops=C))
            continue
        branch = wsd_decay_start(s, warmup_steps=warmup, decay_fraction=decay)
        main_decay = wsd_decay_start(s_max, warmup_steps=warmup, decay_fraction=decay)
        if branch >= s:
            raise StudyError(
                f"{study.source}: budgets: the {s}-step budget of {label}/{shape.name} is not "
                f"longer than the warmup ({warmup} steps); use a shorter warmup or larger budgets")
        if branch < 1 or branch > main_decay:
            raise StudyError(
                f"{study.source}: budgets: the {s}-step budget of {label}/{shape.name} would "
                f"branch at step {branch}, but the {s_max}-step main run decays from step "
                f"{main_decay}; use budgets farther apart or cooldowns: false")
        main.save_at.append(branch)
        branches.append(branch)
        runs.append(RunPlan(
            "cooldown", D, s, s * tps, f"{base_dir}/cooldown-{s * tps}", start_step=branch,
            branch_ckpt=f"{base_dir}/checkpoints/{branch_ckpt_name(branch)}",
            eval_at=_eval_steps(s, 1), budget_flops=C))
    main.save_at.sort()
    main.eval_at = _eval_steps(s_max, eval_points, branches)
    return Point(arch=label, size=shape.name, seed=seed, config=shape.config, N=shape.N,
                 N_non_emb=shape.N_non_emb, flops_per_token=shape.fpt, seq_len=study.seq_len,
                 runs=runs, stage=stage, lr=lr, warmup_steps=warmup)


def plan(study: Study, lrs: dict[str, Any] | None = None) -> list[Point]:
    """The main grid: one point per (arch, size, seed) trajectory, each with its runs.

    ``lrs``: arch -> an object with ``lr_for(N)`` (``scaling.analysis.LRSweep``) for the
    archs tuned; a tuned arch missing from it gets ``lr=None`` (awaiting the tuning stage).
    Untuned archs use ``model.lr`` (theirs or the study's)."""
    points = []
    for label in study.archs:
        for shape, budgets, middle in _budgets_of(study, label):
            if study.tuned(label):
                sweep = (lrs or {}).get(label)
                lr = None if sweep is None else float(sweep.lr_for(shape.N))
            else:
                lr = float(study.arch_model(label).get("lr", _lm_default("lr")))
            for seed in study.seeds:
                points.append(_trajectory(study, label, shape, seed, budgets,
                                          f"runs/{label}-{shape.name}-s{seed}", "main", lr,
                                          study.eval["points"]))
            mid = [b for b in budgets if b[0] in middle or (b[0] is None and middle)]
            for seed in study.headline_seeds:
                if mid:
                    points.append(_trajectory(study, label, shape, seed, mid,
                                              f"runs/{label}-{shape.name}-s{seed}", "main", lr,
                                              study.eval["points"]))
    return points


def tune_sizes(study: Study, label: str) -> list[str]:
    """The sizes arch ``label`` is tuned at: the listed ones, or ``tune.sizes`` sizes spread
    from the smallest size of the main grid to its median size (tuning costs grow as N^2)."""
    sizes = study.tune["sizes"]
    if isinstance(sizes, list):
        return sizes
    used = {p.size for p in plan(study, {}) if p.arch == label}
    order = [s for s in study.size_names if s in used]
    upto = order[: max(2, (len(order) + 1) // 2)]
    return [upto[i] for i in _pick(len(upto), sizes)]


def extension_lrs(grid: list[float], factor: float, losses: dict[float, float]) -> list[float]:
    """The LRs to add when the best LR of a finished sweep over ``grid`` is at one of its
    edges: two more steps of ``factor`` beyond that edge ([] when interior)."""
    if len(losses) < len(grid) or not all(math.isfinite(losses[g]) for g in grid):
        return []
    best = min(grid, key=lambda g: losses[g])
    if best == grid[0]:
        return [grid[0] / factor, grid[0] / factor ** 2]
    if best == grid[-1]:
        return [grid[-1] * factor, grid[-1] * factor ** 2]
    return []


def plan_tune(study: Study, finished: dict[tuple[str, str, float], float] | None = None) -> list[Point]:
    """The tuning stage: per tuned arch and tune size, one run per LR of the grid at the
    tuning budget, plus the one-time extension of any sweep whose best LR (in ``finished``:
    (arch, size, lr) -> final loss) is at the grid's edge."""
    if study.tune is None:
        return []
    tune = study.tune
    grid, finished = tune["grid"], finished or {}
    points = []
    for label in study.archs:
        if not study.tuned(label):
            continue
        shapes = {s.name: s for s in _shapes(study, label)}
        for name in tune_sizes(study, label):
            shape = shapes[name]
            if "flops" in tune:
                D = tune["flops"] / shape.fpt
            else:
                D = tune["tokens_per_param"] * shape.N
            lrs = list(grid)
            if tune["extend"]:
                done = {lr: finished[(label, name, lr)] for lr in grid if (label, name, lr) in finished}
                lrs += extension_lrs(grid, tune["factor"], done)
            for lr in lrs:
                points.append(_trajectory(study, label, shape, study.seeds[0], [(None, D)],
                                          f"tune/{label}-{name}-lr{lr:.3g}", "tune", lr,
                                          tune["eval_points"] or study.eval["points"]))
    return points
