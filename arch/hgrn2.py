"""HGRN2 mixer (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion").

HGRN (Qin et al. 2023) is an elementwise gated linear RNN, ``h_t = f_t * h_{t-1} + (1 - f_t) *
i_t``, whose forget gate has a lower bound that rises with depth (lower layers forget fast and
model local context, upper layers keep long memories). HGRN2 expands the state with an outer
product, per head (section 3):

    H_t = Diag(f_t) H_{t-1} + (1 - f_t)^T i_t        H_t: [E, E]
    y_t = o_t H_t

with ``f_t = lb + (1 - lb) * sigmoid(W_f x_t)`` (one per key channel), the input
``i_t = SiLU(W_i x_t)`` and the output gate ``o_t = sigmoid(W_o x_t)``. Read as linear
attention, the output gate is the query, ``1 - f_t`` the key and the input the value: this is
``gla(q=o, k=1-f, v=i, g=log f)`` with ``scale = 1``, heads of ``E = expand_ratio`` key and
value channels (128 in the paper; ``d_model / E`` heads). The output is normalised over the
whole width and projected, ``out_proj(norm(y))``: HGRN1's output gate ``LN(o * h)`` became the
query, so there is no separate gate after the norm.

The key ``1 - f = (1 - lb) sigmoid(-u)`` and ``log f = log1p(-(1 - f))`` are both computed
from ``sigmoid(-u)``, never from ``f``, so gates near 1 keep their precision (``f`` rounds to
1 in float32 once ``1 - f < 6e-8``, and ``log f`` and the key would round to 0).

Deviations, deliberately:

- Lower bounds: HGRN/HGRN2 learn them, ``lb_l = sum_{j<l} softmax_layers(Gamma)_j`` (a
  cumulative softmax of a learned ``[n_layers, d]`` table across the layers). Here they are
  fixed at ``lb = layer_idx / n_layers``, which is that formula's value at a uniform
  initialisation (0 for the first layer, rising linearly), shared by all channels.
- Norm: RMSNorm over the width with a learned scale, where the paper's code uses LayerNorm.
- The query activation is the paper's sigmoid (FLA's port uses swish instead); no biases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import gla

from .layers import RMSNorm
from .mixer import Mixer, carry_state, state_dtype, zero_state


@dataclasses.dataclass
class HGRN2Cache:
    """Decoding state of one HGRN2 layer: ``state [B, H, E, E]`` float32 (float64 for float64 models)."""

    state: torch.Tensor


class HGRN2(Mixer):
    """HGRN2: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default (a GLU in the paper)."""

    name = "hgrn2"
    has_mlp = True

    @dataclasses.dataclass
    class Options:
        #: E, the state expansion: key (forget) and value channels per head; it must divide
        #: d_model (heads = d_model / E). None: 128 as in the paper, or for widths 128 does not
        #: divide, the largest divisor of d_model below 128 (d_model itself when smaller)
        expand_ratio: int | None = None
        #: forget-gate lower bound layer_idx / n_layers (False: 0 in every layer)
        use_lower_bound: bool = True

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        expand_ratio = opts.expand_ratio
        if expand_ratio is None:
            expand_ratio = next(e for e in range(min(128, d_model), 0, -1) if d_model % e == 0)
        if expand_ratio < 1:
            raise ValueError(f"mixer 'hgrn2': expand_ratio must be >= 1, got {expand_ratio}")
        if d_model % expand_ratio != 0:
            raise ValueError(
                f"mixer 'hgrn2': d_model {d_model} is not divisible by expand_ratio {expand_ratio} "
                f"(heads = d_model / expand_ratio)"
            )
        return dataclasses.replace(opts, expand_ratio=expand_ratio)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """No options (``{}``): the defaults already follow the width. The state expansion
        ``expand_ratio`` E (key and value channels per head; each head's state is ``E x E``)
        defaults to the largest divisor of ``d_model`` up to 128 (the paper's 128 where it divides),
        so heads ``= d_model / E`` grow with the width and one head holds all channels up to width
        128. The ladder's ``head_dim`` and ``d_state`` do not apply; an explicit value here would
        change the configs existing runs were made with."""
        return {}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.head_dim = options.expand_ratio
        self.n_heads = d_model // self.head_dim
        #: the forget gate's lower bound, fixed by depth
        self.lower_bound = self.layer_idx / self.n_layers if options.use_lower_bound else 0.0

        self.q_proj = nn.Linear(d_model, d_model, bias=False)  # output gate = query
        self.f_proj = nn.Linear(d_model, d_model, bias=False)  # forget gate
        self.i_proj = nn.Linear(d_model, d_model, bias=False)  # input = value
        self.g_norm = RMSNorm(d_model, eps=norm_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> HGRN2Cache:
        return HGRN2Cache(zero_state(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype))

    def forget_gate(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For forget logits u (any shape): ``(log f, 1 - f)`` with ``f = lb + (1 - lb) sigmoid(u)``.

        Both are computed from ``1 - f = (1 - lb) * sigmoid(-u)``, never from ``f`` itself, so a
        gate near 1 keeps its precision: ``log f = log1p(-(1 - lb) sigmoid(-u))`` (its argument
        stays above ``-1`` for ``lb > 0``; for ``lb = 0`` it is ``logsigmoid(u)``).
        """
        lb = self.lower_bound
        one_minus_f = (1.0 - lb) * torch.sigmoid(-u)
        g = F.logsigmoid(u) if lb == 0 else torch.log1p(-one_minus_f)
        return g, one_minus_f

    def forward(self, x: torch.Tensor, cache: HGRN2Cache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        E = self.head_dim
        g, k = self.forget_gate(self.f_proj(x).to(state_dtype(x.dtype)))  # log f <= 0, 1 - f
        k = k.to(x.dtype)
        q = torch.sigmoid(self.q_proj(x))
        v = F.silu(self.i_proj(x))
        q, k, v, g = (rearrange(t, "b t (h e) -> b t h e", e=E) for t in (q, k, v, g))
        o = carry_state(cache, "state", gla, q=q, k=k, v=v, g=g, scale=1.0)  # (B, T, H, E); state (B, H, E, E)
        o = self.g_norm(rearrange(o, "b t h e -> b t (h e)"))
        return self.out_proj(o)
