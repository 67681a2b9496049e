"""The verdict's analysis and report on CPU, at the default study's size: 5 archs, 3 IsoFLOP
budgets of 5 sizes, 3 seeds at the middle size (about 100 rows), 2,000 bootstrap replicates.
The issue's target: the whole report rebuilt in under 20 s on 2 cores.

    pytest bench/test_report.py --benchmark-enable
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scaling"))
from synthetic import simulate  # noqa: E402

from postformer.scaling.fit import analyse  # noqa: E402

ARCHS = {"transformer": 1.0, "mamba2": 1.3, "gdn": 1.1, "hybrid": 1.2, "control": 1.0}


@pytest.fixture(scope="module")
def table():
    return simulate(ARCHS, seed=0, tune=True)


def test_analyse_default_size(benchmark, table):
    benchmark.group = "analysis (default-study size)"
    benchmark.extra_info["rows"] = len(table)
    an = benchmark.pedantic(analyse, args=(table,), kwargs={"n_boot": 2000}, rounds=3,
                            warmup_rounds=0)
    benchmark.extra_info["efficiency"] = {a: v.efficiency.estimate for a, v in an.verdicts.items()
                                          if v.efficiency is not None}


def test_write_report_default_size(benchmark, table, tmp_path):
    from postformer.scaling.report import write_report

    table.to_csv(tmp_path / "results.csv", index=False)
    benchmark.group = "report (default-study size)"
    benchmark.pedantic(write_report, args=(tmp_path,), kwargs={"n_boot": 2000}, rounds=2,
                       warmup_rounds=0)
