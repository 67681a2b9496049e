"""arch.flops against independent counts: the model's own linear layers, Kaplan/Chinchilla, and
PyTorch's FlopCounterMode running the model's forward."""

import pytest
import torch
from mixer_testing import not_matmul_flops
from torch import nn

from postformer.arch import LanguageModel, ModelConfig
from postformer.arch.flops import (
    flops_breakdown,
    flops_per_token,
    forward_flops_per_token,
    matmul_params,
    param_counts,
)

CONFIGS = {
    "transformer": ModelConfig(d_model=128, n_layers=4, pattern=["attn"], mixers={"attn": {"n_heads": 4}}),
    "mamba2": ModelConfig(d_model=128, n_layers=4, pattern=["mamba2"],
                          mixers={"mamba2": {"d_state": 16, "head_dim": 32}}),
    "gla": ModelConfig(d_model=128, n_layers=4, pattern=["gla"]),
    "hybrid": ModelConfig(d_model=128, n_layers=4, pattern=["mamba2", "mamba2", "mamba2", "attn"],
                          mixers={"mamba2": {"d_state": 16, "head_dim": 32}, "attn": {"n_heads": 4}}),
    "swa": ModelConfig(d_model=128, n_layers=2, pattern=["swa"], mixers={"swa": {"window": 32}}),
    "mamba": ModelConfig(d_model=128, n_layers=2, pattern=["mamba"]),
    "retnet": ModelConfig(d_model=128, n_layers=2, pattern=["retnet"]),
    "deltanet": ModelConfig(d_model=128, n_layers=2, pattern=["deltanet"]),
    "gdn": ModelConfig(d_model=128, n_layers=2, pattern=["gdn"]),
    "hgrn2": ModelConfig(d_model=128, n_layers=2, pattern=["hgrn2"]),
    "rglru": ModelConfig(d_model=128, n_layers=2, pattern=["rglru"], mixers={"rglru": {"n_heads": 2}}),
    "griffin": ModelConfig(d_model=128, n_layers=3, pattern=["rglru", "rglru", "swa"]),
    "gdn-hybrid": ModelConfig(d_model=128, n_layers=4, pattern=["gdn", "gdn", "gdn", "attn"]),
    "gated_attn": ModelConfig(d_model=128, n_layers=2, pattern=["gated_attn"]),
    "gated_attn-headwise": ModelConfig(d_model=128, n_layers=2, pattern=["gated_attn"],
                                       mixers={"gated_attn": {"gate": "headwise"}}),
    "mlstm": ModelConfig(d_model=128, n_layers=2, pattern=["mlstm"]),
    "rwkv7": ModelConfig(d_model=128, n_layers=2, pattern=["rwkv7"], mlp_kind="rwkv7"),
    "rwkv7-swiglu": ModelConfig(d_model=128, n_layers=2, pattern=["rwkv7"]),
    "mamba3": ModelConfig(d_model=128, n_layers=2, pattern=["mamba3"],
                          mixers={"mamba3": {"d_state": 16, "head_dim": 32, "ngroups": 2}}),
    "kda": ModelConfig(d_model=128, n_layers=2, pattern=["kda"], mixers={"kda": {"n_heads": 2}}),
    "kimi-linear": ModelConfig(d_model=128, n_layers=4, pattern=["kda", "kda", "kda", "attn"]),
    "deltaproduct": ModelConfig(d_model=128, n_layers=2, pattern=["deltaproduct"],
                                mixers={"deltaproduct": {"n_householder": 3}}),
}
#: recurrences whose work is elementwise (no matmul): FlopCounterMode does not see them
ELEMENTWISE_RECURRENCE = {"mamba", "rglru"}


def linear_weights(model: nn.Module) -> int:
    """Weights of every nn.Linear, the LM head included even when tied (its matmul happens),
    RG-LRU's block-diagonal gate matrices (a matmul written as an einsum) and RWKV-7's LoRA
    factors (matmuls with parameters)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return linear + sum(p.numel() for name, p in model.named_parameters()
                        if name.endswith(("gate_weight", "lora.w1", "lora.w2")))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_linear_part_is_six_times_matmul_params(name):
    cfg = CONFIGS[name]
    model = LanguageModel(cfg)
    expected = linear_weights(model)
    parts = flops_breakdown(cfg, 512)
    assert parts["linear"] + parts["lm_head"] == 6 * expected
    assert matmul_params(cfg) == expected
    assert param_counts(cfg) == (model.num_params(), model.num_params(include_embeddings=False))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matmul_work_matches_pytorch_flop_counter(name):
    """FlopCounterMode counts every matmul and conv the forward actually runs (through the chunk
    paths of the ops), independently of our formulas. It does not see SDPA on CPU nor
    elementwise work, so attention, elementwise scans and the non-matmul parts of the chunked
    recurrences (``not_matmul_flops``) are left out of the comparison."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = CONFIGS[name], 128
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, T)))
    parts = {k: v / 3 for k, v in flops_breakdown(cfg, T).items()}  # forward
    expected = parts["linear"] + parts["lm_head"] + parts["conv"]
    if not set(cfg.pattern) & ELEMENTWISE_RECURRENCE:
        expected += parts["recurrence"] - not_matmul_flops(cfg, T)
    assert counter.get_total_flops() / T == pytest.approx(expected, rel=1e-3)


def test_dense_transformer_matches_kaplan_and_chinchilla():
    # GPT-3 125m shape at T = 2048, GPT-2 vocabulary: the textbook case.
    cfg = ModelConfig.from_preset("transformer", "125m", vocab_size=50257, tie_embeddings=False)
    T, L, d = 2048, cfg.n_layers, cfg.d_model
    N = param_counts(cfg)[1] + cfg.vocab_size * d  # non-embedding + head
    # Chinchilla (App. F) counts the full T x T scores and their reduction: 6N + 12 L T d.
    chinchilla = 6 * N + 12 * L * T * d
    assert flops_per_token(cfg, T) == pytest.approx(chinchilla, rel=0.02)
    # Kaplan et al. (2020, Table 1): 6N + 6 L T d, the causal average context.
    kaplan = 6 * N + 6 * L * T * d
    assert flops_per_token(cfg, T, causal=True) == pytest.approx(kaplan, rel=0.02)
    assert flops_per_token(cfg, T) == 3 * forward_flops_per_token(cfg, T)


def test_short_sequences_approach_six_n():
    cfg = CONFIGS["transformer"]
    N = matmul_params(cfg)
    assert flops_per_token(cfg, 1) == pytest.approx(6 * N, rel=0.01)
    # and the attention share grows with T
    assert flops_per_token(cfg, 4096) > 2 * flops_per_token(cfg, 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_positive_and_linear_in_layers(name):
    cfg = CONFIGS[name]
    deeper = ModelConfig(**{**cfg.__dict__, "n_layers": 3 * cfg.n_layers})
    for T in (1, 100, 1024):
        parts, parts3 = flops_breakdown(cfg, T), flops_breakdown(deeper, T)
        assert all(v >= 0 for v in parts.values()) and flops_per_token(cfg, T) > 0
        for key in parts:
            expected = parts[key] if key == "lm_head" else 3 * parts[key]
            assert parts3[key] == pytest.approx(expected)
    if not set(cfg.pattern) <= {"attn", "swa", "gated_attn"}:
        assert flops_breakdown(cfg, 1024)["recurrence"] > 0
    if any(m in cfg.pattern for m in ("mamba2", "mamba", "deltanet", "gdn", "rglru", "deltaproduct", "kda")):
        assert flops_breakdown(cfg, 1024)["conv"] > 0


def test_recurrence_uses_the_chunk_sizes_of_the_chunk_path():
    # Mamba-2: scalar gate, chunks of 64; per head C^2 (K + V) + 2 C K V + K V MACs per chunk.
    cfg = ModelConfig(d_model=64, n_layers=1, pattern=["mamba2"], mixers={"mamba2": {"d_state": 16, "head_dim": 32}})
    H, K, V, C, T = 4, 16, 32, 64, 256
    per_token = (T // C) * (C * C * (K + V) + 2 * C * K * V + K * V) / T
    assert flops_breakdown(cfg, T)["recurrence"] == pytest.approx(6 * H * per_token)
    # GLA: per-key gates, chunks of 16; a ragged tail is padded to a whole chunk.
    cfg = ModelConfig(d_model=64, n_layers=1, pattern=["gla"], mixers={"gla": {"n_heads": 2}})
    H, K, V, C, T = 2, 16, 32, 16, 40
    per_token = 3 * (C * C * (K + V) + 2 * C * K * V + K * V) / T
    assert flops_breakdown(cfg, T)["recurrence"] == pytest.approx(6 * H * per_token)


def test_recurrent_cost_is_linear_in_length_attention_quadratic():
    for name, key in (("mamba2", "recurrence"), ("gla", "recurrence"), ("transformer", "attention")):
        cfg = CONFIGS[name]
        short, long = flops_breakdown(cfg, 1024)[key], flops_breakdown(cfg, 8192)[key]
        if key == "attention":
            assert long == pytest.approx(8 * short)  # per token, linear in T
        else:
            assert long == pytest.approx(short)  # per token, constant in T


def test_unknown_mixer_is_a_clear_error(monkeypatch):
    from postformer.arch import flops

    monkeypatch.delitem(flops.MIXER_MACS, "gla")
    with pytest.raises(ValueError, match="no FLOP count for mixer 'gla'"):
        flops_per_token(CONFIGS["gla"], 64)


def test_meta_build_costs_no_memory():
    cfg = ModelConfig.from_preset("transformer", "1.3b")
    n, n_non = param_counts(cfg)
    assert n > 1.2e9 and n - n_non == cfg.vocab_size * cfg.d_model
    assert torch.empty(0).device.type == "cpu"  # the meta device did not leak out


def test_sliding_window_caps_the_attention_context():
    swa, full = CONFIGS["swa"], CONFIGS["transformer"]
    W, d, L = 32, swa.d_model, swa.n_layers
    # beyond the window the per-token attention cost stops growing: 2 (QK^T, AV) x 2 FLOPs x 3 (training)
    for T in (64, 1024):
        assert flops_breakdown(swa, T)["attention"] == pytest.approx(12 * L * W * d)
    assert flops_breakdown(swa, 16)["attention"] == pytest.approx(12 * L * 16 * d)  # short: like full attention
    # causal: mean over t = 1..T of min(t, W)
    T = 100
    mean_ctx = sum(min(t, W) for t in range(1, T + 1)) / T
    assert flops_breakdown(swa, T, causal=True)["attention"] == pytest.approx(12 * L * mean_ctx * d)
    assert flops_breakdown(full, 16)["attention"] == pytest.approx(12 * full.n_layers * 16 * d)
