"""RetNet (Sun et al. 2023) against the paper's parallel form with the decay matrix D and
complex rotations, in float64 with the mixer's own weights; the rotary offset of a
continuation; option checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import D_MODEL, F64, inputs, make, rmsnorm

from postformer.arch import MIXERS
from postformer.arch.retnet import RetNet


def rotate(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """RoPE as complex rotation of the channel pairs (j, j + D/2) by the angles n * theta_j."""
    T, D = x.shape[1], x.shape[-1]
    rot = torch.polar(torch.ones(T, D // 2, dtype=x.dtype), torch.arange(T, dtype=x.dtype)[:, None] * theta)
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :]) * rot[:, None, :]
    return torch.cat([z.real, z.imag], dim=-1)


def retnet_naive(m: RetNet, x: torch.Tensor) -> torch.Tensor:
    """The paper's parallel form: Retention(X) = (Q K^T / sqrt(K) * D) V, D_nm = gamma^(n-m)."""
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    # theta_j = base^(-2j/K); the rotary's table is float32 (checked here), so use its values
    theta = m.options.rope_base ** (-torch.arange(K // 2, dtype=x.dtype) * 2 / K)
    torch.testing.assert_close(m.rotary.inv_freq.to(x.dtype), theta, atol=0, rtol=1e-6)
    theta = m.rotary.inv_freq.to(x.dtype)
    q = rotate((x @ m.q_proj.weight.T).reshape(B, T, H, K), theta)
    k = rotate((x @ m.k_proj.weight.T).reshape(B, T, H, K), theta)
    v = (x @ m.v_proj.weight.T).reshape(B, T, H, V)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=x.dtype))  # (H,)
    n = torch.arange(T, dtype=x.dtype)
    diff = n[:, None] - n[None, :]
    D = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), 0.0)  # (H, T, T)
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) / math.sqrt(K) * D
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)
    gate = (x @ m.g_proj.weight.T).reshape(B, T, H, V)
    o = rmsnorm(o, m.g_norm.weight, m.g_norm.eps) * F.silu(gate)
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


@pytest.mark.parametrize("opts", [{"n_heads": 4}, {"n_heads": 2, "expand_k": 0.5, "expand_v": 1.0}])
def test_retnet_matches_parallel_form(opts):
    m = make("retnet", opts)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(x), retnet_naive(m, x), atol=1e-10, rtol=1e-8)


def test_retnet_rotary_continues_from_the_offset():
    """A continuation rotates at positions 7.., not 0..: compare with the parallel form."""
    m = make("retnet", {"n_heads": 4})
    x = inputs(B=1, T=12)
    with torch.no_grad():
        cache = m.new_cache(1, dtype=F64)
        m(x[:, :7], cache)
        assert cache.offset == 7
        torch.testing.assert_close(m(x[:, 7:], cache), retnet_naive(m, x)[:, 7:], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("retnet", {"n_heads": 3}, "key dim 32 .* not divisible by n_heads 3"),
        ("retnet", {"n_heads": 32}, "per head 1 .* must be even"),
        ("retnet", {"expand_v": 0.1}, "must be positive whole numbers"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=f"mixer '{name}'.*{match}|{match}"):
        MIXERS[name].resolve_options(D_MODEL, opts)
