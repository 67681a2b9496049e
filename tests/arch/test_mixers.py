"""Mixers: recurrent decoding equals the parallel form; Mamba-2 equals its naive SSM loop;
attention's backend masks like an explicit softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from postformer.arch import MIXERS, attend, attention_backend
from postformer.arch.mamba2 import Mamba2

D_MODEL = 64
# (mixer name, options): small but non-trivial shapes, GQA and several B/C groups included.
CASES = [
    ("attn", {"n_heads": 4}),
    ("attn", {"n_heads": 4, "n_kv_heads": 2}),
    ("mamba", {"d_state": 8}),
    ("rglru", {"n_heads": 4}),
    ("swa", {"n_heads": 4, "n_kv_heads": 2, "window": 4}),  # continuation chunks longer than the window
    ("swa", {"n_heads": 4, "window": 8}),
    ("mamba2", {"d_state": 16, "head_dim": 16, "ngroups": 2}),
    ("mamba2", {"d_state": 8}),  # head_dim clamps to 64: 2 heads
    ("gla", {}),
    ("gla", {"n_heads": 2, "expand_k": 1.0}),
    ("deltanet", {"n_heads": 2}),
    ("gdn", {"n_heads": 2, "head_dim": 16}),
    ("gdn", {}),  # 1 head of 48 key, 96 value channels
    ("retnet", {"n_heads": 4}),
    ("hgrn2", {"expand_ratio": 16}),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in opts.items()) or 'default'}" for name, opts in CASES]


def make_mixer(name: str, opts: dict, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    cls = MIXERS[name]
    mixer = cls(D_MODEL, cls.resolve_options(D_MODEL, opts)).to(dtype)
    # Spread the parameters that start at constants, so a mix-up of D, norms, biases shows.
    with torch.no_grad():
        for pname, p in mixer.named_parameters():
            if pname.endswith(("D", "norm.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    return mixer.eval()


def step_by_step(mixer, x: torch.Tensor, split: int) -> torch.Tensor:
    """Prefill x[:, :split] (skipped when split == 0), then one step per remaining token."""
    cache = mixer.new_cache(x.shape[0], dtype=x.dtype)
    outs = [mixer(x[:, :split], cache)] if split > 0 else []
    outs += [mixer(x[:, t : t + 1], cache) for t in range(split, x.shape[1])]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_step_equals_parallel(name, opts):
    mixer = make_mixer(name, opts)
    torch.manual_seed(1)
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        y = mixer(x)  # (B, T, D)
        for split in (0, 1, int(torch.randint(2, 20, ()).item())):
            y_rec = step_by_step(mixer, x, split)
            torch.testing.assert_close(y_rec, y, atol=1e-5, rtol=1e-4, msg=f"split={split}")


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_chunked_continuation(name, opts):
    """A multi-token call on a non-empty cache (attention's bottom-right causal mask)."""
    mixer = make_mixer(name, opts)
    torch.manual_seed(2)
    x = torch.randn(3, 19, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        cache = mixer.new_cache(3)
        parts = [mixer(x[:, :5], cache), mixer(x[:, 5:12], cache), mixer(x[:, 12:13], cache), mixer(x[:, 13:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_cache_carries_the_past(name, opts):
    """Guards the test above: stepping without history gives a different output."""
    mixer = make_mixer(name, opts)
    x = torch.randn(1, 8, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        y_last_alone = mixer(x[:, -1:], mixer.new_cache(1))
    assert not torch.allclose(y_last_alone, y[:, -1:], atol=1e-3)


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
