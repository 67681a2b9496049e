"""Run folders: what a study writes into each before it trains it (``fit.yaml``, the
LightningCLI config; ``run.json``, what its results row needs, with the run's ``identity``),
the ``postformer fit`` command that trains it, and the refusal to train into a folder that
holds another run. A probe's cells are run folders of the same form (``scaling.run.probe``).
``DIR/study.yaml`` and ``DIR/scope.json`` are the study folder's own."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from postformer.train.callbacks import EvalAtSteps, SaveAtSteps
from postformer.train.data import TextDataModule
from postformer.train.fileio import atomic_write
from postformer.train.locks import RunLock

from ..spec import Study, StudyError
from .plan import Point, RunPlan, tune_seeds
from .results import read_json

# trainer options that do not change what a run computes (a changed one does not make a
# finished run stale)
COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                         "num_sanity_val_steps", "default_root_dir", "callbacks")


def class_path(cls: type) -> str:
    """The ``class_path`` a LightningCLI config names ``cls`` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def fit_config(study: Study, point: Point, run: RunPlan, out: Path) -> dict[str, Any]:
    """The LightningCLI config of one run (what ``RUN/fit.yaml`` holds)."""
    if point.lr is None:
        raise StudyError(f"{run.run_dir}: its learning rate awaits the tuning stage")
    trainer: dict[str, Any] = {
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        **study.trainer,
        # validation at the steps the study chooses (EvalAtSteps), not Lightning's own loop
        "limit_val_batches": 0,
    }
    # the run folder's lock first: whoever trains the run holds RUN/.run.lock (train.locks)
    callbacks = [{"class_path": class_path(RunLock), "init_args": {}},
                 *(trainer.get("callbacks") or [])]
    curve = study.eval.get("curve_tokens")
    batch = study.data_value("batch_size") * study.seq_len
    callbacks.append({"class_path": class_path(EvalAtSteps),
                      "init_args": {"steps": list(run.eval_at),
                                    "curve_batches": None if curve is None else -(-curve // batch)}})
    if run.save_at:
        callbacks.append({
            "class_path": class_path(SaveAtSteps),
            "init_args": {"steps": list(run.save_at), "dirpath": str(out / run.run_dir / "checkpoints"),
                          "prefix": "stable-"},
        })
    trainer["callbacks"] = callbacks
    trainer["max_steps"] = run.steps
    trainer["default_root_dir"] = str(out / run.run_dir)
    data = dict(study.data)
    data.setdefault("seed", point.seed)  # seeds vary the data order too, unless pinned
    data["val_tokens"] = study.eval["tokens"]
    data["val_seed"] = study.eval["seed"]
    model = study.arch_model(point.arch)
    model.update(lr=point.lr, warmup_steps=point.warmup_steps)
    cfg: dict[str, Any] = {
        "seed_everything": point.seed,
        "model": {"config": dataclasses.asdict(point.config), **model},
        "data": data,
        "trainer": trainer,
    }
    if study.checkpoint:
        cfg["checkpoint"] = dict(study.checkpoint)
    return cfg


def identity(cfg: dict[str, Any], run: RunPlan) -> str:
    """A hash of what a run computes: model, data, seed, steps, branch point, trainer options
    that matter. Two plans with the same identity produce the same run."""
    trainer = {k: v for k, v in cfg["trainer"].items() if k not in COSMETIC_TRAINER_KEYS}
    ident = {"model": cfg["model"], "data": cfg["data"], "seed": cfg["seed_everything"],
             "trainer": trainer, "start_step": run.start_step, "kind": run.kind}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_info(study: Study, point: Point, run: RunPlan, cfg: dict[str, Any]) -> dict[str, Any]:
    """``RUN/run.json``: everything the results table needs that is not in metrics.csv."""
    main_dir = point.runs[0].run_dir
    return {
        "study": study.name, "arch": point.arch, "size": point.size, "seed": point.seed,
        "stage": point.stage, "kind": run.kind, "trajectory": main_dir,
        "budget_tokens": run.budget_tokens, "budget_flops": run.budget_flops,
        "steps": run.steps, "start_step": run.start_step, "tokens": run.tokens,
        "tokens_per_step": study.tokens_per_step, "lr": point.lr,
        "warmup_steps": point.warmup_steps, "N": point.N, "N_non_emb": point.N_non_emb,
        "flops_per_token": point.flops_per_token, "seq_len": point.seq_len,
        "flops_per_token_by_count": dict(point.flops_by_count),
        "branch_ckpt": run.branch_ckpt, "eval_at": run.eval_at,
        "identity": identity(cfg, run), "model_config": dataclasses.asdict(point.config),
    }


def _has_state(run_dir: Path) -> bool:
    return (run_dir / "result.json").exists() or (run_dir / "checkpoints").is_dir()


def run_configs(study: Study, points: list[Point], out: Path
                ) -> Iterator[tuple[RunPlan, dict[str, Any], dict[str, Any]]]:
    """``(run, fit config, run.json)`` of every run of ``points``."""
    for point in points:
        for run in point.runs:
            cfg = fit_config(study, point, run, out)
            yield run, cfg, run_info(study, point, run, cfg)


def layout(study: Study, points: list[Point], out: Path) -> None:
    """Write every run's fit.yaml and run.json; refuse stale run folders."""
    for run, cfg, info in run_configs(study, points, out):
        write_run(out, run, cfg, info)


def check_run(out: Path, run: RunPlan, info: dict[str, Any]) -> None:
    """Raise StudyError when ``RUN`` holds another run's state (results or checkpoints of a
    different identity or length than ``info``'s)."""
    run_dir = out / run.run_dir
    old = run_dir / "run.json"
    if old.is_file() and _has_state(run_dir):
        previous = read_json(old, "remove that run folder to train it again")
        if previous.get("identity") != info["identity"] or previous.get("steps") != run.steps:
            raise StudyError(
                f"{run_dir} holds a different run (another model, LR, data, seed, trainer "
                "or budget than this plan); remove that folder or choose another --out"
            )


def write_run(out: Path, run: RunPlan, cfg: dict[str, Any], info: dict[str, Any]) -> None:
    """Write ``RUN/fit.yaml`` (``cfg``) and ``RUN/run.json`` (``info``, with its
    ``identity``); raise StudyError when the folder holds another run's state (results or
    checkpoints of a different identity or length): never overwritten."""
    check_run(out, run, info)
    run_dir = out / run.run_dir
    old = run_dir / "run.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    text = f"# {' '.join(fit_args(out, run, resume=False))}\n" + yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(run_dir / "fit.yaml", text)
    atomic_write(old, json.dumps(info, indent=2) + "\n")


def write_spec(study: Study, out: Path) -> None:
    """DIR/study.yaml (the resolved spec) and DIR/scope.json."""
    out.mkdir(parents=True, exist_ok=True)
    header = f"# resolved study spec ({study.source}); the runner wrote this\n"
    atomic_write(out / "study.yaml", header + yaml.safe_dump(study.to_dict(), sort_keys=False))
    atomic_write(out / "scope.json", json.dumps(scope(study), indent=2) + "\n")


def baseline_recipe(study: Study) -> str:
    """The baseline's recipe in one line, from its models: mixers and heads over the ladder,
    MLP, init, what the report needs to say the baseline is not handicapped."""
    shapes = study.shapes[study.baseline]
    cfgs = [s.config for s in shapes]
    c0 = cfgs[0]
    mixers = sorted(set(c0.layer_mixers))
    heads = []
    for c in cfgs:
        if "attn" in c.layer_mixers:
            n = c.mixer_options("attn").n_heads
            heads.append(f"{c.d_model}:{n}x{c.d_model // n}")
    init = ("normal(0, sqrt(2 / (5 d_model))) (the width rule), residual output projections "
            "/ sqrt(2 n_layers)" if c0.init_std is None else f"normal(0, {c0.init_std:g})")
    parts = [f"{study.baseline}: {c0.n_layers} layers of {'/'.join(mixers)}",
             f"{c0.mlp_kind} MLP" if any(c0.block_has_mlp(m) for m in mixers) else "no MLP",
             "tied embeddings" if c0.tie_embeddings else "untied head", f"init {init}"]
    if heads:
        parts.append("attention heads (d_model:heads x head dim) " + ", ".join(heads))
        opts = c0.mixer_options("attn")
        extras = [k for k in ("qk_norm",) if getattr(opts, k, False)]
        if getattr(opts, "conv_size", 0):
            extras.append(f"short conv {opts.conv_size}")
        parts.append("RoPE" + (", " + ", ".join(extras) if extras else ""))
    parts.append("LR tuned as every arch's" if study.tuned(study.baseline) else "LR fixed")
    return "; ".join(parts)


def scope(study: Study) -> dict[str, Any]:
    """What the report states as the study's scope."""
    # the runs' own data settings (the same cache), less the loader's workers
    dm = TextDataModule(**{k: v for k, v in study.data.items() if k != "num_workers"},
                        val_tokens=study.eval["tokens"], val_seed=study.eval["seed"])
    val = dm.describe_validation()
    val["evals_per_run"] = study.eval["points"]
    val["curve_tokens"] = study.eval.get("curve_tokens")
    corpus = (study.data.get("hf_name") or study.data.get("path")
              or "the Python standard library's source (embedded)")
    seeds = f"{len(study.seeds)} seed(s) everywhere"
    if study.headline_seeds:
        seeds = (f"{len(study.seeds) + len(study.headline_seeds)} seeds at the middle "
                 f"{study.headline_sizes} size(s) of every budget, {len(study.seeds)} elsewhere")
    tuned = [a for a in study.archs if study.tuned(a)]
    if study.tune is not None and tuned:
        t = study.tune
        grid = ", ".join(f"{g:.3g}" for g in t["grid"])
        budget = (f"{t['tokens_per_param']:g} tokens per parameter" if "tokens_per_param" in t
                  else f"{t['flops']:.3g} FLOPs")
        n_seeds = {a: len(tune_seeds(study, a)) for a in tuned}
        more = [f"{a} {n}" for a, n in n_seeds.items() if n > 1]
        lr = (f"tuned per arch ({', '.join(tuned)}) on the grid [{grid}] at "
              f"{t['sizes'] if isinstance(t['sizes'], int) else len(t['sizes'])} sizes and "
              f"{budget}" + (f", seeds per LR: {', '.join(more)} (1 for the others)" if more else "")
              + "; main runs use lr = a N^b fitted to the tuned optima, b within [-1, 0]")
        borrowed = [f"{a} uses {study.lr_source(a)}'s law x {study.lr_scale(a):g}"
                    for a in study.archs if study.lr_source(a) != a]
        if borrowed:
            lr += "; " + "; ".join(borrowed)
        if t.get("check"):
            lr += (f"; the {study.baseline} once more at x{' and x'.join(f'{m:g}' for m in t['check'])} "
                   "its tuned LR at its top budget's middle size (the LR check)")
    else:
        lr = "not tuned: " + ", ".join(f"{a} {study.arch_model(a).get('lr', 'default')}"
                                      for a in study.archs)
    betas = study.model.get("betas", [0.9, 0.95])
    warm = (f"{study.model['warmup_fraction']:.0%} of the shortest run of a trajectory"
            if "warmup_fraction" in study.model else f"{study.model['warmup_steps']} steps")
    return {
        "study": study.name, "corpus": str(corpus), "tokenizer": study.data_value("tokenizer"),
        "baseline_recipe": baseline_recipe(study), "flops_count": study.flops_count,
        "seq_len": study.seq_len, "tokens_per_step": study.tokens_per_step,
        "validation": val, "seeds": seeds, "lr_protocol": lr, "beta2": float(betas[1]),
        "warmup": warm, "schedule": study.schedule,
        "budgets": {"kind": study.budget_kind, "values": study.budgets,
                    "sizes_per_budget": study.sizes_per_budget if study.isoflop else None,
                    "tokens_per_param_range": list(study.tpp_range) if study.isoflop else None},
    }


def fit_args(out: Path, run: RunPlan, *, resume: bool = True) -> list[str]:
    """``postformer fit ...`` for one run; with ``resume``, from its last.ckpt when there is
    one, else afresh (``--overwrite``) over what a start that saved no last.ckpt left."""
    run_dir = out / run.run_dir
    args = ["postformer", "fit", "--config", str(run_dir / "fit.yaml")]
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        args += ["--ckpt_path", str(last)]
    elif run.branch_ckpt is not None:
        args += ["--ckpt_path", str(out / run.branch_ckpt)]
    elif resume and ((run_dir / "metrics.csv").is_file()
                     or any((run_dir / "checkpoints").glob("*.ckpt"))):
        args += ["--overwrite"]  # `postformer fit` refuses a used run folder without it
    return args
