"""The `postformer` command in process: smoke configs, errors, exact resume, NaN guard, compare."""

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from postformer.cli import main
from postformer.train.callbacks import NonFiniteGuard, NonFiniteLossError, RunCheckpoint
from postformer.train.data import TextDataModule
from postformer.train.module import LMModule

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# A config tiny enough that a few steps take a second or two.
TINY = {
    "seed_everything": 0,
    "model": {
        "config": {"d_model": 32, "n_layers": 2, "pattern": ["attn"], "mixers": {"attn": {"n_heads": 2}}},
        "lr": 3e-3, "warmup_steps": 2,
    },
    "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
    "trainer": {
        "accelerator": "cpu", "devices": 1, "max_steps": 8, "log_every_n_steps": 1,
        "check_val_every_n_epoch": None, "val_check_interval": 100, "limit_val_batches": 2,
        "gradient_clip_val": 1.0,
    },
    "checkpoint": {"every_n_train_steps": 4},
}


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> dict[int, float]:
    return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "compare"):
        assert name in out
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


@pytest.mark.parametrize("arch", sorted(p.stem for p in SMOKE.glob("*.yaml")))
def test_smoke_config(arch, tmp_path):
    run = tmp_path / arch
    main(["fit", "--config", str(SMOKE / f"{arch}.yaml"), "--trainer.default_root_dir", str(run),
          "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", *QUIET])
    rows = read_metrics(run)
    losses = column(rows, "train/loss")
    assert sorted(losses) == [0, 1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    bpb = column(rows, "val/bpb")
    assert list(bpb) == [3] and 0 < bpb[3] < 10
    assert column(rows, "train/tokens_per_sec") and column(rows, "train/lr")
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "config.yaml").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    model = LMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.config.pattern == yaml.safe_load((SMOKE / f"{arch}.yaml").read_text())["model"]["config"]["pattern"]


def test_unknown_config_key(tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", TINY | {"model": TINY["model"] | {"lrr": 1.0}})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code != 0
    assert "lrr" in capsys.readouterr().err


def test_unknown_mixer(tmp_path, capsys):
    model = TINY["model"] | {"config": TINY["model"]["config"] | {"pattern": ["transfomer"]}}
    cfg = write_config(tmp_path / "bad.yaml", TINY | {"model": model})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "transfomer" in err and "mamba2" in err  # names the bad mixer and lists known ones


def test_missing_data_path(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", TINY | {"data": TINY["data"] | {"path": str(tmp_path / "nowhere")}})
    with pytest.raises(SystemExit):
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_exact_resume(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(straight), *QUIET])

    stop = TINY | {"trainer": TINY["trainer"] | {"callbacks": [
        {"class_path": "postformer.train.callbacks.StopAtStep", "init_args": {"stop_at": 4}}]}}
    main(["fit", "--config", write_config(tmp_path / "stop.yaml", stop),
          "--trainer.default_root_dir", str(halves), *QUIET])
    first = torch.load(halves / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(halves), *QUIET,
          "--ckpt_path", str(halves / "checkpoints" / "last.ckpt")])

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(halves / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for name, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][name], rtol=0, atol=1e-6), name
    loss_a, loss_b = column(read_metrics(straight), "train/loss"), column(read_metrics(halves), "train/loss")
    assert sorted(loss_b) == list(range(8))  # the resumed run appended steps 4..7
    for step in range(4, 8):
        assert loss_a[step] == pytest.approx(loss_b[step], abs=1e-6), step
    lr_a, lr_b = column(read_metrics(straight), "train/lr"), column(read_metrics(halves), "train/lr")
    assert all(lr_a[s] == pytest.approx(lr_b[s]) for s in range(8))


class NaNAtStep3(LMModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    module = NaNAtStep3(LMModule(**{"config": TINY["model"]["config"]}).config)
    ckpts = tmp_path / "checkpoints"
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
        callbacks=[NonFiniteGuard(), RunCheckpoint(dirpath=ckpts, every_n_train_steps=2,
                                                   save_last=True, save_top_k=0)],
    )
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        trainer.fit(module, datamodule=TextDataModule(**TINY["data"]))
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    restored = LMModule.load_from_checkpoint(ckpts / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_compare_two_configs(tmp_path, capsys):
    a = write_config(tmp_path / "attn.yaml", TINY)
    gla = TINY | {"model": TINY["model"] | {"config": {"d_model": 32, "n_layers": 2, "pattern": ["gla"]}}}
    b = write_config(tmp_path / "gla.yaml", gla)
    out = tmp_path / "cmp"
    main(["compare", a, b, "--out", str(out), "--max_steps", "2"])
    text = capsys.readouterr().out
    assert "val_bpb" in text and "attn" in text and "gla" in text
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["attn", "gla"]
    assert all(int(r["steps"]) == 2 and 0 < float(r["val_bpb"]) < 10 for r in rows)
    assert (out / "attn" / "checkpoints" / "last.ckpt").exists()
    # a second call reuses the finished runs
    main(["compare", a, b, "--out", str(out), "--max_steps", "2"])
    assert capsys.readouterr().out.count("already finished") == 2
    # asking for another length on the same folder is an error, not a silent reuse
    with pytest.raises(SystemExit):
        main(["compare", a, b, "--out", str(out), "--max_steps", "3"])
    assert "not the 3 asked for" in capsys.readouterr().err


def test_compare_resumes_an_interrupted_run(tmp_path, capsys):
    a = write_config(tmp_path / "attn.yaml", TINY)
    out = tmp_path / "cmp"
    # an interrupted run: 4 of 8 steps done, a checkpoint, no result.json
    stop = TINY | {"trainer": TINY["trainer"] | {"callbacks": [
        {"class_path": "postformer.train.callbacks.StopAtStep", "init_args": {"stop_at": 4}}]}}
    main(["fit", "--config", write_config(tmp_path / "stop.yaml", stop),
          "--trainer.default_root_dir", str(out / "attn"), *QUIET])
    assert torch.load(out / "attn" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    capsys.readouterr()
    main(["compare", a, "--out", str(out)])
    text = capsys.readouterr().out
    assert "resuming" in text
    with open(out / "compare.csv") as f:
        assert int(next(csv.DictReader(f))["steps"]) == 8
