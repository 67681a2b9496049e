"""Reports: a study's verdict and a probe's scores as report.json, Markdown, HTML, figures.

    study.py     `postformer report DIR`: the verdict of a study folder (write_report)
    verdict.py   report.json: the analysis as strict JSON
    probe.py     the probe report, and probe scores beside a study's verdict
    figures.py   the figures (matplotlib, PNG bytes with captions)
    document.py  one list of blocks rendered as Markdown and as HTML
"""

from .probe import beside_study, write_probe_report
from .study import build_report, write_report

__all__ = ["beside_study", "build_report", "write_probe_report", "write_report"]
