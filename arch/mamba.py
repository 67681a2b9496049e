"""Mamba-1 mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces"), the selective SSM block of section 3.4 / Figure 3, with its scan run by ``selective_scan``.

With ``d_inner = expand * d_model`` channels and ``N = d_state`` states per channel:

    x, z   = in_proj(u)                                   [B, T, d_inner] each
    x      = silu(causal_conv1d(x))                       depthwise, width conv_size, with bias
    dt_raw, B, C = x_proj(x)                              [R], [N], [N]   (R = dt_rank)
    dt     = softplus(W_dt dt_raw + b_dt)                 [B, T, d_inner] (Algorithm 2: s_Delta)
    h_t    = exp(dt_t A) * h_{t-1} + dt_t B_t x_t         h: [d_inner, N], A = -exp(A_log) [d_inner, N]
    y_t    = C_t h_t + D * x_t
    out    = out_proj(y * silu(z))

Initialisation as in the paper and its reference code: ``A`` is S4D-real (``A[d, n] = -(n+1)``
for every channel), ``D = 1``; the step bias ``b_dt = softplus^-1(dt)`` with ``dt``
log-uniform in ``[dt_min, dt_max]`` floored at ``dt_init_floor``, and ``W_dt`` uniform in
``+-dt_scale / sqrt(dt_rank)``. ``dt_proj`` is marked ``_keep_init`` so that
``LanguageModel.reset_parameters`` leaves that init alone. No deviation from the paper.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from postformer.kernels import selective_scan

from .layers import ShortConv, init_dt_bias
from .mixer import Mixer, StepSizeOptions, carry_state, state_dtype, zero_state


@dataclasses.dataclass
class MambaCache:
    """Decoding state of one Mamba layer.

    conv_state: ``[B, d_inner, conv_size-1]``, the last conv inputs (model dtype).
    ssm_state: ``[B, d_inner, d_state]`` float32 (float64 for float64 models).
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba(Mixer):
    """The Mamba-1 block's mixer: ``[B, T, d_model] -> [B, T, d_model]``. No MLP by default."""

    name = "mamba"
    has_mlp = False

    @dataclasses.dataclass
    class Options(StepSizeOptions):
        #: N, the SSM state size per channel
        d_state: int = 16
        #: width of the depthwise causal conv
        conv_size: int = 4
        #: d_inner = expand * d_model
        expand: int = 2
        #: rank of the dt projection; None: ceil(d_model / 16)
        dt_rank: int | None = None
        #: (inherited) dt_min, dt_max, dt_init_floor
        #: dt_proj.weight ~ uniform(+-dt_scale / sqrt(dt_rank))
        dt_scale: float = 1.0
        #: a bias in the conv
        conv_bias: bool = True

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        for key in ("d_state", "conv_size", "expand"):
            if getattr(opts, key) < 1:
                raise ValueError(f"mixer 'mamba': {key} must be >= 1, got {getattr(opts, key)}")
        dt_rank = opts.dt_rank if opts.dt_rank is not None else math.ceil(d_model / 16)
        if dt_rank < 1:
            raise ValueError(f"mixer 'mamba': dt_rank must be >= 1, got {dt_rank}")
        opts.check_step_size(cls.name)
        if opts.dt_scale <= 0:
            raise ValueError(f"mixer 'mamba': dt_scale must be > 0, got {opts.dt_scale}")
        return dataclasses.replace(opts, dt_rank=dt_rank)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """No options (``{}``): the defaults already follow the width. Mamba-1 has no heads: its SSM
        runs per channel over ``d_inner = 2 * d_model`` (the default expand 2) with ``d_state`` 16
        states per channel (the paper's), the same at every width; the ladder's ``d_state`` sizes
        Mamba-2 and Mamba-3's per-head states and is ignored here, as is ``head_dim``. The dt
        projection's rank ``dt_rank`` defaults to ``ceil(d_model / 16)``. An explicit value here
        would change the configs existing runs were made with."""
        return {}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        o = options
        self.d_inner = o.expand * d_model
        self.d_state = o.d_state
        self.conv_size = o.conv_size
        self.dt_rank = o.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = ShortConv(self.d_inner, o.conv_size, bias=o.conv_bias, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, o.dt_rank + 2 * o.d_state, bias=False)

        self.dt_proj = nn.Linear(o.dt_rank, self.d_inner, bias=True)
        self.dt_proj._keep_init = True
        with torch.no_grad():
            bound = o.dt_scale * o.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(init_dt_bias(self.d_inner, o.dt_min, o.dt_max, o.dt_init_floor))
        self.dt_proj.bias._no_weight_decay = True

        A = repeat(torch.arange(1, o.d_state + 1, dtype=torch.float32), "n -> d n", d=self.d_inner)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, N)
        self.D = nn.Parameter(torch.ones(self.d_inner))  # (d_inner,)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> MambaCache:
        return MambaCache(conv_state=self.conv1d.new_state(batch_size, device, dtype),
                          ssm_state=zero_state(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        xs = carry_state(cache, "conv_state", self.conv1d, xs)  # (B, T, d_inner), SiLU applied
        dt, Bm, Cm = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, T, d_inner); the bias goes in before softplus
        A = -torch.exp(self.A_log.to(state_dtype(x.dtype)))  # (d_inner, N)
        y = carry_state(cache, "ssm_state", selective_scan, xs, dt, A, Bm, Cm, self.D, z,
                        dt_bias=self.dt_proj.bias, dt_softplus=True)  # (B, T, d_inner); state (B, d_inner, N)
        return self.out_proj(y)
