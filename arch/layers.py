"""Building blocks every mixer and block shares: norms (plain and gated), the short causal conv,
the token shift, the block MLPs (SwiGLU, RWKV-7's channel mix), rotary embeddings.

All modules take ``[..., D]`` channels-last tensors; norms run ``postformer.kernels.rms_norm``,
which computes in float32 and returns the input's dtype, so bf16/fp16 activations do not lose
precision in the mean of squares.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import causal_conv1d, rms_norm

from .mixer import carry_state


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale: ``x / rms(x) * weight`` over the last dim ``[..., D]``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[..., D]`` -> ``[..., D]`` in x's dtype (computed in float32)."""
        return rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """The gated output norm of the mixers, one module for both orders of norm and gate.

    - ``norm_before_gate=False`` (Mamba-2): ``rmsnorm(x * silu(z)) * weight``;
    - ``norm_before_gate=True`` (GLA, RetNet, DeltaNet, Gated DeltaNet):
      ``rmsnorm(x) * weight * silu(z)``.

    With ``group_size < dim`` the mean of squares is taken per group of ``group_size``
    channels (Mamba-2 normalises each of its ``ngroups`` groups separately), so the norm
    stays local to what one tensor-parallel shard would hold. Applied over the last dim, so a
    per-head norm is ``GatedRMSNorm(head_dim)`` on ``[B, T, H, head_dim]``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if dim % group_size != 0:
            raise ValueError(f"GatedRMSNorm: dim {dim} is not divisible by group_size {group_size}")
        self.dim = dim
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z: ``[..., D]`` -> ``[..., D]`` in x's dtype. ``z=None`` means no gate."""
        return rms_norm(x, self.weight, eps=self.eps, gate=z, norm_before_gate=self.norm_before_gate,
                        group_size=self.group_size)

    def extra_repr(self) -> str:
        return (f"{self.dim}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")


class ShortConv(nn.Conv1d):
    """The short depthwise causal conv of Mamba, Mamba-2, (Gated) DeltaNet, RG-LRU and
    attention's Primer convs: ``width`` taps per channel, run by ``kernels.causal_conv1d``.

    It owns its weight ``[C, 1, W]`` and optional bias ``[C]`` in ``nn.Conv1d``'s layout and
    init (state dicts of models built with ``nn.Conv1d`` load unchanged).
    ``forward(x, initial_state=None, output_final_state=False)`` takes ``x [B, T, C]`` and returns
    ``(y [B, T, C], state)``, the state being the last ``W - 1`` inputs ``[B, C, W - 1]`` (None
    unless asked for); a T = 1 call with a state is the cheap decoding step.
    """

    def __init__(self, channels: int, width: int, bias: bool = False, activation: str | None = None) -> None:
        if width < 1:
            raise ValueError(f"ShortConv: width must be >= 1, got {width}")
        super().__init__(channels, channels, width, groups=channels, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return causal_conv1d(x, rearrange(self.weight, "c 1 w -> c w"), self.bias, activation=self.activation,
                             initial_state=initial_state, output_final_state=output_final_state)

    def new_state(self, batch_size: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zeros ``[B, C, W - 1]``: the state before the first token."""
        return torch.zeros(batch_size, self.in_channels, self.kernel_size[0] - 1, device=device, dtype=dtype)


def init_dt_bias(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """The Mamba step-size bias init ``[n]``: ``softplus^-1(dt)`` for ``dt`` log-uniform in
    ``[dt_min, dt_max]`` (floored at ``dt_init_floor``), so that ``softplus(0 + bias)`` starts at a
    spread of time scales (Gu & Dao 2023, used by Mamba, Mamba-2 and Gated DeltaNet)."""
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt) = log(exp(dt) - 1)


#: the block MLPs a config can pick (``ModelConfig.mlp_kind``)
MLP_KINDS = ("swiglu", "rwkv7")


def default_ff_dim(d_model: int, multiple_of: int = 64, kind: str = "swiglu") -> int:
    """The MLP hidden width: ``8/3 * d_model`` rounded up to ``multiple_of`` for SwiGLU,
    ``4 * d_model`` for RWKV-7's channel mix (two matrices, as in RWKV-7).

    8/3 keeps a SwiGLU MLP (three matrices) at the parameter count of a 4x GELU MLP (two).
    """
    if kind == "rwkv7":
        return 4 * d_model
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


class SwiGLU(nn.Module):
    """``out_proj(silu(x W_gate) * (x W_up))``, no biases. ``[..., d_model] -> [..., d_model]``.

    The gate and up projections are one fused matrix ``in_proj: d_model -> 2 * d_ff``.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.out_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.in_proj(x).chunk(2, dim=-1)  # (..., d_ff) each
        return self.out_proj(F.silu(gate) * up)


def token_shift(x: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RWKV's token shift as a stateful op: x ``[B, T, D]`` -> ``(x_prev, state)``, ``x_prev[:, t]
    = x[:, t - 1]`` and ``x_prev[:, 0]`` the state ``[B, D]`` (the last token seen; zeros when
    None). The new state is ``x[:, -1]`` (None unless asked for), so :func:`carry_state` hands it
    to a cache like any op's state."""
    first = torch.zeros_like(x[:, :1]) if initial_state is None else initial_state.to(x.dtype).unsqueeze(1)
    x_prev = torch.cat([first, x[:, :-1]], dim=1)
    return x_prev, (x[:, -1] if output_final_state else None)


@dataclasses.dataclass
class TokenShiftCache:
    """Decoding state of a token shift: ``x_prev`` ``[B, D]``, the last input seen (zeros at
    the start), in the model's dtype."""

    x_prev: torch.Tensor


def mix_init(d_model: int, power: float) -> torch.Tensor:
    """RWKV's token-mix init ``1 - (i / d_model) ** power`` over the channels i (``[d_model]``):
    from 1 (all previous token) to nearly 0 (all current token) across the width."""
    return 1.0 - torch.pow(torch.arange(d_model, dtype=torch.float32) / d_model, power)


class RWKV7ChannelMix(nn.Module):
    """RWKV-7's channel mix (its FFN), a block MLP with a token shift:
    ``[B, T, d_model] -> [B, T, d_model]``.

        k_t = x_t + (x_{t-1} - x_t) * mu_k                      (lerp towards the previous token)
        out_t = out_proj(relu(in_proj(k_t)) ** 2)               (hidden width d_ff, 4 * d_model in RWKV-7)

    ``mu_k`` (``x_k``, ``[d_model]``) starts at ``1 - (i / d_model) ** ((1 - l / L) ** 4)`` for
    layer l of L (RWKV-LM's init); the two matrices take the model's linear init. Decoding:
    ``new_cache`` gives a :class:`TokenShiftCache`; ``forward(x, cache)`` continues it.
    """

    def __init__(self, d_model: int, d_ff: int, *, layer_idx: int = 0, n_layers: int = 1) -> None:
        super().__init__()
        self.d_model = d_model
        self.x_k = nn.Parameter(mix_init(d_model, (1.0 - layer_idx / n_layers) ** 4))  # (d_model,)
        self.in_proj = nn.Linear(d_model, d_ff, bias=False)
        self.out_proj = nn.Linear(d_ff, d_model, bias=False)

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> TokenShiftCache:
        return TokenShiftCache(torch.zeros(batch_size, self.d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: TokenShiftCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]``; with a cache, x continues the tokens it has seen."""
        x_prev = carry_state(cache, "x_prev", token_shift, x)  # (B, T, d_model)
        k = torch.addcmul(x, x_prev - x, self.x_k.to(x.dtype))
        return self.out_proj(torch.relu(self.in_proj(k)).square())


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs ``(i, R + i)``, ``i < R``, of x ``[..., D]`` by ``angles[..., i]``
    (``[..., R]``, broadcast against x's leading dims, ``2R <= D``), rotate-half (GPT-NeoX)
    layout: ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``; channels from ``2R`` on pass
    unchanged. Computed in float32 (float64 stays); returns x's dtype."""
    R = angles.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)
    xf, angles = x.to(dt), angles.to(dt)
    cos, sin = angles.cos(), angles.sin()
    x1, x2, rest = xf[..., :R], xf[..., R : 2 * R], xf[..., 2 * R :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021), rotate-half (GPT-NeoX) layout.

    Angles are computed on the fly from the absolute positions ``offset .. offset + T - 1``,
    so a decoding step at any position costs one ``[T, D/2]`` outer product and no table
    bounds the sequence length.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"Rotary: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: ``[B, T, H, D]``; position of x[:, i] is ``offset + i``. Returns x rotated."""
        T = x.shape[1]
        dt = torch.promote_types(x.dtype, torch.float32)
        pos = torch.arange(offset, offset + T, device=x.device, dtype=dt)  # (T,)
        angles = torch.outer(pos, self.inv_freq.to(device=x.device, dtype=dt))  # (T, D/2)
        return rotate_pairs(x, rearrange(angles, "t d -> t 1 d"))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
