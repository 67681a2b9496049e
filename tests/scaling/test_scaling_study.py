"""The scaling-study harness: spec validation, the plan, wsd cooldowns, the runner end to end."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from postformer.arch import ModelConfig
from postformer.arch.flops import flops_per_token, param_counts
from postformer.cli import main
from postformer.scaling import results as results_mod
from postformer.scaling.results import COLUMNS, collect, write_results
from postformer.scaling.runner import run_study
from postformer.scaling.study import StudyError, load_study, plan, study_from_dict
from postformer.train import fileio
from postformer.train.cli import lightning_main

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# 2 archs x 2 sizes x 2 budgets (16 and 8 steps of 4 x 32 tokens): 4 main runs, 4 cooldowns.
MICRO = {
    "name": "micro",
    "archs": {"transformer": "transformer", "mamba2": "mamba2"},
    "sizes": [
        {"name": "a", "d_model": 32, "n_layers": 1, "n_heads": 2, "mixers": {"mamba2": {"d_state": 8, "headdim": 16}}},
        {"name": "b", "d_model": 48, "n_layers": 2, "n_heads": 2, "mixers": {"mamba2": {"d_state": 8, "headdim": 16}}},
    ],
    "budgets": {"tokens": [1024, 2048]},
    "model": {"lr": 3e-3, "warmup_steps": 2, "decay_fraction": 0.25},
    "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
    "trainer": {"accelerator": "cpu", "limit_val_batches": 2, "log_every_n_steps": 1},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models train faster on one thread, and it keeps timings sane on a shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
        ({"archs": {"x": "mamba3"}}, r"archs.x: unknown arch 'mamba3'"),
        ({"archs": {}}, r"archs: must be a non-empty mapping"),
        ({"sizes": []}, r"sizes: must be a non-empty list"),
        ({"sizes": ["huge"]}, r"sizes\[0\]: unknown size 'huge'"),
        ({"sizes": [{"name": "a", "d_model": 32}]}, r"sizes\[0\]: missing 'n_layers'"),
        ({"budgets": {"tokens": []}}, r"budgets.tokens: must be a non-empty list"),
        ({"budgets": {"tokens": [1], "flops": [1]}}, r"budgets: give exactly one of"),
        ({"budgets": {"steps": [1]}}, r"unknown budget kind 'steps'"),
        ({"budgets": {"tokens": [-5]}}, r"budgets must be positive"),
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
    assert cool.run_dir == "runs/transformer-a-s0/cooldown-1024"
    # shapes: mamba2 has no MLP, so twice the layers; N from the model itself
    m = points[4]
    assert m.config.n_layers == 2 and m.config.pattern == ["mamba2"] and m.config.mixers["mamba2"]["d_state"] == 8
    assert p.config.n_layers == 1 and p.config.mixers["attn"]["n_heads"] == 2
    assert (p.N, p.N_non_emb) == param_counts(p.config)
    assert p.flops_per_token == flops_per_token(p.config, 32)


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
    assert t.runs[0].steps == math.ceil(2 * t.N / 128) and t.runs[1].steps == math.ceil(t.N / 128)
    C = 6 * t.N * 4096
    study = study_from_dict(spec(sizes=["tiny"], budgets={"flops": [C, C / 4]}))
    steps = [r.steps for r in plan(study)[0].runs]
    assert steps == [32, 8]  # D = C / (6 N): 4096 and 1024 tokens


def test_plan_hybrid_and_overrides():
    study = study_from_dict(spec(archs={
        "hybrid": {"pattern": ["mamba2", "mamba2", "mamba2", "attn"], "layer_multiplier": 2},
        "gla": {"preset": "gla", "mixers": {"gla": {"n_heads": 2}}},
    }, sizes=[{"name": "a", "d_model": 32, "n_layers": 2, "n_heads": 2,
               "mixers": {"mamba2": {"d_state": 8, "headdim": 16}},
               "overrides": {"gla": {"n_layers": 5}}}]))
    hybrid, gla = plan(study)
    assert hybrid.config.layer_mixers == ["mamba2", "mamba2", "mamba2", "attn"]
    assert hybrid.config.mixers == {"attn": {"n_heads": 2}, "mamba2": {"d_state": 8, "headdim": 16}}
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
                             "mixers": {"mamba2": {"d_state": 8, "headdim": 16}, "attn": {"n_heads": 2}}},
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
    rows = run_study(study, out, report=False)
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
        assert row.C == pytest.approx(flops_per_token(cfg, 32) * row.D)
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
    rows = run_study(study, out, report=False)
    assert len(rows) == 8
    log = capsys.readouterr().out
    assert log.count("): finished already") == 8 and "(8 finished already)" in log
    # --list prints nothing left to do
    assert run_study(study, out, list_only=True) == []


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
    assert cfg["trainer"]["callbacks"][0]["init_args"]["steps"] == [6]
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
    run_study(study, out, report=False)
    log = capsys.readouterr().out
    assert "resuming from runs/transformer-b-s0/checkpoints/last.ckpt" in log
    df = pd.read_csv(out / "results.csv")
    ref = pd.read_csv(ref_out / "results.csv")
    ref = ref[(ref.arch == "transformer") & (ref["size"] == "b")]
    merged = df.merge(ref, on=["kind", "D"], suffixes=("", "_ref"))
    assert len(merged) == 2
    assert merged["loss"].to_numpy() == pytest.approx(merged["loss_ref"].to_numpy(), abs=1e-5)
    steps = sorted(int(r["step"]) for r in results_mod.read_metrics(run) if r.get("train/loss"))
    assert steps == list(range(16))  # the history continues across the restart


def test_stale_run_folder_is_refused(micro_study, tmp_path):
    study, out, _ = micro_study
    changed = write_study(tmp_path / "changed.yaml", spec(model={**MICRO["model"], "lr": 1e-3}))
    with pytest.raises(StudyError, match="holds a different run"):
        run_study(changed, out, list_only=True)


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


@pytest.mark.parametrize("name", ["smoke.yaml", "default.yaml", "gpu-125m-1.3b.yaml"])
def test_shipped_study_configs_plan(name):
    study = load_study(REPO / "configs" / "study" / name)
    points = plan(study)
    assert len(points) == len(study.archs) * len(study.sizes) * len(study.seeds)
    assert all(len(p.runs) == len(study.budgets) for p in points)
    assert {p.arch for p in points} >= {"transformer", "mamba2"}
