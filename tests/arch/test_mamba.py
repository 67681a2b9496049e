"""Mamba-1 (Gu & Dao 2023) against a naive loop written from the paper with the mixer's own
weights (float64); its init; option checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import D_MODEL, F64, conv_naive
from mixer_testing import make_cls as make

from postformer.arch import MIXERS, LanguageModel, Mamba, ModelConfig


def mamba_naive(m: Mamba, u: torch.Tensor) -> torch.Tensor:
    """Mamba-1 (Gu & Dao 2023, Algorithm 2 and Figure 3) as a loop over time."""
    E, N, R = m.d_inner, m.d_state, m.dt_rank
    xz = u @ m.in_proj.weight.T
    x, z = xz[..., :E], xz[..., E:]
    x = F.silu(conv_naive(x, m.conv1d.weight, m.conv1d.bias))
    A = -torch.exp(m.A_log)  # (E, N)
    h = u.new_zeros(u.shape[0], E, N)
    ys = []
    for t in range(u.shape[1]):
        xt = x[:, t]  # (B, E)
        proj = xt @ m.x_proj.weight.T
        dt_raw, Bt, Ct = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        delta = F.softplus(dt_raw @ m.dt_proj.weight.T + m.dt_proj.bias)  # (B, E)
        h = torch.exp(delta[:, :, None] * A) * h + (delta * xt)[:, :, None] * Bt[:, None, :]
        y = torch.einsum("ben,bn->be", h, Ct) + m.D * xt
        ys.append(y * F.silu(z[:, t]))
    return torch.stack(ys, dim=1) @ m.out_proj.weight.T


@pytest.mark.parametrize("opts", [{"d_state": 4, "dt_rank": 3}, {"expand": 1, "conv_size": 3}])
def test_mamba_matches_naive(opts):
    m = make(Mamba, opts)
    with torch.no_grad():
        for p in (m.A_log, m.D, m.dt_proj.bias, m.conv1d.bias):
            p.add_(0.5 * torch.randn_like(p))
        torch.manual_seed(1)
        u = torch.randn(2, 19, D_MODEL, dtype=F64)
        torch.testing.assert_close(m(u), mamba_naive(m, u), atol=1e-10, rtol=1e-8)


def test_mamba_init():
    m = Mamba(64, Mamba.resolve_options(64, {"d_state": 6}))
    assert m.dt_rank == 4 and m.d_inner == 128
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 7.0)).expand(128, 6))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.log().std() > 0.5  # log-uniform over two decades, not a constant
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    for p in (m.A_log, m.D, m.dt_proj.bias):
        assert getattr(p, "_no_weight_decay", False)
    # The language model's init leaves dt_proj (marked _keep_init) alone.
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(d_model=64, n_layers=2, pattern=["mamba"], vocab_size=32))
    mixer = lm.blocks[0].mixer
    assert F.softplus(mixer.dt_proj.bias).max() <= 0.1 * 1.001
    assert mixer.dt_proj.weight.abs().max() > 0.2  # uniform(+-0.5), not normal(0, 0.02)


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("mamba", {"d_state": 0}, "mixer 'mamba': d_state must be >= 1"),
        ("mamba", {"dt_min": 0.2, "dt_max": 0.1}, "dt_min 0.2, dt_max 0.1"),
        ("mamba", {"dt_rank": 0}, "dt_rank must be >= 1"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS[name].resolve_options(D_MODEL, opts)
