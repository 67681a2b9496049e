"""RWKV-7 (Peng et al. 2025) against a float64 loop of the paper's equations written with the
mixer's weights: the token shift, the LoRA gates, the state in the paper's [V, K] convention
``wkv_t = wkv_{t-1} (diag(w_t) - kk^T (a kk)) + v^T k~``, the per-head GroupNorm and the bonus;
then decoding against the parallel form, gradients to every parameter, the parameter count.
RWKV-7's channel mix (``layers.RWKV7ChannelMix``) against its formula, and as the block MLP of a
model (``mlp_kind="rwkv7"``) decoding step by step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import CONTRACT_D_MODEL as D_MODEL
from mixer_testing import (
    assert_cached_equals_full,
    assert_every_parameter_has_gradient,
    make_mixer,
    step_by_step,
    through_cache,
)

from postformer.arch import LanguageModel, ModelConfig
from postformer.arch.layers import RWKV7ChannelMix
from postformer.arch.rwkv7 import RWKV7

F64 = torch.float64


def rwkv7_naive(m: RWKV7, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """The time mix per token; wkv is [V, K] per head as in the paper. ``transpose`` swaps the
    low-rank term's read and write (a wrong variant, for the guard test)."""
    Bsz, T, d = x.shape
    H, N = m.n_heads, m.head_dim
    mu = dict(zip("rwkvag", m.token_mix))
    wkv = x.new_zeros(Bsz, H, N, N)
    prev = x.new_zeros(Bsz, d)
    outs = []
    for t in range(T):
        xt = x[:, t]
        mix = {c: xt + (prev - xt) * mu[c] for c in "rwkvag"}
        prev = xt
        r = mix["r"] @ m.r_proj.weight.T
        k = mix["k"] @ m.k_proj.weight.T
        v = mix["v"] @ m.v_proj.weight.T
        lw, la, lg = m.w_lora, m.a_lora, m.g_lora
        w = torch.exp(-math.exp(-0.5) * torch.sigmoid(lw.bias + torch.tanh(mix["w"] @ lw.w1) @ lw.w2))
        a = torch.sigmoid(la.bias + mix["a"] @ la.w1 @ la.w2)
        g = torch.sigmoid(mix["g"] @ lg.w1) @ lg.w2
        kk = (k * m.k_k).reshape(Bsz, H, N)
        kk = kk / torch.sqrt(kk.pow(2).sum(-1, keepdim=True) + 1e-6)  # l2_normalize's eps
        k = k * (1 + (a - 1) * m.k_a)
        r, k, v, a, w = (u.reshape(Bsz, H, N) for u in (r, k, v, a, w))
        low = kk[..., :, None] * (a * kk)[..., None, :]  # kk^T (a kk): [K, K]
        if transpose:
            low = low.transpose(-1, -2)
        wkv = wkv @ (torch.diag_embed(w) - low) + v[..., :, None] * k[..., None, :]
        o = (wkv @ r[..., :, None])[..., 0]  # (B, H, V)
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        o = (o - mean) / torch.sqrt(var + m.o_norm.eps)
        o = o * m.o_norm.weight.reshape(H, N) + m.o_norm.bias.reshape(H, N)
        o = o + (r * k * m.r_k).sum(-1, keepdim=True) * v
        outs.append((o.reshape(Bsz, d) * g) @ m.out_proj.weight.T)
    return torch.stack(outs, dim=1)


def spread(m: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """Every parameter off its init (LoRA first factors start at zero, norms at one), so that each
    path carries signal and a mix-up shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


CASES = [{"head_dim": 16, "decay_rank": 8, "a_rank": 4, "gate_rank": 12}, {}]  # 4 heads; 1 head of 64


@pytest.mark.parametrize("opts", CASES)
def test_rwkv7_matches_the_paper_equations(opts):
    m = spread(make_mixer("rwkv7", opts, dtype=F64))
    torch.manual_seed(3)
    x = torch.randn(2, 37, D_MODEL, dtype=F64)
    with torch.no_grad():
        truth = rwkv7_naive(m, x)
        torch.testing.assert_close(m(x), truth, atol=1e-10, rtol=1e-8)
        parts = through_cache(m, x, [9, 10, 11, 12, 13, 37])
        torch.testing.assert_close(parts, truth, atol=1e-10, rtol=1e-8)
        # guard: the transposed low-rank term (read and write swapped) is another model
        assert not torch.allclose(rwkv7_naive(m, x, transpose=True), truth, atol=1e-4)


def test_step_equals_parallel_float32():
    m = spread(make_mixer("rwkv7", CASES[0]))
    torch.manual_seed(1)
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        y = m(x)
        for split in (0, 1, 8):
            torch.testing.assert_close(step_by_step(m, x, split), y, atol=1e-5, rtol=1e-4, msg=f"split={split}")
        alone = m(x[:, -1:], m.new_cache(2))
    assert not torch.allclose(alone, y[:, -1:], atol=1e-3)  # the cache carries the past


def test_gradients_reach_every_parameter():
    m = spread(make_mixer("rwkv7", CASES[0]))
    m.train()
    x = torch.randn(2, 19, D_MODEL, requires_grad=True)
    m(x).square().sum().backward()
    assert_every_parameter_has_gradient(m)


def test_parameter_count_and_defaults():
    d = D_MODEL
    o = RWKV7.resolve_options(d, CASES[0])
    m = RWKV7(d, o)
    assert (m.n_heads, m.head_dim) == (4, 16)
    expected = 4 * d * d + 2 * d * (o.decay_rank + o.a_rank + o.gate_rank) + 13 * d
    assert sum(p.numel() for p in m.parameters()) == expected
    big = RWKV7.resolve_options(2048, {})  # the formulas at d = 2048, head 64
    assert (big.head_dim, big.decay_rank, big.a_rank, big.gate_rank) == (64, 128, 128, 224)
    log_w = -math.exp(-0.5) * torch.sigmoid(m.w_lora.bias)
    assert (log_w < 0).all() and (log_w > -0.61).all()
    for bad, word in [({"head_dim": 24}, "head_dim"), ({"decay_rank": 0}, "decay_rank")]:
        with pytest.raises(ValueError, match=word) as err:
            RWKV7.resolve_options(d, bad)
        assert "\n" not in str(err.value) and "rwkv7" in str(err.value)


# ------------------------------------------------------------------------- the channel mix


def test_channel_mix_matches_its_formula_and_decodes():
    torch.manual_seed(0)
    cm = spread(RWKV7ChannelMix(D_MODEL, 3 * D_MODEL, layer_idx=1, n_layers=3).to(F64))
    x = torch.randn(2, 11, D_MODEL, dtype=F64)
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    k = x + (prev - x) * cm.x_k
    truth = F.relu(k @ cm.in_proj.weight.T).pow(2) @ cm.out_proj.weight.T
    with torch.no_grad():
        torch.testing.assert_close(cm(x), truth, atol=1e-12, rtol=1e-10)
        cache = cm.new_cache(2, dtype=F64)
        parts = [cm(x[:, :4], cache)] + [cm(x[:, t : t + 1], cache) for t in range(4, 11)]
        torch.testing.assert_close(torch.cat(parts, dim=1), truth, atol=1e-12, rtol=1e-10)
    assert sum(p.numel() for p in cm.parameters()) == D_MODEL + 2 * D_MODEL * 3 * D_MODEL


def test_model_with_the_rwkv7_channel_mix_decodes_step_by_step():
    cfg = ModelConfig(vocab_size=50, d_model=D_MODEL, n_layers=2, pattern=["rwkv7", "mamba3"],
                      mixers={"rwkv7": {"head_dim": 16}, "mamba3": {"d_state": 8, "head_dim": 16}},
                      mlp_kind="rwkv7")
    torch.manual_seed(0)
    model = spread(LanguageModel(cfg)).double().eval()  # float64: a decoding mismatch is not rounding
    assert all(isinstance(b.mlp, RWKV7ChannelMix) and b.mlp.in_proj.out_features == 4 * D_MODEL
               for b in model.blocks)
    tokens = assert_cached_equals_full(model, 50)
    with torch.no_grad():  # the MLP's token shift is carried too: dropping its cache changes the result
        cache = model.new_cache(2)
        model(tokens[:, :6], cache)
        cache.mlp_layers = [m.new_cache(2) for m in (b.mlp for b in model.blocks)]
        assert not torch.allclose(model(tokens[:, 6:7], cache), model(tokens[:, :7])[:, 6:], atol=1e-4)
    model.train()
    logits = model(tokens)
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vectors_stacked_2d_are_not_weight_decayed():
    m = RWKV7(D_MODEL, RWKV7.resolve_options(D_MODEL, CASES[0]))
    assert m.token_mix._no_weight_decay and m.r_k._no_weight_decay
