"""Runs: a spec's runs planned, laid out as run folders, trained, collected.

    plan.py        the runs: LR tuning sweeps, IsoFLOP groups, trajectories with cooldowns
    folders.py     a run folder's fit.yaml and run.json, its identity, its `postformer fit`
    training.py    one run trained in this process (every executor's way of training)
    executors.py   where runs train: in process, --jobs workers, submitit local or Slurm
    runner.py      `postformer study`: the stages, --list
    throughput.py  `postformer study --plan`: every run with a time estimate
    probe.py       `postformer probe`: the grid of synthetic-task cells
    results.py     run folders -> results.csv and curves.csv
The folder locks and the run lock callback are ``postformer.train.locks``'.
"""

from .plan import Point, RunPlan, plan, plan_tune
from .probe import plan_probe, run_probe
from .results import collect, curves, write_results
from .runner import run_loaded, run_study
from .throughput import print_plan

__all__ = ["Point", "RunPlan", "collect", "curves", "plan", "plan_probe", "plan_tune",
           "print_plan", "run_loaded", "run_probe", "run_study", "write_results"]
