"""Mamba-1, the Hawk/Griffin RG-LRU block and sliding-window attention against naive loops
written from their papers' equations with the mixers' own weights (float64), plus their
inits, option checks, bounded caches and a few training steps of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from postformer.arch import (
    MIXERS,
    RGLRU,
    Attention,
    LanguageModel,
    Mamba,
    ModelConfig,
    SlidingWindowAttention,
)
from postformer.arch.rglru import sqrt_bounded_grad
from postformer.arch.swa import _blocked_sliding_attend, sliding_window_attend

D_MODEL = 32
F64 = torch.float64


def make(cls, opts: dict, seed: int = 0, d_model: int = D_MODEL):
    torch.manual_seed(seed)
    return cls(d_model, cls.resolve_options(d_model, opts)).to(F64).eval()


def conv_naive(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal conv written per time step: x [B, T, C], weight [C, 1, W]."""
    W = weight.shape[-1]
    out = []
    for t in range(x.shape[1]):
        acc = torch.zeros_like(x[:, 0]) if bias is None else bias.expand_as(x[:, 0]).clone()
        for j in range(W):
            s = t - (W - 1) + j
            if s >= 0:
                acc = acc + weight[:, 0, j] * x[:, s]
        out.append(acc)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------- mamba


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


# ---------------------------------------------------------------------------------- rglru


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


# ---------------------------------------------------------------------------------- swa


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


# --------------------------------------------------------------------------- options, training


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("mamba", {"d_state": 0}, "mixer 'mamba': d_state must be >= 1"),
        ("mamba", {"dt_min": 0.2, "dt_max": 0.1}, "dt_min 0.2, dt_max 0.1"),
        ("mamba", {"dt_rank": 0}, "dt_rank must be >= 1"),
        ("rglru", {"d_rnn": 30, "n_heads": 4}, "mixer 'rglru': d_rnn 30 is not divisible by n_heads 4"),
        ("rglru", {"a_init_max": 1.0}, "a_init_max 1.0"),
        ("rglru", {"c": 0.0}, "c 0.0"),
        ("swa", {"window": 0}, "mixer 'swa': window must be >= 1, got 0"),
        ("swa", {"n_heads": 5}, "mixer 'swa': d_model 32 is not divisible by n_heads 5"),
        ("swa", {"n_heads": 4, "n_kv_heads": 3}, "mixer 'swa': n_heads 4 is not divisible by n_kv_heads 3"),
        ("swa", {"windw": 3}, "has no option 'windw'"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS[name].resolve_options(D_MODEL, opts)


@pytest.mark.parametrize("name", ["mamba", "rglru", "swa"])
def test_tiny_model_trains(name):
    torch.manual_seed(6)
    cfg = ModelConfig(d_model=64, n_layers=2, pattern=[name], vocab_size=256, mixers={"swa": {"window": 8}})
    model = LanguageModel(cfg)
    tokens = torch.randint(0, 256, (2, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    model.to(torch.bfloat16)
    model.zero_grad()
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    assert math.isfinite(loss.item()) and abs(loss.item() - losses[-1]) < 0.5
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)
