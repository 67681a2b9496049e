"""``postformer probe``: the spec, the grid, the runner end to end (skip, resume, stale
folders), the results row against an independent evaluation, the report's scores against
hand-computed ones, and configs/probe/*.yaml."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from postformer.cli import main
from postformer.scaling.report.probe import (
    MAD_TASKS,
    best_of_lr,
    cell_scores,
    mad_scores,
    summary,
    task_scores,
    write_probe_report,
)
from postformer.scaling.run.probe import COLUMNS, plan_probe, run_probe
from postformer.scaling.spec import StudyError, load_probe, probe_from_dict, setting_label
from postformer.train.probes.tasks import TASKS, input_length, make_split, model_vocab

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "name": "tiny",
    "archs": {"attention": {"pattern": ["attn"], "mlp": True}},
    "tasks": {"mqar": {"settings": {"num_train": 96, "num_test": 32, "vocab_size": 128}}},
    "widths": [32],
    "n_layers": 1,
    "head_dim": 16,
    "lrs": [3e-3, 1e-2],
    "train": {"steps": 6},
    "model": {"warmup_steps": 1, "weight_decay": 0.0},
    "data": {"batch_size": 16},
    "trainer": {"accelerator": "cpu", "devices": 1, "precision": 32, "log_every_n_steps": 2},
    "checkpoint": {"every_n_train_steps": 2},
}


def _spec(**changes) -> dict:
    spec = copy.deepcopy(TINY)
    spec.update(changes)
    return spec


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    ({"tasks": {"nope": {}}}, "tasks.nope: unknown task"),
    ({"tasks": {"mqar": {"sweep": "all"}}}, "tasks.mqar.sweep"),
    ({"tasks": {"mqar": {"sweep": [{"seq_len": 3}]}}}, r"tasks.mqar.sweep\[0\]"),
    ({"tasks": {"mqar": {"epochs": 1, "steps": 2}}}, "epochs or steps, not both"),
    ({"tasks": {"mqar": {"epoch": 1}}}, "tasks.mqar"),
    ({"model": {"lr": 1e-3}}, "model.lr"),
    ({"trainer": {"max_steps": 5}}, "trainer.max_steps"),
    ({"widths": []}, "widths"),
    ({"widths": [32, 32]}, "widths"),
    ({"lrs": [0.0]}, "lrs"),
    ({"archs": {"x": "no-such-preset"}}, "archs.x"),
    ({"data": {"task": "mqar"}}, "data"),
    ({"bogus": 1}, "top level"),
])
def test_bad_specs_name_the_key(change, match):
    with pytest.raises(StudyError, match=match):
        probe_from_dict(_spec(**change), source="p.yaml")


def test_grid_steps_settings_and_folders():
    spec = _spec(tasks={
        "mqar": {"sweep": "paper", "settings": {"num_train": 100, "num_test": 10}, "epochs": 2},
        "memorization": {"steps": 7},
    }, archs={"attention": {"pattern": ["attn"], "mlp": True}, "mamba2": "mamba2"},
        widths=[32, 64], seeds=[0, 1])
    probe = probe_from_dict(spec)
    cells = plan_probe(probe)
    n_settings = len(TASKS["mqar"].sweep) + 1
    assert len(cells) == 2 * n_settings * 2 * 2 * 2
    assert len({c.runs[0].run_dir for c in cells}) == len(cells)
    mq = [c for c in cells if c.task == "mqar"]
    # epochs -> steps: ceil(2 * 100 / 16) = 13 and 13 * 16 / 100 epochs
    assert {c.runs[0].steps for c in mq} == {13}
    assert mq[0].epochs == pytest.approx(13 * 16 / 100)
    assert {c.setting for c in mq} == {"seq_len=64,num_kv_pairs=4", "seq_len=128,num_kv_pairs=8",
                                       "seq_len=256,num_kv_pairs=16", "seq_len=512,num_kv_pairs=64"}
    assert {c.runs[0].steps for c in cells if c.task == "memorization"} == {7}
    for c in cells:  # the model follows the task's vocabulary and input length
        assert c.config.vocab_size == model_vocab(c.task, **c.settings)
        assert c.seq_len == input_length(c.task, **c.settings)
        assert c.config.d_model == c.d_model
    # mamba2 has no MLP: twice the blocks, as in studies
    assert {c.config.n_layers for c in cells if c.arch == "mamba2"} == {2}
    assert {c.config.n_layers for c in cells if c.arch == "attention"} == {1}
    assert setting_label({}) == "default"


# ---- the runner -------------------------------------------------------------------------


def _independent_accuracy(run_dir: Path, cell_settings: dict, seed: int) -> float:
    """Load the cell's last checkpoint and score the test set by hand: argmax at the scored
    positions of the task's own test arrays."""
    from postformer.train.module import IGNORE, LMModule

    module = LMModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    x, y = make_split("mqar", seed, **cell_settings)["test"]
    with torch.no_grad():
        logits = module.model(torch.as_tensor(np.asarray(x), dtype=torch.long))
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    scored = y != IGNORE
    return float((logits.argmax(-1)[scored] == y[scored]).float().mean())


def test_run_skip_rows_report(tmp_path, capsys):
    spec = _write(tmp_path, TINY)
    out = tmp_path / "out"
    rows = run_probe(spec, out, report=write_probe_report)
    assert len(rows) == 2
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == COLUMNS
    probe = load_probe(spec)
    for cell in plan_probe(probe):
        row = table[table["lr"] == cell.lr].iloc[0]
        assert row["steps"] == 6 and row["arch"] == "attention" and row["setting"] == "default"
        assert row["params"] == cell.N
        acc = _independent_accuracy(out / row["run_dir"], cell.settings, cell.seed)
        assert row["accuracy"] == pytest.approx(acc, abs=1e-6)
    for name in ("report.md", "report.html", "report.json", "figures/probe_mqar.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    assert data["per_arch"]["attention"]["widths"]["32"]["tasks"]["mqar"] == pytest.approx(
        table["accuracy"].max())
    capsys.readouterr()
    # a rerun trains nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("last.ckpt")}
    run_probe(spec, out)
    assert "2 finished already" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("last.ckpt")}
    # a changed grid that lands on a finished folder with other settings is refused
    changed = _spec(model={"warmup_steps": 2, "weight_decay": 0.0})
    kept = [out / "probe.yaml", *sorted(out.rglob("fit.yaml"))]
    texts = [p.read_text() for p in kept]
    with pytest.raises(StudyError, match="holds a different run"):
        run_probe(_write(tmp_path, changed), out)
    assert [p.read_text() for p in kept] == texts  # a refusal changes nothing


def test_interrupted_cell_resumes(tmp_path, capsys, monkeypatch):
    spec = _spec(lrs=[3e-3])
    path = _write(tmp_path, spec)
    out = tmp_path / "out"
    run_probe(path, out)
    full = pd.read_csv(out / "results.csv").iloc[0]
    # the same cell cut after step 4 (its checkpoint), then resumed by a rerun
    out2 = tmp_path / "out2"
    probe = load_probe(path)
    cell = plan_probe(probe)[0]
    from postformer.scaling.run.probe import layout
    from postformer.train.cli import lightning_main

    layout(probe, [cell], out2)
    run_dir = out2 / cell.runs[0].run_dir
    # the cell's own config (same schedule) plus a callback that stops it after step 4
    (tmp_path / "stopper.py").write_text(
        "import lightning as L\n"
        "class StopAfter(L.Callback):\n"
        "    def __init__(self, step: int):\n"
        "        self.step = step\n"
        "    def on_train_batch_end(self, trainer, *args):\n"
        "        if trainer.global_step >= self.step:\n"
        "            trainer.should_stop = True\n")
    cfg = yaml.safe_load((run_dir / "fit.yaml").read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "stopper.StopAfter", "init_args": {"step": 4}})
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.syspath_prepend(str(tmp_path))
    lightning_main(["fit", "--config", str(tmp_path / "cut.yaml")])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "result.json").exists()
    capsys.readouterr()
    run_probe(path, out2)
    assert "resuming" in capsys.readouterr().out
    resumed = pd.read_csv(out2 / "results.csv").iloc[0]
    assert resumed["accuracy"] == pytest.approx(full["accuracy"], abs=1e-6)
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-4)


def test_cli_plan_and_errors(tmp_path, capsys):
    assert main(["probe", str(REPO / "configs" / "probe" / "smoke.yaml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "24 cells" in out and "mqar/default: 24 steps" in out
    with pytest.raises(SystemExit) as err:
        main(["probe", str(_write(tmp_path, _spec(tasks={"nope": {}}))), "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "tasks.nope" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["smoke.yaml", "mad.yaml", "mad-2025.yaml", "mqar.yaml", "mqar-cpu.yaml"])
def test_configs_validate(name):
    probe = load_probe(REPO / "configs" / "probe" / name)
    cells = plan_probe(probe)
    assert cells
    if name == "mad.yaml":
        assert set(probe.tasks) == set(MAD_TASKS)
        assert probe.widths == [128]
        assert len(probe.archs) == 10
    if name == "mad-2025.yaml":  # the same protocol on the 2025-2026 mixers, attention as baseline
        mad = load_probe(REPO / "configs" / "probe" / "mad.yaml")
        same = ("tasks", "widths", "n_layers", "head_dim", "d_state", "lrs", "seeds", "model", "data", "trainer")
        assert all(getattr(probe, key) == getattr(mad, key) for key in same)
        assert [(c.name, c.config, c.epochs) for c in cells if c.arch == "attention"] == [
            (c.name, c.config, c.epochs) for c in plan_probe(mad) if c.arch == "attention"]
        assert probe.archs["attention"] == mad.archs["attention"]
        assert {a["pattern"][0] for a in probe.archs.values()} == {
            "attn", "gated_attn", "kda", "mlstm", "deltaproduct", "mamba3", "rwkv7"}
    if name == "mqar.yaml":
        assert {c.setting for c in cells} == {
            "seq_len=64,num_kv_pairs=4", "seq_len=128,num_kv_pairs=8",
            "seq_len=256,num_kv_pairs=16", "seq_len=512,num_kv_pairs=64"}


def test_smoke_config_end_to_end(tmp_path):
    """configs/probe/smoke.yaml as CI runs it: every cell, results.csv, the report."""
    out = tmp_path / "smoke"
    rows = run_probe(REPO / "configs" / "probe" / "smoke.yaml", out, report=write_probe_report)
    assert len(rows) == 24
    table = pd.read_csv(out / "results.csv")
    assert table["accuracy"].between(0, 1).all()
    assert set(table["task"]) == {"mqar", "in_context_recall", "memorization"}
    assert (out / "figures" / "probe_heatmap_d64.png").is_file()


# ---- the scores -------------------------------------------------------------------------


def _table() -> pd.DataFrame:
    """A synthetic results table with known scores: arch a is 0.1 better everywhere; the
    best LR is 1e-3 for a and 3e-3 for b; two settings per task, two seeds."""
    rows = []
    for arch, bonus in (("a", 0.1), ("b", 0.0)):
        for ti, task in enumerate(MAD_TASKS):
            for si, setting in enumerate(("default", "seq_len=256")):
                for seed in (0, 1):
                    for lr in (1e-3, 3e-3, 1e-2):
                        best = (lr == 1e-3) if arch == "a" else (lr == 3e-3)
                        acc = 0.3 + 0.05 * ti + 0.1 * si + 0.02 * seed + bonus - (0 if best else 0.2)
                        rows.append({"arch": arch, "task": task, "setting": setting, "d_model": 64,
                                     "lr": lr, "seed": seed, "accuracy": acc, "loss": 1 - acc})
    return pd.DataFrame(rows)


def test_scores_match_hand_computation():
    df = _table()
    best = best_of_lr(df)
    assert len(best) == 2 * 6 * 2 * 2
    assert set(best.loc[best["arch"] == "a", "lr"]) == {1e-3}
    assert set(best.loc[best["arch"] == "b", "lr"]) == {3e-3}
    # 1e-3 is the grid's smallest: an edge; 3e-3 is inside
    assert best.loc[best["arch"] == "a", "lr_at_edge"].all()
    assert not best.loc[best["arch"] == "b", "lr_at_edge"].any()
    cells = cell_scores(best)
    c = cells[(cells["arch"] == "b") & (cells["task"] == MAD_TASKS[2]) & (cells["setting"] == "seq_len=256")]
    assert c["accuracy"].iloc[0] == pytest.approx(0.3 + 0.1 + 0.1 + 0.01)  # mean of seeds 0, 1
    assert c["low"].iloc[0] == pytest.approx(0.5) and c["high"].iloc[0] == pytest.approx(0.52)
    tasks = task_scores(cells)
    t = tasks[(tasks["arch"] == "a") & (tasks["task"] == MAD_TASKS[0])]
    assert t["score"].iloc[0] == pytest.approx(0.3 + 0.05 + 0.01 + 0.1)  # mean of settings
    mad = mad_scores(tasks).set_index("arch")
    # the mean over tasks of 0.3 + 0.05 ti + 0.05 + 0.01 (+ 0.1 for a)
    expect_b = 0.3 + 0.05 * np.mean(range(6)) + 0.05 + 0.01
    assert mad.loc["b", "mad_score"] == pytest.approx(expect_b)
    assert mad.loc["a", "mad_score"] == pytest.approx(expect_b + 0.1)
    # five of six tasks: no MAD score, the partial mean says so
    partial = mad_scores(tasks[tasks["task"] != "compression"]).set_index("arch")
    assert math.isnan(partial.loc["a", "mad_score"]) and partial.loc["a", "mad_tasks"] == 5


def test_report_from_a_results_table(tmp_path):
    _table().to_csv(tmp_path / "results.csv", index=False)
    written = write_probe_report(tmp_path)
    md = written["md"].read_text()
    assert "MAD score" in md and "Best LR at the grid's edge" in md
    data = json.loads(written["json"].read_text())
    expect_b = 0.3 + 0.05 * np.mean(range(6)) + 0.05 + 0.01
    assert data["per_arch"]["b"]["widths"]["64"]["mad_score"] == pytest.approx(expect_b)
    assert summary(_table())["archs"] == ["a", "b"]


# ---- beside a study ---------------------------------------------------------------------


def test_rank_correlation_exact():
    from postformer.scaling.report.probe import rank_correlation

    rho, p = rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24)  # identity and reversal
    # 1 - 6 sum d^2 / (n (n^2 - 1)) with ranks (1,2,3,4,5) vs (2,1,4,3,5): sum d^2 = 4
    rho, p = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert rho == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert 0 < p < 1
    assert math.isnan(rank_correlation([1, 2], [3, 4])[0])


def test_report_probes_beside_the_verdict(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import simulate

    study = tmp_path / "study"
    study.mkdir()
    effs = {"transformer": 1.0, "fast": 2.0, "slow": 0.6, "mid": 1.3}
    simulate(effs, seed=1, sd_traj=0.001, sd_run=0.0005).to_csv(study / "results.csv", index=False)
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "s", "baseline": "transformer"}))
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "probe.yaml").write_text(yaml.safe_dump({"name": "p"}))
    score = {"slow": 0.2, "transformer": 0.4, "mid": 0.5, "fast": 0.7, "other": 0.9}
    rows = [{"arch": a, "task": "mqar", "setting": "default", "d_model": d, "lr": 1e-3, "seed": 0,
             "accuracy": s - (0.1 if d == 32 else 0.0), "loss": 1.0}
            for a, s in score.items() for d in (32, 64)]
    pd.DataFrame(rows).to_csv(probes / "results.csv", index=False)
    assert main(["report", str(study), "--probes", str(probes), "--n-boot", "50"]) == 0
    rep = json.loads((study / "report.json").read_text())["probes"]
    # the probe score at the largest width (64) orders the archs as their true m does
    assert rep["archs"]["fast"]["probe_score"] == pytest.approx(0.7)
    assert rep["archs"]["fast"]["d_model"] == 64
    assert rep["n_archs"] == 4
    assert rep["spearman_rho"] == pytest.approx(1.0)
    assert rep["p_value"] == pytest.approx(2 / 24)
    md = (study / "report.md").read_text()
    assert "Synthetic probes beside the verdict" in md and "+1.00** over 4 archs" in md
    assert "In the probe folder but not in the study: other" in md
    # a probe folder alone gets its own report through the same command
    assert main(["report", str(probes)]) == 0
    assert (probes / "report.md").is_file()
