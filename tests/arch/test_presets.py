"""Named presets: every architecture at every size is within 10% of Transformer++'s parameter
count (without embeddings), and configs/model/ holds exactly the presets as YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from postformer.arch import PRESETS, ModelConfig
from postformer.arch.flops import param_counts

MODEL_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
CASES = [(arch, size) for arch in PRESETS if arch != "transformer" for size in PRESETS[arch]]


@pytest.fixture(scope="module")
def transformer_counts() -> dict[str, int]:
    return {size: param_counts(ModelConfig.from_preset("transformer", size))[1] for size in PRESETS["transformer"]}


@pytest.mark.parametrize(("arch", "size"), CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_parameter_count_matches_transformer(arch, size, transformer_counts):
    cfg = ModelConfig.from_preset(arch, size)
    assert set(cfg.pattern) <= set(cfg.layer_mixers)  # at least one full pattern
    n = param_counts(cfg)[1]
    ratio = n / transformer_counts[size]
    assert abs(ratio - 1) <= 0.10, f"{arch} {size}: {n:,} non-embedding parameters = {ratio:.3f} x Transformer++"


def test_model_configs_are_the_presets():
    files = sorted(p.relative_to(MODEL_DIR).with_suffix("").as_posix() for p in MODEL_DIR.glob("*/*.yaml"))
    expected = sorted(f"{arch}/{size}" for arch in PRESETS for size in PRESETS[arch])
    assert files == expected, "run `python scripts/write_model_configs.py`"
    for name in files:
        arch, size = name.split("/")
        data = yaml.safe_load((MODEL_DIR / f"{name}.yaml").read_text())
        assert data == PRESETS[arch][size], f"configs/model/{name}.yaml is stale: run scripts/write_model_configs.py"
        assert ModelConfig(**data) == ModelConfig.from_preset(arch, size)


ALL = [(arch, size) for arch in PRESETS for size in PRESETS[arch]]


@pytest.mark.parametrize(("arch", "size"), ALL, ids=[f"{a}-{s}" for a, s in ALL])
def test_param_counts_equal_the_built_model(arch, size):
    """``param_counts`` counts each distinct block once (``postformer list`` answers in about a
    second); the whole model built on the meta device is the independent count. An untied
    head and an odd vocabulary too, so the embedding terms are checked."""
    import torch

    from postformer.arch import LanguageModel

    for cfg in (ModelConfig.from_preset(arch, size, vocab_size=50277),
                ModelConfig.from_preset(arch, size, vocab_size=257, tie_embeddings=False)):
        with torch.device("meta"):
            model = LanguageModel(cfg)
        assert param_counts(cfg) == (model.num_params(), model.num_params(include_embeddings=False))
