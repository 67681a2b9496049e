"""``postformer study STUDY.yaml --out DIR [--list]``: lay out a study, train it, collect it.

Folder layout::

    DIR/study.yaml                       the resolved spec (defaults filled in)
    DIR/runs/<arch>-<size>-s<seed>/      the main run of a point: a normal run folder
        fit.yaml                         `postformer fit --config fit.yaml` re-runs it by hand
        run.json                         what the results need: arch, size, N, FLOPs/token, steps
        checkpoints/last.ckpt            (resume) and stable-<step>.ckpt (cooldown branch points)
        metrics.csv, config.yaml, hparams.yaml
        timing.json                      seconds spent training, summed over (re)starts
        result.json                      the results row, written when the run finished
        cooldown-<tokens>/               a wsd cooldown to a smaller budget: a run folder
                                         resumed from ../checkpoints/stable-<step>.ckpt
        budget-<tokens>/                 (non-wsd schedules) a smaller budget's own full run
    DIR/results.csv                      scaling.results: one row per finished run
    DIR/report.*                         scaling.report, when it is installed

Runs train in this process one after another through ``train.cli.lightning_main``: each
point's main run, then its cooldowns. A run with a result.json is skipped; a run with a
``checkpoints/last.ckpt`` but no result is resumed from it (exactly: data position,
optimizer, schedule); a cooldown starts from its main run's stable checkpoint. A run folder
that holds a different run (other steps, model, data, ...) is an error, never overwritten.

``--list`` lays out the same folders and prints the ``postformer fit`` commands of the runs
not yet finished, main runs first and cooldowns after (each cooldown needs its main run's
checkpoint), for a cluster scheduler. Multi-GPU runs use the study's ``trainer.strategy``
and ``trainer.devices`` (Lightning's DDP/FSDP) and go through ``--list``: one process
running several multi-device runs in a row is not something Lightning's launchers support.
``postformer study ... --out DIR`` without ``--list`` on such a study trains nothing and
collects what the commands produced so far into results.csv and the report.
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

from .results import finished_row, make_row, write_results
from .study import Point, RunPlan, Study, StudyError, load_study, plan

# trainer options that do not change what a run computes (a changed one does not make a
# finished run stale)
COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                         "num_sanity_val_steps", "default_root_dir", "callbacks")


def fit_config(study: Study, point: Point, run: RunPlan, out: Path) -> dict[str, Any]:
    """The LightningCLI config of one run (what ``RUN/fit.yaml`` holds)."""
    trainer: dict[str, Any] = {
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "check_val_every_n_epoch": None, **study.trainer,
    }
    # One validation at the last step at least: the result of the run.
    interval = trainer.get("val_check_interval")
    if trainer["check_val_every_n_epoch"] is None and (
        interval is None or (isinstance(interval, int) and run.steps % interval != 0)
    ):
        trainer["val_check_interval"] = run.steps
    callbacks = list(trainer.get("callbacks") or [])
    if run.save_at:
        callbacks.append({
            "class_path": "postformer.train.callbacks.SaveAtSteps",
            "init_args": {"steps": list(run.save_at), "dirpath": str(out / run.run_dir / "checkpoints"),
                          "prefix": "stable-"},
        })
    if callbacks:
        trainer["callbacks"] = callbacks
    trainer["max_steps"] = run.steps
    trainer["default_root_dir"] = str(out / run.run_dir)
    data = dict(study.data)
    data.setdefault("seed", point.seed)  # seeds vary the data order too, unless pinned
    cfg: dict[str, Any] = {
        "seed_everything": point.seed,
        "model": {"config": dataclasses.asdict(point.config), **study.model},
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
    return {
        "study": study.name, "arch": point.arch, "size": point.size, "seed": point.seed,
        "kind": run.kind, "budget_tokens": run.budget_tokens, "steps": run.steps,
        "start_step": run.start_step, "tokens": run.tokens, "tokens_per_step": study.tokens_per_step,
        "N": point.N, "N_non_emb": point.N_non_emb, "flops_per_token": point.flops_per_token,
        "seq_len": point.seq_len, "branch_ckpt": run.branch_ckpt, "identity": _identity(cfg, run),
        "model_config": dataclasses.asdict(point.config),
    }


def _has_state(run_dir: Path) -> bool:
    return (run_dir / "result.json").exists() or (run_dir / "checkpoints").is_dir()


def layout(study: Study, points: list[Point], out: Path) -> None:
    """Write study.yaml and every run's fit.yaml and run.json; refuse stale run folders."""
    out.mkdir(parents=True, exist_ok=True)
    header = f"# resolved study spec ({study.source}); the runner wrote this\n"
    atomic_write(out / "study.yaml", header + yaml.safe_dump(study.to_dict(), sort_keys=False))
    for point in points:
        for run in point.runs:
            run_dir = out / run.run_dir
            cfg = fit_config(study, point, run, out)
            info = run_info(study, point, run, cfg)
            old = run_dir / "run.json"
            if old.is_file() and _has_state(run_dir):
                previous = json.loads(old.read_text())
                if previous.get("identity") != info["identity"] or previous.get("steps") != run.steps:
                    raise StudyError(
                        f"{run_dir} holds a different run (another model, data, seed, trainer or "
                        f"budget than this study plans); remove that folder or choose another --out"
                    )
            run_dir.mkdir(parents=True, exist_ok=True)
            text = f"# {' '.join(fit_args(out, run, resume=False))}\n" + yaml.safe_dump(cfg, sort_keys=False)
            atomic_write(run_dir / "fit.yaml", text)
            atomic_write(old, json.dumps(info, indent=2) + "\n")


def fit_args(out: Path, run: RunPlan, *, resume: bool = True) -> list[str]:
    """``postformer fit ...`` for one run; with ``resume``, from its last.ckpt when there is one."""
    run_dir = out / run.run_dir
    args = ["postformer", "fit", "--config", str(run_dir / "fit.yaml")]
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        args += ["--ckpt_path", str(last)]
    elif run.branch_ckpt is not None:
        args += ["--ckpt_path", str(out / run.branch_ckpt)]
    return args


def _fmt_tokens(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _fmt_time(s: float) -> str:
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@contextmanager
def _quiet_lightning(verbose: bool):
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # a cooldown resumes a checkpoint written by its main run into another folder
        warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
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
    timing = run_dir / "timing.json"
    spent = json.loads(timing.read_text())["wall_s"] if timing.is_file() else 0.0
    start = time.perf_counter()
    try:
        cli = lightning_main(args)
    finally:
        elapsed = time.perf_counter() - start
        atomic_write(timing, json.dumps({"wall_s": spent + elapsed}) + "\n")
    return cli, spent + elapsed


def run_study(
    study_path: str | Path,
    out_dir: str | Path,
    *,
    list_only: bool = False,
    verbose: bool = False,
    report: bool = True,
) -> list[str] | list[dict[str, Any]]:
    """Lay out, train and collect a study (see the module docstring).

    Returns the printed commands with ``list_only``, else the results rows of every run
    finished now or before (as written to ``DIR/results.csv``).
    """
    from postformer.train.callbacks import NonFiniteLossError

    study = load_study(study_path)
    points = plan(study)
    out = Path(out_dir).resolve()
    layout(study, points, out)
    todo = [(p, r) for p in points for r in p.runs if finished_row(out, out / r.run_dir) is None]
    n_finished = sum(len(p.runs) for p in points) - len(todo)

    if list_only:
        order = [x for x in todo if x[1].kind != "cooldown"] + [x for x in todo if x[1].kind == "cooldown"]
        commands = [shlex.join(fit_args(out, r)) for _, r in order]
        for c in commands:
            print(c)
        return commands

    n_dev = study.tokens_per_step // (study.data_value("batch_size") * study.data_value("seq_len")
                                      * int(study.trainer.get("accumulate_grad_batches", 1)))
    if n_dev > 1 and todo:
        # Lightning's launchers start one multi-device run per process; collect what exists.
        print(f"study {study.name}: {len(todo)} runs unfinished, each on {n_dev} devices: launch "
              f"them with `postformer study {study_path} --out {out_dir} --list` (one command per "
              "run, started by your launcher); collecting the finished runs only")
        todo = []

    total = sum(len(p.runs) for p in points)
    tps = study.tokens_per_step
    cost = {id(r): (r.steps - r.start_step) * tps * p.N for p, r in todo}
    print(f"study {study.name}: {len(points)} points, {total} runs ({n_finished} finished "
          f"already), into {out}", flush=True)
    done_cost = done_wall = 0.0
    failed: list[str] = []
    index = 0
    with _quiet_lightning(verbose):
        for point in points:
            for run in point.runs:
                index += 1
                label = point.name if run.kind != "cooldown" else f"{point.name}/{Path(run.run_dir).name}"
                head = f"[{index}/{total}] {label} (D={_fmt_tokens(run.tokens)} tokens)"
                row = finished_row(out, out / run.run_dir)
                if row is None and id(run) not in cost:
                    continue  # not run in this process (multi-device runs)
                if row is not None:
                    if not (out / run.run_dir / "result.json").exists():
                        atomic_write(out / run.run_dir / "result.json", json.dumps(row, indent=2) + "\n")
                    print(f"{head}: finished already, loss {row['loss']:.4f}", flush=True)
                    continue
                resuming = (out / run.run_dir / "checkpoints" / "last.ckpt").is_file()
                if resuming:
                    print(f"{head}: resuming from {run.run_dir}/checkpoints/last.ckpt", flush=True)
                t0 = time.perf_counter()
                try:
                    cli, wall = _train(out, run)
                except (NonFiniteLossError, FileNotFoundError) as err:
                    print(f"{head}: FAILED: {err}", flush=True)
                    failed.append(label)
                    continue
                step = cli.trainer.global_step
                if step != run.steps:
                    print(f"{head}: stopped at step {step} of {run.steps}; run again to resume", flush=True)
                    failed.append(label)
                    continue
                row = make_row(out, out / run.run_dir, wall_s=wall)
                if row is None:
                    raise RuntimeError(f"{run.run_dir}: training ended without a validation at its last step")
                atomic_write(out / run.run_dir / "result.json", json.dumps(row, indent=2) + "\n")
                done_cost += cost[id(run)]
                done_wall += time.perf_counter() - t0
                left = sum(cost[id(r)] for p in points for r in p.runs
                           if id(r) in cost and finished_row(out, out / r.run_dir) is None)
                eta = _fmt_time(done_wall / done_cost * left) if done_cost else "?"
                print(f"{head}: loss {row['loss']:.4f}, bpb {row['bpb']:.4f}, "
                      f"{_fmt_time(time.perf_counter() - t0)}; ETA {eta}", flush=True)

    path = write_results(out)
    import pandas as pd

    rows = pd.read_csv(path).to_dict("records")
    print(f"results: {path} ({len(rows)} rows)")
    if failed:
        print(f"not finished: {', '.join(failed)}")
    if report:
        _report(out)
    return rows


def _report(out: Path) -> None:
    try:
        from postformer.scaling.report import write_report
    except ImportError as err:
        print(f"report: skipped, postformer.scaling.report cannot be imported ({err})")
        return
    try:
        write_report(out)
    except Exception as err:  # the runs and results.csv are safe; say so, do not bury it
        print(f"report: failed ({type(err).__name__}: {err}); the runs and results.csv are "
              f"complete, rebuild with `postformer report {out}` once fixed", file=sys.stderr)
        raise SystemExit(1) from err


def study_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="postformer study",
        description="Train a scaling study (archs x sizes x budgets) into DIR, or list its runs.",
    )
    parser.add_argument("study", metavar="STUDY.yaml", help="the study spec (see configs/study/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the study folder")
    parser.add_argument("--list", action="store_true",
                        help="print the `postformer fit` commands of the unfinished runs instead of training")
    parser.add_argument("--verbose", action="store_true", help="keep Lightning's own messages")
    parser.add_argument("--no-report", action="store_true", help="collect results.csv but skip the report")
    args = parser.parse_args(argv)
    try:
        run_study(args.study, args.out, list_only=args.list, verbose=args.verbose,
                  report=not args.no_report)
    except StudyError as err:
        parser.error(str(err))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
