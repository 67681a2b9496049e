"""DeltaNet, Gated DeltaNet, RetNet and HGRN2 mixers against their papers' equations.

Each naive version below is written from the paper in float64, in a different form than the
mixer (column-vector delta rule with the transition matrix ``I - beta k k^T``, RetNet's
parallel form with the decay matrix D and complex rotations, HGRN2's elementwise outer
product loop without log space), using the mixer's own weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.deltanet import DeltaNet, GatedDeltaNet
from postformer.arch.hgrn2 import HGRN2
from postformer.arch.retnet import RetNet

D_MODEL = 32
F64 = torch.float64


def make(name: str, opts: dict, *, layer_idx: int = 0, n_layers: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    cls = MIXERS[name]
    m = cls(D_MODEL, cls.resolve_options(D_MODEL, opts), layer_idx=layer_idx, n_layers=n_layers).to(F64)
    with torch.no_grad():  # norm weights start at 1: spread them so a mix-up shows
        for pname, p in m.named_parameters():
            if pname.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def inputs(B: int = 2, T: int = 20, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(B, T, D_MODEL, dtype=F64)


def conv_silu(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """SiLU of the depthwise causal conv, tap by tap: y_t = sum_j w_j x_{t-W+1+j}."""
    T, W = x.shape[1], conv.weight.shape[-1]
    padded = F.pad(x, (0, 0, W - 1, 0))
    return F.silu(sum(padded[:, j : j + T] * conv.weight[:, 0, j] for j in range(W)))


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


# ---------------------------------------------------------------- DeltaNet / Gated DeltaNet


def deltanet_naive(m: DeltaNet, x: torch.Tensor) -> torch.Tensor:
    """Both papers' recurrence in the column-vector form, S [V, K]:
    S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t / sqrt(K)."""
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    q = conv_silu(x @ m.q_proj.weight.T, m.q_conv).reshape(B, T, H, K)
    k = conv_silu(x @ m.k_proj.weight.T, m.k_conv).reshape(B, T, H, K)
    v = conv_silu(x @ m.v_proj.weight.T, m.v_conv).reshape(B, T, H, V)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(x @ m.b_proj.weight.T)  # (B, T, H)
    if isinstance(m, GatedDeltaNet):
        dt = F.softplus(x @ m.a_proj.weight.T + m.dt_bias)
        alpha = torch.exp(-torch.exp(m.A_log) * dt)  # (B, T, H)
    else:
        alpha = torch.ones_like(beta)
    eye = torch.eye(K, dtype=x.dtype)
    S = x.new_zeros(B, H, V, K)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        transition = alpha[:, t, :, None, None] * (eye - bt * kt[..., :, None] * kt[..., None, :])
        S = S @ transition + bt * v[:, t, ..., :, None] * kt[..., None, :]
        outs.append((S @ q[:, t, ..., None])[..., 0] / math.sqrt(K))  # (B, H, V)
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    gate = (x @ m.g_proj.weight.T).reshape(B, T, H, V)
    o = rmsnorm(o, m.o_norm.weight, m.o_norm.eps) * F.silu(gate)
    return o.reshape(B, T, H * V) @ m.out_proj.weight.T


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("deltanet", {"n_heads": 2}),
        ("deltanet", {"n_heads": 4, "head_dim": 8, "expand_v": 1.5, "conv_size": 3}),
        ("gdn", {"n_heads": 2, "head_dim": 8}),
        ("gdn", {}),
    ],
)
def test_deltanet_matches_naive(name, opts):
    m = make(name, opts)
    if isinstance(m, GatedDeltaNet):
        with torch.no_grad():  # strong and weak decays alike
            m.A_log.copy_(torch.linspace(-2.0, 1.5, m.n_heads))
    x = inputs()
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, deltanet_naive(m, x), atol=1e-10, rtol=1e-8)


def test_gdn_decay_matters():
    """Guards the test above: a gdn whose decay is dropped differs from its naive loop."""
    m = make("gdn", {"n_heads": 2, "head_dim": 8})
    x = inputs()
    with torch.no_grad():
        m.A_log.fill_(0.0)
        ref = deltanet_naive(m, x)
        m._decay = lambda x: None  # no decay: DeltaNet
        assert not torch.allclose(m(x), ref, atol=1e-3)


def test_gdn_init_and_no_weight_decay():
    opts = GatedDeltaNet.resolve_options(64, {"n_heads": 64, "head_dim": 4})
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=64, n_layers=1, pattern=["gdn"], mixers={"gdn": {"n_heads": 64, "head_dim": 4}}))
    for m in (GatedDeltaNet(64, opts), model.blocks[0].mixer):  # the model's init leaves them alone
        A, dt = torch.exp(m.A_log), F.softplus(m.dt_bias)
        assert 0 < A.min() and A.max() <= 16.0 and A.max() > 8.0 and A.min() < 4.0  # uniform [0, 16]
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
        assert dt.max() / dt.min() > 5.0  # spread over time scales, not one value
        assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay


# ------------------------------------------------------------------------------ RetNet


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


# ------------------------------------------------------------------------------- HGRN2


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


# --------------------------------------------------------------------- options, models


def test_default_widths_follow_the_papers():
    o = DeltaNet.resolve_options(2048)
    assert (o.n_heads, o.head_dim, o.expand_v) == (16, 128, 1.0)
    o = GatedDeltaNet.resolve_options(2048)
    assert (o.n_heads, o.head_dim, o.expand_v) == (6, 256, 2.0)
    assert RetNet.resolve_options(2048).n_heads == 8
    assert RetNet.resolve_options(768).n_heads == 3
    assert (DeltaNet.resolve_options(192).n_heads, DeltaNet.resolve_options(192).head_dim) == (2, 96)
    o = GatedDeltaNet.resolve_options(64)
    assert (o.n_heads, o.head_dim) == (1, 48)
    assert HGRN2.resolve_options(2048).expand_ratio == 128
    assert HGRN2.resolve_options(64).expand_ratio == 64  # clamped: one head
    assert HGRN2.resolve_options(192).expand_ratio == 96  # 128 does not divide 192


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("deltanet", {"n_heads": 0}, "n_heads must be >= 1"),
        ("deltanet", {"n_heads": 2, "head_dim": 16, "expand_v": 0.3}, "expand_v 0.3 \\* head_dim 16"),
        ("deltanet", {"conv_size": 1}, "conv_size must be 0 .* or >= 2, got 1"),
        ("gdn", {"A_init_min": 5.0, "A_init_max": 2.0}, "A_init_min 5.0"),
        ("gdn", {"dt_min": 0.2, "dt_max": 0.1}, "dt_min 0.2"),
        ("gdn", {"heads": 2}, "has no option 'heads'"),
        ("retnet", {"n_heads": 3}, "key dim 32 .* not divisible by n_heads 3"),
        ("retnet", {"n_heads": 32}, "per head 1 .* must be even"),
        ("retnet", {"expand_v": 0.1}, "must be positive whole numbers"),
        ("hgrn2", {"expand_ratio": 12}, "d_model 32 is not divisible by expand_ratio 12"),
        ("hgrn2", {"expand_ratio": 64}, "d_model 32 is not divisible by expand_ratio 64"),
        ("hgrn2", {"expand_ratio": 0}, "expand_ratio must be >= 1"),
    ],
)
def test_option_errors(name, opts, match):
    with pytest.raises(ValueError, match=f"mixer '{name}'.*{match}|{match}"):
        MIXERS[name].resolve_options(D_MODEL, opts)


@pytest.mark.parametrize("name", ["deltanet", "gdn", "retnet", "hgrn2"])
def test_tiny_model_trains_fp32_and_bf16(name):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=64, n_layers=2, pattern=[name], vocab_size=256)
    model = LanguageModel(cfg)
    tokens = torch.randint(0, 256, (2, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses  # learns the batch
    model = model.to(torch.bfloat16)
    logits = model(tokens[:, :-1])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
