"""RetNet's multi-scale retention mixer (Sun et al. 2023, "Retentive Network: A Successor to
Transformer for Large Language Models", section 2).

Per head h, retention is linear attention with a fixed exponential decay ``gamma_h``
(eq. 1-6, recurrent form):

    S_t = gamma_h S_{t-1} + k_t^T v_t,       o_t = q_t S_t / sqrt(K)

``gamma_h = 1 - 2^(-5-h)`` for ``h = 0 .. H-1`` (eq. 8): each head remembers on its own time
scale (32, 64, 128, ... steps), and no decay is learned. This is ``gla`` with a constant
``g = log(gamma_h)`` broadcast to ``[B, T, H]``. The block (eq. 8):

    Y = GroupNorm_h(Retention(X)),   MSR(X) = (swish(X W_G) * Y) W_O

with ``W_Q, W_K: d -> d`` and ``W_V, W_G: d -> 2d`` (``expand_v = 2``), heads of 256 key
channels in the paper's LM configurations (8 heads at d_model 2048).

Deviations, deliberately:

- Position: the paper rotates q and k with xPos's rotation ``e^{i n theta}`` (the decay part of
  xPos is what ``gamma`` provides); here it is plain RoPE (``layers.Rotary``, rotate-half
  layout, base 10000), the same relative rotation with another channel pairing.
- GroupNorm -> RMSNorm per head (with a learned scale). What the paper needs from GroupNorm is
  a normalisation *per head*, since heads with different ``gamma`` have outputs of very
  different scales; RMSNorm per head gives that without the mean subtraction (later
  torchscale/FLA releases use RMSNorm here too). The per-head norm also absorbs the paper's
  parallel-form rescalings of the decay matrix and of ``QK^T`` (both are scalars per head and
  position), so they are not needed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from einops import rearrange
from torch import nn

from postformer.kernels import gla

from .layers import GatedRMSNorm, Rotary
from .mixer import HeadOptions, Mixer, carry_state, expanded_dims, state_dtype, zero_state


@dataclasses.dataclass
class RetNetCache:
    """Decoding state of one retention layer: ``state [B, H, K, V]`` float32 (float64 for
    float64 models) and ``offset``, the number of positions seen (the rotary's next position)."""

    state: torch.Tensor
    offset: int = 0


class RetNet(Mixer):
    """Multi-scale retention: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default."""

    name = "retnet"
    has_mlp = True

    @dataclasses.dataclass
    class Options(HeadOptions):
        #: (inherited) n_heads (None: key dim / 256, at least 1, lowered until it divides key and
        #: value dims into even key widths), expand_k = 1; value dim = expand_v * d_model
        expand_v: float = 2.0
        #: RoPE base
        rope_base: float = 10000.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        key_dim, _, n_heads = opts.resolve_heads(cls.name, d_model, lambda k: list(range(max(1, k // 256), 0, -1)),
                                                 per_head_even=True)
        if (key_dim // n_heads) % 2 != 0:
            raise ValueError(
                f"mixer 'retnet': key channels per head {key_dim // n_heads} (key dim {key_dim} / "
                f"n_heads {n_heads}) must be even for the rotary embedding"
            )
        if opts.rope_base <= 1:
            raise ValueError(f"mixer 'retnet': rope_base must be > 1, got {opts.rope_base}")
        return dataclasses.replace(opts, n_heads=n_heads)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """No options (``{}``): the defaults already follow the width. Over the key dim ``d_model``
        (expand_k 1) and value dim ``2 * d_model`` (expand_v 2), heads are ``key dim // 256`` (at
        least 1; the paper's heads of 256 key channels), lowered until they divide both dims into
        even key widths (RoPE): one head below width 512, heads of at least 256 key channels above.
        The decays ``gamma_h`` are per head, so the head count fixes the time scales. The ladder's
        ``head_dim`` and ``d_state`` do not apply; an explicit value here would change the configs
        existing runs were made with."""
        return {}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.n_heads = options.n_heads
        self.key_dim, self.value_dim = expanded_dims(self.name, d_model, options.expand_k, options.expand_v)
        self.head_k_dim = self.key_dim // self.n_heads
        self.head_v_dim = self.value_dim // self.n_heads

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.rotary = Rotary(self.head_k_dim, options.rope_base)
        self.g_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def log_gamma(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``log(gamma_h) = log(1 - 2^(-5-h))`` for ``h = 0 .. H-1``: ``[H]``, fixed, not learned
        (computed on the fly in ``dtype``, so a bf16 model does not round its decays)."""
        h = torch.arange(self.n_heads, device=device, dtype=dtype)
        return torch.log1p(-torch.exp2(-5.0 - h))

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> RetNetCache:
        return RetNetCache(zero_state(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim, device=device,
                                      dtype=dtype))

    def forward(self, x: torch.Tensor, cache: RetNetCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        B, T, _ = x.shape
        offset = 0 if cache is None else cache.offset
        q = rearrange(self.q_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim)
        k = rearrange(self.k_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim)
        v = rearrange(self.v_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        q, k = self.rotary(q, offset), self.rotary(k, offset)
        g = self.log_gamma(x.device, state_dtype(x.dtype)).expand(B, T, self.n_heads)  # (B, T, H)
        o = carry_state(cache, "state", gla, q=q, k=k, v=v, g=g,
                        scale=1.0 / math.sqrt(self.head_k_dim))  # (B, T, H, V); state (B, H, K, V)
        if cache is not None:
            cache.offset = offset + T
        gate = rearrange(self.g_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        o = self.g_norm(o, gate)
        return self.out_proj(rearrange(o, "b t h v -> b t (h v)"))
