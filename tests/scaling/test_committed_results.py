"""The committed results rebuild to the committed reports: each study's report.json (the
default study's two runs) from its results.csv (every number within 1e-5 relative: a rebuild on another 2-core
machine moves the bootstrap intervals by up to 2e-6), the probe reports exactly. A change
that moves a number a user reads in docs/ fails here; one meant to move them regenerates
the committed report (``postformer report``) and says why in its commit."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from postformer.scaling.report import write_probe_report, write_report

DOCS = Path(__file__).resolve().parents[2] / "docs"
STUDIES = sorted(p for p in (DOCS / "study").iterdir() if (p / "results.csv").is_file())
PROBES = sorted(p for p in (DOCS / "probe").iterdir() if (p / "probe.yaml").is_file())
RTOL = 1e-5


def _differences(want, got, path: str = "") -> list[str]:
    """Where two JSON values differ: structure, strings, flags, or numbers beyond RTOL."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return [f"{path}: keys {sorted(set(want) ^ set(got))}"]
        return [d for k in want for d in _differences(want[k], got[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(want)} items, got {len(got)}"]
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in _differences(a, b, f"{path}[{i}]")]
    numbers = (int, float)
    if (isinstance(want, numbers) and isinstance(got, numbers)
            and not isinstance(want, bool) and not isinstance(got, bool)):
        ok = math.isclose(want, got, rel_tol=RTOL, abs_tol=0.0)
        return [] if ok else [f"{path}: {want!r}, got {got!r}"]
    return [] if want == got else [f"{path}: {want!r}, got {got!r}"]


def test_differences_sees_a_moved_number():
    assert _differences({"a": [1.0, {"b": "x"}]}, {"a": [1.0 + 1e-7, {"b": "x"}]}) == []
    assert _differences({"a": [1.0]}, {"a": [1.0 + 1e-4]}) == [".a[0]: 1.0, got 1.0001"]
    assert _differences({"a": None}, {"a": 0.0}) and _differences({"a": 1}, {"b": 1})


@pytest.mark.parametrize("folder", STUDIES, ids=[p.name for p in STUDIES])
def test_study_reports_rebuild(tmp_path, folder):
    for name in ("results.csv", "curves.csv", "scope.json", "study.yaml"):
        if (folder / name).is_file():
            shutil.copy(folder / name, tmp_path / name)
    write_report(tmp_path)  # the defaults the committed report was written with
    want = json.loads((folder / "report.json").read_text())
    got = json.loads((tmp_path / "report.json").read_text())
    assert not _differences(want, got), "\n".join(_differences(want, got)[:20])


@pytest.mark.parametrize("folder", PROBES, ids=[p.name for p in PROBES])
def test_probe_reports_rebuild(tmp_path, folder):
    for name in ("probe.yaml", "results.csv"):
        shutil.copy(folder / name, tmp_path / name)
    write_probe_report(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(
        (folder / "report.json").read_text())
    assert (tmp_path / "report.md").read_text() == (folder / "report.md").read_text()
