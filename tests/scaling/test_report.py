"""The report on synthetic studies whose answer is known (``synthetic.py``: archs with a
known efficiency factor m against a Chinchilla-law baseline)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic import law, optimal_n, simulate

from postformer.cli import main as cli_main
from postformer.scaling.cli import report_main
from postformer.scaling.numbers import fmt, fmt_est, fmt_sig
from postformer.scaling.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"
BUDGETS = (1e18, 4e18, 1.6e19)


def _strict_json(path) -> dict:
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


def _summary(md: str) -> str:
    return md.split("## Summary", 1)[1].split("\n## ", 1)[0]


def _sentence(md: str, arch: str) -> str:
    return next(x for x in _summary(md).splitlines() if x.startswith(f"- **{arch}**"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A full synthetic study with LR sweeps, run folders named, study.yaml and scope.json."""
    d = tmp_path_factory.mktemp("study")
    df = simulate({"transformer": 1.0, "fast": 2.0, "slow": 0.6}, seed=1, tune=True)
    df["run_dir"] = [f"runs/{a}-{s}-s{k}/x{i}" for i, (a, s, k)
                     in enumerate(zip(df.arch, df["size"], df.seed))]
    df.to_csv(d / "results.csv", index=False)
    (d / "study.yaml").write_text(yaml.safe_dump({"name": "synthetic-3", "baseline":
                                                  "transformer", "archs": ["x"]}))
    scope = {"corpus": "Python standard library", "tokenizer": "byte-level", "seq_len": 512,
             "validation": {"tokens": 262144, "windows": 512, "documents": 90, "seed": 0,
                            "evals_per_run": 8},
             "seeds": "3 seeds at the middle size of each budget", "lr_protocol": "tuned",
             "beta2": 0.95, "warmup": "2% of the run", "notes": ["a note for the reader"]}
    (d / "scope.json").write_text(json.dumps(scope))
    written = write_report(d, n_boot=300, seed=0)
    return d, df, written


def test_report_json_has_the_verdict(study):
    d, df, written = study
    assert written["json"] == d / "report.json"
    rep = _strict_json(d / "report.json")
    assert list(rep)[:3] == ["baseline", "archs", "warnings"]
    assert rep["baseline"] == "transformer"
    assert set(rep["archs"]) == {"transformer", "fast", "slow"}
    for a, v in rep["archs"].items():
        assert list(v)[:4] == ["efficiency", "exponent_differs", "loss_gap", "lr"], a
    base = rep["archs"]["transformer"]
    assert base["efficiency"] == {"estimate": 1, "low": 1, "high": 1}
    assert base["loss_gap"] == []
    for arch, m in (("fast", 2.0), ("slow", 0.6)):
        v = rep["archs"][arch]
        e = v["efficiency"]
        assert e["low"] <= m <= e["high"], (arch, e)
        assert not e["low"] <= 1 <= e["high"], (arch, e)
        assert v["exponent_differs"] is False
        assert [g["flops"] for g in v["loss_gap"]] == pytest.approx(list(BUDGETS))
        sign = -1 if m > 1 else 1
        assert all(sign * g["estimate"] > 0 for g in v["loss_gap"])
        assert v["lr"] is not None and v["lr"]["interior"] is True
        assert 0 < v["efficiency_mc_error"] < 0.05
        assert len(v["minima"]) == 3 and all(x["interior"] for x in v["minima"])
        assert v["conventions"]["C, N"] == pytest.approx(e["estimate"])
        assert set(v["gamma_diff"]) == {"estimate", "low", "high", "mc_error"}
        assert v["extrapolation"]["flops"] == BUDGETS[-1]
        assert v["n_runs"] == (df[df.arch == arch].stage == "main").sum()
    assert rep["n_boot"] == 300 and rep["held_out_budget"] == BUDGETS[-1]
    assert rep["joint_fit"]["n_points"] == 9 and rep["joint_fit"]["E_degenerate"] is False
    assert rep["joint_fit"]["E"] == pytest.approx(1.69, abs=0.3)
    assert len(rep["verdict"]) == 2
    assert "512-token windows" in rep["scope"] and "262,144 held-out tokens" in rep["scope"]


def test_report_md_and_html(study):
    d, df, written = study
    md, page = (d / "report.md").read_text(), (d / "report.html").read_text()
    assert md.splitlines()[0] == "# Scaling report: synthetic-3"
    figures = {k: p for k, p in written.items() if k not in ("json", "md", "html")}
    assert set(figures) == {"lr_sweeps", "isoflop", "frontier", "efficiency", "seeds"}
    for key, path in figures.items():
        assert path == d / "figures" / f"{key}.png" and path.read_bytes()[:8] == PNG
        assert f"](figures/{key}.png)" in md
    assert page.count("data:image/png;base64,") == len(figures)
    assert 'src="figures/' not in page
    for section in ("Summary", "Warnings", "Headline 1: loss gap at equal compute",
                    "Headline 2: efficiency factors", "Inverted-frontier multiplier m(C)",
                    "IsoFLOP minima", "Learning rates", "Conventions", "Extrapolation check",
                    "Figures", "Points"):
        assert f"\n## {section}\n" in md, section
        assert f"<h2>{section}</h2>" in page, section
    assert "reaches the transformer's loss with less compute" in _sentence(md, "fast")
    assert "needs more compute than the transformer" in _sentence(md, "slow")
    summary = _summary(md)
    assert "Scope: Python standard library (byte-level tokens), 512-token windows" in summary
    assert "3 IsoFLOP budgets, 5 sizes each" in summary and "a note for the reader" in summary
    # every row is in the points table, linked to its run folder
    for rd in df.run_dir:
        assert f"]({rd})" in md and f'href="{rd}"' in page
    assert not list(d.rglob(".*.tmp"))


def test_summary_is_the_joint_fit_not_a_budget(study):
    d, _, _ = study
    from postformer.scaling.fit import analyse, read_results

    an = analyse(read_results(d / "results.csv"), n_boot=300, seed=0)
    md = (d / "report.md").read_text()
    table = md.split("## Headline 2", 1)[1].split("\n## ", 1)[0]
    for arch in ("fast", "slow"):
        text = fmt_est(an.verdicts[arch].efficiency)
        line = _sentence(md, arch)
        assert f"efficiency m = {text}" in line
        assert f"| {arch} | {text} |" in table
        # no per-budget number (loss gap or m(C)) stands in for the headline
        for x in an.verdicts[arch].inverted:
            if x.value is not None:
                assert fmt_est(x.value) not in line
        for g in an.verdicts[arch].loss_gap:
            assert fmt_est(g.value, "+.4f") not in line


def _bare(path, seed=3):
    df = simulate({"transformer": 1.0, "fast": 2.0}, seed=seed)
    rng = np.random.default_rng(seed)
    df["C"] = df["C"] * (1 + rng.uniform(-0.01, 0.01, len(df)))  # grouped within 5%
    df[["arch", "N", "D", "C", "loss"]].to_csv(path / "results.csv", index=False)


def test_bare_table_through_report_main(tmp_path, capsys):
    _bare(tmp_path)
    report_main([str(tmp_path), "--n-boot", "300"])
    err = capsys.readouterr().err
    assert "report.json" in err and "report.html" in err
    rep = _strict_json(tmp_path / "report.json")
    e = rep["archs"]["fast"]["efficiency"]
    assert e["low"] <= 2.0 <= e["high"] and e["low"] > 1
    assert [g["flops"] for g in rep["archs"]["fast"]["loss_gap"]] == pytest.approx(
        list(BUDGETS), rel=0.011)
    assert rep["archs"]["fast"]["lr"] is None
    md = (tmp_path / "report.md").read_text()
    assert "## Learning rates" not in md
    assert "Scope: 1.0e+18 to 1.6e+19 FLOPs (3 IsoFLOP budgets, 5 sizes each)" in md
    assert (tmp_path / "figures" / "seeds.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("bad,column", [("loss", "loss"), ("N", "N")])
def test_bad_row_is_a_one_line_error(tmp_path, capsys, bad, column):
    rows = ["arch,N,D,C,loss", "t,1e8,1e9,6e17,3.1", "t,2e8,5e8,6e17,3.0",
            "t,4e8,2.5e8,6e17,3.2"]
    rows[3] = rows[3].replace("3.2", "abc") if bad == "loss" else rows[3].replace("4e8", "-4e8")
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path)])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "line 4" in last and f"column '{column}'" in last
    assert not (tmp_path / "report.md").exists()


def test_truncated_table_is_refused_naming_the_line(tmp_path, capsys):
    """A results.csv cut short in a row (a truncated copy) is refused, naming the line, not
    reported from the rows before the cut."""
    _bare(tmp_path)
    lines = (tmp_path / "results.csv").read_text().splitlines(keepends=True)
    cut = ",".join(lines[3].split(",")[:2])  # arch and N of line 4, the rest lost
    (tmp_path / "results.csv").write_text("".join(lines[:3]) + cut)
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path), "--n-boot", "20"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "results.csv: line 4: 2 cells for 5 columns" in last and "cut short" in last
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("name", ["run.json", "result.json"])
def test_damaged_run_file_is_one_line(tmp_path, capsys, name):
    """A truncated run.json or result.json in a study folder: a line naming the file and
    what to do, not a JSONDecodeError traceback."""
    run = tmp_path / "runs" / "t-a-s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"arch": "t"}\n')
    (run / name).write_text('{"arch": "t", "N": 12')
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path)])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run / name}: not valid JSON" in last and "truncated or damaged" in last
    assert ("rebuilt from its metrics.csv" if name == "result.json" else "run the study") in last


def test_missing_table_and_unknown_baseline(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path)])
    assert exc.value.code == 2 and "results.csv not found" in capsys.readouterr().err
    _bare(tmp_path)
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path), "--baseline", "nope", "--n-boot", "20"])
    assert exc.value.code == 2 and "baseline 'nope'" in capsys.readouterr().err


def _rows(arch, m, budgets, factors, rng, *, e=True):
    """IsoFLOP groups at ``optimal_n(C) * factors`` with 0.3% noise; ``e=False``: the law
    without its constant (a pure power law in compute at the minima)."""
    out = []
    for b in budgets:
        for i, N in enumerate(optimal_n(b) * np.asarray(factors)):
            D = b / (6 * N)
            loss = (law(N, m * D) - (0 if e else 1.69)) * math.exp(0.003 * rng.standard_normal())
            out.append({"arch": arch, "size": f"s{i}", "N": N, "D": D, "C": b, "loss": loss,
                        "budget_flops": b, "seed": 0})
    return out


def test_baseline_minima_at_the_edge(tmp_path):
    rng = np.random.default_rng(0)
    rows = _rows("transformer", 1.0, BUDGETS, np.geomspace(1 / 40, 1 / 8, 5), rng)
    rows += _rows("fast", 2.0, BUDGETS, np.geomspace(1 / 2.2, 2.2, 5), rng)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, n_boot=50)
    rep = _strict_json(tmp_path / "report.json")
    fast = rep["archs"]["fast"]
    assert fast["efficiency"] == {"estimate": None, "low": None, "high": None}
    assert "transformer has no interior IsoFLOP minimum" in fast["efficiency_note"]
    assert all(g["estimate"] is None and "edge" in g["excluded"] for g in fast["loss_gap"])
    assert rep["joint_fit"] is None
    md = (tmp_path / "report.md").read_text()
    line = _sentence(md, "fast")
    assert "no efficiency factor" in line and "not identifiable" in line
    assert "| fast | not identifiable |" in md
    assert "excluded: transformer's minimum is at the edge of its grid" in md
    assert "edge:" in md.split("## IsoFLOP minima", 1)[1].split("\n## ", 1)[0]


def test_degenerate_E_is_not_printed(tmp_path):
    rng = np.random.default_rng(1)
    factors = np.geomspace(1 / 2.2, 2.2, 5)
    rows = _rows("transformer", 1.0, BUDGETS, factors, rng, e=False)
    rows += _rows("fast", 1.5, BUDGETS, factors, rng, e=False)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, n_boot=50)
    rep = _strict_json(tmp_path / "report.json")
    assert rep["joint_fit"]["E_degenerate"] is True
    md = (tmp_path / "report.md").read_text()
    assert "E ≈ 0 (not identified" in md
    joint = next(x for x in md.splitlines() if x.startswith("Joint fit"))
    assert fmt(rep["joint_fit"]["E"]) not in joint and fmt_sig(rep["joint_fit"]["E"]) not in joint
    assert not [x for x in re.findall(r"e-(\d+)", md) if int(x) >= 10], "degenerate number"


def test_cli_and_rebuild_from_run_folders(tmp_path, monkeypatch, capsys):
    """``postformer report DIR`` through the CLI; a folder with runs/ has its results.csv
    rebuilt first (by scaling.run.results, stubbed here where the report calls it)."""
    import postformer.scaling.report.study as report_study

    (tmp_path / "runs").mkdir()
    calls = []

    def fake_write_results(out_dir):
        calls.append(out_dir)
        _bare(tmp_path, seed=4)
        return tmp_path / "results.csv"

    monkeypatch.setattr(report_study, "write_results", fake_write_results)
    cli_main(["report", str(tmp_path), "--n-boot", "40", "--baseline", "fast"])
    assert [str(c) for c in calls] == [str(tmp_path)]
    rep = _strict_json(tmp_path / "report.json")
    assert rep["baseline"] == "fast"
    assert rep["archs"]["transformer"]["efficiency"]["estimate"] == pytest.approx(0.5, rel=0.2)
    assert "wrote" in capsys.readouterr().err
