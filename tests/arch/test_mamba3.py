"""Mamba-3 SISO (Lahoti et al. 2026) against a float64 loop of the paper's complex,
exponential-trapezoidal recurrence written with the mixer's weights: the state itself is rotated
each step (2x2 rotations of channel pairs), no cumulative angles, no gla. Then recurrent decoding
against the parallel form, gradients to every parameter, the options' checks and the init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import CONTRACT_D_MODEL as D_MODEL
from mixer_testing import (
    assert_every_parameter_has_gradient,
    make_mixer,
    step_by_step,
    through_cache,
)

from postformer.arch.mamba3 import Mamba3

F64 = torch.float64


def rot_pairs_naive(M: torch.Tensor, phi: torch.Tensor, R: int) -> torch.Tensor:
    """Rotate rows (i, R + i), i < R, of M [..., N, P] by phi [..., R] (one 2x2 rotation each)."""
    out = M.clone()
    for i in range(R):
        c, s = torch.cos(phi[..., i, None]), torch.sin(phi[..., i, None])
        a, b = M[..., i, :], M[..., R + i, :]
        out[..., i, :], out[..., R + i, :] = a * c - b * s, b * c + a * s
    return out


def mamba3_naive(m: Mamba3, x: torch.Tensor, sign: float = 1.0, rotate_lag: bool = True) -> torch.Tensor:
    """h_t = alpha_t Rot_t h_{t-1} + beta_t Rot_t B_{t-1}^T x_{t-1} + gamma_t B_t^T x_t,
    y_t = C_t h_t + D x_t, Rot_t the rotation of pairs by -dt_t theta_t; h is [N, P] per head.
    ``sign`` and ``rotate_lag`` make wrong variants (the guard test)."""
    Bsz, T, _ = x.shape
    H, P, G, N, R = m.nheads, m.head_dim, m.ngroups, m.d_state, m.n_angles
    z, xs, Bm, Cm, dt, A, lam, theta = (x @ m.in_proj.weight.T).split(m.splits, dim=-1)
    dt = F.softplus(dt + m.dt_bias)  # (B, T, H)
    A = -torch.clamp(F.softplus(A), min=m.options.A_floor)
    lam = torch.sigmoid(lam)
    theta = math.pi * torch.tanh(theta)  # (B, T, R)
    xs = xs.reshape(Bsz, T, H, P)
    group = torch.arange(H) // (H // G)

    def bc(u, norm, bias):
        u = u.reshape(Bsz, T, G, N)
        u = u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
        return u[:, :, group] + bias  # (B, T, H, N)

    Bm, Cm = bc(Bm, m.B_norm, m.B_bias), bc(Cm, m.C_norm, m.C_bias)
    h = x.new_zeros(Bsz, H, N, P)
    prev = x.new_zeros(Bsz, H, N, P)  # B_{t-1}^T x_{t-1}
    ys = []
    for t in range(T):
        alpha = torch.exp(dt[:, t] * A[:, t])[..., None, None]  # (B, H, 1, 1)
        beta = ((1 - lam[:, t]) * dt[:, t])[..., None, None] * alpha
        gamma = (lam[:, t] * dt[:, t])[..., None, None]
        phi = -sign * dt[:, t, :, None] * theta[:, t, None, :]  # (B, H, R)
        cur = Bm[:, t, :, :, None] * xs[:, t, :, None, :]  # (B, H, N, P)
        lag = rot_pairs_naive(prev, phi, R) if rotate_lag else prev
        h = alpha * rot_pairs_naive(h, phi, R) + beta * lag + gamma * cur
        prev = cur
        ys.append((Cm[:, t, :, :, None] * h).sum(-2) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, dim=1)  # (B, T, H, P)
    z = z.reshape(Bsz, T, H, P)
    if m.options.out_norm:  # rmsnorm per head, then the gate
        w = m.norm.weight.reshape(H, P)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps) * w * F.silu(z)
    else:
        y = y * F.silu(z)
    return y.reshape(Bsz, T, H * P) @ m.out_proj.weight.T


CASES = [
    {"d_state": 8, "head_dim": 16, "ngroups": 2},  # 8 heads, 2 rotating pairs of 8 channels
    {"d_state": 6, "head_dim": 32, "rope_fraction": 1.0, "out_norm": True},  # every channel rotates
    {"d_state": 4, "rope_fraction": 0.0},  # the real-valued control, one head of 64 (clamped)
]


def spread(m: Mamba3) -> Mamba3:
    """Steps of order 1 (so the rotations and the trapezoid's mix matter) and A, lambda, theta's
    projections, biases and D off their constants, so a mix-up shows."""
    torch.manual_seed(5)
    with torch.no_grad():
        m.dt_bias.copy_(torch.empty_like(m.dt_bias).uniform_(-1.0, 1.0))
        m.in_proj.weight.mul_(3.0)
        for p in (m.B_bias, m.C_bias, m.D, m.B_norm.weight, m.C_norm.weight):
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("opts", CASES)
def test_mamba3_matches_the_paper_recurrence(opts):
    m = spread(make_mixer("mamba3", opts, dtype=F64))
    torch.manual_seed(3)
    x = torch.randn(2, 37, D_MODEL, dtype=F64)
    with torch.no_grad():
        truth = mamba3_naive(m, x)
        torch.testing.assert_close(m(x), truth, atol=1e-10, rtol=1e-8)
        # and through the cache: a prefill, single steps, a multi-token continuation
        parts = through_cache(m, x, [9, 10, 11, 12, 13, 37])
        torch.testing.assert_close(parts, truth, atol=1e-10, rtol=1e-8)


def test_the_oracle_tells_the_rotation_apart():
    """Guards the oracle: the rotation turned the other way, or the lagged input left unrotated
    (rotated with the next step's cumulative angle), gives a different answer."""
    m = spread(make_mixer("mamba3", CASES[0], dtype=F64))
    x = torch.randn(1, 12, D_MODEL, dtype=F64)
    with torch.no_grad():
        y = m(x)
        assert not torch.allclose(mamba3_naive(m, x, sign=-1.0), y, atol=1e-3)
        assert not torch.allclose(mamba3_naive(m, x, rotate_lag=False), y, atol=1e-3)


@pytest.mark.parametrize("opts", CASES[:2])
def test_step_equals_parallel_float32(opts):
    m = make_mixer("mamba3", opts)
    torch.manual_seed(1)
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        y = m(x)
        for split in (0, 1, 8):
            torch.testing.assert_close(step_by_step(m, x, split), y, atol=1e-5, rtol=1e-4, msg=f"split={split}")
        alone = m(x[:, -1:], m.new_cache(2))
    assert not torch.allclose(alone, y[:, -1:], atol=1e-3)  # the cache carries the past


def test_gradients_reach_every_parameter():
    m = spread(make_mixer("mamba3", {"d_state": 8, "head_dim": 16, "ngroups": 2, "out_norm": True}))
    m.train()
    x = torch.randn(2, 19, D_MODEL, requires_grad=True)
    m(x).square().sum().backward()
    assert_every_parameter_has_gradient(m)
    assert x.grad.abs().sum() > 0


def test_parameter_count():
    d, o = D_MODEL, Mamba3.resolve_options(D_MODEL, {"d_state": 8, "head_dim": 16, "ngroups": 2})
    m = Mamba3(d, o)
    d_inner, H, R = Mamba3.dims(d, o)
    N, G = o.d_state, o.ngroups
    expected = d * (2 * d_inner + 2 * G * N + 3 * H + R) + d_inner * d + 2 * H * N + 2 * N + 2 * H
    assert sum(p.numel() for p in m.parameters()) == expected


def test_init_and_options():
    m = Mamba3(D_MODEL, Mamba3.resolve_options(D_MODEL, {"d_state": 8, "head_dim": 8}))
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.equal(m.B_bias, torch.ones(m.nheads, 8)) and torch.equal(m.C_bias, torch.ones(m.nheads, 8))
    assert torch.equal(m.D, torch.ones(m.nheads)) and m.n_angles == 2 and not hasattr(m, "conv1d")
    assert all(p._no_weight_decay for p in (m.dt_bias, m.D, m.B_bias, m.C_bias))
    for bad, word in [({"rope_fraction": 1.5}, "rope_fraction"), ({"A_floor": 0.0}, "A_floor"),
                      ({"head_dim": 48}, "head_dim"), ({"ngroups": 3, "head_dim": 32}, "ngroups"),
                      ({"dt_min": 0.0}, "dt_min"), ({"d_conv": 4}, "no option 'd_conv'")]:
        with pytest.raises(ValueError, match=word) as err:
            Mamba3.resolve_options(D_MODEL, bad)
        assert "\n" not in str(err.value) and "mamba3" in str(err.value)
