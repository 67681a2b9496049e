"""``--model.compile true``: the blocks compiled with torch.compile train the smoke configs with
the eager losses, step by step; a block compiles as one graph (our ops are custom ops); the
checkpoint of a compiled run keeps the eager state_dict keys.

The fits use the ``aot_eager`` backend (``POSTFORMER_COMPILE_BACKEND``): Dynamo and AOTAutograd
trace exactly as for inductor, without inductor's C++ build, which takes minutes on a small CPU
machine; ``bench/compile_bench.py`` runs inductor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_testing import fit_losses  # tests/train/cli_testing.py
from torch._dynamo.utils import counters

from postformer.arch import LanguageModel, ModelConfig
from postformer.train.module import LMModule

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke"
STEPS = 4
TOL = 1e-4
#: the smoke configs on less data, so that a fit starts in seconds
SMALL_DATA = ("--data.max_bytes", "300000", "--data.batch_size", "4", "--data.seq_len", "64")


@pytest.mark.parametrize("name", ["gla", "mamba"])
def test_compiled_fit_has_the_eager_losses(name, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTFORMER_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    eager = fit_losses(SMOKE / f"{name}.yaml", tmp_path / "eager", STEPS, *SMALL_DATA)
    counters.clear()
    compiled = fit_losses(SMOKE / f"{name}.yaml", tmp_path / "compiled", STEPS, *SMALL_DATA,
                          "--model.compile", "true")
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks did compile
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert compiled == pytest.approx(eager, abs=TOL)
    # the compiled run's checkpoint loads into an eager model (no _orig_mod. keys), strictly
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])
    module = LMModule(ckpt["hyper_parameters"]["config"])
    module.load_state_dict(ckpt["state_dict"], strict=True)


@pytest.mark.parametrize("pattern", [["gla"], ["mamba"], ["gdn"]])
def test_a_block_compiles_as_one_graph(pattern):
    """fullgraph=True raises on any graph break: the ops (and the block around them) trace
    whole, forward and backward, and give the eager numbers."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, pattern=pattern)
    block = LanguageModel(cfg).blocks[0]
    x = torch.randn(2, 24, 32, requires_grad=True)
    eager = block(x)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    (g_comp,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-5, atol=1e-5)


def test_compile_option_is_not_a_hyperparameter():
    """An execution choice: checkpoints and hparams.yaml are the same with and without it, and
    compiling keeps the state_dict keys."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, pattern=["gla"])
    plain, compiled = LMModule(cfg), LMModule(cfg, compile=True)
    assert dict(plain.hparams) == dict(compiled.hparams)
    keys = list(compiled.state_dict())
    compiled.compile_model()
    assert list(compiled.state_dict()) == keys
