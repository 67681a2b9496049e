"""GLA (Yang et al. 2023) against the paper's recurrence written as a loop over time in float64,
with the mixer's own weights: per-key decays ``alpha_t = sigmoid(W2 W1 x_t + b) ** (1 / 16)``
(``exp(logsigmoid(.) / 16)`` written another way), ``S_t = diag(alpha_t) S_{t-1} + k_t^T v_t``,
``o_t = q_t S_t / sqrt(K)``, then the per-head norm gated by ``silu(W_g x)``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import inputs, make, rmsnorm

from postformer.arch.gla import GLA


def gla_naive(m: GLA, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    q = (x @ m.q_proj.weight.T).reshape(B, T, H, K)
    k = (x @ m.k_proj.weight.T).reshape(B, T, H, K)
    v = (x @ m.v_proj.weight.T).reshape(B, T, H, V)
    w1, w2 = m.gk_proj[0], m.gk_proj[1]
    alpha = torch.sigmoid(x @ w1.weight.T @ w2.weight.T + w2.bias) ** (1 / m.gate_logit_normalizer)
    alpha = alpha.reshape(B, T, H, K)
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / math.sqrt(K))
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    gate = (x @ m.g_proj.weight.T).reshape(B, T, H, V)
    o = rmsnorm(o, m.g_norm.weight, m.g_norm.eps) * F.silu(gate)
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


@pytest.mark.parametrize("opts", [{}, {"n_heads": 2, "expand_k": 1.0, "gate_logit_normalizer": 4.0}])
def test_gla_matches_naive(opts):
    m = make("gla", opts)
    with torch.no_grad():  # strong and weak decays alike, per key channel
        m.gk_proj[1].bias.copy_(torch.linspace(-4.0, 6.0, m.key_dim))
    x = inputs(T=37)  # two chunks of 16 and a ragged tail
    with torch.no_grad():
        torch.testing.assert_close(m(x), gla_naive(m, x), atol=1e-10, rtol=1e-8)
