"""The 2025-2026 architectures' presets train through `postformer fit` on the CPU: each tiny
preset by name, a few steps, the losses finite and falling, the checkpoint's model the preset's."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from postformer.arch.config import PRESETS
from postformer.cli import main
from postformer.train.module import LMModule

NEW_ARCHS = ["qwen3-next", "kimi-linear", "xlstm", "deltaproduct", "mamba3", "rwkv7"]
STEPS = 12


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_preset_trains_with_postformer_fit(arch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--model.preset", f"{arch}/tiny", "--model.lr", "3e-3", "--model.warmup_steps", "2",
          "--trainer.max_steps", str(STEPS), "--trainer.default_root_dir", "run", "--trainer.accelerator", "cpu",
          "--trainer.val_check_interval", str(STEPS), "--trainer.limit_val_batches", "1",
          "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--data.max_bytes", "150000", "--data.seq_len", "32", "--data.batch_size", "8"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    # bytes start near ln(256) = 5.5; a dozen steps at this LR must bring the loss well down
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses
    assert any(r.get("val/loss") and math.isfinite(float(r["val/loss"])) for r in rows)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = LMModule.load_from_checkpoint(ckpt)
    preset = PRESETS[arch]["tiny"]
    assert model.config.pattern == preset["pattern"] and model.config.n_layers == preset["n_layers"]
    assert model.config.mlp_kind == preset.get("mlp_kind", "swiglu")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == STEPS
