"""The plan of a study (``scaling.study``): the model of every arch at every size, and the
runs: the tuning stage's sweeps and the main grid's trajectories (a main run and the wsd
cooldowns branched off it), with their steps, LRs, warmups and evaluation steps.

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
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from postformer.arch import PRESETS, ModelConfig
from postformer.arch.config import depth_multiplier
from postformer.arch.flops import flops_per_token, param_counts

from .study import (
    ARCH_EXTRA_KEYS,
    ISOFLOP_TOL,
    LADDER_KEYS,
    MATCH_TOL,
    MIN_STEPS,
    Study,
    StudyError,
    _check_keys,
    _fail,
    _int,
    _lm_default,
    _mapping,
    _nonempty_list,
    _positive,
)

# ---- the size ladder ----------------------------------------------------------------


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
    kda = _heads(d, head_dim)  # Kimi Delta Attention: key dim d in heads of about head_dim
    return {
        "attn": {"n_heads": attn},
        "swa": {"n_heads": attn},
        "mamba2": {"head_dim": mamba_hd, **({"d_state": int(d_state)} if d_state else {})},
        "gla": {"n_heads": gla},
        "gdn": {"n_heads": gdn, "head_dim": max(1, key_gdn // gdn)},
        "deltanet": {"n_heads": max(1, d // 32), "head_dim": d // max(1, d // 32)},
        "gated_attn": {"n_heads": attn},
        "deltaproduct": {"n_heads": gdn, "head_dim": max(1, key_gdn // gdn)},
        "kda": {"n_heads": kda, "head_dim": d // kda},
        "mamba3": {"head_dim": mamba_hd, **({"d_state": int(d_state)} if d_state else {})},
        "rwkv7": {"head_dim": d // kda},  # heads of about head_dim channels that divide d
    }


# ---- model shapes -----------------------------------------------------------------------


def _merge_mixers(into: dict, mixers: dict | None) -> None:
    for name, opts in (mixers or {}).items():
        into[name] = {**into.get(name, {}), **(opts or {})}


def _shape_config(study: Study, label: str, size: Any, vocab: int | None = None) -> dict[str, Any]:
    """ModelConfig fields of arch ``label`` at ``size`` before parameter matching; ``vocab``:
    the models' vocabulary (default: the study's tokenizer's, ``study_vocab``). ``study``
    needs only ``source`` and ``archs`` when ``vocab`` is given (the probe runner's use)."""
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
            k: copy.deepcopy(base[k]) for k in ("pattern", "mlp", "mlp_kind") if k in base
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
    if "vocab_size" not in fields:
        fields["vocab_size"] = vocab if vocab is not None else study_vocab(study)

    try:
        probe = ModelConfig(**{**fields, "n_layers": 1})
        if isinstance(arch, dict) and "layer_multiplier" in arch:
            mult = arch["layer_multiplier"]
        else:
            mult = depth_multiplier(probe.pattern, probe.mlp)
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


def study_vocab(study: Study) -> int:
    """The vocabulary of the study's models: ``data.tokenizer``'s size, or ``model.vocab_size``
    where the tokenizer file is not on this machine (planning a cluster study on a laptop);
    both given must agree."""
    from postformer.train.tokenizer import get_tokenizer

    spec, given = study.data_value("tokenizer"), study.model.get("vocab_size")
    try:
        vocab = get_tokenizer(spec).vocab_size
    except FileNotFoundError as err:
        if given is not None:
            return int(given)
        raise StudyError(f"{study.source}: data.tokenizer: {err}; train it first (`postformer "
                         "tokenizer train ... --out FILE`), or set model.vocab_size to plan "
                         "without it") from None
    if given is not None and int(given) != vocab:
        raise StudyError(f"{study.source}: model.vocab_size: {given} differs from data.tokenizer "
                         f"{spec!r}'s {vocab} tokens; the models follow the tokenizer")
    return vocab


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
class Trained:
    """What every trained model of a study or a probe is: its arch and seed, its model, what it
    costs (parameters, FLOPs per token at its sequence length) and its runs (main run first)."""

    arch: str
    seed: int
    config: ModelConfig
    N: int
    N_non_emb: int
    flops_per_token: float
    seq_len: int
    runs: list[RunPlan]


@dataclass
class Point(Trained):
    """One trajectory of a study: (arch, size, seed) of the main grid, or (arch, size, lr)
    of the tuning stage, with every run that measures its budgets.

    ``lr`` is None for a main-grid point whose LR awaits the tuning stage."""

    size: str = ""
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
    from the smallest size of the main grid to its median size (with a tokens-per-parameter
    tuning budget its cost grows as N^2)."""
    sizes = study.tune["sizes"]
    if isinstance(sizes, list):
        return sizes
    used = {shape.name for shape, _, _ in _budgets_of(study, label)}
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
