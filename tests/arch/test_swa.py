"""Sliding-window attention against a banded softmax and a naive RoPE written per position
(float64); the window matters, a window >= T is attention, the cache stays bounded; option
checks."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_testing import D_MODEL, F64
from mixer_testing import make_cls as make

from postformer.arch import MIXERS, Attention, SlidingWindowAttention
from postformer.arch.swa import _blocked_sliding_attend, sliding_window_attend


def banded_softmax(q, k, v, window):
    """q [B, Tq, H, D], k/v [B, Tk, Hkv, D]; queries are the last Tq positions."""
    H, Hkv, Tq, Tk = q.shape[2], k.shape[2], q.shape[1], k.shape[1]
    kr, vr = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) / math.sqrt(q.shape[-1])
    pq, pk = torch.arange(Tk - Tq, Tk)[:, None], torch.arange(Tk)[None, :]
    scores = scores.masked_fill((pk > pq) | (pk <= pq - window), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vr)


@pytest.mark.parametrize("window", [1, 3, 16, 70])
@pytest.mark.parametrize(("Tq", "Tk"), [(300, 300), (290, 300), (1, 9), (7, 12), (5, 5)])
def test_sliding_window_attend_matches_banded_softmax(window, Tq, Tk):
    torch.manual_seed(3)
    q = torch.randn(2, Tq, 4, 8, dtype=F64)
    k, v = torch.randn(2, Tk, 2, 8, dtype=F64), torch.randn(2, Tk, 2, 8, dtype=F64)
    ref = banded_softmax(q, k, v, window)
    torch.testing.assert_close(sliding_window_attend(q, k, v, window), ref)
    kr, vr = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    for block in (window, window + 5):  # the blocked path with small blocks, whatever the length
        torch.testing.assert_close(_blocked_sliding_attend(q, kr, vr, window, block), ref)


def rope_naive(x: torch.Tensor, base: float, offset: int = 0) -> torch.Tensor:
    """Rotate-half RoPE, written per position and frequency: x [B, T, H, D]."""
    D = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        for f in range(D // 2):
            theta = (offset + t) * base ** (-2 * f / D)
            c, s = math.cos(theta), math.sin(theta)
            x1, x2 = x[:, t, :, f], x[:, t, :, f + D // 2]
            out[:, t, :, f] = x1 * c - x2 * s
            out[:, t, :, f + D // 2] = x2 * c + x1 * s
    return out


def test_swa_mixer_matches_naive():
    m = make(SlidingWindowAttention, {"n_heads": 4, "n_kv_heads": 2, "window": 5})
    torch.manual_seed(4)
    u = torch.randn(2, 17, D_MODEL, dtype=F64)
    Dh = m.head_dim
    q = rope_naive((u @ m.q_proj.weight.T).unflatten(-1, (4, Dh)), m.options.rope_base)
    k = rope_naive((u @ m.k_proj.weight.T).unflatten(-1, (2, Dh)), m.options.rope_base)
    v = (u @ m.v_proj.weight.T).unflatten(-1, (2, Dh))
    ref = banded_softmax(q, k, v, 5).flatten(2) @ m.out_proj.weight.T
    with torch.no_grad():
        torch.testing.assert_close(m(u), ref)
        attn = Attention(D_MODEL, Attention.resolve_options(D_MODEL, {"n_heads": 4, "n_kv_heads": 2})).to(F64)
        attn.load_state_dict(m.state_dict())
        assert not torch.allclose(m(u), attn(u), atol=1e-3)  # the window matters at T > window


def test_swa_window_at_least_t_equals_attention():
    m = make(SlidingWindowAttention, {"n_heads": 4, "window": 17})
    attn = Attention(D_MODEL, Attention.resolve_options(D_MODEL, {"n_heads": 4})).to(F64)
    attn.load_state_dict(m.state_dict())
    u = torch.randn(2, 17, D_MODEL, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(m(u), attn(u))


def test_swa_long_sequence_cache_is_bounded_and_exact():
    """T = 150 > 2 * 64 runs the blocked path in the parallel forward; the cache stays W - 1."""
    m = make(SlidingWindowAttention, {"n_heads": 2, "window": 8})
    torch.manual_seed(5)
    u = torch.randn(2, 150, D_MODEL, dtype=F64)
    with torch.no_grad():
        y = m(u)
        cache = m.new_cache(2, dtype=F64)
        parts = [m(u[:, :100], cache)]
        assert cache.k.shape == (2, 7, 2, 16) and cache.position == 100
        parts += [m(u[:, t : t + 1], cache) for t in range(100, 140)]
        parts.append(m(u[:, 140:], cache))
        assert cache.k.shape[1] == 7 and cache.position == 150
    torch.testing.assert_close(torch.cat(parts, dim=1), y)


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("swa", {"window": 0}, "mixer 'swa': window must be >= 1, got 0"),
        ("swa", {"n_heads": 5}, "mixer 'swa': d_model 32 is not divisible by n_heads 5"),
        ("swa", {"n_heads": 4, "n_kv_heads": 3}, "mixer 'swa': n_heads 4 is not divisible by n_kv_heads 3"),
        ("swa", {"windw": 3}, "has no option 'windw'"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS[name].resolve_options(D_MODEL, opts)
