"""RWKV-7 "Goose" time mix (Peng et al. 2025, arXiv 2503.14456), on ``dplr_delta_rule``.

Per token, every branch first mixes the input with the previous token (the token shift,
``x_{t-1}``, zeros before the first token), with a learned vector per branch:

    x^c_t = x_t + (x_{t-1} - x_t) * mu_c          c in r, w, k, v, a, g

then, with LoRA-style low-rank MLPs for the data-dependent gates,

    r = x^r W_r,   k = x^k W_k,   v = x^v W_v
    w_t = exp(-e^{-1/2} sigmoid(w_0 + tanh(x^w W_w1) W_w2))      (decay per key channel, in (0.545, 1))
    a_t = sigmoid(a_0 + x^a W_a1 W_a2)                           (in-context learning rate, per channel)
    g_t = sigmoid(x^g W_g1) W_g2                                  (output gate)
    kk_t = normalize(k_t * k_k)  (L2, per head),   k~_t = k_t * (1 + (a_t - 1) * k_a)

and per head (N = head_dim) the state, in the paper's ``[V, K]`` convention,

    wkv_t = wkv_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t^T k~_t,     o_t = wkv_t r_t^T

In our row convention (``S = wkv^T``, ``[K, V]``) that is
``S_t = diag(w_t) S_{t-1} - (a_t * kk_t)^T (kk_t S_{t-1}) + k~_t^T v_t``, ``o_t = r_t S_t``:
``dplr_delta_rule`` (``S_t = Diag(exp g_t) S_{t-1} + a'_t^T (b'_t S_{t-1}) + k'_t^T v_t``, ``a'``
writes what ``b'`` reads) with

    q = r,  k' = k~,  v = v,  a' = -(a * kk),  b' = kk,  g = log w,  scale = 1.

The output: a GroupNorm per head (mean and variance, affine, eps ``head_dim * norm_eps`` as
RWKV-LM's ``64e-5``), plus the "bonus" for the current token ``(r_t . (k~_t * r_k)) v_t`` per head
(``r_k [H, N]``), times g, then ``out_proj``.

Left out: the value residual (RWKV-7 mixes each layer's v with the first layer's, ``v = lerp(v,
v_first, sigmoid(v_0 + x^v W_v1 W_v2))``), which needs state across layers that the mixer
contract does not carry. The block around it is the framework's (RMSNorm pre-norms, not RWKV's
LayerNorms); RWKV-7's channel mix is the block MLP ``ModelConfig(mlp_kind="rwkv7")``
(``layers.RWKV7ChannelMix``). Init after RWKV-LM's v7 ``train_temp`` (token-mix vectors by depth,
the decay's w_0 spread across channels, LoRA factors orthogonal * 0.1 (RWKV-LM: the first at
zero), k_k = 0.85, k_a = 1, r_k = 0); r, k, v, out projections take the model's linear init.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import dplr_delta_rule

from .deltanet_gdn import l2_normalize
from .layers import mix_init, token_shift
from .mixer import Mixer, carry_state, heads_of_at_least, state_dtype, zero_state

#: the branches of the token shift, in the order of ``RWKV7.token_mix``'s rows, with RWKV-LM's
#: init power of each (``mu = 1 - (i / d) ** (power * (1 - l / L))``)
BRANCHES = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


@dataclasses.dataclass
class RWKV7Cache:
    """Decoding state of one RWKV-7 layer.

    x_prev: ``[B, d_model]``, the last input seen (the token shift), in the model's dtype.
    state: ``[B, H, K, V]`` float32 (float64 for float64 models), ``K = V = head_dim``.
    """

    x_prev: torch.Tensor
    state: torch.Tensor


class LowRank(nn.Module):
    """RWKV-7's LoRA-style gate MLP ``act(x W_1) W_2 (+ b)``: ``[..., d_in] -> [..., d_out]``;
    ``W_1 [d_in, rank]`` and ``W_2 [rank, d_out]`` start orthogonal * 0.1 (RWKV-LM starts ``W_1`` at
    zero, which leaves ``W_2`` without a gradient at the first step)."""

    def __init__(self, d_in: int, rank: int, d_out: int, activation: str | None, bias: bool) -> None:
        super().__init__()
        self.activation = activation
        self.w1 = nn.Parameter(_orthogonal(d_in, rank, 0.1))
        self.w2 = nn.Parameter(_orthogonal(rank, d_out, 0.1))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w1.to(x.dtype)
        if self.activation == "tanh":
            h = torch.tanh(h)
        elif self.activation == "sigmoid":
            h = torch.sigmoid(h)
        y = h @ self.w2.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def _orthogonal(rows: int, cols: int, scale: float) -> torch.Tensor:
    """RWKV-LM's ``ortho_init``: an orthogonal ``[rows, cols]`` with gain ``scale``, times
    ``sqrt(rows / cols)`` when it has more rows than columns."""
    w = torch.empty(rows, cols)
    nn.init.orthogonal_(w, gain=scale * (math.sqrt(rows / cols) if rows > cols else 1.0))
    return w


def lora_rank(d_model: int, factor: float) -> int:
    """RWKV-LM's default LoRA width ``max(32, round(factor * sqrt(d_model) / 32) * 32)``."""
    return max(32, int(round(factor * math.sqrt(d_model) / 32)) * 32)


class RWKV7(Mixer):
    """RWKV-7's time mix: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP (RWKV-7's is its
    channel mix: ``ModelConfig.mlp_kind = "rwkv7"``)."""

    name = "rwkv7"
    has_mlp = True

    @dataclasses.dataclass
    class Options:
        #: N, key = value channels per head (RWKV-7: 64); heads = d_model / head_dim; clamped to
        #: d_model so tiny widths work
        head_dim: int = 64
        #: width of the decay's LoRA; None: max(32, round(2.5 sqrt(d_model) * head_dim / 64 / 32) * 32)
        decay_rank: int | None = None
        #: width of the in-context learning rate's LoRA; None: as decay_rank
        a_rank: int | None = None
        #: width of the output gate's LoRA; None: max(32, round(5 sqrt(d_model) / 32) * 32)
        gate_rank: int | None = None

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        head_dim = min(opts.head_dim, d_model)
        if head_dim < 1 or d_model % head_dim != 0:
            raise ValueError(f"mixer 'rwkv7': d_model {d_model} is not divisible by head_dim {opts.head_dim}")
        default = lora_rank(d_model, 2.5 * head_dim / 64)
        ranks = {"decay_rank": opts.decay_rank or default, "a_rank": opts.a_rank or default,
                 "gate_rank": opts.gate_rank or lora_rank(d_model, 5.0)}
        for key in ranks:
            if getattr(opts, key) is not None and getattr(opts, key) < 1:
                raise ValueError(f"mixer 'rwkv7': {key} must be >= 1 or None, got {getattr(opts, key)}")
        return dataclasses.replace(opts, head_dim=head_dim, **ranks)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Heads of about the ladder's ``head_dim`` channels, as Kimi Delta Attention's: the head
        dim N (key = value channels per head, so the state is ``N x N``) is the smallest divisor
        of ``d_model`` that is at least ``head_dim``, or all of ``d_model`` in one head when it
        is narrower; the default 64 would not divide every width. The decay and in-context
        learning rate LoRAs' default rank scales with N. ``d_state`` does not apply."""
        return {"head_dim": d_model // heads_of_at_least(d_model, head_dim)}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        o, d = self.options, d_model
        self.head_dim = o.head_dim
        self.n_heads = d // o.head_dim
        depth = self.layer_idx / max(self.n_layers - 1, 1)  # 0 .. 1
        shallow = 1.0 - self.layer_idx / self.n_layers  # 1 .. ~0
        self.token_mix = nn.Parameter(torch.stack([mix_init(d, p * shallow) for p in BRANCHES.values()]))  # (6, d)
        self.r_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.w_lora = LowRank(d, o.decay_rank, d, "tanh", bias=True)
        self.a_lora = LowRank(d, o.a_rank, d, None, bias=True)
        self.g_lora = LowRank(d, o.gate_rank, d, "sigmoid", bias=False)
        n = torch.arange(d, dtype=torch.float32)
        linear = n / max(d - 1, 1) - 0.5
        half = max(self.head_dim - 1, 1) / 2
        zigzag = ((n % self.head_dim) - half) / half
        zigzag = zigzag * zigzag.abs()
        with torch.no_grad():  # RWKV-LM: w_0 spreads the decays across channels, a_0 near sigmoid(-0.19)
            self.w_lora.bias.copy_(-6 + 6 * (n / max(d - 1, 1)) ** (1 + depth ** 0.3) + 0.5 + 2.5 * zigzag)
            self.a_lora.bias.copy_(-0.19 + 0.3 * zigzag + 0.4 * linear)
        self.k_k = nn.Parameter(torch.full((d,), 0.85))
        self.k_a = nn.Parameter(torch.ones(d))
        self.r_k = nn.Parameter(torch.zeros(self.n_heads, self.head_dim))
        self.o_norm = nn.GroupNorm(self.n_heads, d, eps=self.head_dim * norm_eps)
        for p in (self.token_mix, self.r_k):  # per-channel vectors stacked 2-D: no weight decay
            p._no_weight_decay = True
        self.out_proj = nn.Linear(d, d, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> RWKV7Cache:
        return RWKV7Cache(
            x_prev=torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
            state=zero_state(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor, cache: RWKV7Cache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        Bsz, T, _ = x.shape
        x_prev = carry_state(cache, "x_prev", token_shift, x)  # (B, T, d)
        mixed = x.unsqueeze(2) + (x_prev - x).unsqueeze(2) * self.token_mix.to(x.dtype)  # (B, T, 6, d)
        xr, xw, xk, xv, xa, xg = mixed.unbind(2)
        sdt = state_dtype(x.dtype)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        log_w = -math.exp(-0.5) * torch.sigmoid(self.w_lora(xw).to(sdt))  # (B, T, d), in (-0.607, 0)
        a = torch.sigmoid(self.a_lora(xa))  # (B, T, d)
        g = self.g_lora(xg)  # (B, T, d)
        heads = "b t (h n) -> b t h n"
        kk = l2_normalize(rearrange(k * self.k_k.to(k.dtype), heads, n=self.head_dim))  # (B, T, H, N)
        k = k * (1 + (a - 1) * self.k_a.to(k.dtype))
        r, k, v, a, log_w = (rearrange(u, heads, n=self.head_dim) for u in (r, k, v, a, log_w))
        # S_t = diag(w_t) S_{t-1} - (a kk)^T (kk S_{t-1}) + k~^T v: a' = -(a kk) writes what b' = kk reads
        o = carry_state(cache, "state", dplr_delta_rule, q=r, k=k, v=v, a=-(a * kk), b=kk, g=log_w,
                        scale=1.0)  # (B, T, H, N); state (B, H, N, N)
        o = F.group_norm(rearrange(o, "b t h n -> (b t) (h n)").to(sdt), self.n_heads,
                         self.o_norm.weight.to(sdt), self.o_norm.bias.to(sdt), self.o_norm.eps)
        o = rearrange(o.to(x.dtype), "(b t) (h n) -> b t h n", b=Bsz, n=self.head_dim)
        bonus = (r * k * self.r_k.to(r.dtype)).sum(-1, keepdim=True) * v  # (B, T, H, N): the current token
        return self.out_proj(rearrange(o + bonus, "b t h n -> b t (h n)") * g)
