"""Gated attention (arch/gated_attn.py) against Qiu et al. 2025's equations written out in float64
with the mixer's own weights: explicit causal softmax over RoPE'd heads (GQA, Primer convs), the
output gate sigmoid(x W_g) per channel or per head before the output projection; cached decoding
equals the parallel form; gradients reach every parameter; option errors; the parameter count."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_testing import (
    D_MODEL,
    F64,
    assert_cached_equals_full,
    assert_every_parameter_has_gradient,
    conv_naive,
    inputs,
    make,
    through_cache,
)

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.gated_attn import GatedAttention

CASES = [
    {"n_heads": 4},  # elementwise, the default
    {"n_heads": 4, "gate": "headwise"},
    {"n_heads": 4, "n_kv_heads": 2, "gate": "headwise"},
    {"n_heads": 2, "n_kv_heads": 1, "conv_size": 3},
]


def rope_naive(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE at positions 0..T-1: pairs (c, c + D/2) rotated by t * inv_freq[c]."""
    T, D = x.shape[1], x.shape[-1]
    out = torch.empty_like(x)
    for t in range(T):
        for c in range(D // 2):
            a = t * inv_freq[c].item()
            x1, x2 = x[:, t, :, c], x[:, t, :, c + D // 2]
            out[:, t, :, c] = x1 * math.cos(a) - x2 * math.sin(a)
            out[:, t, :, c + D // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def gated_attn_naive(m: GatedAttention, x: torch.Tensor) -> torch.Tensor:
    """o_t^h = sum_{s<=t} softmax_s(q_t^h k_s^h / sqrt(D)) v_s^h; y_t = W_o [o_t^h * sigmoid(x_t W_g^h)]_h."""
    B, T, _ = x.shape
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    q, k, v = x @ m.q_proj.weight.T, x @ m.k_proj.weight.T, x @ m.v_proj.weight.T
    if m.conv_size:
        q, k, v = (conv_naive(y, c.weight, None) for y, c in zip((q, k, v), (m.q_conv, m.k_conv, m.v_conv)))
    # RoPE's frequencies base^(-2c/D) as the mixer holds them (a float32 buffer, like a weight;
    # checked against the formula in test_rope_frequencies)
    inv_freq = m.rotary.inv_freq.to(F64)
    q = rope_naive(q.reshape(B, T, H, D), inv_freq)
    k = rope_naive(k.reshape(B, T, Hkv, D), inv_freq)
    v = v.reshape(B, T, Hkv, D)
    gate = torch.sigmoid(x @ m.g_proj.weight.T)  # (B, T, H*D) or (B, T, H)
    gate = gate.reshape(B, T, H, -1)
    o = torch.zeros(B, T, H, D, dtype=x.dtype)
    for h in range(H):
        kv = h // (H // Hkv)  # the key/value head this query head shares
        for t in range(T):
            scores = (k[:, : t + 1, kv] @ q[:, t, h, :, None])[..., 0] / math.sqrt(D)  # (B, t+1)
            o[:, t, h] = (scores.softmax(-1)[..., None] * v[:, : t + 1, kv]).sum(1)
    return (o * gate).reshape(B, T, H * D) @ m.out_proj.weight.T


def spread(m: GatedAttention) -> GatedAttention:
    with torch.no_grad():  # gates far from 0.5 and from each other
        m.g_proj.weight.mul_(6.0)
    return m


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_matches_naive(opts):
    m = spread(make("gated_attn", opts))
    x = inputs(T=12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), gated_attn_naive(m, x), atol=1e-10, rtol=1e-10)


def test_rope_frequencies():
    m = make("gated_attn", {"n_heads": 2, "rope_base": 500.0})
    D = m.head_dim
    expected = torch.tensor([500.0 ** (-2 * c / D) for c in range(D // 2)], dtype=F64)
    torch.testing.assert_close(m.rotary.inv_freq.to(F64), expected, atol=0, rtol=1e-6)


def test_gate_matters():
    """Guards the test above: attn with the same q/k/v/o weights (no gate) differs."""
    m = spread(make("gated_attn", {"n_heads": 4, "gate": "headwise"}))
    plain = MIXERS["attn"](D_MODEL, MIXERS["attn"].resolve_options(D_MODEL, {"n_heads": 4})).to(F64)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("g_proj")})
    x = inputs(T=12)
    with torch.no_grad():
        assert not torch.allclose(plain(x), m(x), atol=1e-3)
        assert not torch.allclose(plain(x), gated_attn_naive(m, x), atol=1e-3)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_step_equals_parallel(opts):
    """Prefill, a multi-token continuation and single steps through the KV cache equal one call."""
    m = spread(make("gated_attn", opts))
    x = inputs(T=15)
    with torch.no_grad():
        y = m(x)
        parts = through_cache(m, x, [4, 9, *range(10, 16)])
        torch.testing.assert_close(parts, y, atol=1e-10, rtol=1e-10)
        assert not torch.allclose(m(x[:, -1:], m.new_cache(2, dtype=F64)), y[:, -1:], atol=1e-3)


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
def test_model_generation_cached_equals_full(gate):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, pattern=["gated_attn"],
                      mixers={"gated_attn": {"n_heads": 2, "gate": gate}})
    assert_cached_equals_full(LanguageModel(cfg).eval(), cfg.vocab_size)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_gradients_reach_every_parameter(opts):
    m = make("gated_attn", opts)
    m(inputs(T=9)).pow(2).sum().backward()
    assert_every_parameter_has_gradient(m)


@pytest.mark.parametrize(("opts", "extra"), [({"n_heads": 4}, 4 * 8), ({"n_heads": 4, "gate": "headwise"}, 4),
                                             ({"n_heads": 4, "n_kv_heads": 2, "conv_size": 3}, 4 * 8)])
def test_parameter_count(opts, extra):
    """attn's count (q, o: d * H D; k, v: d * Hkv D; Primer convs: W (H D + 2 Hkv D)) plus the gate,
    d * H D (elementwise) or d * H (headwise)."""
    m = make("gated_attn", opts)
    H, Hkv, D, W = m.n_heads, m.n_kv_heads, m.head_dim, m.conv_size
    attn = 2 * D_MODEL * H * D + 2 * D_MODEL * Hkv * D + W * (H * D + 2 * Hkv * D)
    assert sum(p.numel() for p in m.parameters()) == attn + D_MODEL * extra


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"gate": "channel"}, "mixer 'gated_attn': gate must be one of \\['elementwise', 'headwise'\\], got 'channel'"),
        ({"n_heads": 5}, "mixer 'gated_attn': d_model 32 is not divisible by n_heads 5"),
        ({"n_heads": 4, "n_kv_heads": 3}, "mixer 'gated_attn': n_heads 4 is not divisible by n_kv_heads 3"),
        ({"gates": "headwise"}, "mixer 'gated_attn' has no option 'gates'"),
    ],
)
def test_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS["gated_attn"].resolve_options(D_MODEL, opts)
