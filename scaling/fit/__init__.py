"""Fits: a results table to IsoFLOP minima, scaling laws and the verdict, with intervals.

    table.py       the results table every fit reads (arch, N, D, C, loss, ...)
    isoflop.py     IsoFLOP parabolas and the one rule for a minimum at the edge
    curvefit.py    the joint efficiency law and the free-exponent law across archs
    lr.py          LR sweeps and the LR power law, its exponent's interval
    sensitivity.py the tuned LR's check: the verdict with the baseline at x0.5 / x2 its LR
    bootstrap.py   the wild cluster bootstrap by trajectory
    estimate.py    a number with its percentile interval
    analysis.py    analyse(): the verdict (minima, loss gaps, efficiency factors, checks)
    chinchilla.py  Chinchilla's Approaches 2 and 3 and the frontier for any table
    solver.py      the one batched Levenberg-Marquardt solver under every law
"""

from .analysis import DEFAULT_N_BOOT, Analysis, ArchVerdict, analyse
from .chinchilla import bootstrap, fit_frontier, fit_isoflop, fit_parametric
from .estimate import Estimate, percentile
from .lr import LRSweep, lr_sweeps
from .sensitivity import lr_check
from .solver import FitError
from .table import ResultsError, read_results

__all__ = ["DEFAULT_N_BOOT", "Analysis", "ArchVerdict", "Estimate", "FitError", "LRSweep",
           "ResultsError", "analyse", "bootstrap", "fit_frontier", "fit_isoflop", "fit_parametric",
           "lr_check", "lr_sweeps", "percentile", "read_results"]
