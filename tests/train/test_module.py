import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from postformer.arch import ModelConfig
from postformer.train.module import LMModule, bits_per_byte, decay_split


def tiny_config(pattern=("attn",)):
    return ModelConfig(d_model=32, n_layers=2, pattern=list(pattern),
                       mixers={"attn": {"n_heads": 2}, "mamba2": {"d_state": 8, "head_dim": 16}})


def test_decay_split():
    module = LMModule(tiny_config(["mamba2", "attn"]))
    decay, no_decay = decay_split(module.model)
    params = dict(module.model.named_parameters())
    assert set(decay) | set(no_decay) == set(params) and not set(decay) & set(no_decay)
    for name in no_decay:
        p = params[name]
        assert p.ndim < 2 or getattr(p, "_no_weight_decay", False), name
    for name in decay:
        assert params[name].ndim >= 2 and not getattr(params[name], "_no_weight_decay", False)
    assert any("A_log" in n for n in no_decay) and any("dt_bias" in n for n in no_decay)
    assert any("embedding" in n for n in no_decay)
    assert any("norm" in n for n in no_decay)
    assert not any("A_log" in n or "embedding" in n for n in decay)
    assert len(decay) > 0


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert bits_per_byte(3.0, 2.0) == pytest.approx(3.0 / (2.0 * math.log(2)))


def test_val_bpb_matches_hand_computation():
    torch.manual_seed(0)
    module = LMModule(tiny_config())
    batches = [torch.randint(0, 256, (3, 17)), torch.randint(0, 256, (2, 17))]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(module, DataLoader(batches, batch_size=None), verbose=False)[0]
    with torch.no_grad():
        nats = sum(
            F.cross_entropy(module(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten(), reduction="sum")
            for b in batches
        )
    n_bytes = 3 * 16 + 2 * 16  # byte tokenizer: one byte per target token
    assert metrics["val/bpb"] == pytest.approx(float(nats) / (math.log(2) * n_bytes), rel=1e-5)
    assert metrics["val/loss"] == pytest.approx(float(nats) / n_bytes, rel=1e-5)


def test_needs_max_steps():
    module = LMModule(tiny_config())
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    module.trainer = trainer
    with pytest.raises(ValueError, match="max_steps"):
        module.configure_optimizers()


def test_hparams_rebuild_model():
    module = LMModule(tiny_config(), lr=1e-3)
    again = LMModule(**module.hparams)
    assert again.config == module.config and again.hparams.lr == 1e-3
