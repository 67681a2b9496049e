"""``postformer study STUDY.yaml --out DIR [--plan | --list]``: lay out a study, train it in
stages, collect it, report it.

Folder layout::

    DIR/study.yaml                       the resolved spec (defaults filled in)
    DIR/scope.json                       what the report's scope line needs: corpus,
                                         tokenizer, the validation set, seeds, LR protocol
    DIR/tune/<arch>-<size>-lr<lr>/       a learning-rate tuning run (a run folder)
    DIR/runs/<arch>-<size>-s<seed>/      the main run of a trajectory: a normal run folder
        fit.yaml                         `postformer fit --config fit.yaml` re-runs it by hand
        run.json                         what the results need: arch, size, N, FLOPs/token, ...
        checkpoints/last.ckpt            (resume) and stable-<step>.ckpt (cooldown branch points)
        metrics.csv, config.yaml, hparams.yaml
        timing.json                      seconds spent training, summed over (re)starts
        result.json                      the results row, written when the run finished
        cooldown-<tokens>/               a wsd cooldown to a smaller budget: a run folder
                                         resumed from ../checkpoints/stable-<step>.ckpt
        budget-<tokens>/                 (non-wsd schedules) a smaller budget's own full run
    DIR/results.csv                      scaling.results: one row per finished run
    DIR/curves.csv                       every validation along every run (loss curves)
    DIR/report.*                         scaling.report

Stages. With a ``tune`` section the tuning runs train first; a sweep whose best LR lies at
the edge of its grid is extended once; then the LR of every main-grid point comes from the
power law fitted to the tuned optima (``scaling.analysis.lr_sweeps``), and the main grid
trains: each trajectory's main run, then its cooldowns.

Executors (``--executor``, the spec's ``executor`` section, ``--executor-opt KEY=VALUE``;
``scaling.executors`` documents them). ``inprocess`` (default): runs train in this process
one after another through ``train.cli.lightning_main``, or with ``--jobs N`` in N worker
processes side by side (a cooldown once its main run finished). ``local`` / ``slurm``: one
submitit job per run (``DIR/jobs/<id>/`` logs), submitted in dependency order, waited for,
requeued on timeout or preemption. A run with a result.json is skipped; a run with a
``checkpoints/last.ckpt`` but no result is resumed from it (exactly: data position,
optimizer, schedule); a cooldown starts from its main run's stable checkpoint. A run folder
that holds a different run (other steps, model, LR, data, ...) is an error, never overwritten.

Locks. A training study holds ``DIR/.study.lock`` (``DIR/.study.owner``: PID, host, start);
a second ``postformer study`` on the folder exits 2 at once, naming them. Every run holds
``RUN/.run.lock`` while it trains (a ``RunLock`` callback in its fit.yaml), whoever trains it.

``--plan`` prints every run with its N, D, C and a time estimate from a short throughput
probe on this machine (or, for a GPU study on a machine without one, from an assumed
throughput). ``--list`` prints the ``postformer fit`` commands of the runs not yet
finished, main runs before cooldowns, for a cluster scheduler; the main grid is listed once
the tuning stage has finished; neither takes the study lock, and a listed command exits 2
when its run folder is being trained. Multi-device studies train with the local or slurm
executor or go through ``--list``: one process running several multi-device runs in a row is
not something Lightning's launchers support.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from postformer.train.fileio import atomic_write

from .executors import EXECUTOR_KINDS
from .plan import Point, RunPlan, plan, plan_tune
from .results import TIMING_FIX, finished_row, read_json, write_results
from .study import Study, StudyError, load_study
from .table import ResultsError

# trainer options that do not change what a run computes (a changed one does not make a
# finished run stale)
COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                         "num_sanity_val_steps", "default_root_dir", "callbacks")


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
    # the run folder's lock first: whoever trains the run holds RUN/.run.lock (scaling.executors)
    callbacks = [{"class_path": "postformer.scaling.locks.RunLock", "init_args": {}},
                 *(trainer.get("callbacks") or [])]
    curve = study.eval.get("curve_tokens")
    batch = study.data_value("batch_size") * study.seq_len
    callbacks.append({"class_path": "postformer.train.callbacks.EvalAtSteps",
                      "init_args": {"steps": list(run.eval_at),
                                    "curve_batches": None if curve is None else -(-curve // batch)}})
    if run.save_at:
        callbacks.append({
            "class_path": "postformer.train.callbacks.SaveAtSteps",
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


def _identity(cfg: dict[str, Any], run: RunPlan) -> str:
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
        "branch_ckpt": run.branch_ckpt, "eval_at": run.eval_at,
        "identity": _identity(cfg, run), "model_config": dataclasses.asdict(point.config),
    }


def _has_state(run_dir: Path) -> bool:
    return (run_dir / "result.json").exists() or (run_dir / "checkpoints").is_dir()


def _runs(study: Study, points: list[Point], out: Path):
    """``(run, fit config, run.json)`` of every run of ``points``."""
    for point in points:
        for run in point.runs:
            cfg = fit_config(study, point, run, out)
            yield run, cfg, run_info(study, point, run, cfg)


def layout(study: Study, points: list[Point], out: Path) -> None:
    """Write every run's fit.yaml and run.json; refuse stale run folders."""
    for run, cfg, info in _runs(study, points, out):
        write_run(out, run, cfg, info)


def check_folder(study: Study, out: Path) -> None:
    """Raise StudyError when a run folder of the stages planned now holds another run
    (:func:`check_run`): called before anything is written, so a refused study changes
    nothing in ``out`` (its study.yaml, scope.json and fit.yaml files stay the old run's)."""
    tune, main = _stages(study, out)
    for run, _, info in _runs(study, tune + (main or []), out):
        check_run(out, run, info)


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


def scope(study: Study) -> dict[str, Any]:
    """What the report states as the study's scope."""
    from postformer.train.data import TextDataModule

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
        lr = (f"tuned per arch ({', '.join(tuned)}) on the grid [{grid}] at "
              f"{t['sizes'] if isinstance(t['sizes'], int) else len(t['sizes'])} sizes and "
              f"{budget}; main runs use lr = a N^b fitted to the tuned optima")
    else:
        lr = "not tuned: " + ", ".join(f"{a} {study.arch_model(a).get('lr', 'default')}"
                                      for a in study.archs)
    betas = study.model.get("betas", [0.9, 0.95])
    warm = (f"{study.model['warmup_fraction']:.0%} of the shortest run of a trajectory"
            if "warmup_fraction" in study.model else f"{study.model['warmup_steps']} steps")
    return {
        "study": study.name, "corpus": str(corpus), "tokenizer": study.data_value("tokenizer"),
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


@contextmanager
def _quiet_lightning(verbose: bool):
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # a cooldown resumes a checkpoint written by its main run into another folder
        warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*You set `limit_val_batches=0`.*")
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _train(out: Path, run: RunPlan) -> tuple[Any, float]:
    """Fit one run in process; returns (the CLI object, seconds). Adds the seconds to
    timing.json even when training is interrupted."""
    from postformer.train.cli import lightning_main

    run_dir = out / run.run_dir
    args = fit_args(out, run)[1:]
    if run.branch_ckpt is not None and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        branch = out / run.branch_ckpt
        if not branch.is_file():
            raise FileNotFoundError(
                f"{run.run_dir}: the branch checkpoint {branch} is missing (its main run did not "
                "save it); remove the main run folder to retrain it"
            )
    from .locks import RunLocked, is_rank_zero

    timing = run_dir / "timing.json"
    spent = read_json(timing, TIMING_FIX)["wall_s"] if timing.is_file() else 0.0
    start = time.perf_counter()
    ours = is_rank_zero()  # rank 0 keeps the time; nobody does when another process had the run
    try:
        cli = lightning_main(args)
    except RunLocked:
        ours = False
        raise
    finally:
        elapsed = time.perf_counter() - start
        if ours:
            atomic_write(timing, json.dumps({"wall_s": spent + elapsed}) + "\n")
    return cli, spent + elapsed


def _all_tune_losses(study: Study, out: Path) -> dict[tuple[str, str, float], float]:
    done = {}
    for point in plan_tune(study, None):
        row = finished_row(out, out / point.runs[0].run_dir)
        if row is not None:
            done[(point.arch, point.size, point.lr)] = float(row["loss"])
    return done


def _stages(study: Study, out: Path) -> tuple[list[Point], list[Point] | None]:
    """(tuning points incl. any extension now due, main points or None while tuning). The
    main grid's LRs come from the finished sweeps (``scaling.analysis.lr_sweeps``)."""
    tune = plan_tune(study, _all_tune_losses(study, out))
    if study.tune is None:
        return tune, plan(study, {})
    rows = [finished_row(out, out / p.runs[0].run_dir) for p in tune]
    if any(r is None for r in rows):
        return tune, None
    import pandas as pd

    from .lr import lr_sweeps

    return tune, plan(study, lr_sweeps(pd.DataFrame(rows)))


def run_study(
    study_path: str | Path,
    out_dir: str | Path,
    *,
    list_only: bool = False,
    verbose: bool = False,
    report: bool = True,
    jobs: int | None = None,
    executor: dict[str, Any] | None = None,
) -> list[str] | list[dict[str, Any]]:
    """Lay out, train and collect a study (see the module docstring). ``executor``: keys of
    the spec's executor section to override (``{"kind": "local"}``; None removes a key).

    Returns the printed commands with ``list_only``, else the results rows of every run
    finished now or before (as written to ``DIR/results.csv``). Raises
    ``locks.FolderLocked`` when another study holds the folder.
    """
    study = load_study(study_path, executor=executor)
    return run_loaded(study, out_dir, list_only=list_only, verbose=verbose, report=report,
                      study_path=str(study_path), jobs=jobs)


def run_loaded(study: Study, out_dir: str | Path, *, list_only: bool = False,
               verbose: bool = False, report: bool = True, study_path: str = "STUDY.yaml",
               jobs: int | None = None) -> list[str] | list[dict[str, Any]]:
    """:func:`run_study` on a validated :class:`Study`."""
    from .executors import train_points
    from .locks import STUDY, FolderLock, read_owner

    out = Path(out_dir).resolve()
    plan(study)  # every error of the main grid's design before anything is written
    if list_only:
        check_folder(study, out)
        write_spec(study, out)
        commands, main = _unfinished(study, out)
        for c in commands:
            print(c)
        if main is None:
            print(f"# the main grid follows the tuning stage: run --list again once these "
                  f"{len(commands)} runs have finished", file=sys.stderr)
        owner = read_owner(out / ".study.owner", wait_s=0) if (out / ".study.owner").exists() else None
        if owner:
            print(f"# note: a study may be training {out} (PID {owner.get('pid')} on "
                  f"{owner.get('host')}); a run it trains is locked: its command exits 2", file=sys.stderr)
        return commands

    failed: list[str] = []
    with FolderLock(out, STUDY):  # one study process per folder (FolderLocked otherwise)
        check_folder(study, out)
        write_spec(study, out)
        if study.n_devices > 1 and study.executor["kind"] == "inprocess":
            commands, _ = _unfinished(study, out)
            print(f"study {study.name}: {len(commands)} runs unfinished, each on {study.n_devices} "
                  f"devices: train them with --executor slurm (or local), or launch them with "
                  f"`postformer study {study_path} --out {out} --list` (one command per run); "
                  "collecting the finished runs only")
        else:
            while True:
                tune, main = _stages(study, out)
                todo = [r for p in tune for r in p.runs if finished_row(out, out / r.run_dir) is None]
                if main is not None or not todo:
                    break
                layout(study, tune, out)
                train_points(study, tune, out, verbose, failed, f"study {study.name}: LR tuning", jobs)
                if failed:
                    break
            if main is None and not failed:
                tune, main = _stages(study, out)
            if main is not None:
                if study.tune is not None:
                    layout(study, tune, out)
                layout(study, main, out)
                train_points(study, main, out, verbose, failed, f"study {study.name}: main grid", jobs)

        path = write_results(out)
        import pandas as pd

        rows = pd.read_csv(path).to_dict("records") if path.stat().st_size else []
        print(f"results: {path} ({len(rows)} rows)")
        if failed:
            print(f"not finished: {', '.join(failed)}")
        if report and rows:
            _report(out)
        return rows


def _unfinished(study: Study, out: Path) -> tuple[list[str], list[Point] | None]:
    """Lay out the tuning stage, and the main grid once tuning has finished; the `postformer
    fit` commands of their unfinished runs, main runs before cooldowns; the main points."""
    tune, main = _stages(study, out)
    layout(study, tune, out)
    stage = tune if main is None else tune + main
    if main is not None:
        layout(study, main, out)
    todo = [(p, r) for p in stage for r in p.runs if finished_row(out, out / r.run_dir) is None]
    order = [x for x in todo if x[1].kind != "cooldown"] + [x for x in todo if x[1].kind == "cooldown"]
    return [shlex.join(fit_args(out, r)) for _, r in order], main


def _report(out: Path) -> None:
    try:
        from postformer.scaling.report import write_report
    except ImportError as err:
        print(f"report: skipped, postformer.scaling.report cannot be imported ({err})")
        return
    try:
        t0 = time.perf_counter()
        written = write_report(out)
        print(f"report: {written['html']} ({time.perf_counter() - t0:.1f}s)")
    except Exception as err:  # the runs and results.csv are safe; say so, do not bury it
        print(f"report: failed ({type(err).__name__}: {err}); the runs and results.csv are "
              f"complete, rebuild with `postformer report {out}` once fixed", file=sys.stderr)
        raise SystemExit(1) from err


def add_run_options(parser: argparse.ArgumentParser, folder: str) -> None:
    """The options ``postformer study`` and ``postformer probe`` share: --out, --jobs,
    --executor, --executor-opt, --verbose, --no-report (``folder``: what DIR is called)."""
    parser.add_argument("--out", metavar="DIR", help=f"the {folder} folder (required but with --plan)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="runs at a time: in process, N worker processes side by side, each "
                             "with its share of the CPU threads (default 1: in this process); "
                             "local jobs (default 1); slurm jobs (default: all that are ready)")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS,
                        help="where runs train: inprocess (default), local (a submitit job per run "
                             "on this machine) or slurm (a submitit sbatch job per run); default: "
                             "the spec's executor.kind")
    parser.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of the spec's executor section (value read as YAML; empty "
                             "removes it), e.g. time_min=240, partition=gpu, gpus_per_node=8")
    parser.add_argument("--verbose", action="store_true", help="keep Lightning's own messages")
    parser.add_argument("--no-report", action="store_true", help="collect results.csv but skip the report")


def executor_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The executor keys set by ``--executor`` and ``--executor-opt KEY=VALUE`` (the value
    read as YAML; empty removes the key)."""
    overrides: dict[str, Any] = {}
    for opt in args.executor_opt:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            parser.error(f"--executor-opt expects KEY=VALUE, got {opt!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            parser.error(f"--executor-opt {key.strip()}: {value!r} is not a YAML value")
    if args.executor:
        overrides["kind"] = args.executor
    return overrides


@contextmanager
def cli_errors(parser: argparse.ArgumentParser, args: argparse.Namespace, folder: str):
    """Checks --out and --jobs (unless --plan), and turns a bad spec into a usage error, a
    locked folder into exit 2 and Ctrl-C into exit 130 with a word on resuming."""
    from .locks import FolderLocked

    if not getattr(args, "plan", False):
        if not args.out:
            parser.error(f"--out DIR is required (the {folder} folder)")
        if args.jobs is not None and args.jobs < 1:
            parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        yield
    except (StudyError, ResultsError) as err:  # a bad spec; a damaged file of the folder
        parser.error(str(err))
    except FolderLocked as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted; the same command resumes", file=sys.stderr)
        raise SystemExit(130) from None


def study_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="postformer study",
        description="Train a scaling study (LR tuning, then archs x sizes x budgets x seeds) "
                    "into DIR, or --plan / --list its runs.",
    )
    parser.add_argument("study", metavar="STUDY.yaml", help="the study spec (see configs/study/)")
    parser.add_argument("--list", action="store_true",
                        help="print the `postformer fit` commands of the unfinished runs instead of training")
    parser.add_argument("--plan", action="store_true",
                        help="print every run with N, D, C and a time estimate (a short throughput "
                             "probe on this machine); trains nothing")
    parser.add_argument("--no-probe", action="store_true",
                        help="with --plan: estimate times from assumed throughput, without the probe")
    add_run_options(parser, "study")
    args = parser.parse_args(argv)
    overrides = executor_overrides(parser, args)
    with cli_errors(parser, args, "study"):
        if args.plan:
            from .throughput import print_plan

            print_plan(load_study(args.study, executor=overrides), probe=not args.no_probe)
            return
        run_study(args.study, args.out, list_only=args.list, verbose=args.verbose,
                  report=not args.no_report, jobs=args.jobs, executor=overrides)
