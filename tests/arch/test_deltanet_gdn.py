"""DeltaNet and Gated DeltaNet (one class pair in arch/deltanet_gdn.py) against the papers' delta
rule, written in float64 in the column-vector form with the transition matrix
``I - beta k k^T``, using the mixer's own weights; Gated DeltaNet's decay and init; option checks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import D_MODEL, inputs, make, rmsnorm

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.deltanet_gdn import DeltaNet, GatedDeltaNet


def conv_silu(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """SiLU of the depthwise causal conv, tap by tap: y_t = sum_j w_j x_{t-W+1+j}."""
    T, W = x.shape[1], conv.weight.shape[-1]
    padded = F.pad(x, (0, 0, W - 1, 0))
    return F.silu(sum(padded[:, j : j + T] * conv.weight[:, 0, j] for j in range(W)))


def deltanet_naive(m: DeltaNet, x: torch.Tensor) -> torch.Tensor:
    """Both papers' recurrence in the column-vector form, S [V, K]:
    S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t / sqrt(K)."""
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    q = conv_silu(x @ m.q_proj.weight.T, m.q_conv).reshape(B, T, H, K)
    k = conv_silu(x @ m.k_proj.weight.T, m.k_conv).reshape(B, T, H, K)
    v = conv_silu(x @ m.v_proj.weight.T, m.v_conv).reshape(B, T, H, V)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(x @ m.b_proj.weight.T)  # (B, T, H)
    if isinstance(m, GatedDeltaNet):
        dt = F.softplus(x @ m.a_proj.weight.T + m.dt_bias)
        alpha = torch.exp(-torch.exp(m.A_log) * dt)  # (B, T, H)
    else:
        alpha = torch.ones_like(beta)
    eye = torch.eye(K, dtype=x.dtype)
    S = x.new_zeros(B, H, V, K)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        transition = alpha[:, t, :, None, None] * (eye - bt * kt[..., :, None] * kt[..., None, :])
        S = S @ transition + bt * v[:, t, ..., :, None] * kt[..., None, :]
        outs.append((S @ q[:, t, ..., None])[..., 0] / math.sqrt(K))  # (B, H, V)
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    gate = (x @ m.g_proj.weight.T).reshape(B, T, H, V)
    o = rmsnorm(o, m.o_norm.weight, m.o_norm.eps) * F.silu(gate)
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("deltanet", {"n_heads": 2}),
        ("deltanet", {"n_heads": 4, "head_dim": 8, "expand_v": 1.5, "conv_size": 3}),
        ("gdn", {"n_heads": 2, "head_dim": 8}),
        ("gdn", {}),
    ],
)
def test_deltanet_matches_naive(name, opts):
    m = make(name, opts)
    if isinstance(m, GatedDeltaNet):
        with torch.no_grad():  # strong and weak decays alike
            m.A_log.copy_(torch.linspace(-2.0, 1.5, m.n_heads))
    x = inputs()
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, deltanet_naive(m, x), atol=1e-10, rtol=1e-8)


def test_gdn_decay_matters():
    """Guards the test above: a gdn whose decay is dropped differs from its naive loop."""
    m = make("gdn", {"n_heads": 2, "head_dim": 8})
    x = inputs()
    with torch.no_grad():
        m.A_log.fill_(0.0)
        ref = deltanet_naive(m, x)
        m._decay = lambda x: None  # no decay: DeltaNet
        assert not torch.allclose(m(x), ref, atol=1e-3)


def test_gdn_init_and_no_weight_decay():
    opts = GatedDeltaNet.resolve_options(64, {"n_heads": 64, "head_dim": 4})
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=64, n_layers=1, pattern=["gdn"], mixers={"gdn": {"n_heads": 64, "head_dim": 4}}))
    for m in (GatedDeltaNet(64, opts), model.blocks[0].mixer):  # the model's init leaves them alone
        A, dt = torch.exp(m.A_log), F.softplus(m.dt_bias)
        assert 0 < A.min() and A.max() <= 16.0 and A.max() > 8.0 and A.min() < 4.0  # uniform [0, 16]
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
        assert dt.max() / dt.min() > 5.0  # spread over time scales, not one value
        assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("deltanet", {"n_heads": 0}, "n_heads must be >= 1"),
        ("deltanet", {"n_heads": 2, "head_dim": 16, "expand_v": 0.3}, "expand_v 0.3 \\* head_dim 16"),
        ("deltanet", {"conv_size": 1}, "conv_size must be 0 .* or >= 2, got 1"),
        ("gdn", {"A_init_min": 5.0, "A_init_max": 2.0}, "A_init_min 5.0"),
        ("gdn", {"dt_min": 0.2, "dt_max": 0.1}, "dt_min 0.2"),
        ("gdn", {"heads": 2}, "has no option 'heads'"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=f"mixer '{name}'.*{match}|{match}"):
        MIXERS[name].resolve_options(D_MODEL, opts)
