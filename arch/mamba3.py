"""Mamba-3 mixer, SISO form (Lahoti, Li, Chen, Wang, Bick, Kolter, Dao & Gu 2026, "Mamba-3:
Improved Sequence Modeling using State Space Principles"), its scan run by ``gla``.

Per head h (P = head_dim channels, N = d_state), the exponential-trapezoidal discretisation of
the SSM ``h'(t) = A(t) h(t) + B(t) x(t)`` gives the three-term recurrence (the paper's eq. for
the exponential-trapezoidal rule; Mamba-2's exponential-Euler rule is ``lambda_t = 1``)

    h_t = alpha_t h_{t-1} + beta_t B_{t-1}^T x_{t-1} + gamma_t B_t^T x_t       h_t: [N, P]
    alpha_t = exp(dt_t A_t),  beta_t = (1 - lambda_t) dt_t exp(dt_t A_t),  gamma_t = lambda_t dt_t
    y_t = C_t h_t + D x_t

with, per head and token, ``dt_t = softplus(. + dt_bias)``, a data-dependent ``A_t =
-max(softplus(.), A_floor)`` and the trapezoid's mix ``lambda_t = sigmoid(.)``. The state is
complex (the paper's complex SSM): each step also rotates pairs of state channels by
``-dt_t theta_t``, ``theta_t = pi * tanh(.)`` (``R`` angles per token, shared by the heads,
scaled by each head's dt), which the paper's "RoPE trick" moves onto B and C as a
data-dependent rotary embedding with cumulative angles ``Theta_t = sum_{s <= t} dt_s theta_s``:

    y_t = sum_{s <= t} (prod_{s < r <= t} alpha_r) rot(C_t, Theta_t) . [gamma_s rot(B_s, Theta_s)
          + beta'_{s+1} rot(B_s, Theta_s)] x_s  (the lagged term only for s < t),
    beta'_{s+1} = (1 - lambda_{s+1}) dt_{s+1} = beta_{s+1} / alpha_{s+1}

(the lagged input ``B_{t-1} x_{t-1}`` is rotated with its own angle ``Theta_{t-1}``: the
rotation of step t is part of the transition it is multiplied by). Only the first ``2R =
rope_fraction * N`` state channels rotate (rotate-half pairs ``(i, R + i)``); the rest are real.
So one token s contributes one key, which is ``gla``
(``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t``) with

    q = rot(C, Theta),  k_s = (gamma_s + beta'_{s+1}) rot(B_s, Theta_s),  v = x,  g = dt * A,  scale = 1,

minus the lagged part that has not entered yet at ``t = s``:
``y_t -= beta'_{t+1} (q_t . rot(B_t, Theta_t)) x_t``. The last token of a call has no
``beta'_{T+1}`` yet: its lagged part stays out of the state (its coefficient is 0), and the cache
keeps ``rot(B_{T-1}), x_{T-1}`` and ``Theta_{T-1}``, so the next call first adds
``beta'_T rot(B_{T-1})^T x_{T-1}`` to the state, before its first decay. A step therefore equals
the parallel form.

B and C (``ngroups`` groups of N, shared by the heads of a group) get an RMSNorm over N (the
paper's QK-norm-like "BC norm"), then learnable head-specific biases ``B_bias, C_bias [H, N]``
(init 1). There is no short conv (the paper drops it: the trapezoid is a width-2 conv inside the
recurrence). Output ``out_proj((y + D x) * silu(z))``, or with ``out_norm`` a gated RMSNorm per
head ``rmsnorm(y + D x) * silu(z)`` (the reference code's ``is_outproj_norm``). MIMO is out of
scope. The layout follows the reference code (mamba_ssm ``Mamba3``): one in_proj to
``z, x, B, C, dt, A, lambda, theta``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from postformer.kernels import gla

from .layers import GatedRMSNorm, RMSNorm, init_dt_bias, rotate_pairs
from .mamba2 import Mamba2
from .mixer import Mixer, StepSizeOptions, carry_state, state_dtype, zero_state


@dataclasses.dataclass
class Mamba3Cache:
    """Decoding state of one Mamba-3 layer, all in float32 (float64 for float64 models).

    ssm_state: ``[B, H, N, P]``, the gla state (without the last token's lagged term).
    k_prev: ``[B, H, N]``, the last token's rotated ``B + B_bias``; x_prev: ``[B, H, P]``, its x.
    angle: ``[B, H, R]``, the cumulative rotary angles ``Theta`` (modulo 2 pi).
    """

    ssm_state: torch.Tensor
    k_prev: torch.Tensor
    x_prev: torch.Tensor
    angle: torch.Tensor


class Mamba3(Mixer):
    """The Mamba-3 (SISO) mixer: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default
    (the paper's blocks alternate mixer and MLP, Llama style)."""

    name = "mamba3"
    has_mlp = True

    @dataclasses.dataclass
    class Options(StepSizeOptions):
        #: N, the state size per head (K of the gla state)
        d_state: int = 128
        #: d_inner = expand * d_model
        expand: int = 2
        #: P, channels per head; clamped to d_inner so tiny widths work
        head_dim: int = 64
        #: groups sharing one B and C (their biases are per head all the same)
        ngroups: int = 1
        #: fraction of the state channels that rotate (the complex part): 2 * floor(d_state *
        #: rope_fraction / 2) channels, one angle per pair; 0: a real-valued SSM, the control
        rope_fraction: float = 0.5
        #: A_t = -max(softplus(.), A_floor): the slowest decay rate allowed
        A_floor: float = 1e-4
        #: a gated RMSNorm per head on the output (rmsnorm(y) * silu(z)) instead of y * silu(z)
        out_norm: bool = False

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        if opts.expand < 1 or opts.d_state < 1 or opts.ngroups < 1:
            raise ValueError(f"mixer 'mamba3': expand, d_state and ngroups must be >= 1, got {opts}")
        if not 0.0 <= opts.rope_fraction <= 1.0:
            raise ValueError(f"mixer 'mamba3': rope_fraction must be in [0, 1], got {opts.rope_fraction}")
        if opts.A_floor <= 0:
            raise ValueError(f"mixer 'mamba3': A_floor must be > 0, got {opts.A_floor}")
        opts.check_step_size(cls.name)
        d_inner = opts.expand * d_model
        head_dim = min(opts.head_dim, d_inner)  # tiny widths: one head of all channels
        if head_dim < 1 or d_inner % head_dim != 0:
            raise ValueError(
                f"mixer 'mamba3': d_inner {d_inner} (expand {opts.expand} * d_model {d_model}) "
                f"is not divisible by head_dim {head_dim}"
            )
        if (d_inner // head_dim) % opts.ngroups != 0:
            raise ValueError(
                f"mixer 'mamba3': nheads {d_inner // head_dim} (d_inner {d_inner} / head_dim {head_dim}) "
                f"is not divisible by ngroups {opts.ngroups}"
            )
        return dataclasses.replace(opts, head_dim=head_dim)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Mamba-2's rule (its ``expand``, ``head_dim`` and ``d_state`` mean the same here): heads
        of P channels over ``d_inner = 2 * d_model``, P the smallest divisor of ``d_inner`` that
        is at least the ladder's ``head_dim`` (one head when ``d_inner`` is narrower), and the
        ladder's ``d_state`` when given (None or 0 keep the default 128), so the rotary share
        ``rope_fraction`` of the state follows it."""
        return Mamba2.width_options(d_model, head_dim=head_dim, d_state=d_state)

    @staticmethod
    def dims(d_model: int, opts: Options) -> tuple[int, int, int]:
        """``(d_inner, n_heads, n_angles)`` of resolved options: the block's width, its head
        count and R, the rotary angles per token."""
        d_inner = opts.expand * d_model
        return d_inner, d_inner // opts.head_dim, int(opts.d_state * opts.rope_fraction) // 2

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        o = self.options
        self.d_inner, self.nheads, self.n_angles = self.dims(d_model, o)
        self.d_state, self.head_dim, self.ngroups = o.d_state, o.head_dim, o.ngroups
        H, N, G = self.nheads, o.d_state, o.ngroups
        # z, x, B, C, dt, A, lambda, theta
        self.splits = [self.d_inner, self.d_inner, G * N, G * N, H, H, H, self.n_angles]
        self.in_proj = nn.Linear(d_model, sum(self.splits), bias=False)
        self.dt_bias = nn.Parameter(init_dt_bias(H, o.dt_min, o.dt_max, o.dt_init_floor))  # (H,)
        self.B_norm = RMSNorm(N, eps=norm_eps)
        self.C_norm = RMSNorm(N, eps=norm_eps)
        self.B_bias = nn.Parameter(torch.ones(H, N))  # (H, N)
        self.C_bias = nn.Parameter(torch.ones(H, N))  # (H, N)
        self.D = nn.Parameter(torch.ones(H))  # (H,)
        for p in (self.dt_bias, self.D, self.B_bias, self.C_bias):  # biases [H, N] too, though 2-D
            p._no_weight_decay = True
        if o.out_norm:
            self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, group_size=self.head_dim, norm_before_gate=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> Mamba3Cache:
        H, N, P, R = self.nheads, self.d_state, self.head_dim, self.n_angles
        return Mamba3Cache(
            ssm_state=zero_state(batch_size, H, N, P, device=device, dtype=dtype),
            k_prev=zero_state(batch_size, H, N, device=device, dtype=dtype),
            x_prev=zero_state(batch_size, H, P, device=device, dtype=dtype),
            angle=zero_state(batch_size, H, R, device=device, dtype=dtype),
        )

    def _bc(self, u: torch.Tensor, norm: RMSNorm, bias: torch.Tensor) -> torch.Tensor:
        """``[B, T, G*N]`` -> ``[B, T, H, N]``: RMSNorm over N per group, then each head's bias."""
        u = norm(rearrange(u, "b t (g n) -> b t g n", g=self.ngroups))
        u = repeat(u, "b t g n -> b t (g r) n", r=self.nheads // self.ngroups)
        return u + bias.to(u.dtype)

    def forward(self, x: torch.Tensor, cache: Mamba3Cache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        z, xs, Bm, Cm, dt, A, lam, theta = torch.split(self.in_proj(x), self.splits, dim=-1)
        sdt = state_dtype(x.dtype)
        dt = F.softplus(dt.to(sdt) + self.dt_bias.to(sdt))  # (B, T, H)
        A = -F.softplus(A.to(sdt)).clamp(min=self.options.A_floor)  # (B, T, H)
        lam = torch.sigmoid(lam.to(sdt))  # (B, T, H)
        xs = rearrange(xs, "b t (h p) -> b t h p", p=self.head_dim)
        Bm = self._bc(Bm, self.B_norm, self.B_bias)  # (B, T, H, N)
        Cm = self._bc(Cm, self.C_norm, self.C_bias)  # (B, T, H, N)

        # cumulative angles Theta_t = Theta_cache + sum_{s <= t} dt_s theta_s, per head
        step = rearrange(dt, "b t h -> b t h 1") * rearrange(math.pi * torch.tanh(theta.to(sdt)), "b t r -> b t 1 r")
        angle = step.cumsum(dim=1)  # (B, T, H, R)
        if cache is not None:
            angle = angle + rearrange(cache.angle, "b h r -> b 1 h r")
        q = rotate_pairs(Cm, angle)  # (B, T, H, N)
        kr = rotate_pairs(Bm.to(sdt), angle)  # (B, T, H, N)

        lagged = (1 - lam) * dt  # beta'_t = beta_t / alpha_t: the weight of token t-1's input at step t
        lag_next = F.pad(lagged[:, 1:], (0, 0, 0, 1))  # beta'_{t+1}, 0 past the call's last token
        k = kr * rearrange(lam * dt + lag_next, "b t h -> b t h 1")
        if cache is not None:  # the previous call's last token: its lagged term enters before step 0
            cache.ssm_state = cache.ssm_state + rearrange(lagged[:, 0], "b h -> b h 1 1") * (
                rearrange(cache.k_prev, "b h n -> b h n 1") * rearrange(cache.x_prev, "b h p -> b h 1 p"))
        o = carry_state(cache, "ssm_state", gla, q=q, k=k, v=xs, g=dt * A, scale=1.0)  # (B, T, H, P)
        early = lag_next * (q.to(sdt) * kr).sum(-1)  # (B, T, H): the lagged part counted at t = s
        y = o.to(sdt) + rearrange(self.D.to(sdt) - early, "b t h -> b t h 1") * xs.to(sdt)  # + D x
        if cache is not None:
            cache.k_prev, cache.x_prev = kr[:, -1], xs[:, -1].to(sdt)
            cache.angle = torch.remainder(angle[:, -1], 2 * math.pi)

        y = rearrange(y.to(x.dtype), "b t h p -> b t (h p)")
        y = self.norm(y, z) if self.options.out_norm else y * F.silu(z)
        return self.out_proj(y)
