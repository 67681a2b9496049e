"""Attention: the backend (SDPA on CPU, flash-attn on GPUs) masks like an explicit causal
softmax, with GQA and with fewer queries than keys (a continuation)."""

from __future__ import annotations

import math

import torch

from postformer.arch import attend, attention_backend


def test_attend_matches_explicit_softmax():
    torch.manual_seed(5)
    B, Tq, Tk, H, Hkv, Dh = 2, 5, 9, 4, 2, 8
    q = torch.randn(B, Tq, H, Dh)
    k, v = torch.randn(B, Tk, Hkv, Dh), torch.randn(B, Tk, Hkv, Dh)
    assert attention_backend(q) == "sdpa"  # CPU never picks flash-attn
    o = attend(q, k, v)
    kr, vr = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) / math.sqrt(Dh)
    pos_q = torch.arange(Tk - Tq, Tk)[:, None]
    scores = scores.masked_fill(torch.arange(Tk)[None, :] > pos_q, float("-inf"))
    o_ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vr)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attend(q[:, -1:], k, v), o_ref[:, -1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attend(q, k[:, -Tq:], v[:, -Tq:]), attend(q, k[:, -Tq:], v[:, -Tq:], "sdpa"))


def test_qk_norm_normalises_each_heads_q_and_k():
    """qk_norm: q and k of every head have unit RMS (times the learned scale) before RoPE,
    checked against the projections normalised by hand."""
    import torch
    from postformer.arch import MIXERS

    torch.manual_seed(0)
    m = MIXERS["attn"](32, {"n_heads": 2, "qk_norm": True})
    with torch.no_grad():
        m.q_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32)
    q, k, v = m._qkv(x)
    raw = m.q_proj(x).view(2, 5, 2, 16)
    want = raw / raw.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * m.q_norm.weight
    torch.testing.assert_close(q, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k.pow(2).mean(-1), torch.ones(2, 5, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(v, m.v_proj(x).view(2, 5, 2, 16))
