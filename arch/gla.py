"""Gated Linear Attention mixer (Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training").

Per head, a matrix state ``S [K, V]`` decays per key channel with a data-dependent gate:

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,     o_t = q_t S_t / sqrt(K)

``alpha_t = exp(g_t)``, with ``g_t = logsigmoid(W2 W1 x_t + b) / 16``: a low-rank (16)
projection, and the normaliser 16 keeps the decays close to 1 at initialisation (each step
forgets about 4%), which is what lets GLA learn long memories. The output is normalised per
head and gated: ``out_proj(rmsnorm(o) * silu(W_g x))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import gla

from .layers import GatedRMSNorm
from .mixer import (
    HeadOptions,
    Mixer,
    carry_state,
    expanded_dims,
    heads_of_at_least,
    state_dtype,
    zero_state,
)


@dataclasses.dataclass
class GLACache:
    """Decoding state of one GLA layer: ``state [B, H, K, V]`` float32 (float64 for float64 models)."""

    state: torch.Tensor


class GLA(Mixer):
    """Gated linear attention: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default."""

    name = "gla"
    has_mlp = True

    @dataclasses.dataclass
    class Options(HeadOptions):
        #: (inherited) n_heads (None: 4, or the largest count below 4 that divides both key and
        #: value dims), expand_v = 1; key dim (q, k, gate) = expand_k * d_model
        expand_k: float = 0.5
        #: rank of the gate projection W2 W1
        gate_low_rank_dim: int = 16
        #: g = logsigmoid(.) / gate_logit_normalizer
        gate_logit_normalizer: float = 16.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        _, _, n_heads = opts.resolve_heads(cls.name, d_model, lambda key_dim: [4, 3, 2, 1])
        if opts.gate_low_rank_dim < 1 or opts.gate_logit_normalizer <= 0:
            raise ValueError(
                f"mixer 'gla': gate_low_rank_dim must be >= 1 and gate_logit_normalizer > 0, got {opts}"
            )
        return dataclasses.replace(opts, n_heads=n_heads)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Key heads of at least 32 channels: over the key dim ``d_model / 2`` (the default
        expand_k 0.5) and the value dim ``d_model``, the most heads that divide both and keep at
        least 32 key channels each, or one head when the key dim is under 32. (GLA's own
        default, at most 4 heads, would give 2 to 128 key channels per head over a 16-1024
        ladder.) The floor is a fixed 32 key channels, the rows of each head's state, not the
        ladder's ``head_dim``; ``head_dim`` and ``d_state`` do not apply."""
        key_dim, value_dim = d_model // 2, d_model
        if key_dim < 32:
            return {"n_heads": 1}
        return {"n_heads": heads_of_at_least(key_dim, 32, divides=value_dim)}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.n_heads = options.n_heads
        self.key_dim, self.value_dim = expanded_dims(self.name, d_model, options.expand_k, options.expand_v)
        self.head_k_dim = self.key_dim // self.n_heads
        self.head_v_dim = self.value_dim // self.n_heads
        self.gate_logit_normalizer = options.gate_logit_normalizer

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, options.gate_low_rank_dim, bias=False),
            nn.Linear(options.gate_low_rank_dim, self.key_dim, bias=True),
        )
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> GLACache:
        return GLACache(zero_state(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: GLACache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        q = rearrange(self.q_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim)
        k = rearrange(self.k_proj(x), "b t (h k) -> b t h k", k=self.head_k_dim)
        v = rearrange(self.v_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        gk = F.logsigmoid(self.gk_proj(x).to(state_dtype(x.dtype))) / self.gate_logit_normalizer
        gk = rearrange(gk, "b t (h k) -> b t h k", k=self.head_k_dim)  # (B, T, H, K), <= 0
        o = carry_state(cache, "state", gla, q=q, k=k, v=v, g=gk)  # (B, T, H, V); state (B, H, K, V)
        g = rearrange(self.g_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        o = self.g_norm(o, g)  # (B, T, H, V)
        return self.out_proj(rearrange(o, "b t h v -> b t (h v)"))
