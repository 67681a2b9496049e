"""mLSTM: xLSTM's matrix LSTM, as the mLSTM layer of xLSTM 7B (Beck et al. 2024, "xLSTM: Extended
Long Short-Term Memory"; Beck et al. 2025, "xLSTM 7B: A Recurrent LLM for Fast and Efficient
Inference", arXiv 2503.13427).

Per head, a matrix memory ``C [K, V]`` and a normaliser ``n [K]`` with an exponential input gate
and a sigmoid forget gate, one scalar of each per head and step (row vectors, as the ops):

    i~_t = cap tanh((x_t W_i + b_i) / cap),   f~_t = cap tanh((x_t W_f + b_f) / cap)   (soft caps)
    i_t = exp(i~_t),   f_t = sigmoid(f~_t)   (log f_t = logsigmoid(f~_t) <= 0)
    C_t = f_t C_{t-1} + i_t k_t^T v_t,        n_t = f_t n_{t-1} + i_t k_t
    h_t = q_t C_t / max(|q_t . n_t|, 1)       (k scaled by 1/sqrt(K))

then ``y_t = out_proj(sigmoid(x_t W_o) * norm(h_t))``, the norm per head. xLSTM 7B's layer: q, k
of width ``expand_k * d_model`` (0.5), v and the output gate ``expand_v * d_model`` (1), no short
conv, gate preactivations soft-capped at ``cap = 15``; its blocks add a SwiGLU MLP (``has_mlp``).

The papers compute this in a stabilised form: a running maximum ``m_t = max(log f_t + m_{t-1},
i~_t)`` rescales the state, ``C~_t = exp(-m_t) C_t``, ``n~_t = exp(-m_t) n_t``, and
``h_t = q_t C~_t / max(|q_t . n~_t|, exp(-m_t))``. The factor ``exp(-m_t)`` divides out of the
numerator and of both arguments of the max, so ``h_t`` does not depend on the stabiliser at all:
any positive rescaling of (C, n, the floor 1) by one common factor gives the same ``h_t``.

Here that factor is the constant ``exp(-cap)`` instead of ``exp(-m_t)``, which turns the
recurrence into one call of ``gla`` (scalar gate per head):

    k'_t = k_t exp(i~_t - cap),   v'_t = [v_t, 1],   g_t = log f_t
    [num_t, den_t] = gla(q, k', v', g)      (= exp(-cap) [q_t C_t, q_t . n_t] / sqrt(K))
    h_t = num_t / max(|den_t|, exp(-cap))

The ones column appended to v makes the last output column ``q_t . n_t`` (the normaliser), in the
same op call. Why it is safe in fp32 and bf16 for any length: the soft cap bounds ``i~_t`` to
``(-cap, cap)``, so the key factor ``exp(i~_t - cap)`` lies in ``(exp(-2 cap), 1] ~ (1e-13, 1]``:
it never overflows (at most 1, where the plain form's ``exp(i~)`` reaches 3e6) and never
underflows (1e-13 is far above the smallest normal number of fp32 and bf16, 1.2e-38; caps up to
40 are accepted, exp(-80) ~ 2e-35); the forget gates only shrink old terms (``g <= 0``, and
``gla``'s chunked form exponentiates only differences of cumulative gates, <= 0); the state grows
by at most one bounded term per step, as the papers' stabilised one does; the floor ``exp(-cap)``
(3e-7) is normal too. fp16's range ends at 6e-5, so fp16 inputs run the op in float32. One
deviation: the xLSTM kernels add ``eps = 1e-6`` to the stabilised denominator, which makes their
output depend slightly on ``m_t``; the equations above (and this module) have no such term.

Decoding carries the one ``gla`` state ``[B, H, K, V + 1]`` (``C`` scaled by ``exp(-cap)``, with
``n`` as its last column). On GPUs the ``gla`` Triton kernels take ``V + 1 <= 256``: keep value
heads at most 255 channels wide (the default head count gives 128).

Init (xLSTM 7B): the input and forget gate projections start at zero weights, biases -10 and
``linspace(3, 6)`` over the heads (the gates start data-independent: input gate ``exp(-10)``,
forget gates 0.95 .. 0.998); they are marked ``_keep_init``, so the model's init leaves them alone.
Deviations: the per-head norm is an RMSNorm (xLSTM 7B: a LayerNorm without bias), its weight
``[V]`` shared by the heads (xLSTM 7B: ``[H * V]``); the output gate has the model's init (xLSTM 7B:
zero weights).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import gla

from .layers import RMSNorm
from .mixer import HeadOptions, Mixer, carry_state, expanded_dims, state_dtype, zero_state

#: xLSTM 7B's gate init: input gate bias, forget gate biases linspace(lo, hi) over the heads
IGATE_BIAS_INIT = -10.0
FGATE_BIAS_INIT = (3.0, 6.0)
#: default heads hold at most this many value channels (the Triton gla kernels take V + 1 <= 256)
MAX_DEFAULT_HEAD_V = 128
#: the largest gate soft cap: the input gate's key factor exp(i~ - cap) >= exp(-2 cap) must stay a
#: normal float32 number (exp(-80) ~ 2e-35 > 1.2e-38)
MAX_GATE_SOFT_CAP = 40.0


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``: x squashed smoothly into ``(-cap, cap)`` (Gemma 2, xLSTM 7B)."""
    return cap * torch.tanh(x / cap)


@dataclasses.dataclass
class MLSTMCache:
    """Decoding state of one mLSTM layer: ``state [B, H, K, V + 1]`` float32 (float64 for float64
    models), the memory ``exp(-cap) C`` with the normaliser ``exp(-cap) n`` as its last column."""

    state: torch.Tensor


class MLSTM(Mixer):
    """xLSTM 7B's mLSTM layer: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default."""

    name = "mlstm"
    has_mlp = True

    @dataclasses.dataclass
    class Options(HeadOptions):
        #: (inherited) n_heads (None: the fewest heads of at most 128 value channels that divide
        #: both widths), expand_v = 1 (value dim = output gate dim = expand_v * d_model); key dim
        #: (q, k) = expand_k * d_model, 0.5 as xLSTM 7B
        expand_k: float = 0.5
        #: soft cap of the input and forget gate preactivations, cap * tanh(x / cap); in (0, 40]
        #: (it bounds the input gate's exponent, which the numerics rely on)
        gate_soft_cap: float = 15.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        if not 0 < opts.gate_soft_cap <= MAX_GATE_SOFT_CAP:
            raise ValueError(f"mixer {cls.name!r}: gate_soft_cap must be in (0, {MAX_GATE_SOFT_CAP}] (exp(-2 cap) "
                             f"must stay a normal float32), got {opts.gate_soft_cap}")

        def candidates(key_dim: int) -> list[int]:
            value_dim = int(d_model * opts.expand_v)  # a whole number: resolve_heads checked it
            return list(range(max(1, math.ceil(value_dim / MAX_DEFAULT_HEAD_V)), value_dim + 1))

        _, _, n_heads = opts.resolve_heads(cls.name, d_model, candidates)
        return dataclasses.replace(opts, n_heads=n_heads)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """No options (``{}``): the defaults already follow the width. Over the key dim
        ``d_model / 2`` (expand_k 0.5, as xLSTM 7B) and value dim ``d_model``, heads are the
        fewest of at most 128 value channels that divide both dims (one head up to width 128;
        128 value channels per head keeps within the Triton gla kernels' ``V + 1 <= 256``). The
        ladder's ``head_dim`` and ``d_state`` do not apply; an explicit value here would change
        the configs existing runs were made with."""
        return {}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.n_heads = H = options.n_heads
        self.key_dim, self.value_dim = expanded_dims(self.name, d_model, options.expand_k, options.expand_v)
        self.head_k_dim = self.key_dim // H
        self.head_v_dim = self.value_dim // H
        self.cap = options.gate_soft_cap

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.i_proj = nn.Linear(d_model, H, bias=True)  # input gate preactivation, one per head
        self.f_proj = nn.Linear(d_model, H, bias=True)  # forget gate preactivation, one per head
        with torch.no_grad():
            for proj in (self.i_proj, self.f_proj):
                proj.weight.zero_()
                proj._keep_init = True
            self.i_proj.bias.fill_(IGATE_BIAS_INIT)
            self.f_proj.bias.copy_(torch.linspace(*FGATE_BIAS_INIT, H))
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # output gate
        self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)  # per head
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> MLSTMCache:
        return MLSTMCache(zero_state(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim + 1,
                                     device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: MLSTMCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        sdt = state_dtype(x.dtype)
        # the op's inputs: x's dtype if it has fp32's exponent range (bf16, fp32, fp64), else fp32
        odt = torch.promote_types(x.dtype, torch.bfloat16)
        q = rearrange(self.q_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim).to(odt)
        k = rearrange(self.k_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim).to(odt)
        v = rearrange(self.v_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim).to(odt)
        i_pre = soft_cap(self.i_proj(x).to(sdt), self.cap)  # (B, T, H), in (-cap, cap)
        log_f = F.logsigmoid(soft_cap(self.f_proj(x).to(sdt), self.cap))  # (B, T, H), <= 0
        k = k * torch.exp(i_pre - self.cap).unsqueeze(-1).to(odt)  # input gate / exp(cap): in (1e-13, 1]
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, T, H, V + 1): the normaliser column
        out = carry_state(cache, "state", gla, q=q, k=k, v=v, g=log_f)  # (B, T, H, V + 1); state (B, H, K, V + 1)
        num, den = out[..., :-1].to(sdt), out[..., -1:].to(sdt)
        h = (num / den.abs().clamp(min=math.exp(-self.cap))).to(x.dtype)  # (B, T, H, V)
        o = self.o_norm(h) * torch.sigmoid(rearrange(self.g_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim))
        return self.out_proj(rearrange(o, "b t h v -> b t (h v)"))
