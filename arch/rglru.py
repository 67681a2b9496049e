"""The recurrent block of Hawk and Griffin (De et al. 2024, "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models"), built on the Real-Gated
Linear Recurrent Unit (RG-LRU), with its recurrence run by ``linear_scan``.

The block (section 2.3, Figure 2c) has two branches of width ``d_rnn`` from its input ``u``:

    gate      = gelu(W_y u)                                        [B, T, d_rnn]
    x         = causal_conv1d(W_x u)                               depthwise, width conv_size, bias
    h         = RG-LRU(x)
    out       = W_o (gate * h)                                     (out_proj)

and the RG-LRU (section 2.4, equations 1-4), per channel:

    r_t = sigmoid(W_a x_t + b_a)               recurrence gate
    i_t = sigmoid(W_i x_t + b_i)               input gate
    log a_t = -c * softplus(-Lambda) * r_t     i.e. a_t = a^(c r_t), a = sigmoid(Lambda), c = 8
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)

computed as ``linear_scan(x = sqrt(1 - a_t^2) * i_t * x_t, g = log a_t)``. ``W_a`` and ``W_i``
are block-diagonal with ``n_heads`` blocks, as in the paper (one einsum over the blocks: a
parameterised matmul outside ``nn.Linear``, initialised LeCun-normal, ``std = 1/sqrt(block)``;
biases zero). ``Lambda`` is initialised so that ``a^c`` is uniform in ``[a_init_min,
a_init_max] = [0.9, 0.999]``. ``sqrt(1 - a^2)`` is computed as ``sqrt(-expm1(2 log a))`` (no
cancellation as ``a -> 1``) with a square root whose derivative is capped at
``max_sqrt_grad`` (the derivative of ``sqrt`` at 0 is infinite).

Widths (section 3.1, appendix C): ``d_rnn = 4/3 * d_model`` by default (rounded up to a
multiple of 16), which gives the block the parameter count of an MHA block
(``3 * d_model * d_rnn = 4 * d_model^2``).

Deviations: the GeLU is the tanh approximation (as in the released RecurrentGemma code); the
branch projections ``W_y, W_x`` have no bias; the reset that RecurrentGemma applies at document
boundaries (no ``sqrt(1 - a^2)`` scaling on a segment's first token) is not applied: every step
follows equation 4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import linear_scan

from .layers import ShortConv
from .mixer import Mixer, carry_state, state_dtype, zero_state


class _SqrtBoundedGrad(torch.autograd.Function):
    """``sqrt(x)`` whose backward uses ``0.5 / max(sqrt(x), 0.5 / max_grad)``: at most ``max_grad``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, max_grad: float) -> torch.Tensor:
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        ctx.max_grad = max_grad
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * 0.5 / y.clamp(min=0.5 / ctx.max_grad), None


def sqrt_bounded_grad(x: torch.Tensor, max_grad: float = 1000.0) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with the derivative clipped to ``max_grad`` near 0."""
    return _SqrtBoundedGrad.apply(x, max_grad)


@dataclasses.dataclass
class RGLRUCache:
    """Decoding state of one RG-LRU block.

    conv_state: ``[B, d_rnn, conv_size-1]``, the last conv inputs (model dtype).
    h: ``[B, d_rnn]`` float32 (float64 for float64 models), the RG-LRU state.
    """

    conv_state: torch.Tensor
    h: torch.Tensor


class RGLRU(Mixer):
    """Hawk/Griffin's recurrent block: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default."""

    name = "rglru"
    has_mlp = True

    @dataclasses.dataclass
    class Options:
        #: width of the recurrent branch; None: 4/3 * d_model rounded up to a multiple of 16
        d_rnn: int | None = None
        #: blocks of the block-diagonal gates W_a, W_i; None: the fewest blocks of at most 256
        #: channels that divide d_rnn
        n_heads: int | None = None
        #: width of the depthwise causal conv
        conv_size: int = 4
        #: the constant c in a_t = a^(c r_t)
        c: float = 8.0
        #: a^c is initialised uniformly in [a_init_min, a_init_max]
        a_init_min: float = 0.9
        a_init_max: float = 0.999
        #: cap on the derivative of sqrt(1 - a_t^2) with respect to 1 - a_t^2
        max_sqrt_grad: float = 1000.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        d_rnn = opts.d_rnn if opts.d_rnn is not None else 16 * math.ceil(4 * d_model / 3 / 16)
        if d_rnn < 1:
            raise ValueError(f"mixer 'rglru': d_rnn must be >= 1, got {d_rnn}")
        n_heads = opts.n_heads
        if n_heads is None:
            n_heads = math.ceil(d_rnn / 256)
            while d_rnn % n_heads != 0:
                n_heads += 1
        if n_heads < 1 or d_rnn % n_heads != 0:
            raise ValueError(f"mixer 'rglru': d_rnn {d_rnn} is not divisible by n_heads {n_heads}")
        if opts.conv_size < 1:
            raise ValueError(f"mixer 'rglru': conv_size must be >= 1, got {opts.conv_size}")
        if opts.c <= 0 or opts.max_sqrt_grad <= 0:
            raise ValueError(
                f"mixer 'rglru': c and max_sqrt_grad must be > 0, got c {opts.c}, "
                f"max_sqrt_grad {opts.max_sqrt_grad}"
            )
        if not 0 < opts.a_init_min <= opts.a_init_max < 1:
            raise ValueError(
                f"mixer 'rglru': need 0 < a_init_min <= a_init_max < 1, got a_init_min "
                f"{opts.a_init_min}, a_init_max {opts.a_init_max}"
            )
        return dataclasses.replace(opts, d_rnn=d_rnn, n_heads=n_heads)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """No options (``{}``): the defaults already follow the width. The recurrent branch is
        ``d_rnn = 4/3 * d_model`` rounded up to a multiple of 16 (Griffin's), and its gates are
        block-diagonal in ``n_heads`` blocks, the fewest of at most 256 channels that divide
        ``d_rnn`` (one block up to ``d_rnn`` 256). The recurrence is per channel (no per-head
        state), so the ladder's ``head_dim`` and ``d_state`` do not apply; an explicit value here
        would change the configs existing runs were made with."""
        return {}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        o = options
        self.d_rnn = o.d_rnn
        self.n_heads = o.n_heads
        self.head_dim = o.d_rnn // o.n_heads
        self.conv_size = o.conv_size
        self.c = o.c
        self.max_sqrt_grad = o.max_sqrt_grad

        self.gate_proj = nn.Linear(d_model, self.d_rnn, bias=False)  # W_y, the GeLU branch
        self.in_proj = nn.Linear(d_model, self.d_rnn, bias=False)  # W_x, the recurrent branch
        self.conv1d = ShortConv(self.d_rnn, o.conv_size, bias=True)
        # Block-diagonal gates: [0] is W_a (recurrence gate), [1] is W_i (input gate);
        # x_t [H, P] -> gates [H, P] per block: gate[h, j] = sum_i x[h, i] W[h, i, j] + b[h, j].
        self.gate_weight = nn.Parameter(
            torch.randn(2, self.n_heads, self.head_dim, self.head_dim) / math.sqrt(self.head_dim)
        )  # (2, H, P, P)
        self.gate_bias = nn.Parameter(torch.zeros(2, self.n_heads, self.head_dim))  # (2, H, P)
        # a^c ~ U[a_init_min, a_init_max]  =>  log a = log(U) / c,  Lambda = logit(a).
        log_a = torch.log(torch.empty(self.d_rnn).uniform_(o.a_init_min, o.a_init_max)) / o.c
        self.Lambda = nn.Parameter(log_a - torch.log(-torch.expm1(log_a)))  # (d_rnn,)
        self.Lambda._no_weight_decay = True
        self.gate_bias._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_rnn, d_model, bias=False)  # W_o

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> RGLRUCache:
        return RGLRUCache(conv_state=self.conv1d.new_state(batch_size, device, dtype),
                          h=zero_state(batch_size, self.d_rnn, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: RGLRUCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        gate = F.gelu(self.gate_proj(x), approximate="tanh")  # (B, T, d_rnn)
        xs = carry_state(cache, "conv_state", self.conv1d, self.in_proj(x))  # (B, T, d_rnn)

        sdt = state_dtype(x.dtype)
        xh = rearrange(xs, "b t (h p) -> b t h p", p=self.head_dim).to(sdt)
        gates = torch.einsum("bthi,ghij->gbthj", xh, self.gate_weight.to(sdt))  # (2, B, T, H, P)
        gates = gates + rearrange(self.gate_bias.to(sdt), "g h p -> g 1 1 h p")
        r, i = torch.sigmoid(rearrange(gates, "g b t h p -> g b t (h p)")).unbind(0)  # (B, T, d_rnn)
        # log a_t = c * r_t * log sigmoid(Lambda) = -c * softplus(-Lambda) * r_t   (<= 0)
        log_a = -self.c * F.softplus(-self.Lambda.to(sdt)) * r
        multiplier = sqrt_bounded_grad(-torch.expm1(2 * log_a), self.max_sqrt_grad)  # sqrt(1 - a_t^2)
        h = carry_state(cache, "h", linear_scan, x=multiplier * i * xs.to(sdt), g=log_a)  # (B, T, d_rnn)
        return self.out_proj(h.to(x.dtype) * gate)
