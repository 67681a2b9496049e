"""The plan of a study (``scaling.spec.Study``): its runs, the tuning stage's sweeps and the
main grid's trajectories (a main run and the wsd cooldowns branched off it), with their
steps, LRs, warmups and evaluation steps. The models themselves are the spec's
(``Study.shapes``, ``scaling.spec.models``).

Budgets. ``tokens`` are the same for every size; ``tokens_per_param`` gives ``D = r N``;
``flops`` gives ``D = C / flops_per_token`` (N counts embeddings). A run trains
``steps = round(D / tokens_per_step)`` optimizer steps, ``tokens_per_step = batch_size *
seq_len * accumulate_grad_batches * devices * num_nodes``; the D reported is
``steps * tokens_per_step``. Any schedule but wsd (``cosine``) trains every budget as its
own run from scratch (a cosine run stopped early is not a data point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from postformer.arch import ModelConfig
from postformer.train.schedule import wsd_decay_start

from ..spec import Shape, Study, StudyError
from ..spec.checks import lm_default

ISOFLOP_TOL = 0.02  # the sizes of an IsoFLOP group have equal compute within 2%
MIN_STEPS = 5


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
    flops_by_count: dict[str, float] = field(default_factory=dict)  # arch.flops counts by name


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


def _pick(n_cand: int, k: int) -> list[int]:
    """k indices of n_cand spread evenly (ends included)."""
    if n_cand <= k:
        return list(range(n_cand))
    return sorted({int(round(x)) for x in np.linspace(0, n_cand - 1, k)})


def isoflop_sizes(study: Study, label: str) -> dict[float, list[str]]:
    """budget -> the size names of arch ``label``'s IsoFLOP group (smallest first)."""
    shapes = study.shapes[label]
    lo, hi = study.tpp_range
    out = {}
    for C in study.budgets:
        cand = [s for s in shapes if lo <= C / s.flops_per_token / s.N <= hi]
        if len(cand) < 3:
            tpp = ", ".join(f"{s.name}: {C / s.flops_per_token / s.N:.3g}" for s in shapes)
            raise StudyError(
                f"{study.source}: budgets.flops: at C={C:.3g} arch {label} has {len(cand)} ladder "
                f"size(s) with tokens per parameter in [{lo:g}, {hi:g}] (an IsoFLOP group needs 3); "
                f"tokens per parameter by size: {tpp}; extend the ladder or move the budget")
        out[C] = [cand[i].name for i in _pick(len(cand), study.sizes_per_budget)]
    return out


def _budgets_of(study: Study, label: str) -> list[tuple[Shape, list[tuple[float | None, float]], set]]:
    """Per size: its (budget_flops, D) list and the budgets where it gets headline seeds."""
    shapes = study.shapes[label]
    out = []
    if study.isoflop:
        groups = isoflop_sizes(study, label)
        for s in shapes:
            mine = [(C, C / s.flops_per_token) for C, names in groups.items() if s.name in names]
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
                mine.append((v, v / s.flops_per_token))
        out.append((s, mine, {b for b, _ in mine} if start <= i < start + k else set()))
    return out


def eval_steps(steps: int, points: int, extra: list[int] = ()) -> list[int]:
    at = {max(1, int(round(steps * i / points))) for i in range(1, points + 1)}
    return sorted(at | {s for s in extra if 1 <= s <= steps} | {steps})


def _trajectory(study: Study, label: str, shape: Shape, seed: int, budgets: list,
                base_dir: str, stage: str, lr: float | None, eval_points: int) -> Point:
    """One trajectory: a main run to the largest budget and a cooldown (or, without wsd
    cooldowns, a full run) for each smaller one."""
    tps = study.tokens_per_step
    runs_spec = []
    for C, D in budgets:
        steps = max(1, int(round(D / tps)))
        if C is not None:
            actual = steps * tps * shape.flops_per_token
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
    decay = study.arch_model(label).get("decay_fraction", lm_default("decay_fraction"))
    (C_max, D_max, s_max), rest = runs_spec[0], runs_spec[1:]
    main = RunPlan("final", D_max, s_max, s_max * tps, base_dir, budget_flops=C_max)
    runs = [main]
    branches = []
    for C, D, s in rest:
        if not study.cooldowns:
            runs.append(RunPlan("final", D, s, s * tps, f"{base_dir}/budget-{s * tps}",
                                eval_at=eval_steps(s, eval_points), budget_flops=C))
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
            eval_at=eval_steps(s, 1), budget_flops=C))
    main.save_at.sort()
    main.eval_at = eval_steps(s_max, eval_points, branches)
    return Point(arch=label, size=shape.name, seed=seed, config=shape.config, N=shape.N,
                 N_non_emb=shape.N_non_emb, flops_per_token=shape.flops_per_token, seq_len=study.seq_len,
                 runs=runs, flops_by_count=dict(shape.flops_by_count), stage=stage, lr=lr, warmup_steps=warmup)


def plan(study: Study, lrs: dict[str, Any] | None = None) -> list[Point]:
    """The main grid: one point per (arch, size, seed) trajectory, each with its runs.

    ``lrs``: arch -> an object with ``lr_for(N)`` (``scaling.fit.LRSweep``) for the
    archs tuned; a tuned arch missing from it gets ``lr=None`` (awaiting the tuning stage).
    Untuned archs use ``model.lr`` (theirs or the study's). The ``tune.check`` runs
    (:func:`plan_lr_check`) come last."""
    points = []
    for label in study.archs:
        source, off = study.lr_source(label), study.seed_offset(label)
        for shape, budgets, middle in _budgets_of(study, label):
            if study.tuned(source):
                sweep = (lrs or {}).get(source)
                lr = None if sweep is None else float(sweep.lr_for(shape.N)) * study.lr_scale(label)
            else:
                # a fixed LR: the arch's own, else (lr_from) its source's
                fixed = study.arch_model(label).get("lr", study.arch_model(source).get("lr"))
                lr = float(fixed if fixed is not None else lm_default("lr")) * study.lr_scale(label)
            for seed in (s + off for s in study.seeds):
                points.append(_trajectory(study, label, shape, seed, budgets,
                                          f"runs/{label}-{shape.name}-s{seed}", "main", lr,
                                          study.eval["points"]))
            mid = [b for b in budgets if b[0] in middle or (b[0] is None and middle)]
            for seed in (s + off for s in study.headline_seeds):
                if mid:
                    points.append(_trajectory(study, label, shape, seed, mid,
                                              f"runs/{label}-{shape.name}-s{seed}", "main", lr,
                                              study.eval["points"]))
    return points + plan_lr_check(study, lrs)


def tune_sizes(study: Study, label: str) -> list[str]:
    """The sizes arch ``label`` is tuned at: the listed ones, or ``tune.sizes`` sizes spread
    evenly over the main grid's sizes of the arch, from its smallest to its largest with a
    FLOP tuning budget (every run costs the same), to its median size with a
    tokens-per-parameter one (whose cost grows as N^2)."""
    sizes = study.tune["sizes"]
    if isinstance(sizes, list):
        return sizes
    used = {shape.name for shape, _, _ in _budgets_of(study, label)}
    order = [s for s in study.size_names if s in used]
    upto = order if "flops" in study.tune else order[: max(2, (len(order) + 1) // 2)]
    return [upto[i] for i in _pick(len(upto), sizes)]


def tune_seeds(study: Study, label: str) -> list[int]:
    """The seeds arch ``label``'s LR sweeps train: ``tune.seeds`` (its own list, else the
    ``default`` one), else the study's first seed."""
    seeds = (study.tune or {}).get("seeds") or {}
    off = study.seed_offset(label)
    return [s + off for s in seeds.get(label, seeds.get("default", study.seeds[:1]))]


def tune_dir(label: str, size: str, lr: float, seed: int, first_seed: int) -> str:
    """A tuning run's folder: ``tune/<arch>-<size>-lr<lr>`` for the first seed (the folders
    of studies before ``tune.seeds``), ``...-s<seed>`` for the others."""
    base = f"tune/{label}-{size}-lr{lr:.3g}"
    return base if seed == first_seed else f"{base}-s{seed}"


def plan_lr_check(study: Study, lrs: dict[str, Any] | None) -> list[Point]:
    """``tune.check``: the baseline at the middle size of its top budget (where its headline
    seeds train), once more at each multiple of its tuned LR, standalone runs of that budget
    (stage ``lrcheck``, first seed). [] without ``tune.check``, or while the LR awaits tuning."""
    tune, label = study.tune or {}, study.baseline
    if not tune.get("check") or not study.tuned(label) or label not in (lrs or {}):
        return []
    if study.budget_kind != "flops":
        return []
    top = max(study.budgets)
    for shape, budgets, middle in _budgets_of(study, label):
        if top in middle:
            D = dict(budgets)[top]
            lr = float(lrs[label].lr_for(shape.N))
            return [_trajectory(study, label, shape, study.seeds[0] + study.seed_offset(label), [(top, D)],
                                f"lrcheck/{label}-{shape.name}-x{m:g}", "lrcheck", lr * m,
                                study.eval["points"]) for m in tune["check"]]
    return []


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
    tuning budget and tuning seed, plus the one-time extension of any sweep whose best LR
    (in ``finished``: (arch, size, lr) -> final loss, averaged over the seeds finished) is
    at the grid's edge."""
    if study.tune is None:
        return []
    tune = study.tune
    grid, finished = tune["grid"], finished or {}
    points = []
    for label in study.archs:
        if not study.tuned(label):
            continue
        shapes = {s.name: s for s in study.shapes[label]}
        for name in tune_sizes(study, label):
            shape = shapes[name]
            if "flops" in tune:
                D = tune["flops"] / shape.flops_per_token
            else:
                D = tune["tokens_per_param"] * shape.N
            lrs = list(grid)
            if tune["extend"]:
                done = {lr: finished[(label, name, lr)] for lr in grid if (label, name, lr) in finished}
                lrs += extension_lrs(grid, tune["factor"], done)
            seeds = tune_seeds(study, label)
            for seed in seeds:
                for lr in lrs:
                    points.append(_trajectory(study, label, shape, seed, [(None, D)],
                                              tune_dir(label, name, lr, seed, seeds[0]), "tune", lr,
                                              tune["eval_points"] or study.eval["points"]))
    return points
