"""The scaling-study harness: spec validation, the plan, wsd cooldowns, the runner end to end."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from postformer.arch import PRESETS, ModelConfig
from postformer.arch.flops import flops_per_token, param_counts
from postformer.cli import main
from postformer.scaling.fit.lr import lr_sweeps
from postformer.scaling.report import write_report
from postformer.scaling.run import results as results_mod
from postformer.scaling.run import run_study
from postformer.scaling.run.plan import extension_lrs, isoflop_sizes, plan, plan_tune, tune_sizes
from postformer.scaling.run.results import COLUMNS, collect, write_results
from postformer.scaling.run.throughput import print_plan
from postformer.scaling.spec import StudyError, ladder_sizes, load_study, study_from_dict
from postformer.train import fileio
from postformer.train.cli import lightning_main

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# 2 archs x 2 sizes x 2 budgets (16 and 8 steps of 4 x 32 tokens): 4 main runs, 4 cooldowns.
MICRO = {
    "name": "micro",
    "archs": {"transformer": "transformer", "mamba2": "mamba2"},
    "sizes": [
        {"name": "a", "d_model": 32, "n_layers": 1, "n_heads": 2, "mixers": {"mamba2": {"d_state": 8, "head_dim": 16}}},
        {"name": "b", "d_model": 48, "n_layers": 2, "n_heads": 2, "mixers": {"mamba2": {"d_state": 8, "head_dim": 16}}},
    ],
    "budgets": {"tokens": [1024, 2048]},
    "model": {"lr": 3e-3, "warmup_steps": 2, "decay_fraction": 0.25},
    "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
    "eval": {"tokens": 256, "points": 2},
    "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_study(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def spec(**changes) -> dict:
    s = copy.deepcopy(MICRO)
    s.update(changes)
    return s


# ---- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"frobnicate": 1}, r"top level: unknown key\(s\) \['frobnicate'\]"),
        ({"archs": {"x": "mamba9"}}, r"archs.x: unknown arch 'mamba9'"),
        ({"archs": {}}, r"archs: must be a non-empty mapping"),
        ({"sizes": []}, r"sizes: must be a non-empty list"),
        ({"sizes": ["huge"]}, r"sizes\[0\]: unknown size 'huge'"),
        ({"sizes": [{"name": "a", "d_model": 32}]}, r"sizes\[0\]: missing 'n_layers'"),
        ({"budgets": {"tokens": []}}, r"budgets.tokens: must be a non-empty list"),
        ({"budgets": {"tokens": [1], "flops": [1]}}, r"budgets: give exactly one of"),
        ({"budgets": {"steps": [1]}}, r"unknown budget kind 'steps'"),
        ({"budgets": {"tokens": [-5]}}, r"budgets.tokens: must be positive"),
        ({"seeds": []}, r"seeds: must be a non-empty list"),
        ({"baseline": "gpt"}, r"baseline: 'gpt' is not one of the archs"),
        ({"model": {"learning_rate": 1}}, r"model: unknown key\(s\) \['learning_rate'\]"),
        ({"trainer": {"max_steps": 5}}, r"trainer.max_steps: is set by the runner"),
        ({"data": {"seqlen": 5}}, r"data: unknown key\(s\) \['seqlen'\]"),
        ({"archs": {"h": {"pattern": ["mamba2", "attn"], "bogus": 1}}}, r"archs.h: unknown key\(s\) \['bogus'\]"),
        ({"archs": {"h": {"pattern": ["nope"]}}}, r"archs.h at size a: unknown mixer"),
        ({"archs": {"h": {"pattern": ["mamba2", "mamba2", "attn"], "layer_multiplier": 1}}},
         r"never reach mixer\(s\) \['attn'\]"),
        ({"model": {"schedule": "cosine"}, "cooldowns": True}, r"cooldowns: need schedule wsd"),
        ({"trainer": {"limit_val_batches": 2}}, r"trainer.limit_val_batches: is set by the runner"),
        ({"data": {"val_tokens": 5}}, r"data.val_tokens: is set by the runner"),
        ({"ladder": {"d_model": [32, 64]}}, r"sizes: give either sizes \(a list\) or ladder"),
        ({"tune": {"lr": [1e-3, 2e-3, 4e-3]}}, r"tune.lr: needs at least 5 learning rates"),
        ({"tune": {"lr": {"points": 3}}}, r"tune.lr.points: must be an integer >= 5"),
        ({"tune": {"sizes": ["a"]}}, r"tune.sizes: tune at two sizes or more"),
        ({"tune": {"sizes": ["a", "zz"]}}, r"tune.sizes: 'zz' is not a size"),
        ({"headline_seeds": {"seeds": [0]}}, r"headline_seeds.seeds: repeat seeds"),
        ({"eval": {"points": 0}}, r"eval.points: must be an integer >= 1"),
        ({"budgets": {"tokens": [1024], "sizes": 5}}, r"budgets.sizes: only with flops budgets and a ladder"),
        ({"model": {"warmup_steps": 2, "warmup_fraction": 0.05}}, r"warmup_fraction or warmup_steps"),
        ({"archs": {"t": {"preset": "transformer", "model": {"lrr": 1}}}}, r"archs.t.model: unknown key"),
        ({"archs": {"transformer": "transformer", "m": {"preset": "mamba2", "match_params": True}}},
         r"match_params sets d_ff, but no block of the pattern has an MLP"),
    ],
)
def test_spec_errors_name_the_key(changes, message):
    with pytest.raises(StudyError, match=message):
        study_from_dict(spec(**changes), source="micro.yaml")


def test_load_study_file_errors(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narchs: [\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(bad)


# ---- the plan ---------------------------------------------------------------------------


def test_plan_expands_points_runs_and_steps():
    study = study_from_dict(spec(seeds=[0, 1]))
    points = plan(study)
    assert study.baseline == "transformer" and study.schedule == "wsd"
    assert [p.name for p in points] == [
        "transformer-a-s0", "transformer-a-s1", "transformer-b-s0", "transformer-b-s1",
        "mamba2-a-s0", "mamba2-a-s1", "mamba2-b-s0", "mamba2-b-s1",
    ]
    p = points[0]
    main_run, cool = p.runs
    assert (main_run.kind, main_run.steps, main_run.tokens) == ("final", 16, 2048)  # 2048 / (4 * 32)
    # cooldown to 8 steps: decay 0.25 * 8 = 2 steps, branch at step 6 of the main run
    assert (cool.kind, cool.steps, cool.start_step) == ("cooldown", 8, 6)
    assert main_run.save_at == [6] and cool.branch_ckpt == "runs/transformer-a-s0/checkpoints/stable-6.ckpt"
    # evaluations: eval.points along the main run, its branch point, the last step
    assert main_run.eval_at == [6, 8, 16] and cool.eval_at == [8]
    assert p.warmup_steps == 2 and p.lr == 3e-3 and p.stage == "main"
    assert cool.run_dir == "runs/transformer-a-s0/cooldown-1024"
    # shapes: mamba2 has no MLP, so twice the layers; N from the model itself
    m = points[4]
    assert m.config.n_layers == 2 and m.config.pattern == ["mamba2"] and m.config.mixers["mamba2"]["d_state"] == 8
    assert p.config.n_layers == 1 and p.config.mixers["attn"]["n_heads"] == 2
    assert (p.N, p.N_non_emb) == param_counts(p.config)
    assert p.flops_per_token == flops_per_token(p.config, 32, causal=True)  # the causal count: the default
    assert p.flops_by_count["chinchilla"] == flops_per_token(p.config, 32)


def test_plan_budget_kinds_and_presets():
    study = study_from_dict(spec(sizes=["tiny"], budgets={"tokens_per_param": [1, 2]},
                                 archs={"transformer": "transformer", "mamba2": "mamba2"}))
    points = plan(study)
    t = points[0]
    assert t.config == ModelConfig.from_preset("transformer", "tiny")
    assert points[1].config == ModelConfig.from_preset("mamba2", "tiny")  # 2x depth by the same rule
    # a preset at a preset size is the preset, matched depth included (Mamba-1 tiny: 3 layers,
    # not 2 x 2); at a custom size the preset's MLP rule carries over
    study = study_from_dict(spec(sizes=["tiny", {"name": "c", "d_model": 32, "n_layers": 2, "n_heads": 2}],
                                 archs={"mamba": "mamba", "m2h": "mamba2-hybrid"}))
    by_name = {p.name: p for p in plan(study)}
    assert by_name["mamba-tiny-s0"].config == ModelConfig.from_preset("mamba", "tiny", vocab_size=256)
    assert by_name["mamba-tiny-s0"].config.n_layers == 3
    assert by_name["m2h-c-s0"].config.mlp is True and by_name["m2h-c-s0"].config.n_layers == 2
    assert t.runs[0].steps == round(2 * t.N / 128) and t.runs[1].steps == round(t.N / 128)
    C = flops_per_token(t.config, 32, causal=True) * 4096  # budgets.count: causal (the default)
    study = study_from_dict(spec(sizes=["tiny"], budgets={"flops": [C, C / 4]},
                                 archs={"transformer": "transformer"}))
    runs = plan(study)[0].runs
    assert [r.steps for r in runs] == [32, 8]  # D = C / (the arch's FLOPs per token)
    assert [r.budget_flops for r in runs] == [C, C / 4]


def test_plan_hybrid_and_overrides():
    study = study_from_dict(spec(archs={
        "hybrid": {"pattern": ["mamba2", "mamba2", "mamba2", "attn"], "layer_multiplier": 2},
        "gla": {"preset": "gla", "mixers": {"gla": {"n_heads": 2}}},
    }, sizes=[{"name": "a", "d_model": 32, "n_layers": 2, "n_heads": 2,
               "mixers": {"mamba2": {"d_state": 8, "head_dim": 16}},
               "overrides": {"gla": {"n_layers": 5}}}]))
    hybrid, gla = plan(study)
    assert hybrid.config.layer_mixers == ["mamba2", "mamba2", "mamba2", "attn"]
    assert hybrid.config.mixers == {"attn": {"n_heads": 2}, "mamba2": {"d_state": 8, "head_dim": 16}}
    assert gla.config.n_layers == 5 and gla.config.mixers["gla"]["n_heads"] == 2


def test_plan_refuses_budgets_too_close_and_cosine_runs_each_budget():
    # an 8-step budget cannot branch off a run whose warmup lasts 10 steps
    with pytest.raises(StudyError, match="8-step budget .* not longer than the warmup"):
        plan(study_from_dict(spec(model={"warmup_steps": 10})))
    with pytest.raises(StudyError, match="round to the same number of steps"):
        plan(study_from_dict(spec(budgets={"tokens": [1000, 1024]})))
    study = study_from_dict(spec(model={"schedule": "cosine", "warmup_steps": 2}))
    assert not study.cooldowns
    runs = plan(study)[0].runs
    assert [(r.kind, r.steps, r.start_step, r.branch_ckpt) for r in runs] == [
        ("final", 16, 0, None), ("final", 8, 0, None)]
    assert runs[1].run_dir == "runs/transformer-a-s0/budget-1024" and runs[0].save_at == []


# ---- wsd cooldowns ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_cooldown_equals_standalone_wsd_run(tmp_path):
    """A cooldown resumed from the main run's stable checkpoint ends with exactly the weights
    of a standalone wsd run of the smaller budget (same LR at every step, same data)."""
    base = {
        "seed_everything": 0,
        "model": {"config": {"d_model": 32, "n_layers": 2, "pattern": ["mamba2", "attn"],
                             "mixers": {"mamba2": {"d_state": 8, "head_dim": 16}, "attn": {"n_heads": 2}}},
                  "lr": 3e-3, "warmup_steps": 2, "schedule": "wsd", "decay_fraction": 0.25},
        "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "check_val_every_n_epoch": None, "val_check_interval": 100, "limit_val_batches": 1,
                    "gradient_clip_val": 1.0, "num_sanity_val_steps": 0},
    }

    def fit(name, steps, extra=(), callbacks=None):
        cfg = copy.deepcopy(base)
        cfg["trainer"]["max_steps"] = steps
        if callbacks:
            cfg["trainer"]["callbacks"] = callbacks
        path = write_study(tmp_path / f"{name}.yaml", cfg)
        return lightning_main(["fit", "--config", str(path), "--trainer.default_root_dir",
                               str(tmp_path / name), *QUIET, *extra])

    # main run of 12 steps (decays from step 9); the 8-step budget decays from step 6
    fit("main", 12, callbacks=[{"class_path": "postformer.train.callbacks.SaveAtSteps",
                                "init_args": {"steps": [6], "dirpath": str(tmp_path / "main" / "ckpt")}}])
    cool = fit("cool", 8, ["--ckpt_path", str(tmp_path / "main" / "ckpt" / "step-6.ckpt")])
    solo = fit("solo", 8)
    assert cool.trainer.global_step == solo.trainer.global_step == 8
    a, b = cool.model.state_dict(), solo.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    lr = lambda run: {int(r["step"]): float(r["train/lr"]) for r in results_mod.read_metrics(tmp_path / run)
                      if r.get("train/lr")}
    solo_lr, cool_lr = lr("solo"), lr("cool")
    assert sorted(cool_lr) == [6, 7]  # the cooldown trained the decay only
    for step, value in cool_lr.items():
        assert value == pytest.approx(solo_lr[step])  # the schedule of a standalone 8-step run
    assert cool_lr[6] < 3e-3


# ---- the runner, end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    study = write_study(root / "micro.yaml", MICRO)
    out = root / "out"
    rows = run_study(study, out)
    return study, out, rows


def test_micro_study_end_to_end(micro_study):
    _, out, rows = micro_study
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == len(rows) == 8
    assert sorted(df["kind"]) == ["cooldown"] * 4 + ["final"] * 4
    assert set(df["arch"]) == {"transformer", "mamba2"} and set(df["size"]) == {"a", "b"}
    assert (df["D"] == df["steps"] * 4 * 32).all()
    assert sorted(set(df["D"])) == [1024, 2048]
    assert (df["C_6ND"] == 6 * df["N"] * df["D"]).all()
    assert (df["C"] > 0).all() and (df["N"] > df["N_non_emb"]).all()
    assert df["loss"].map(math.isfinite).all() and (df["loss"] < math.log(256) + 0.5).all()
    assert (df["bpb"] > 0).all() and (df["wall_s"] > 0).all() and (df["tokens_per_s"] > 0).all()
    for row in df.itertuples():
        run = out / row.run_dir
        assert (run / "fit.yaml").is_file() and (run / "result.json").is_file()
        cfg = ModelConfig(**json.loads((run / "run.json").read_text())["model_config"])
        assert row.C == pytest.approx(flops_per_token(cfg, 32, causal=True) * row.D)
        assert row.C_causal == row.C and row.C_full == pytest.approx(flops_per_token(cfg, 32) * row.D)
    # each cooldown and its main run: same N, less data, higher loss
    for _, g in df.groupby(["arch", "size"]):
        final, cool = g[g.kind == "final"].iloc[0], g[g.kind == "cooldown"].iloc[0]
        assert cool.N == final.N and cool.D < final.D and cool.loss > final.loss
        assert cool.run_dir.startswith(final.run_dir + "/cooldown-")
    spec_back = yaml.safe_load((out / "study.yaml").read_text())
    assert spec_back["baseline"] == "transformer" and spec_back["model"]["schedule"] == "wsd"
    assert collect(out).equals(df.astype(collect(out).dtypes.to_dict()))


def test_second_run_skips_everything(micro_study, capsys, monkeypatch):
    study, out, _ = micro_study
    import postformer.train.cli as train_cli

    monkeypatch.setattr(train_cli, "lightning_main", lambda args: pytest.fail(f"trained again: {args}"))
    rows = run_study(study, out)
    assert len(rows) == 8
    log = capsys.readouterr().out
    assert "8 runs (8 finished already)" in log
    # --list prints nothing left to do
    assert run_study(study, out, list_only=True) == []


def test_parallel_jobs_give_the_same_results(micro_study, tmp_path, capsys):
    """--jobs 2: two worker processes, cooldowns after their main runs; every run ends where
    the in-process study's did (one thread per run in both)."""
    study, ref_out, _ = micro_study
    out = tmp_path / "par"
    assert main(["study", str(study), "--out", str(out), "--jobs", "2", "--no-report"]) == 0
    assert "2 at a time" in capsys.readouterr().out
    got = pd.read_csv(out / "results.csv").sort_values("run_dir").reset_index(drop=True)
    ref = pd.read_csv(ref_out / "results.csv").sort_values("run_dir").reset_index(drop=True)
    assert list(got["run_dir"]) == list(ref["run_dir"])
    assert got["loss"].to_numpy() == pytest.approx(ref["loss"].to_numpy(), abs=1e-5)


def test_list_prints_fit_commands(tmp_path, capsys):
    study = write_study(tmp_path / "micro.yaml", MICRO)
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    mains, cools = lines[:4], lines[4:]
    assert all(line.startswith("postformer fit --config ") and "--ckpt_path" not in line for line in mains)
    assert all("/cooldown-1024/fit.yaml --ckpt_path " in line and "checkpoints/stable-6.ckpt" in line
               for line in cools)
    fit_yaml = out / "runs" / "mamba2-b-s0" / "fit.yaml"
    cfg = yaml.safe_load(fit_yaml.read_text())
    assert cfg["trainer"]["max_steps"] == 16 and cfg["trainer"]["default_root_dir"] == str(fit_yaml.parent.resolve())
    by_class = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in cfg["trainer"]["callbacks"]}
    assert by_class["SaveAtSteps"]["steps"] == [6] and by_class["EvalAtSteps"]["steps"] == [6, 8, 16]
    assert cfg["trainer"]["limit_val_batches"] == 0 and cfg["data"]["val_tokens"] == 256
    assert cfg["model"]["schedule"] == "wsd" and cfg["model"]["config"]["n_layers"] == 4


def test_interrupted_point_is_resumed(micro_study, tmp_path, capsys):
    """A main run stopped early (no result.json) resumes from its last.ckpt and ends where an
    uninterrupted run ends."""
    _, ref_out, _ = micro_study
    one = spec(archs={"transformer": "transformer"}, sizes=[MICRO["sizes"][1]],
               checkpoint={"every_n_train_steps": 4})
    study = write_study(tmp_path / "one.yaml", one)
    out = tmp_path / "out"
    run_study(study, out, list_only=True)
    run = out / "runs" / "transformer-b-s0"
    cfg = yaml.safe_load((run / "fit.yaml").read_text())
    cfg["trainer"]["callbacks"].append(
        {"class_path": "postformer.train.callbacks.StopAtStep", "init_args": {"stop_at": 4}})
    write_study(run / "fit.yaml", cfg)
    lightning_main(["fit", "--config", str(run / "fit.yaml")])
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "result.json").exists()
    assert collect(out).empty
    capsys.readouterr()
    run_study(study, out)
    log = capsys.readouterr().out
    assert "resuming runs/transformer-b-s0 from its checkpoints/last.ckpt" in log
    df = pd.read_csv(out / "results.csv")
    ref = pd.read_csv(ref_out / "results.csv")
    ref = ref[(ref.arch == "transformer") & (ref["size"] == "b")]
    merged = df.merge(ref, on=["kind", "D"], suffixes=("", "_ref"))
    assert len(merged) == 2
    assert merged["loss"].to_numpy() == pytest.approx(merged["loss_ref"].to_numpy(), abs=1e-5)
    steps = sorted(int(r["step"]) for r in results_mod.read_metrics(run) if r.get("train/loss"))
    assert steps == list(range(16))  # the history continues across the restart


def test_a_start_that_saved_no_checkpoint_is_trained_afresh(tmp_path):
    """A main run killed before its first last.ckpt left metrics.csv: the study starts it
    afresh (`postformer fit --overwrite`), since a plain fresh fit refuses a used folder."""
    one = spec(archs={"transformer": "transformer"}, sizes=[MICRO["sizes"][0]],
               budgets={"tokens": [2048]})
    study = write_study(tmp_path / "one.yaml", one)
    out = tmp_path / "out"
    commands = run_study(study, out, list_only=True)
    assert "--overwrite" not in commands[0]
    run = out / "runs" / "transformer-a-s0"
    (run / "metrics.csv").write_text("train/loss,step\n5.5,0\n5.4,1\n")
    assert run_study(study, out, list_only=True)[0].endswith(" --overwrite")
    rows = run_study(study, out)
    assert len(rows) == 1
    steps = sorted(int(r["step"]) for r in results_mod.read_metrics(run) if r.get("train/loss"))
    assert steps == list(range(16))


@pytest.mark.parametrize(("model", "why"), [
    ({"lr": -1.0}, "postformer fit exited 2"),  # refused by `postformer fit`: a usage error
    ({"betas": [2.0, 0.95]}, "ValueError: Invalid beta parameter"),  # raised while training
])
def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys, model, why):
    one = spec(archs={"broken": {"preset": "transformer", "model": model},
                      "transformer": "transformer"},
               sizes=[MICRO["sizes"][0]], budgets={"tokens": [2048]})
    out = tmp_path / "out"
    assert main(["study", str(write_study(tmp_path / "one.yaml", one)), "--out", str(out),
                 "--no-report"]) == 0
    log = capsys.readouterr().out
    assert f"broken-a-s0 (D=2.05K tokens): FAILED: {why}" in log
    assert "transformer-a-s0 (D=2.05K tokens): loss" in log
    assert "not finished: broken-a-s0" in log
    assert list(pd.read_csv(out / "results.csv")["arch"]) == ["transformer"]


def test_stale_run_folder_is_refused(micro_study, tmp_path):
    study, out, _ = micro_study
    changed = write_study(tmp_path / "changed.yaml", spec(model={**MICRO["model"], "lr": 1e-3}))
    with pytest.raises(StudyError, match="holds a different run"):
        run_study(changed, out, list_only=True)


def test_refused_study_changes_nothing(micro_study, tmp_path, capsys):
    """A study refused for a changed spec (a run folder holds another run) leaves DIR as it
    was: study.yaml, scope.json, every fit.yaml and run.json stay the trained runs', so a
    later report or --list does not use the rejected spec."""
    study, out, _ = micro_study
    files = [out / "study.yaml", out / "scope.json", *sorted(out.rglob("fit.yaml")),
             *sorted(out.rglob("run.json"))]
    before = {p: p.read_text() for p in files}
    changed = write_study(tmp_path / "changed.yaml", spec(model={**MICRO["model"], "lr": 1e-3}))
    for extra in ([], ["--list"]):
        with pytest.raises(SystemExit) as exc:
            main(["study", str(changed), "--out", str(out), "--no-report", *extra])
        assert exc.value.code == 2
        assert "holds a different run" in capsys.readouterr().err
        assert {p: p.read_text() for p in files} == before


def test_ctrl_c_in_a_study_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a run trains: exit 130 and one line saying the same command resumes
    (Lightning alone would exit 1 without a word, and ignore Ctrl-C from then on)."""
    (tmp_path / "ctrl_c.py").write_text(
        "import lightning as L\n"
        "class CtrlC(L.Callback):\n"
        "    def on_train_batch_end(self, trainer, *args):\n"
        "        if trainer.global_step >= 2:\n"
        "            raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one = spec(archs={"transformer": "transformer"}, sizes=[MICRO["sizes"][0]],
               trainer={**MICRO["trainer"], "callbacks": [{"class_path": "ctrl_c.CtrlC"}]})
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exc:
        main(["study", str(write_study(tmp_path / "one.yaml", one)), "--out",
              str(tmp_path / "out"), "--no-report"])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted; the same command resumes"
    assert signal.getsignal(signal.SIGINT) is handler


def test_results_csv_is_written_atomically(micro_study, monkeypatch):
    _, out, _ = micro_study
    before = (out / "results.csv").read_text()
    calls = []
    real_replace = os.replace

    def failing_replace(src, dst):
        calls.append((Path(src), Path(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_results(out)
    assert (out / "results.csv").read_text() == before  # the old file is intact
    (src, dst), = calls
    assert dst == out / "results.csv" and src.parent == out and src.name.startswith(".results.csv.")
    assert not src.exists()  # no temp file left behind
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert write_results(out).read_text() == before


def test_cli_registers_study_and_report(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "study" in out and "report" in out
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "--list" in capsys.readouterr().out


# ---- the protocol: ladder, IsoFLOP groups, seeds, LR tuning ----------------------------

ISO = {
    "name": "iso",
    "archs": {"transformer": "transformer", "mamba2": "mamba2", "gla": "gla",
              "hybrid": {"preset": "gdn-hybrid", "match_params": True}},
    "ladder": {"knob": "width", "d_model": [16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128],
               "n_layers": 4, "head_dim": 16, "d_state": 16},
    "budgets": {"flops": [4e11, 1.6e12], "sizes": 5},
    "tune": {"lr": {"center": 3e-3, "points": 5, "factor": 2}, "sizes": 2},
    "seeds": [0],
    "headline_seeds": {"seeds": [1, 2]},
    "data": {"seq_len": 64, "batch_size": 2, "max_bytes": 150_000},
    "trainer": {"accelerator": "cpu"},
}


@pytest.fixture(scope="module")
def iso():
    study = study_from_dict(copy.deepcopy(ISO), source="iso.yaml")
    return study, plan(study, {})


def test_ladder_keeps_heads_sensible():
    sizes = ladder_sizes("x", {"knob": "width", "d_model": list(range(32, 520, 8)), "head_dim": 16})
    for size in sizes:
        d, m = size["d_model"], size["mixers"]
        assert d // m["attn"]["n_heads"] >= 16 and (d // m["attn"]["n_heads"]) % 2 == 0
        assert m["mamba2"]["head_dim"] >= 16 and (2 * d) % m["mamba2"]["head_dim"] == 0
        gla_key = (d // 2) // m["gla"]["n_heads"]
        assert gla_key >= 32 or (d // 2 < 64 and m["gla"]["n_heads"] == 1)
        assert m["gdn"]["head_dim"] >= 32 or m["gdn"]["n_heads"] == 1
        for arch in ("transformer", "mamba2", "gla", "gdn", "gdn-hybrid"):
            cfg = dict(PRESETS[arch]["small"], d_model=d, n_layers=4, mixers={
                k: v for k, v in m.items() if k in PRESETS[arch]["small"]["pattern"]})
            cfg.pop("d_ff", None)
            ModelConfig(**cfg)  # builds
    deep = ladder_sizes("x", {"knob": "depth", "n_layers": [2, 4, 8], "aspect_ratio": 16})
    assert [(s["d_model"], s["n_layers"]) for s in deep] == [(32, 2), (64, 4), (128, 8)]
    with pytest.raises(StudyError, match="ladder: with knob depth give d_model"):
        ladder_sizes("x", {"knob": "depth", "n_layers": [2, 4]})


def test_isoflop_groups_have_equal_compute(iso):
    study, points = iso
    tps = study.tokens_per_step
    lo, hi = study.tpp_range
    for arch in study.archs:
        groups: dict[float, list] = {}
        for p in points:
            if p.arch != arch or p.seed != 0:
                continue
            fpt = flops_per_token(p.config, 64, causal=True)  # independent of the plan's own number
            for r in p.runs:
                groups.setdefault(r.budget_flops, []).append((p.N, r.steps * tps * fpt, r.tokens))
        assert sorted(groups) == study.budgets
        for C, members in groups.items():
            assert len(members) == 5, (arch, C)
            for N, actual, D in members:
                assert abs(actual / C - 1) <= 0.02
                assert lo * 0.98 <= D / N <= hi * 1.02
            Ns = sorted(m[0] for m in members)
            assert len(set(Ns)) == 5 and Ns[-1] / Ns[0] > 3  # spread over the window


def test_sizes_shared_by_budgets_are_one_trajectory(iso):
    study, points = iso
    shared = [p for p in points if p.seed == 0 and len(p.runs) == 2]
    assert shared, "no size belongs to both budgets"
    for p in shared:
        main_run, cool = p.runs
        assert (main_run.kind, cool.kind) == ("final", "cooldown")
        assert main_run.budget_flops == max(study.budgets) and cool.budget_flops == min(study.budgets)
        assert cool.start_step in main_run.save_at and cool.start_step in main_run.eval_at
    names = [p.name for p in points]
    assert len(set(names)) == len(names)


def test_headline_seeds_at_the_middle_size_of_each_group(iso):
    study, points = iso
    for arch in study.archs:
        groups = isoflop_sizes(study, arch)
        extra = [p for p in points if p.arch == arch and p.seed in (1, 2)]
        expect = {(names[2], C) for C, names in groups.items()}
        got = {(p.size, r.budget_flops) for p in extra for r in p.runs}
        assert got == expect
        assert sorted(p.seed for p in extra) == sorted([1, 2] * len({s for s, _ in expect}))


def test_match_params_within_five_percent(iso):
    study, points = iso
    from postformer.arch import LanguageModel

    for size in study.sizes:
        base = study.model_config("transformer", size["name"])
        hyb = study.model_config("hybrid", size["name"])
        n_base = LanguageModel(base).num_params()
        n_hyb = LanguageModel(hyb).num_params()
        assert abs(n_hyb / n_base - 1) <= 0.05, (size["name"], n_base, n_hyb)
        assert hyb.layer_mixers == ["gdn", "gdn", "gdn", "attn"]


def test_warmup_is_a_share_of_the_shortest_run(iso):
    study, points = iso
    for p in points:
        assert p.warmup_steps == max(1, int(0.05 * min(r.steps for r in p.runs)))


def test_tuning_plan_and_its_one_time_extension(iso):
    study, _ = iso
    tune = plan_tune(study)
    grid = study.tune["grid"]
    assert grid == pytest.approx([7.5e-4, 1.5e-3, 3e-3, 6e-3, 1.2e-2])
    by_arch = {}
    for p in tune:
        assert p.stage == "tune" and len(p.runs) == 1 and p.runs[0].budget_flops is None
        by_arch.setdefault(p.arch, set()).add((p.size, p.lr))
    assert set(by_arch) == set(study.archs)
    sizes = tune_sizes(study, "mamba2")
    assert len(sizes) == 2 and by_arch["mamba2"] == {(s, lr) for s in sizes for lr in grid}
    # the tuning budget is the smallest FLOP budget
    p = tune[0]
    assert p.runs[0].tokens * p.flops_per_token == pytest.approx(min(study.budgets), rel=0.02)
    # a sweep whose best LR is the largest of the grid grows two steps that way, once
    s0 = sizes[0]
    finished = {("mamba2", s0, lr): 3.0 - lr for lr in grid}
    more = {(p.size, p.lr) for p in plan_tune(study, finished) if p.arch == "mamba2"}
    added = sorted(more - by_arch["mamba2"], key=lambda x: x[1])
    assert [s for s, _ in added] == [s0, s0]
    assert [lr for _, lr in added] == pytest.approx([2.4e-2, 4.8e-2])
    assert extension_lrs(grid, 2.0, {lr: (lr - 3e-3) ** 2 for lr in grid}) == []
    assert extension_lrs(grid, 2.0, {lr: lr for lr in grid}) == pytest.approx([3.75e-4, 1.875e-4])
    assert extension_lrs(grid, 2.0, {lr: lr for lr in grid[:3]}) == []  # unfinished sweep


def _fake_train(calls):
    """A stand-in for training: writes the metrics a finished run leaves, with a loss that
    depends on N, D and the LR (best LR = 0.05 * (N / 1e4)^-0.5, above the tuning grid)."""

    def train(out, run):
        run_dir = out / run.run_dir
        info = json.loads((run_dir / "run.json").read_text())
        calls.append((run.run_dir, info["lr"]))
        N, D, lr = info["N"], info["tokens"], info["lr"]
        best = 0.05 * (N / 1e4) ** -0.5
        loss = 1.5 + 30 / N ** 0.3 + 30 / D ** 0.3 + 0.05 * math.log(lr / best) ** 2
        (run_dir / "metrics.csv").write_text(
            f"step,val/loss,val/bpb,train/tokens_per_sec\n{run.steps - 1},{loss},{loss / math.log(2)},1000\n")
        for s in run.save_at:
            ck = run_dir / "checkpoints" / f"stable-{s}.ckpt"
            ck.parent.mkdir(parents=True, exist_ok=True)
            ck.write_text("")
        return SimpleNamespace(trainer=SimpleNamespace(global_step=run.steps)), 1.0

    return train


def test_runner_stages_tuning_extension_and_main_grid(tmp_path, monkeypatch, capsys):
    import postformer.scaling.run.training as training

    calls = []
    monkeypatch.setattr(training, "train_run", _fake_train(calls))
    spec_ = copy.deepcopy(ISO)
    spec_["archs"] = {"transformer": "transformer", "mamba2": "mamba2"}
    spec_["headline_seeds"] = {"seeds": [1]}
    path = write_study(tmp_path / "iso.yaml", spec_)
    rows = run_study(path, tmp_path / "out")
    df = pd.DataFrame(rows)
    tune, main_rows = df[df["stage"] == "tune"], df[df["stage"] == "main"]
    study = load_study(path)
    grid = study.tune["grid"]
    # every sweep's best LR was the grid's largest: each grew by two LRs (7 per size)
    assert (tune.groupby(["arch", "size"])["lr"].nunique() == 7).all()
    assert tune["lr"].max() == pytest.approx(grid[-1] * 4)
    # main runs use the LR law fitted to the tuned optima
    sweeps = lr_sweeps(tune)
    for r in main_rows.itertuples():
        assert r.lr == pytest.approx(sweeps[r.arch].lr_for(r.N), rel=1e-9)
    assert set(main_rows["budget_flops"]) == set(study.budgets)
    assert main_rows["trajectory"].str.startswith("runs/").all()
    n_runs = len(calls)
    assert n_runs == len(df)
    # nothing left: a second call trains nothing and the tuned LRs are stable
    run_study(path, tmp_path / "out")
    assert len(calls) == n_runs
    log = capsys.readouterr().out
    assert "LR tuning" in log and "main grid" in log
    scope = json.loads((tmp_path / "out" / "scope.json").read_text())
    assert scope["validation"]["tokens"] > 0 and "tuned per arch" in scope["lr_protocol"]


def test_list_waits_for_the_tuning_stage(tmp_path, capsys):
    path = write_study(tmp_path / "iso.yaml", ISO)
    commands = run_study(path, tmp_path / "out", list_only=True)
    assert commands and all("/tune/" in c for c in commands)
    assert "the main grid follows the tuning stage" in capsys.readouterr().err


def test_plan_prints_every_run_with_n_d_c_and_time(capsys):
    study = study_from_dict(copy.deepcopy(ISO), source="iso.yaml")
    totals = print_plan(study, probe=False)
    out = capsys.readouterr().out
    n_runs = sum(len(p.runs) for p in plan_tune(study) + plan(study, {}))
    assert len([line for line in out.splitlines() if line.startswith(("tune ", "main "))]) == n_runs
    assert "assumed" in out and totals["main"] > 0 and totals["tune"] > 0
    # a measured probe on this machine (tiny models: a few seconds)
    micro = study_from_dict(spec(), source="micro.yaml")
    print_plan(micro, probe=True)
    out = capsys.readouterr().out
    assert "measured on CPU" in out and "total:" in out


def test_gpu_study_plans_gpu_hours_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("measures instead on a GPU machine")
    study = load_study(REPO / "configs" / "study" / "gpu-1h.yaml")
    totals = print_plan(study, probe=True)
    out = capsys.readouterr().out
    assert "GPU-hours" in out and "assumed 20%" in out
    assert 0.5 * 3600 < totals["tune"] + totals["main"] < 1.5 * 3600  # about an hour


@pytest.mark.parametrize("name", ["smoke.yaml", "default.yaml", "null.yaml", "gpu-1h.yaml", "gpu-125m-1.3b.yaml"])
def test_shipped_study_configs_plan(name):
    study = load_study(REPO / "configs" / "study" / name)
    points = plan(study, {})
    assert study.isoflop and study.tune is not None
    assert {p.arch for p in points} >= ({"transformer"} if name == "null.yaml" else {"transformer", "mamba2"})
    assert len(study.budgets) >= 2
    if name != "smoke.yaml":
        assert study.seq_len >= 256 and len(study.budgets) >= 3
        assert len(study.seeds) + len(study.headline_seeds) >= 3
    if name in ("default.yaml", "null.yaml"):
        # issue 25: attention at most 40% of the baseline's (causal) FLOPs at its middle size;
        # the LR tuned at 3+ sizes spanning 4x in N, at a budget of the main grid
        from postformer.arch.flops import flops_breakdown

        shapes = study.shapes[study.baseline]
        used = sorted({p.size for p in points if p.arch == study.baseline}, key=study.size_names.index)
        mid = study.shape(study.baseline, used[len(used) // 2])
        parts = flops_breakdown(mid.config, study.seq_len, causal=True)
        assert parts["attention"] / sum(parts.values()) <= 0.40
        tuned = [study.shape(study.baseline, s).N for s in tune_sizes(study, study.baseline)]
        assert len(tuned) >= 3 and max(tuned) / min(tuned) >= 4
        assert study.tune["flops"] in study.budgets and len(shapes) >= 8
    if name == "default.yaml":
        assert set(study.archs) >= {"transformer", "mamba2", "gdn", "hybrid"}
        assert study.tune["check"] == [0.5, 2]
    if name.startswith("gpu"):
        assert study.seq_len == 2048 and "bf16" in str(study.trainer.get("precision"))


# ---- postformer compare: a one-size study ------------------------------------------------


def test_compare_is_a_one_size_study(tmp_path, capsys):
    configs = []
    for arch in ("transformer", "mamba2"):
        cfg = yaml.safe_load((REPO / "configs" / "smoke" / f"{arch}.yaml").read_text())
        cfg["model"]["config"].update(d_model=32, n_layers=2)
        cfg["model"]["config"]["mixers"] = {"attn": {"n_heads": 2}, "mamba2": {"d_state": 8, "head_dim": 16}}
        cfg["data"].update(max_bytes=150_000, seq_len=32, batch_size=4)
        configs.append(str(write_study(tmp_path / f"{arch}.yaml", cfg)))
    out = tmp_path / "cmp"
    assert main(["compare", *configs, "--out", str(out), "--max_steps", "6"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["arch"]) == ["mamba2", "transformer"] and (df["steps"] == 6).all()
    assert (out / "report.json").is_file()
    printed = capsys.readouterr().out
    assert "transformer" in printed and "mamba2" in printed and "loss" in printed
    # a second call reuses the finished runs
    assert main(["compare", *configs, "--out", str(out), "--max_steps", "6"]) == 0
    assert "finished already" in capsys.readouterr().out
    bad = yaml.safe_load(Path(configs[1]).read_text())
    bad["data"]["seq_len"] = 64
    other = write_study(tmp_path / "other.yaml", bad)
    with pytest.raises(SystemExit):
        main(["compare", configs[0], str(other), "--out", str(tmp_path / "x")])
    assert "data section differs" in capsys.readouterr().err


# ---- the shipped smoke study, end to end (CI runs it) -----------------------------------


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    """configs/study/smoke.yaml through every stage: LR sweeps (with any edge extension), two
    IsoFLOP budgets, extra seeds at the middle size, validation curves, report.json."""
    out = tmp_path / "smoke"
    rows = run_study(REPO / "configs" / "study" / "smoke.yaml", out, report=write_report)
    df = pd.DataFrame(rows)
    study = load_study(REPO / "configs" / "study" / "smoke.yaml")
    assert set(df["stage"]) == {"tune", "main"}
    tune = df[df["stage"] == "tune"]
    assert (tune.groupby(["arch", "size"])["lr"].nunique() >= 5).all()
    main_rows = df[df["stage"] == "main"]
    assert sorted(set(main_rows["budget_flops"])) == study.budgets
    assert set(main_rows["seed"]) == {0, 1}
    assert main_rows["loss"].map(math.isfinite).all()
    curves = pd.read_csv(out / "curves.csv")
    per_run = curves[curves["kind"] == "final"].groupby("run_dir")["step"].nunique()
    assert (per_run >= 5).all()  # a loss curve for every main and tuning run
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "transformer" and isinstance(report["warnings"], list)
    for arch in ("transformer", "mamba2"):
        entry = report["archs"][arch]
        assert set(entry) >= {"efficiency", "exponent_differs", "loss_gap", "lr"}
        assert set(entry["efficiency"]) == {"estimate", "low", "high"}
        assert entry["lr"]["grid"] and isinstance(entry["lr"]["interior"], bool)
    assert report["archs"]["transformer"]["efficiency"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    assert [g["flops"] for g in report["archs"]["mamba2"]["loss_gap"]] == study.budgets
    for name in ("report.md", "report.html", "scope.json", "results.csv"):
        assert (out / name).is_file()
