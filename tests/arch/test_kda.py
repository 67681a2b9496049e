"""Kimi Delta Attention (arch/kda.py) against the paper's equations (Kimi Linear, arXiv 2510.26692),
written in float64 in the column-vector form with explicit ``[K, K]`` transition matrices
``(I - beta k k^T) Diag(alpha)`` and the mixer's own weights; the mixer contract of
tests/arch/test_mixers.py (cached decoding equals the full forward, continuation chunks, the cache
carries the past), gradients to every parameter, the init, default widths and option errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import (
    CONTRACT_D_MODEL,
    D_MODEL,
    assert_cached_equals_full,
    assert_every_parameter_has_gradient,
    inputs,
    make,
    make_mixer,
    rmsnorm,
    step_by_step,
)

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.kda import KimiDeltaAttention


def conv_silu(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """SiLU of the depthwise causal conv, tap by tap: y_t = sum_j w_j x_{t-W+1+j}."""
    T, W = x.shape[1], conv.weight.shape[-1]
    padded = F.pad(x, (0, 0, W - 1, 0))
    return F.silu(sum(padded[:, j : j + T] * conv.weight[:, 0, j] for j in range(W)))


def kda_naive(m: KimiDeltaAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's KDA layer, one step at a time, the state S [K, V] per head in column form:
    S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t / sqrt(K),
    alpha_t = exp(-exp(A_log) * softplus(W_f_up W_f_down x_t + dt_bias)) per head and key channel,
    y_t = W_o (sigmoid(W_g_up W_g_down x_t + b) * RMSNorm(o_t))."""
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    if m.conv_size:
        q = conv_silu(x @ m.q_proj.weight.T, m.q_conv).reshape(B, T, H, K)
        k = conv_silu(x @ m.k_proj.weight.T, m.k_conv).reshape(B, T, H, K)
        v = conv_silu(x @ m.v_proj.weight.T, m.v_conv).reshape(B, T, H, V)
    else:
        q, k, v = (F.silu(x @ p.weight.T).reshape(B, T, H, -1) for p in (m.q_proj, m.k_proj, m.v_proj))
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(x @ m.b_proj.weight.T)  # (B, T, H)
    f_down, f_up = m.f_proj[0].weight, m.f_proj[1].weight
    logits = (x @ f_down.T @ f_up.T + m.dt_bias).reshape(B, T, H, K)
    alpha = torch.exp(-torch.exp(m.A_log)[:, None] * F.softplus(logits))  # (B, T, H, K)
    eye = torch.eye(K, dtype=x.dtype)
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        transition = (eye - bt * kt[..., :, None] * kt[..., None, :]) @ torch.diag_embed(alpha[:, t])
        S = transition @ S + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append((S.transpose(-1, -2) @ q[:, t, ..., None])[..., 0] / math.sqrt(K))  # (B, H, V)
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    g_down, g_up = m.g_proj[0].weight, m.g_proj[1]
    gate = torch.sigmoid(x @ g_down.T @ g_up.weight.T + g_up.bias).reshape(B, T, H, V)
    o = rmsnorm(o, m.o_norm.weight, m.o_norm.eps) * gate
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


@pytest.mark.parametrize(
    "opts",
    [
        {"n_heads": 2},
        {"n_heads": 2, "head_dim": 8, "expand_v": 1.5, "conv_size": 3, "gate_low_rank_dim": 4},
        {"n_heads": 1, "head_dim": 16, "conv_size": 0},
        {},
    ],
)
def test_matches_paper_equations(opts):
    m = make("kda", opts)
    with torch.no_grad():  # strong and weak decays alike, spread over key channels
        m.A_log.copy_(torch.linspace(-2.0, 2.5, m.n_heads))
        m.dt_bias.add_(torch.linspace(-3.0, 3.0, m.dt_bias.numel()))
        m.g_proj[1].bias.normal_()
    x = inputs()
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, kda_naive(m, x), atol=1e-10, rtol=1e-8)


def test_per_key_decay_matters():
    """Guards the test above: the same mixer with each head's decay averaged over its key
    channels (a Gated DeltaNet gate) differs from the naive loop."""
    m = make("kda", {"n_heads": 2, "head_dim": 8})
    with torch.no_grad():
        m.dt_bias.add_(torch.linspace(-3.0, 3.0, m.dt_bias.numel()))
    x = inputs()
    with torch.no_grad():
        ref = kda_naive(m, x)
        per_key = m._decay
        m._decay = lambda x: per_key(x).mean(-1)  # (B, T, H): one decay per head
        assert not torch.allclose(m(x), ref, atol=1e-3)


# --------------------------------------------------------- the mixer contract (test_mixers.py)

CASES = [{"n_heads": 2, "head_dim": 16}, {}, {"n_heads": 4, "head_dim": 8, "conv_size": 0}]
IDS = ["h2", "default", "no-conv"]


@pytest.mark.parametrize("opts", CASES, ids=IDS)
def test_step_equals_parallel(opts):
    mixer = make_mixer("kda", opts)
    torch.manual_seed(1)
    x = torch.randn(2, 21, CONTRACT_D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        for split in (0, 1, 9):
            torch.testing.assert_close(step_by_step(mixer, x, split), y, atol=1e-5, rtol=1e-4, msg=f"split={split}")


@pytest.mark.parametrize("opts", CASES, ids=IDS)
def test_chunked_continuation(opts):
    mixer = make_mixer("kda", opts)
    torch.manual_seed(2)
    x = torch.randn(3, 40, CONTRACT_D_MODEL)  # continuation chunks longer than the 16-step chunks
    with torch.no_grad():
        y = mixer(x)
        cache = mixer.new_cache(3)
        parts = [mixer(x[:, :5], cache), mixer(x[:, 5:25], cache), mixer(x[:, 25:26], cache), mixer(x[:, 26:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), y, atol=1e-5, rtol=1e-4)


def test_cache_carries_the_past():
    mixer = make_mixer("kda", {"n_heads": 2, "head_dim": 16})
    x = torch.randn(1, 8, CONTRACT_D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        y_last_alone = mixer(x[:, -1:], mixer.new_cache(1))
    assert not torch.allclose(y_last_alone, y[:, -1:], atol=1e-3)


def test_cache_shapes_and_dtypes():
    mixer = make_mixer("kda", {"n_heads": 2, "head_dim": 16, "expand_v": 2.0})
    cache = mixer.new_cache(3, dtype=torch.bfloat16)
    assert cache.state.shape == (3, 2, 16, 32) and cache.state.dtype == torch.float32
    assert cache.q_conv_state.shape == (3, 32, 3) and cache.v_conv_state.shape == (3, 64, 3)
    assert cache.q_conv_state.dtype == torch.bfloat16


def test_gradients_reach_every_parameter():
    mixer = make_mixer("kda", {"n_heads": 2, "head_dim": 16}).train()
    x = torch.randn(2, 19, CONTRACT_D_MODEL, requires_grad=True)
    (mixer(x) * torch.randn(2, 19, CONTRACT_D_MODEL)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert_every_parameter_has_gradient(mixer)


def test_language_model_cached_decoding_and_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, pattern=["kda"],
                      mixers={"kda": {"n_heads": 2, "head_dim": 16}})
    model = LanguageModel(cfg).eval()
    tokens = assert_cached_equals_full(model, 64)
    model.train()
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    assert_every_parameter_has_gradient(model)


def test_bf16_runs_close_to_float32():
    mixer = make_mixer("kda", {"n_heads": 2, "head_dim": 16})
    x = torch.randn(2, 33, CONTRACT_D_MODEL)
    with torch.no_grad():
        y32 = mixer(x)
        y16 = mixer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert ((y16.double() - y32.double()).norm() / y32.double().norm()).item() < 3e-2


# ------------------------------------------------------------------ init, widths, options


def test_init_and_no_weight_decay():
    opts = KimiDeltaAttention.resolve_options(64, {"n_heads": 16, "head_dim": 16})
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=64, n_layers=1, pattern=["kda"],
                                      mixers={"kda": {"n_heads": 16, "head_dim": 16}}))
    for m in (KimiDeltaAttention(64, opts), model.blocks[0].mixer):  # the model's init leaves them alone
        A, dt = torch.exp(m.A_log), F.softplus(m.dt_bias)
        assert A.shape == (16,) and dt.shape == (16 * 16,)
        assert 1.0 <= A.min() and A.max() <= 16.0 and A.max() > 8.0 and A.min() < 4.0  # uniform [1, 16]
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
        assert dt.max() / dt.min() > 5.0  # spread over time scales, not one value
        assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay


def test_default_widths_follow_kimi_linear():
    o = KimiDeltaAttention.resolve_options(2048)
    assert (o.n_heads, o.head_dim, o.expand_v, o.conv_size, o.gate_low_rank_dim) == (16, 128, 1.0, 4, 128)
    o = KimiDeltaAttention.resolve_options(64)
    assert (o.n_heads, o.head_dim, o.gate_low_rank_dim) == (1, 64, 64)
    o = KimiDeltaAttention.resolve_options(D_MODEL, {"n_heads": 2, "head_dim": 8, "expand_v": 2.0})
    assert o.gate_low_rank_dim == 16  # the value channels per head
    m = KimiDeltaAttention(D_MODEL, o)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["f_proj.0.weight"] == (16, D_MODEL) and shapes["f_proj.1.weight"] == (16, 16)
    assert shapes["g_proj.0.weight"] == (16, D_MODEL) and shapes["g_proj.1.weight"] == (32, 16)
    assert shapes["g_proj.1.bias"] == (32,) and "f_proj.1.bias" not in shapes
    assert shapes["A_log"] == (2,) and shapes["dt_bias"] == (16,) and shapes["o_norm.weight"] == (16,)
    assert MIXERS["kda"] is KimiDeltaAttention and KimiDeltaAttention.has_mlp


def test_parameter_count_formula():
    """The count the report gives: d (2 Hk + Hv) + conv (2 Hk + Hv) W + d H + d r + r Hk
    + d r + r Hv + Hv + H + Hk + v + Hv d (k = head_dim, v = expand_v k, r the gate rank)."""
    for d, opts in [(64, {}), (D_MODEL, {"n_heads": 2, "head_dim": 8, "expand_v": 1.5, "conv_size": 3,
                                         "gate_low_rank_dim": 4}), (48, {"conv_size": 0})]:
        o = KimiDeltaAttention.resolve_options(d, opts)
        H, k, W, r = o.n_heads, o.head_dim, o.conv_size, o.gate_low_rank_dim
        v = int(o.expand_v * k)
        Hk, Hv = H * k, H * v
        want = d * (2 * Hk + Hv) + (2 * Hk + Hv) * W + d * H + d * r + r * Hk + d * r + r * Hv + Hv \
            + H + Hk + v + Hv * d
        assert sum(p.numel() for p in KimiDeltaAttention(d, o).parameters()) == want, opts


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"n_heads": 0}, "n_heads must be >= 1"),
        ({"head_dim": 0}, "head_dim must be >= 1"),
        ({"n_heads": 2, "head_dim": 16, "expand_v": 0.3}, "expand_v 0.3 \\* head_dim 16"),
        ({"conv_size": 1}, "conv_size must be 0 .* or >= 2, got 1"),
        ({"gate_low_rank_dim": 0}, "gate_low_rank_dim must be >= 1 or None, got 0"),
        ({"A_init_min": 5.0, "A_init_max": 2.0}, "A_init_min 5.0"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min 0.2"),
        ({"heads": 2}, "has no option 'heads'"),
    ],
)
def test_option_errors(opts, match):
    with pytest.raises(ValueError, match=f"mixer 'kda'.*{match}"):
        MIXERS["kda"].resolve_options(D_MODEL, opts)
