"""The commands of ``postformer.scaling``: each reads a spec (``scaling.spec``), runs it
(``scaling.run``) and writes its report (``scaling.report``), which is why they live above
the rooms rather than in one of them.

    postformer study STUDY.yaml --out DIR [--plan | --list]   study_main
    postformer probe PROBE.yaml --out DIR [--plan]            probe_main
    postformer compare CONFIG [CONFIG ...] --out DIR          compare_main
    postformer report DIR [--probes PROBE_DIR]                report_main
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from postformer.train.locks import FolderLocked

from .fit import DEFAULT_N_BOOT, ResultsError
from .report import write_probe_report, write_report
from .report.verdict import summary_lines
from .run import run_loaded, run_probe, run_study
from .run.probe import print_plan as print_probe_plan
from .run.throughput import print_plan as print_study_plan
from .spec import StudyError, compare_study, load_probe, load_study, study_from_dict
from .spec.executor import EXECUTOR_KINDS

# ---- what study, probe and compare share --------------------------------------------------


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
def cli_errors(parser: argparse.ArgumentParser, args: argparse.Namespace, folder: str
               ) -> Iterator[None]:
    """Checks --out and --jobs (unless --plan), and turns a bad spec into a usage error, a
    locked folder into exit 2 and Ctrl-C into exit 130 with a word on resuming."""
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


def study_report(out: Path) -> None:
    """The report of a study folder whose runs are collected: its path printed; a failure
    says the runs and results.csv are safe and how to rebuild it, and exits 1."""
    try:
        t0 = time.perf_counter()
        written = write_report(out)
        print(f"report: {written['html']} ({time.perf_counter() - t0:.1f}s)")
    except Exception as err:  # the runs and results.csv are safe; say so, do not bury it
        print(f"report: failed ({type(err).__name__}: {err}); the runs and results.csv are "
              f"complete, rebuild with `postformer report {out}` once fixed", file=sys.stderr)
        raise SystemExit(1) from err


def probe_report(out: Path) -> None:
    """The report of a probe folder whose cells are collected; its path printed."""
    written = write_probe_report(out)
    print(f"report: {written['html']}")


# ---- postformer study -------------------------------------------------------------------


def study_main(argv: list[str]) -> None:
    """``postformer study STUDY.yaml --out DIR [--plan | --list] [--jobs N] ...``"""
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
            print_study_plan(load_study(args.study, executor=overrides), probe=not args.no_probe)
            return
        run_study(args.study, args.out, list_only=args.list, verbose=args.verbose,
                  report=None if args.no_report else study_report, jobs=args.jobs,
                  executor=overrides)


# ---- postformer probe -------------------------------------------------------------------


def probe_main(argv: list[str]) -> None:
    """``postformer probe PROBE.yaml --out DIR [--plan] [--jobs N] [--executor KIND] ...``"""
    parser = argparse.ArgumentParser(
        prog="postformer probe",
        description="Train synthetic probes (MQAR, the MAD tasks) over archs x tasks x widths x "
                    "LRs x seeds into DIR: results.csv and a report; a rerun skips finished cells.")
    parser.add_argument("probe", metavar="PROBE.yaml", help="the probe spec (see configs/probe/)")
    parser.add_argument("--plan", action="store_true", help="print the grid; trains nothing")
    add_run_options(parser, "probe")
    args = parser.parse_args(argv)
    overrides = executor_overrides(parser, args)
    with cli_errors(parser, args, "probe"):
        if args.plan:
            print_probe_plan(load_probe(args.probe, executor=overrides))
            return
        run_probe(args.probe, args.out, verbose=args.verbose,
                  report=None if args.no_report else probe_report, jobs=args.jobs,
                  executor=overrides)


# ---- postformer compare -----------------------------------------------------------------


def compare(configs: list[str], out: str | Path, max_steps: int | None = None,
            seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) every config as one study in ``out`` (``scaling.spec.compare``), write
    its report, print the table of final losses; returns the results rows."""
    spec = compare_study(configs, max_steps, seeds)
    study = study_from_dict(spec, source="postformer compare")
    rows = run_loaded(study, out, report=study_report, study_path="(compare)")
    print()
    print(format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison's rows as an aligned text table."""
    cols = ["arch", "seed", "N", "D", "loss", "bpb", "wall_s"]
    fmt = lambda v: (f"{v:.4f}" if isinstance(v, float) and abs(v) < 10
                     else f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v))
    cells = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_main(argv: list[str]) -> None:
    """``postformer compare CONFIG [CONFIG ...] --out DIR [--max_steps N] [--seeds S ...]``"""
    parser = argparse.ArgumentParser(
        prog="postformer compare",
        description="Train each fit config as one arch of a one-size study in OUT "
                    "(results.csv and the report, as for any study).",
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="postformer fit configs")
    parser.add_argument("--out", required=True, help="the study folder")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="steps of every run (default: the configs' trainer.max_steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0)")
    args = parser.parse_args(argv)
    try:
        compare(args.configs, args.out, args.max_steps, args.seeds)
    except StudyError as err:
        parser.error(str(err))
    except FolderLocked as err:
        print(f"postformer compare: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ---- postformer report ------------------------------------------------------------------


def report_main(argv: list[str]) -> None:
    """``postformer report DIR [--baseline NAME] [--n-boot N] [--seed S] [--probes PROBE_DIR]``;
    prints the verdict, one line per architecture (``report.verdict.summary_lines``), after
    writing the files. A probe folder (``DIR/probe.yaml``) gets its probe report instead."""
    parser = argparse.ArgumentParser(
        prog="postformer report",
        description="Rebuild a study's report (report.json, report.md, report.html, figures/) "
                    "from DIR/results.csv (rebuilt from DIR/runs/ when present), without "
                    "training anything.")
    parser.add_argument("dir", metavar="DIR", help="the study folder (or any folder with a "
                                                   "results.csv)")
    parser.add_argument("--baseline", default=None,
                        help="architecture to compare against (default: study.yaml's "
                             "baseline, else transformer, else the table's first)")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT,
                        help=f"bootstrap replicates (default {DEFAULT_N_BOOT})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--probes", metavar="PROBE_DIR", default=None,
                        help="a `postformer probe` folder: set its scores beside the efficiency "
                             "factors, with their rank correlation")
    args = parser.parse_args(argv)
    if (Path(args.dir) / "probe.yaml").is_file():  # a probe folder: its own report
        try:
            written = write_probe_report(args.dir)
        except ValueError as err:
            parser.error(" ".join(str(err).split()))
        print(f"postformer report: wrote {written['json']}, {written['md']}, {written['html']}",
              file=sys.stderr)
        return
    if args.n_boot < 1:
        parser.error("--n-boot must be >= 1 (intervals need 10 replicates or more)")
    try:
        written = write_report(args.dir, baseline=args.baseline, n_boot=args.n_boot,
                               seed=args.seed, probes=args.probes)
    except ValueError as err:  # ResultsError (a missing or bad table), an unknown baseline
        parser.error(" ".join(str(err).split()))
    figs = [str(p) for k, p in written.items() if k not in ("json", "md", "html")]
    print(f"postformer report: wrote {written['json']}, {written['md']}, {written['html']} and "
          f"{len(figs)} figures ({', '.join(figs)})", file=sys.stderr)
    for line in summary_lines(json.loads(Path(written["json"]).read_text())):
        print(line)
