"""Mamba-2 (Dao & Gu 2024) against its naive SSM loop written from the paper; its parameter
and step-size init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import CONTRACT_D_MODEL as D_MODEL
from mixer_testing import make_mixer

from postformer.arch.mamba2 import Mamba2


def mamba2_naive(m: Mamba2, x: torch.Tensor) -> torch.Tensor:
    """Mamba-2 written out from the paper, looping over time; h is [P, N] per head."""
    Bsz, T, _ = x.shape
    H, P, G, N, W = m.nheads, m.head_dim, m.ngroups, m.d_state, m.conv_size
    zxbcdt = x @ m.in_proj.weight.T
    z, xBC, dt = zxbcdt.split([m.d_inner, m.conv_dim, H], dim=-1)
    w = m.conv1d.weight[:, 0, :]  # (C, W)
    padded = torch.cat([xBC.new_zeros(Bsz, W - 1, m.conv_dim), xBC], dim=1)
    conv = sum(padded[:, j : j + T] * w[:, j] for j in range(W)) + m.conv1d.bias
    xBC = F.silu(conv)
    xs, Bm, Cm = xBC.split([m.d_inner, G * N, G * N], dim=-1)
    xs = xs.reshape(Bsz, T, H, P)
    Bm, Cm = Bm.reshape(Bsz, T, G, N), Cm.reshape(Bsz, T, G, N)
    group = torch.arange(H) // (H // G)  # head h reads B, C of group h // (H / G)
    dt = F.softplus(dt + m.dt_bias)  # (B, T, H)
    A = -torch.exp(m.A_log)  # (H,)
    h = x.new_zeros(Bsz, H, P, N)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + dt[:, t, :, None, None] * xs[:, t, :, :, None] * Bm[:, t, group, None, :]
        ys.append((h * Cm[:, t, group, None, :]).sum(-1) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, dim=1).reshape(Bsz, T, m.d_inner)
    y = y * F.silu(z)
    yg = y.reshape(Bsz, T, G, m.d_inner // G)
    yg = yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + m.norm.eps)
    y = yg.reshape(Bsz, T, m.d_inner) * m.norm.weight
    return y @ m.out_proj.weight.T


@pytest.mark.parametrize("opts", [{"d_state": 8, "head_dim": 16, "ngroups": 2}, {"d_state": 4, "head_dim": 32}])
def test_mamba2_matches_naive_ssm(opts):
    m = make_mixer("mamba2", opts, dtype=torch.float64)
    with torch.no_grad():
        m.A_log.copy_(torch.linspace(-1.0, 2.0, m.nheads))  # mild to strong decays
        torch.manual_seed(3)
        x = torch.randn(2, 33, D_MODEL, dtype=torch.float64)
        torch.testing.assert_close(m(x), mamba2_naive(m, x), atol=1e-10, rtol=1e-8)


def test_mamba2_params_and_dt_init():
    m = Mamba2(D_MODEL, Mamba2.resolve_options(D_MODEL, {"d_state": 8, "head_dim": 8}))
    for p in (m.A_log, m.dt_bias, m.D):
        assert getattr(p, "_no_weight_decay", False)
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    A = torch.exp(m.A_log)
    assert A.min() >= 1.0 and A.max() <= 16.0
    assert torch.equal(m.D, torch.ones(m.nheads))
