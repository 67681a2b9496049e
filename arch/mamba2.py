"""Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs"), with its SSD scan run by ``gla``.

Per head h (P = head_dim channels, N = d_state), the selective SSM is

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t^T x_t        h_t: [N, P]
    y_t = C_t h_t + D * x_t

with a scalar ``A < 0`` per head, a data-dependent step ``dt_t > 0`` per head, and
``B_t, C_t`` ([N], shared by the heads of a group). That is exactly the ``gla`` recurrence
``S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t`` with

    q = C,  k = B,  v = dt * x,  g = dt * A  (one per head: [B, T, H]),  scale = 1,

so the state S is ``[H, N, P]`` (K = d_state, V = head_dim). The block around the scan:
in_proj -> (z, xBC, dt); depthwise causal conv over xBC, SiLU; scan; ``+ D x``;
``rmsnorm(y * silu(z))``; out_proj. With ``conv_size=0`` the conv is left out (``xBC`` goes
straight to the SiLU): a control for measuring what the short conv contributes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from postformer.kernels import gla

from .layers import GatedRMSNorm, ShortConv, init_dt_bias
from .mixer import DecayRateOptions, Mixer, carry_state, heads_of_at_least, state_dtype, zero_state


@dataclasses.dataclass
class Mamba2Cache:
    """Decoding state of one Mamba-2 layer.

    conv_state: ``[B, d_inner + 2*ngroups*d_state, conv_size-1]``, the last inputs of the conv;
        None with ``conv_size=0`` (no conv).
    ssm_state: ``[B, H, N, P]`` float32 (float64 for float64 models).
    """

    conv_state: torch.Tensor | None
    ssm_state: torch.Tensor


class Mamba2(Mixer):
    """The Mamba-2 block's mixer: ``[B, T, d_model] -> [B, T, d_model]``. No MLP by default."""

    name = "mamba2"
    has_mlp = False

    @dataclasses.dataclass
    class Options(DecayRateOptions):
        #: N, the state size per head (K of the gla state)
        d_state: int = 128
        #: width of the depthwise causal conv over xBC; 0: no conv (no conv1d parameters, no
        #: conv state; xBC goes straight to the SiLU), a control for measuring the conv's effect
        conv_size: int = 4
        #: d_inner = expand * d_model
        expand: int = 2
        #: P, channels per head; clamped to d_inner so tiny widths work
        head_dim: int = 64
        #: groups sharing one B and C (and one norm group)
        ngroups: int = 1
        #: (inherited) dt_min, dt_max, dt_init_floor; A_init_min = 1, A_init_max = 16
        #: a bias in the conv (unused with conv_size=0)
        conv_bias: bool = True

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        if opts.expand < 1 or opts.d_state < 1 or opts.ngroups < 1:
            raise ValueError(
                f"mixer 'mamba2': expand, d_state and ngroups must be >= 1, got {opts}"
            )
        if opts.conv_size < 0:
            raise ValueError(f"mixer 'mamba2': conv_size must be >= 0 (0: no conv), got {opts.conv_size}")
        opts.check_decay_rate(cls.name)
        d_inner = opts.expand * d_model
        head_dim = min(opts.head_dim, d_inner)  # tiny widths: one head of all channels
        if head_dim < 1 or d_inner % head_dim != 0:
            raise ValueError(
                f"mixer 'mamba2': d_inner {d_inner} (expand {opts.expand} * d_model {d_model}) "
                f"is not divisible by head_dim {head_dim}"
            )
        nheads = d_inner // head_dim
        if nheads % opts.ngroups != 0:
            raise ValueError(
                f"mixer 'mamba2': nheads {nheads} (d_inner {d_inner} / head_dim {head_dim}) is not "
                f"divisible by ngroups {opts.ngroups}"
            )
        return dataclasses.replace(opts, head_dim=head_dim)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Heads of ``head_dim`` channels over ``d_inner = 2 * d_model`` (the default expand 2):
        ``head_dim`` P is the smallest divisor of ``d_inner`` that is at least the ladder's
        ``head_dim`` (the most heads of at least that many channels; P must divide ``d_inner``),
        or all of ``d_inner`` in one head when it is narrower. The state size N is the ladder's
        ``d_state`` when one is given (None or 0 keep the default 128), the same at every
        width: it is the SSM's memory per head, a knob of its own rather than a share of the
        width. Mamba-3 uses the same rule."""
        d_inner = 2 * d_model
        opts: dict[str, Any] = {"head_dim": d_inner // heads_of_at_least(d_inner, head_dim)}
        if d_state:
            opts["d_state"] = int(d_state)
        return opts

    @staticmethod
    def dims(d_model: int, opts: Options) -> tuple[int, int]:
        """``(d_inner, n_heads)`` of resolved options: the block's width and its head count."""
        d_inner = opts.expand * d_model
        return d_inner, d_inner // opts.head_dim

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        o = options
        self.d_inner, self.nheads = self.dims(d_model, o)
        self.d_state = o.d_state
        self.head_dim = o.head_dim
        self.ngroups = o.ngroups
        self.conv_size = o.conv_size
        self.conv_dim = self.d_inner + 2 * o.ngroups * o.d_state

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=False)
        if o.conv_size > 0:
            self.conv1d = ShortConv(self.conv_dim, o.conv_size, bias=o.conv_bias, activation="silu")

        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, o.dt_min, o.dt_max, o.dt_init_floor))  # (H,)
        A = torch.empty(self.nheads).uniform_(o.A_init_min, o.A_init_max)
        self.A_log = nn.Parameter(torch.log(A))  # (H,)
        self.D = nn.Parameter(torch.ones(self.nheads))  # (H,)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, group_size=self.d_inner // o.ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> Mamba2Cache:
        return Mamba2Cache(
            conv_state=self.conv1d.new_state(batch_size, device, dtype) if self.conv_size > 0 else None,
            ssm_state=zero_state(batch_size, self.nheads, self.d_state, self.head_dim, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor, cache: Mamba2Cache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        H, P, G, N = self.nheads, self.head_dim, self.ngroups, self.d_state
        z, xBC, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, H], dim=-1)

        if self.conv_size == 0:
            xBC = F.silu(xBC)  # the no-conv control
        else:
            xBC = carry_state(cache, "conv_state", self.conv1d, xBC)  # (B, T, conv_dim), SiLU applied

        xs, Bm, Cm = torch.split(xBC, [self.d_inner, G * N, G * N], dim=-1)
        xs = rearrange(xs, "b t (h p) -> b t h p", p=P)
        Bm = repeat(Bm, "b t (g n) -> b t (g r) n", n=N, r=H // G)  # (B, T, H, N)
        Cm = repeat(Cm, "b t (g n) -> b t (g r) n", n=N, r=H // G)  # (B, T, H, N)

        sdt = state_dtype(x.dtype)
        dt = F.softplus(dt.to(sdt) + self.dt_bias.to(sdt))  # (B, T, H)
        A = -torch.exp(self.A_log.to(sdt))  # (H,)
        # the SSD scan as gla: C reads the state, B writes it, dt scales the input and the decay
        o = carry_state(cache, "ssm_state", gla, q=Cm, k=Bm, v=xs.to(sdt) * rearrange(dt, "b t h -> b t h 1"),
                        g=dt * A, scale=1.0)  # o: (B, T, H, P); state (B, H, N, P)

        y = o + xs * rearrange(self.D.to(xs.dtype), "h -> h 1")  # (B, T, H, P)
        y = self.norm(rearrange(y, "b t h p -> b t (h p)"), z)  # (B, T, d_inner)
        return self.out_proj(y)
