"""HGRN2 (Qin et al. 2024) against its elementwise outer-product loop without log space, in
float64 with the mixer's own weights; the forget gate's float32 precision; option checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import D_MODEL, inputs, make, rmsnorm

from postformer.arch import MIXERS
from postformer.arch.hgrn2 import HGRN2


def hgrn2_naive(m: HGRN2, x: torch.Tensor, lb: float) -> torch.Tensor:
    """H_t = Diag(f_t) H_{t-1} + (1 - f_t)^T i_t,  y_t = o_t H_t, per head; LN -> out_proj."""
    B, T, _ = x.shape
    H, E = m.n_heads, m.head_dim
    f = lb + (1 - lb) * torch.sigmoid(x @ m.f_proj.weight.T)
    o = torch.sigmoid(x @ m.q_proj.weight.T)
    i = F.silu(x @ m.i_proj.weight.T)
    f, o, i = (t.reshape(B, T, H, E) for t in (f, o, i))
    state = x.new_zeros(B, H, E, E)
    ys = []
    for t in range(T):
        state = f[:, t, :, :, None] * state + (1 - f[:, t, :, :, None]) * i[:, t, :, None, :]
        ys.append((o[:, t, :, :, None] * state).sum(-2))  # (B, H, E)
    y = torch.stack(ys, dim=1).reshape(B, T, H * E)
    return rmsnorm(y, m.g_norm.weight, m.g_norm.eps) @ m.out_proj.weight.T


@pytest.mark.parametrize(
    ("opts", "layer_idx", "n_layers", "lb"),
    [({"expand_ratio": 8}, 0, 3, 0.0), ({"expand_ratio": 16}, 2, 3, 2 / 3),
     ({"expand_ratio": 8, "use_lower_bound": False}, 2, 4, 0.0), ({}, 1, 4, 0.25)],
)
def test_hgrn2_matches_naive(opts, layer_idx, n_layers, lb):
    m = make("hgrn2", opts, layer_idx=layer_idx, n_layers=n_layers)
    assert m.lower_bound == pytest.approx(lb)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(x), hgrn2_naive(m, x, lb), atol=1e-10, rtol=1e-8)
        if lb > 0:  # guards the test: the bound matters
            assert not torch.allclose(m(x), hgrn2_naive(m, x, 0.0), atol=1e-3)


def test_hgrn2_gate_is_stable_in_float32():
    """log f and 1 - f keep their precision in float32 where f -> 1 (u >> 0) and f -> lb."""
    m = HGRN2(D_MODEL, layer_idx=1, n_layers=4)  # lb = 0.25
    u = torch.tensor([-80.0, -5.0, 0.0, 5.0, 15.0, 30.0, 60.0])
    g, one_minus_f = m.forget_gate(u)
    assert g.dtype == torch.float32 and (g < 0).all()
    u64 = u.double()
    f64 = 0.25 + 0.75 * torch.sigmoid(u64)
    # float64 f is exact enough up to u = 15; beyond, 1 - f = 0.75 e^-u = -log f to first order
    tail = 0.75 * torch.exp(-u64)
    torch.testing.assert_close(g.double(), torch.where(u64 < 20, torch.log(f64), -tail), atol=0, rtol=1e-5)
    torch.testing.assert_close(one_minus_f.double(), torch.where(u64 < 20, 1 - f64, tail), atol=0, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("hgrn2", {"expand_ratio": 12}, "d_model 32 is not divisible by expand_ratio 12"),
        ("hgrn2", {"expand_ratio": 64}, "d_model 32 is not divisible by expand_ratio 64"),
        ("hgrn2", {"expand_ratio": 0}, "expand_ratio must be >= 1"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=f"mixer '{name}'.*{match}|{match}"):
        MIXERS[name].resolve_options(D_MODEL, opts)
