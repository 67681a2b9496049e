"""The run folder is the contract: metrics.csv live and kept across resumes, loggers added
beside it without moving anything, throughput and FLOPs from arch/flops.py."""

import csv
import math
from pathlib import Path

import pytest
import yaml
from tiny_fit import tiny_config

from postformer.arch import ModelConfig
from postformer.arch.flops import flops_per_token
from postformer.cli import main
from postformer.train.logger import RunLogger

TINY = tiny_config(trainer={"max_steps": 12, "val_check_interval": 12, "enable_progress_bar": False,
                           "gradient_clip_val": None},
                  checkpoint={"every_n_train_steps": 6})


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def fit(tmp_path: Path, run: Path, *extra: str, cfg: dict | None = None) -> None:
    p = tmp_path / "fit.yaml"
    p.write_text(yaml.safe_dump(cfg or TINY))
    main(["fit", "--config", str(p), "--trainer.default_root_dir", str(run), *extra])


def test_rows_are_on_disk_as_logged(tmp_path):
    log = RunLogger(str(tmp_path))
    log.log_metrics({"train/loss": 2.5}, step=0)
    assert rows_of(tmp_path / "metrics.csv") == [{"train/loss": "2.5", "step": "0"}]
    log.log_metrics({"train/loss": 2.0}, step=1)
    log.log_metrics({"val/loss": 1.5}, step=1)  # a new column rewrites the header
    rows = rows_of(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows] == [
        ("0", "2.5", ""), ("1", "2.0", ""), ("1", "", "1.5")]


def test_resume_merges_without_a_window_that_loses_rows(tmp_path):
    first = RunLogger(str(tmp_path))
    for s in range(6):
        first.log_metrics({"train/loss": 10.0 - s}, step=s)
    before = (tmp_path / "metrics.csv").read_text()
    resumed = RunLogger(str(tmp_path))  # a resume from the step-4 checkpoint
    resumed.log_hyperparams({"lr": 1e-3})
    # nothing is written over the old history until the merged file exists
    assert (tmp_path / "metrics.csv").read_text() == before
    resumed.log_metrics({"train/loss": 0.5}, step=4)
    resumed.log_metrics({"train/loss": 0.25}, step=5)
    rows = rows_of(tmp_path / "metrics.csv")
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [
        (0, 10.0), (1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5), (5, 0.25)]
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text()) == {"lr": 1e-3}
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_resumed_run_stopped_at_once_keeps_the_history(tmp_path, monkeypatch):
    """A resume that dies right after it starts (hyperparameters logged, no row yet) leaves
    metrics.csv as it was: the merge happens at the first new row, never before."""
    (tmp_path / "die.py").write_text(
        "import lightning as L\n"
        "class Die(L.Callback):\n"
        "    def on_train_batch_start(self, trainer, *args):\n"
        "        raise RuntimeError('killed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    with_callback = lambda cb: {**TINY, "trainer": {**TINY["trainer"], "callbacks": [cb]}}
    fit(tmp_path, run, cfg=with_callback({"class_path": "postformer.train.callbacks.StopAtStep",
                                          "init_args": {"stop_at": 6}}))
    before = (run / "metrics.csv").read_text()
    assert {int(r["step"]) for r in rows_of(run / "metrics.csv") if r.get("train/loss")} == set(range(6))
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path, run, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
            cfg=with_callback({"class_path": "die.Die"}))
    assert (run / "metrics.csv").read_text() == before


def test_an_added_logger_moves_nothing(tmp_path):
    run = tmp_path / "run"
    fit(tmp_path, run, "--trainer.logger+=lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path / "elsewhere"))
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert not (run / "lightning_logs").exists()
    steps = {int(r["step"]) for r in rows_of(run / "metrics.csv") if r.get("train/loss")}
    assert steps == set(range(12))
    # and the user's own logger wrote too
    assert list((tmp_path / "elsewhere").rglob("metrics.csv"))


def test_tensorboard_beside_the_csv(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    fit(tmp_path, run, "--track", "[tensorboard]")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "metrics.csv").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_unknown_tracker_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, tmp_path / "run", "--track", "[neptune]")
    assert exc.value.code == 2 and "neptune" in capsys.readouterr().err


def test_throughput_monitor_counts_arch_flops(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    fit(tmp_path, run, "--trainer.enable_model_summary", "true")
    rows = rows_of(run / "metrics.csv")
    pairs = [(float(r["train/device/items_per_sec"]), float(r["train/device/flops_per_sec"]))
             for r in rows if r.get("train/device/flops_per_sec")]
    assert pairs, "ThroughputMonitor logged no FLOPs/s"
    cfg = ModelConfig(d_model=32, n_layers=2, pattern=["attn"], mixers={"attn": {"n_heads": 2}})
    per_token = flops_per_token(cfg, 32)
    for items, flops in pairs:  # items are target tokens
        assert math.isclose(flops / items, per_token, rel_tol=1e-6)
    tps = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    assert len(tps) == 12 and all(t > 0 for t in tps)
    out = capsys.readouterr().out + caplog.text  # the summary goes to Lightning's logger
    # "Total Flops: 2.6 M" (ModelSummary), or "Total FLOPs: 2.6 M" (RichModelSummary, which
    # Lightning picks when `rich` is installed, as lm-eval and transformers bring it)
    total = [ln.strip() for ln in out.splitlines() if "total flops" in ln.lower()]
    assert total and not total[0].split(":")[-1].strip().startswith("0 "), total
