"""mLSTM (arch/mlstm.py) against the xLSTM papers' STABILISED recurrence (running maximum m_t,
memory and normaliser scaled by exp(-m_t), floor exp(-m_t)) written as a float64 loop with the
mixer's own weights; long sequences with large input-gate preactivations in fp32 and bf16 (no
inf/nan, agreement with the float64 loop); cached decoding equals the parallel form; gradients
reach every parameter; the xLSTM 7B init; option errors; the parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import (
    D_MODEL,
    F64,
    assert_cached_equals_full,
    assert_every_parameter_has_gradient,
    inputs,
    make,
    rmsnorm,
    through_cache,
)

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.mlstm import MLSTM

CASES = [
    {},  # 1 head: key 16, value 32
    {"n_heads": 2, "expand_k": 1.0},
    {"n_heads": 4, "expand_v": 2.0, "gate_soft_cap": 5.0},
]


def mlstm_naive(m: MLSTM, x: torch.Tensor, floor_hits: list | None = None) -> torch.Tensor:
    """xLSTM 7B's mLSTM, stabilised, in float64 (row vectors; C [K, V], n [K], m scalar per head):

        i~ = cap tanh((x W_i + b_i) / cap),  f~ = cap tanh((x W_f + b_f) / cap),  log f = logsigmoid(f~)
        m_t = max(log f_t + m_{t-1}, i~_t),  f'_t = exp(log f_t + m_{t-1} - m_t),  i'_t = exp(i~_t - m_t)
        C_t = f'_t C_{t-1} + i'_t k_t^T v_t,  n_t = f'_t n_{t-1} + i'_t k_t   (k / sqrt(K))
        h_t = q_t C_t / max(|q_t . n_t|, exp(-m_t))
        y_t = W_out (rmsnorm(h_t) * sigmoid(x_t W_o))   (per head)

    ``floor_hits`` (a list) receives, per step, the fraction of (batch, head) where the floor won.
    """
    B, T, _ = x.shape
    H, K, V, cap = m.n_heads, m.head_k_dim, m.head_v_dim, m.cap
    x = x.to(F64)
    W = {name: p.detach().to(F64) for name, p in m.named_parameters()}
    q = (x @ W["q_proj.weight"].T).reshape(B, T, H, K)
    k = (x @ W["k_proj.weight"].T).reshape(B, T, H, K) / math.sqrt(K)
    v = (x @ W["v_proj.weight"].T).reshape(B, T, H, V)
    i_pre = cap * torch.tanh((x @ W["i_proj.weight"].T + W["i_proj.bias"]) / cap)  # (B, T, H)
    log_f = F.logsigmoid(cap * torch.tanh((x @ W["f_proj.weight"].T + W["f_proj.bias"]) / cap))
    C = x.new_zeros(B, H, K, V)
    n = x.new_zeros(B, H, K)
    m_prev = x.new_zeros(B, H)
    hs = []
    for t in range(T):
        m_t = torch.maximum(log_f[:, t] + m_prev, i_pre[:, t])
        f_s, i_s = torch.exp(log_f[:, t] + m_prev - m_t), torch.exp(i_pre[:, t] - m_t)  # (B, H)
        kt = k[:, t]
        C = f_s[..., None, None] * C + i_s[..., None, None] * kt[..., :, None] * v[:, t, :, None, :]
        n = f_s[..., None] * n + i_s[..., None] * kt
        num = (q[:, t, :, None, :] @ C)[..., 0, :]  # (B, H, V)
        den = (q[:, t] * n).sum(-1).abs()  # (B, H)
        floor = torch.exp(-m_t)
        if floor_hits is not None:
            floor_hits.append((floor > den).double().mean().item())
        hs.append(num / torch.maximum(den, floor)[..., None])
        m_prev = m_t
    h = torch.stack(hs, dim=1)  # (B, T, H, V)
    gate = torch.sigmoid(x @ W["g_proj.weight"].T).reshape(B, T, H, V)
    o = rmsnorm(h, W["o_norm.weight"], m.o_norm.eps) * gate
    return o.reshape(B, T, H * V) @ W["out_proj.weight"].T


def randomize_gates(m: MLSTM, i_bias: float | list = 0.0, f_bias: float = 2.0, scale: float = 1.0) -> MLSTM:
    """Data-dependent gates (the init's are constant): weights normal(0, scale), given biases plus
    a spread; i_bias a number or one per head."""
    with torch.no_grad():
        for proj, bias in ((m.i_proj, i_bias), (m.f_proj, f_bias)):
            proj.weight.copy_(scale * torch.randn_like(proj.weight))
            proj.bias.copy_(torch.as_tensor(bias, dtype=proj.bias.dtype) + torch.randn_like(proj.bias))
    return m


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_matches_stabilised_naive(opts):
    m = randomize_gates(make("mlstm", opts))
    x = inputs(T=40)
    hits: list[float] = []
    with torch.no_grad():
        torch.testing.assert_close(m(x), mlstm_naive(m, x, hits), atol=1e-10, rtol=1e-10)
    assert 0 < sum(hits) / len(hits) < 1  # both branches of the max are exercised


def test_normaliser_and_gates_matter():
    """Guards the test above: dropping the normaliser (den = 1) or the input gate changes the output."""
    m = randomize_gates(make("mlstm", {"n_heads": 2}))
    x = inputs(T=20)
    with torch.no_grad():
        ref = mlstm_naive(m, x)
        m.cap = 5.0  # the soft cap enters the gates: a different cap, a different output
        assert not torch.allclose(m(x), ref, atol=1e-3)
        m.cap = 15.0
        m.i_proj.weight.zero_()
        assert not torch.allclose(m(x), ref, atol=1e-3)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_long_sequence_large_input_gates(dtype, tol):
    """1000 steps, input-gate preactivations near +cap on one head and -cap on the other (exp(i~)
    spans e^-15 .. e^15), forget gates near 1 (long memory): finite, and equal to the float64 loop
    on the same (rounded) weights and inputs within the dtype's precision."""
    torch.manual_seed(3)
    m = randomize_gates(make("mlstm", {"n_heads": 2}), i_bias=[40.0, -40.0], f_bias=6.0, scale=0.5)
    x = inputs(B=1, T=1000)
    m, x = m.to(dtype), x.to(dtype)
    with torch.no_grad():
        y = m(x)
        ref = mlstm_naive(m, x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    err = (y.to(F64) - ref).abs().max() / ref.abs().max()
    assert err < tol, f"max error {err:.2e} relative to the output's scale"


def test_fp16_runs_the_op_in_float32():
    """fp16's range ends at 6e-5, above the input gate's key factor exp(i~ - cap): still finite and close."""
    m = randomize_gates(make("mlstm", {"n_heads": 2}), i_bias=[-40.0, 0.0], scale=0.5).to(torch.float16)
    x = inputs(B=1, T=100).to(torch.float16)
    with torch.no_grad():
        y, ref = m(x), mlstm_naive(m, x)
    assert torch.isfinite(y).all()
    assert (y.to(F64) - ref).abs().max() / ref.abs().max() < 2e-2


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_step_equals_parallel(opts):
    """Prefill, a multi-token continuation and single steps through the cache equal one call."""
    m = randomize_gates(make("mlstm", opts))
    x = inputs(T=80)  # the one call crosses gla's 64-step chunks
    with torch.no_grad():
        y = m(x)
        parts = through_cache(m, x, [5, 70, *range(71, 81)])
        torch.testing.assert_close(parts, y, atol=1e-10, rtol=1e-10)
        assert not torch.allclose(m(x[:, -1:], m.new_cache(2, dtype=F64)), y[:, -1:], atol=1e-3)


def test_model_generation_cached_equals_full():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, pattern=["mlstm"], mixers={"mlstm": {"n_heads": 2}})
    model = LanguageModel(cfg).eval()
    for block in model.blocks:
        randomize_gates(block.mixer, scale=0.3)
    assert_cached_equals_full(model, cfg.vocab_size)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_gradients_reach_every_parameter(opts):
    m = randomize_gates(make("mlstm", opts))
    m(inputs(T=70)).pow(2).sum().backward()
    assert_every_parameter_has_gradient(m)


def test_xlstm_7b_init_survives_the_model_init():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=64, n_layers=1, pattern=["mlstm"], mixers={"mlstm": {"n_heads": 4}}))
    m = model.blocks[0].mixer
    assert (m.i_proj.weight == 0).all() and (m.f_proj.weight == 0).all()
    torch.testing.assert_close(m.i_proj.bias, torch.full((4,), -10.0))
    torch.testing.assert_close(m.f_proj.bias, torch.tensor([3.0, 4.0, 5.0, 6.0]))
    # the model's width-rule init, sqrt(2 / (5 * 64)) = 0.079, reached the rest
    torch.testing.assert_close(m.q_proj.weight.std().item(), (2 / (5 * 64)) ** 0.5, rtol=0.1, atol=0)


@pytest.mark.parametrize("opts", CASES, ids=str)
def test_parameter_count(opts):
    """q, k: d * key_dim each; v, output gate, out_proj: d * value_dim each; input and forget
    gates: (d + 1) * H each; per-head norm: value_dim / H."""
    m = make("mlstm", opts)
    Kt, Vt, H = m.key_dim, m.value_dim, m.n_heads
    assert sum(p.numel() for p in m.parameters()) == 2 * D_MODEL * Kt + 3 * D_MODEL * Vt + 2 * H * (D_MODEL + 1) + Vt // H


def test_default_heads():
    """At most 128 value channels per head by default (the Triton gla kernels take V + 1 <= 256)."""
    for d_model, heads in ((32, 1), (768, 6), (1024, 8), (4096, 32)):
        assert MLSTM.resolve_options(d_model).n_heads == heads


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"gate_soft_cap": 0.0}, "mixer 'mlstm': gate_soft_cap must be in \\(0, 40.0\\] .*, got 0.0"),
        ({"gate_soft_cap": 50.0}, "mixer 'mlstm': gate_soft_cap must be in \\(0, 40.0\\] .*, got 50.0"),
        ({"n_heads": 3}, "mixer 'mlstm': key dim 16 \\(d_model 32 \\* expand_k 0.5\\) is not divisible by n_heads 3"),
        ({"expand_k": 0.3}, "mixer 'mlstm': d_model 32 \\* expand_k 0.3 .* must be positive whole numbers"),
        ({"cap": 15.0}, "mixer 'mlstm' has no option 'cap'"),
    ],
)
def test_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS["mlstm"].resolve_options(D_MODEL, opts)
