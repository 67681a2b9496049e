"""The Hawk/Griffin RG-LRU block (De et al. 2024) against a naive loop written from the paper's
equations with the mixer's own weights (float64); its widths and init, the bounded-gradient
sqrt, finite gradients where a -> 1; option checks."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_testing import D_MODEL, F64, conv_naive
from mixer_testing import make_cls as make

from postformer.arch import MIXERS, RGLRU
from postformer.arch.rglru import sqrt_bounded_grad


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rglru_naive(m: RGLRU, u: torch.Tensor) -> torch.Tensor:
    """Griffin's recurrent block (De et al. 2024, Figure 2c, equations 1-4) as a loop over time."""
    gate = gelu_tanh(u @ m.gate_proj.weight.T)
    x = conv_naive(u @ m.in_proj.weight.T, m.conv1d.weight, m.conv1d.bias)
    Wa, Wi = torch.block_diag(*m.gate_weight[0]), torch.block_diag(*m.gate_weight[1])  # (d_rnn, d_rnn)
    ba, bi = m.gate_bias[0].reshape(-1), m.gate_bias[1].reshape(-1)
    a = torch.sigmoid(m.Lambda)
    h = u.new_zeros(u.shape[0], m.d_rnn)
    hs = []
    for t in range(u.shape[1]):
        xt = x[:, t]
        r = torch.sigmoid(xt @ Wa + ba)
        i = torch.sigmoid(xt @ Wi + bi)
        at = a ** (m.c * r)
        h = at * h + torch.sqrt(1 - at**2) * (i * xt)
        hs.append(h)
    return (gate * torch.stack(hs, dim=1)) @ m.out_proj.weight.T


@pytest.mark.parametrize("opts", [{"n_heads": 4}, {"d_rnn": 24, "n_heads": 2, "conv_size": 2, "c": 4.0}])
def test_rglru_matches_naive(opts):
    m = make(RGLRU, opts)
    with torch.no_grad():
        for p in (m.gate_bias, m.conv1d.bias):
            p.add_(0.5 * torch.randn_like(p))
        m.Lambda.copy_(torch.linspace(-1.0, 6.0, m.d_rnn))  # short to long memories
        torch.manual_seed(2)
        u = torch.randn(2, 19, D_MODEL, dtype=F64)
        torch.testing.assert_close(m(u), rglru_naive(m, u), atol=1e-10, rtol=1e-8)


def test_rglru_widths_and_init():
    o = RGLRU.resolve_options(768, {})
    assert (o.d_rnn, o.n_heads) == (1024, 4)  # Hawk's 4/3 D; blocks of 256
    o = RGLRU.resolve_options(D_MODEL, {})
    assert o.d_rnn == 48 and 48 % o.n_heads == 0
    m = RGLRU(256, RGLRU.resolve_options(256, {}))
    a_c = torch.sigmoid(m.Lambda.double()) ** m.c
    assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
    assert a_c.max() - a_c.min() > 0.05  # spread over the range
    for p in (m.Lambda, m.gate_bias):
        assert getattr(p, "_no_weight_decay", False)


def test_sqrt_bounded_grad():
    x = torch.tensor([0.0, 1e-12, 0.25, 4.0], dtype=F64, requires_grad=True)
    y = sqrt_bounded_grad(x, 1000.0)
    y.sum().backward()
    torch.testing.assert_close(y, torch.sqrt(x.detach()))
    torch.testing.assert_close(x.grad, torch.tensor([1000.0, 1000.0, 1.0, 0.25], dtype=F64))


def test_rglru_gradients_stay_finite_when_a_nears_one():
    m = make(RGLRU, {"n_heads": 2})
    with torch.no_grad():
        m.gate_bias[0].fill_(-40.0)  # r_t ~ 4e-18: a_t -> 1, 1 - a_t^2 ~ 1e-17
    u = torch.randn(2, 9, D_MODEL, dtype=F64)
    m(u).square().sum().backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert m.gate_weight.grad.abs().max() < 1e6


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("rglru", {"d_rnn": 30, "n_heads": 4}, "mixer 'rglru': d_rnn 30 is not divisible by n_heads 4"),
        ("rglru", {"a_init_max": 1.0}, "a_init_max 1.0"),
        ("rglru", {"c": 0.0}, "c 0.0"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS[name].resolve_options(D_MODEL, opts)
