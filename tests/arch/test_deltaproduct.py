"""Gated DeltaProduct (arch/deltaproduct.py) against the paper's per-token recurrence
S_t = A_t S_{t-1} + B_t, with A_t the gate times the product of n_h generalised Householder
matrices, written as a float64 loop with the mixer's own weights; n_h = 1 without negative
eigenvalues is Gated DeltaNet; cached decoding equals the parallel form; gradients reach every
parameter; option errors; the parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import (
    D_MODEL,
    F64,
    assert_cached_equals_full,
    assert_every_parameter_has_gradient,
    conv_naive,
    inputs,
    make,
    rmsnorm,
    through_cache,
)

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.deltaproduct import GatedDeltaProduct

CASES = [
    {},  # n_h = 2, beta in (0, 2); 1 head of 24 key, 48 value channels
    {"n_heads": 2, "head_dim": 8, "n_householder": 3},
    {"n_heads": 2, "head_dim": 8, "n_householder": 2, "allow_neg_eigval": False, "conv_size": 3},
    {"n_heads": 4, "head_dim": 8, "expand_v": 1.0, "conv_size": 0},
]


def deltaproduct_naive(m: GatedDeltaProduct, x: torch.Tensor, reverse_steps: bool = False) -> torch.Tensor:
    """The paper's Gated DeltaProduct per token, state S [K, V] per head (o_t = S_t^T q_t / sqrt(K)):

        A_t = alpha_t (I - b_n k_n^T k_n) ... (I - b_1 k_1^T k_1)          (k_j row vectors, unit norm)
        B_t = sum_j (I - b_n k_n^T k_n) ... (I - b_{j+1} k_{j+1}^T k_{j+1}) b_j k_j^T v_j
        S_t = A_t S_{t-1} + B_t

    with alpha_t = exp(-exp(A_log) softplus(x W_a + dt_bias)), b_j = (2 or 1) sigmoid(x W_beta)_j,
    q, k, v = silu(conv(x W)) (silu(x W) without convs), the output rmsnorm(o) * silu(x W_g) per
    head, then W_out. ``reverse_steps`` applies a token's Householder steps in the wrong order (a
    guard that the order is tested)."""
    B, T, _ = x.shape
    H, K, V, n = m.n_heads, m.head_k_dim, m.head_v_dim, m.n_householder

    def branch(name: str) -> torch.Tensor:
        y = x @ getattr(m, f"{name}_proj").weight.T
        return F.silu(conv_naive(y, getattr(m, f"{name}_conv").weight, None) if m.conv_size else y)

    def unit(y: torch.Tensor) -> torch.Tensor:
        return y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-6)

    q = unit(branch("q").reshape(B, T, H, K))
    k = unit(branch("k").reshape(B, T, n, H, K))
    v = branch("v").reshape(B, T, n, H, V)
    beta = (2.0 if m.options.allow_neg_eigval else 1.0) * torch.sigmoid(x @ m.b_proj.weight.T).reshape(B, T, n, H)
    alpha = torch.exp(-torch.exp(m.A_log) * F.softplus(x @ m.a_proj.weight.T + m.dt_bias))  # (B, T, H)
    eye = torch.eye(K, dtype=x.dtype)
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        A = alpha[:, t, :, None, None] * eye  # (B, H, K, K)
        Bt = x.new_zeros(B, H, K, V)
        for j in reversed(range(n)) if reverse_steps else range(n):
            kj, bj = k[:, t, j], beta[:, t, j, :, None, None]
            householder = eye - bj * kj[..., :, None] * kj[..., None, :]
            A = householder @ A
            Bt = householder @ Bt + bj * kj[..., :, None] * v[:, t, j, :, None, :]
        S = A @ S + Bt
        outs.append((S.transpose(-1, -2) @ q[:, t, ..., None])[..., 0] / math.sqrt(K))  # (B, H, V)
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    o = rmsnorm(o, m.o_norm.weight, m.o_norm.eps) * F.silu((x @ m.g_proj.weight.T).reshape(B, T, H, V))
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


def build(opts: dict) -> GatedDeltaProduct:
    m = make("deltaproduct", opts)
    with torch.no_grad():  # strong and weak decays alike; betas spread over their range
        m.A_log.copy_(torch.linspace(-2.0, 1.5, m.n_heads))
        m.b_proj.weight.mul_(8.0)
    return m


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_matches_householder_product(opts):
    m = build(opts)
    x = inputs(T=40)  # T n_h sub-steps cross delta_rule's 64-step chunks
    with torch.no_grad():
        torch.testing.assert_close(m(x), deltaproduct_naive(m, x), atol=1e-10, rtol=1e-8)


def test_guards():
    """The test above sees the Householder order, negative eigenvalues and the gate."""
    m = build({"n_heads": 2, "head_dim": 8})
    x = inputs(T=20)
    with torch.no_grad():
        y = m(x)
        assert not torch.allclose(y, deltaproduct_naive(m, x, reverse_steps=True), atol=1e-3)
        beta = 2 * torch.sigmoid(x @ m.b_proj.weight.T)
        assert beta.max() > 1.5 and beta.min() < 0.5  # eigenvalues 1 - beta of both signs
        m.A_log.fill_(-30.0)  # no decay
        assert not torch.allclose(m(x), y, atol=1e-3)


def test_one_householder_step_is_gated_deltanet():
    opts = {"n_heads": 2, "head_dim": 8, "n_householder": 1, "allow_neg_eigval": False}
    m = build(opts)
    gdn = MIXERS["gdn"](D_MODEL, MIXERS["gdn"].resolve_options(D_MODEL, {"n_heads": 2, "head_dim": 8})).to(F64)
    gdn.load_state_dict(m.state_dict())
    x = inputs(T=30)
    with torch.no_grad():
        torch.testing.assert_close(m(x), gdn(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_step_equals_parallel(opts):
    """Prefill, a multi-token continuation and single steps through the cache equal one call."""
    m = build(opts)
    x = inputs(T=40)
    with torch.no_grad():
        y = m(x)
        parts = through_cache(m, x, [5, 33, *range(34, 41)])
        torch.testing.assert_close(parts, y, atol=1e-10, rtol=1e-8)
        assert not torch.allclose(m(x[:, -1:], m.new_cache(2, dtype=F64)), y[:, -1:], atol=1e-3)


def test_model_generation_cached_equals_full():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, pattern=["deltaproduct"],
                      mixers={"deltaproduct": {"n_heads": 2, "head_dim": 8, "n_householder": 3}})
    assert_cached_equals_full(LanguageModel(cfg).eval(), cfg.vocab_size)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_gradients_reach_every_parameter(opts):
    m = build(opts)
    m(inputs(T=40)).pow(2).sum().backward()
    assert_every_parameter_has_gradient(m)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_parameter_count(opts):
    """q: d Kt; k: n d Kt; v: n d Vt; beta: n d H; decay: d H + 2 H (W_a, A_log, dt_bias); output
    gate and out_proj: d Vt each; norm: Vt / H; convs (width W, no bias): W (Kt + n Kt + n Vt)."""
    m = make("deltaproduct", opts)
    d, n, H, Kt, Vt, W = D_MODEL, m.n_householder, m.n_heads, m.key_dim, m.value_dim, m.conv_size
    expected = (d * Kt * (1 + n) + d * Vt * (n + 2) + d * H * (n + 1) + 2 * H + Vt // H
                + W * ((1 + n) * Kt + n * Vt))
    assert sum(p.numel() for p in m.parameters()) == expected


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"n_householder": 0}, "mixer 'deltaproduct': n_householder must be an integer >= 1, got 0"),
        ({"n_householder": 1.5}, "mixer 'deltaproduct': n_householder must be an integer >= 1, got 1.5"),
        ({"allow_neg_eigval": "yes"}, "mixer 'deltaproduct': allow_neg_eigval must be true or false, got 'yes'"),
        ({"conv_size": 1}, "mixer 'deltaproduct': conv_size must be 0 \\(no conv\\) or >= 2, got 1"),
        ({"A_init_min": 5.0, "A_init_max": 2.0}, "mixer 'deltaproduct': need 0 <= A_init_min < A_init_max"),
        ({"householder": 2}, "mixer 'deltaproduct' has no option 'householder'"),
    ],
)
def test_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS["deltaproduct"].resolve_options(D_MODEL, opts)
