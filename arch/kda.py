"""Kimi Delta Attention (KDA), the linear-attention mixer of Kimi Linear (Kimi Team, Moonshot AI
2025, "Kimi Linear: An Expressive, Efficient Attention Architecture", arXiv 2510.26692).

KDA is Gated DeltaNet with a finer forget gate: one decay per head *and key channel* instead of
one per head. Per head, with the matrix state ``S [K, V]`` in the row-vector convention of
``postformer.kernels.delta_rule``,

    S_t = (I - beta_t k_t^T k_t) Diag(alpha_t) S_{t-1} + beta_t k_t^T v_t,    o_t = q_t S_t / sqrt(K)

(the paper's ``S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T`` with
``S [K, V]`` and column vectors; its output ``o_t = S_t^T q_t``), where

    q_t, k_t  = L2Norm(SiLU(ShortConv(W_q x_t))), L2Norm(SiLU(ShortConv(W_k x_t)))  per head
    v_t       = SiLU(ShortConv(W_v x_t))
    beta_t    = sigmoid(W_beta x_t)                                       one per head
    alpha_t   = exp(g_t),  g_t = -exp(A_log) * softplus(W_f_up W_f_down x_t + dt_bias)
                                                            [H, K]: one per head and key channel
    y_t       = W_o (sigmoid(W_g_up W_g_down x_t + b_g) * RMSNorm(o_t))   RMSNorm per head

``A = exp(A_log)`` is one rate per head and ``dt_bias`` one bias per key channel; the forget gate
and the output gate are low-rank, ``d_model -> r -> H K`` and ``d_model -> r -> H V`` with
``r = gate_low_rank_dim`` (the value head dim by default, as in the paper's and FLA's layer).
The recurrence runs through ``postformer.kernels.delta_rule`` with ``g`` ``[B, T, H, K]``.

Shared with DeltaNet / Gated DeltaNet (``arch/deltanet_gdn.py``, whose block this one subclasses):
the projections, the short convs of width ``conv_size`` (``0`` leaves them out, a control), the
key normalisation, beta, the cache. Different: the forget gate above (per key channel, low rank),
the output gate (sigmoid instead of SiLU, low rank with a bias), the output norm (a plain
RMSNorm per head times the gate).

Widths, as Kimi Linear: heads of ``head_dim = 128`` key channels, ``n_heads ~ d_model / 128``
(key dim about d_model) and ``expand_v = 1`` (value heads as wide as key heads).

Init. ``A`` uniform in ``[A_init_min, A_init_max] = [1, 16]`` (as FLA's KDA layer); ``dt_bias``
per key channel such that ``softplus(dt_bias)`` is log-uniform in ``[dt_min, dt_max] =
[0.001, 0.1]`` (Mamba's step-size init, as our Gated DeltaNet). Deliberate deviation: FLA's
layer starts ``dt_bias`` at 0 (``softplus(0) = 0.69``, so some heads start forgetting almost
everything each step); with the Mamba init the per-step decays start spread between
``exp(-1.6)`` and ``exp(-0.001)``, the same range as Gated DeltaNet here, so the two differ
by the gate's granularity, not its starting point. Both are free of weight decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .deltanet_gdn import _DeltaRuleMixer
from .layers import RMSNorm, init_dt_bias
from .mixer import DecayRateOptions, heads_of_at_least, state_dtype


class SigmoidGatedRMSNorm(RMSNorm):
    """KDA's output norm: ``rmsnorm(x) * weight * sigmoid(z)`` over the last dim (``z`` the output
    gate, the same shape as x); ``GatedRMSNorm`` gates with SiLU."""

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x)
        return y if z is None else y * torch.sigmoid(z).to(y.dtype)


class KimiDeltaAttention(_DeltaRuleMixer):
    """Kimi Delta Attention: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default (Kimi
    Linear's blocks pair each mixer with an MoE / MLP)."""

    name = "kda"
    has_mlp = True
    _max_head_dim = 128
    _key_ratio = 1.0

    @dataclasses.dataclass
    class Options(_DeltaRuleMixer.Options, DecayRateOptions):
        #: heads; None: round(d_model / head_dim) with head_dim defaulting to 128 (Kimi Linear);
        #: at least 1
        n_heads: int | None = None
        #: key channels per head (each with its own decay); None: round(d_model / n_heads)
        head_dim: int | None = None
        #: rank r of the low-rank forget gate (d_model -> r -> H * head_dim) and output gate
        #: (d_model -> r -> value dim); None: the value channels per head (Kimi Linear)
        gate_low_rank_dim: int | None = None
        #: A = exp(A_log), one per head, starts uniform in [A_init_min, A_init_max]; (inherited)
        #: dt = softplus(dt_bias), one per key channel, starts log-uniform in [dt_min, dt_max],
        #: floored at dt_init_floor
        A_init_min: float = 1.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        opts = super()._resolve(d_model, opts)
        opts.check_decay_rate(cls.name)
        rank = opts.gate_low_rank_dim
        if rank is None:
            rank = int(opts.expand_v * opts.head_dim)
        elif rank < 1:
            raise ValueError(f"mixer {cls.name!r}: gate_low_rank_dim must be >= 1 or None, got {rank}")
        return dataclasses.replace(opts, gate_low_rank_dim=rank)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Heads of about the ladder's ``head_dim`` channels over the key dim ``d_model``: the
        most heads of at least ``head_dim`` key channels that divide ``d_model``, i.e. the
        smallest divisor of ``d_model`` that is at least ``head_dim`` as the head dim (one head
        of all ``d_model`` channels when it is narrower), so the key dim stays exactly
        ``d_model``. The gates' low rank (None: the value channels per head) follows the head
        dim. ``d_state`` does not apply."""
        n_heads = heads_of_at_least(d_model, head_dim)
        return {"n_heads": n_heads, "head_dim": d_model // n_heads}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)
        o, H, r = self.options, self.n_heads, self.options.gate_low_rank_dim
        # the forget gate's logits, low rank; the bias is dt_bias
        self.f_proj = nn.Sequential(nn.Linear(d_model, r, bias=False), nn.Linear(r, self.key_dim, bias=False))
        # the output gate, low rank with a bias (replaces the base's full-rank SiLU gate)
        self.g_proj = nn.Sequential(nn.Linear(d_model, r, bias=False), nn.Linear(r, self.value_dim, bias=True))
        self.o_norm = SigmoidGatedRMSNorm(self.head_v_dim, eps=norm_eps)
        A = torch.empty(H).uniform_(o.A_init_min, o.A_init_max).clamp(min=1e-4)
        self.A_log = nn.Parameter(torch.log(A))  # (H,)
        self.dt_bias = nn.Parameter(init_dt_bias(self.key_dim, o.dt_min, o.dt_max, o.dt_init_floor))  # (H*K,)
        for p in (self.A_log, self.dt_bias):
            p._no_weight_decay = True

    def _decay(self, x: torch.Tensor) -> torch.Tensor:
        """The per-key log decay ``g [B, T, H, K]`` (<= 0): ``-exp(A_log) * softplus(f + dt_bias)``."""
        sdt = state_dtype(x.dtype)
        f = self.f_proj(x).to(sdt) + self.dt_bias.to(sdt)  # (B, T, H*K)
        dt = F.softplus(rearrange(f, "b t (h k) -> b t h k", k=self.head_k_dim))
        return -torch.exp(self.A_log.to(sdt))[:, None] * dt
