"""A study's runs (``postformer study STUDY.yaml --out DIR [--plan | --list]``): lay out the
folder, train it in stages, collect results.csv; the command then writes the report
(``scaling.cli``).

Folder layout::

    DIR/study.yaml                       the resolved spec (defaults filled in)
    DIR/scope.json                       what the report's scope line needs: corpus,
                                         tokenizer, the validation set, seeds, LR protocol
    DIR/tune/<arch>-<size>-lr<lr>/       a learning-rate tuning run (a run folder)
    DIR/lrcheck/<arch>-<size>-x<m>/      tune.check: the baseline at m x its tuned LR
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
    DIR/results.csv                      scaling.run.results: one row per finished run
    DIR/curves.csv                       every validation along every run (loss curves)
    DIR/report.*                         scaling.report.study

Stages. With a ``tune`` section the tuning runs train first; a sweep whose best LR lies at
the edge of its grid is extended once; then the LR of every main-grid point comes from the
power law fitted to the tuned optima (``scaling.fit.lr_sweeps``), and the main grid
trains: each trajectory's main run, then its cooldowns.

Executors (``--executor``, the spec's ``executor`` section, ``--executor-opt KEY=VALUE``;
``scaling.run.executors`` documents them). ``inprocess`` (default): runs train in this process
one after another through ``train.cli.lightning_main``, or with ``--jobs N`` in N worker
processes side by side (a cooldown once its main run finished). ``local`` / ``slurm``: one
submitit job per run (``DIR/jobs/<id>/`` logs), submitted in dependency order, waited for,
requeued on timeout or preemption. A run with a result.json is skipped; a run with a
``checkpoints/last.ckpt`` but no result is resumed from it (exactly: data position,
optimizer, schedule); a cooldown starts from its main run's stable checkpoint. A run folder
that holds a different run (other steps, model, LR, data, ...) is an error, never overwritten.

Locks. A training study holds ``DIR/.study.lock`` (``DIR/.study.owner``: PID, host, start);
a second ``postformer study`` on the folder exits 2 at once, naming them. Every run holds
``RUN/.run.lock`` while it trains (a ``train.locks.RunLock`` callback in its fit.yaml),
whoever trains it.

``--plan`` prints every run with its N, D, C and a time estimate (``scaling.run.throughput``).
``--list`` prints the ``postformer fit`` commands of the runs not yet
finished, main runs before cooldowns, for a cluster scheduler; the main grid is listed once
the tuning stage has finished; neither takes the study lock, and a listed command exits 2
when its run folder is being trained. Multi-device studies train with the local or slurm
executor or go through ``--list``: one process running several multi-device runs in a row is
not something Lightning's launchers support.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from postformer.train.locks import STUDY, FolderLock, read_owner

from ..fit import lr_sweeps
from ..spec import Study, load_study
from .executors import train_points
from .folders import check_run, fit_args, layout, run_configs, write_spec
from .plan import Point, plan, plan_tune
from .results import finished_row, write_results


def check_folder(study: Study, out: Path) -> None:
    """Raise StudyError when a run folder of the stages planned now holds another run
    (:func:`check_run`): called before anything is written, so a refused study changes
    nothing in ``out`` (its study.yaml, scope.json and fit.yaml files stay the old run's)."""
    tune, main = stages(study, out)
    for run, _, info in run_configs(study, tune + (main or []), out):
        check_run(out, run, info)


def _all_tune_losses(study: Study, out: Path) -> dict[tuple[str, str, float], float]:
    """(arch, size, lr) -> the final loss of its finished tuning runs, averaged over seeds."""
    done: dict[tuple[str, str, float], list[float]] = {}
    for point in plan_tune(study, None):
        row = finished_row(out, out / point.runs[0].run_dir)
        if row is not None:
            done.setdefault((point.arch, point.size, point.lr), []).append(float(row["loss"]))
    return {k: sum(v) / len(v) for k, v in done.items()}


def stages(study: Study, out: Path) -> tuple[list[Point], list[Point] | None]:
    """(tuning points incl. any extension now due, main points or None while tuning). The
    main grid's LRs come from the finished sweeps (``scaling.fit.lr_sweeps``)."""
    tune = plan_tune(study, _all_tune_losses(study, out))
    if study.tune is None:
        return tune, plan(study, {})
    rows = [finished_row(out, out / p.runs[0].run_dir) for p in tune]
    if any(r is None for r in rows):
        return tune, None
    return tune, plan(study, lr_sweeps(pd.DataFrame(rows), n_boot=0))  # the law only


def run_study(
    study_path: str | Path,
    out_dir: str | Path,
    *,
    list_only: bool = False,
    verbose: bool = False,
    report: Callable[[Path], object] | None = None,
    jobs: int | None = None,
    executor: dict[str, Any] | None = None,
) -> list[str] | list[dict[str, Any]]:
    """Lay out, train and collect a study (see the module docstring). ``executor``: keys of
    the spec's executor section to override (``{"kind": "local"}``; None removes a key).
    ``report``: called with the study folder once results.csv holds a row, the study lock
    still held (``postformer study`` passes the report writer).

    Returns the printed commands with ``list_only``, else the results rows of every run
    finished now or before (as written to ``DIR/results.csv``). Raises
    ``train.locks.FolderLocked`` when another study holds the folder.
    """
    study = load_study(study_path, executor=executor)
    return run_loaded(study, out_dir, list_only=list_only, verbose=verbose, report=report,
                      study_path=str(study_path), jobs=jobs)


def run_loaded(study: Study, out_dir: str | Path, *, list_only: bool = False,
               verbose: bool = False, report: Callable[[Path], object] | None = None,
               study_path: str = "STUDY.yaml", jobs: int | None = None
               ) -> list[str] | list[dict[str, Any]]:
    """:func:`run_study` on a validated :class:`Study`."""
    out = Path(out_dir).resolve()
    plan(study)  # every error of the main grid's design before anything is written
    if list_only:
        check_folder(study, out)
        write_spec(study, out)
        commands, main = unfinished(study, out)
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
            commands, _ = unfinished(study, out)
            print(f"study {study.name}: {len(commands)} runs unfinished, each on {study.n_devices} "
                  f"devices: train them with --executor slurm (or local), or launch them with "
                  f"`postformer study {study_path} --out {out} --list` (one command per run); "
                  "collecting the finished runs only")
        else:
            while True:
                tune, main = stages(study, out)
                todo = [r for p in tune for r in p.runs if finished_row(out, out / r.run_dir) is None]
                if main is not None or not todo:
                    break
                layout(study, tune, out)
                train_points(study, tune, out, verbose, failed, f"study {study.name}: LR tuning", jobs)
                if failed:
                    break
            if main is None and not failed:
                tune, main = stages(study, out)
            if main is not None:
                if study.tune is not None:
                    layout(study, tune, out)
                layout(study, main, out)
                train_points(study, main, out, verbose, failed, f"study {study.name}: main grid", jobs)

        path = write_results(out)
        rows = pd.read_csv(path).to_dict("records") if path.stat().st_size else []
        print(f"results: {path} ({len(rows)} rows)")
        if failed:
            print(f"not finished: {', '.join(failed)}")
        if report is not None and rows:
            report(out)
        return rows


def unfinished(study: Study, out: Path) -> tuple[list[str], list[Point] | None]:
    """Lay out the tuning stage, and the main grid once tuning has finished; the `postformer
    fit` commands of their unfinished runs, main runs before cooldowns; the main points."""
    tune, main = stages(study, out)
    layout(study, tune, out)
    stage = tune if main is None else tune + main
    if main is not None:
        layout(study, main, out)
    todo = [(p, r) for p in stage for r in p.runs if finished_row(out, out / r.run_dir) is None]
    order = [x for x in todo if x[1].kind != "cooldown"] + [x for x in todo if x[1].kind == "cooldown"]
    return [shlex.join(fit_args(out, r)) for _, r in order], main
