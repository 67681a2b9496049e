"""Gated attention: Transformer++ softmax attention with a sigmoid gate on its output (Qiu et al.
2025, "Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free",
the gate at position G1; used by Qwen3-Next).

Exactly ``attn`` (bias-free q/k/v/o projections, RoPE, optional GQA and Primer convs, the same KV
cache) except that each head's SDPA output is multiplied by a gate computed from the mixer's
input x (the block's normed hidden state) before the output projection:

    o_t^h   = sum_{s <= t} softmax_s(q_t^h k_s^h^T / sqrt(D)) v_s^h          [D] per head h
    y_t     = W_o [ o_t^1 * sigma(x_t W_g^1), ..., o_t^H * sigma(x_t W_g^H) ]

``gate="elementwise"`` (the paper's best variant and Qwen3-Next's): ``W_g^h`` is ``[d_model, D]``,
one gate per channel of every head (``W_g`` is ``[d_model, H * D]``, as many parameters as
``W_q``); ``gate="headwise"``: ``W_g^h`` is ``[d_model, 1]``, one scalar gate per head
(``W_g`` is ``[d_model, H]``). The gate is bias-free and query-dependent (it reads x_t, the
query's position), which is what the paper credits for its effect: a non-linearity between
``W_v`` and ``W_o`` and a sparse, input-dependent damping of each head (no attention sink).

Deviation from Qwen3-Next: its gate is fused into ``q_proj`` (one matrix producing queries and
gates) and it also has q/k norms and partial RoPE; here the gate has its own projection
``g_proj`` (the same function, the same parameter count) and everything else is ``attn``'s, so
the comparison with ``attn`` measures the gate alone.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from .attention import Attention

GATES = ("elementwise", "headwise")


class GatedAttention(Attention):
    """Causal self-attention with an output gate: ``[B, T, d_model] -> [B, T, d_model]``. Has an
    MLP by default; the KV cache of ``attn`` (``new_cache`` inherited) and its width rule
    (``width_options`` inherited: heads of ``head_dim`` channels; the gate follows the heads)."""

    name = "gated_attn"
    has_mlp = True

    @dataclasses.dataclass
    class Options(Attention.Options):
        #: the output gate sigmoid(x W_g): "elementwise" (one gate per channel of every head, as
        #: Qwen3-Next; W_g is d_model x n_heads * head dim) or "headwise" (one gate per head; W_g
        #: is d_model x n_heads)
        gate: Literal["elementwise", "headwise"] = "elementwise"

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        if opts.gate not in GATES:
            raise ValueError(f"mixer {cls.name!r}: gate must be one of {list(GATES)}, got {opts.gate!r}")
        return super()._resolve(d_model, opts)  # its messages name cls.name

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)
        self.gate = self.options.gate
        gate_dim = self.n_heads * self.head_dim if self.gate == "elementwise" else self.n_heads
        self.g_proj = nn.Linear(d_model, gate_dim, bias=False)

    def _out(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out_proj(o * sigmoid(g_proj(x)))``: o ``[B, T, H, D]``, x ``[B, T, d_model]``."""
        g = torch.sigmoid(self.g_proj(x))  # (B, T, H*D) or (B, T, H)
        g = rearrange(g, "b t (h d) -> b t h d", h=self.n_heads)  # (B, T, H, D) or (B, T, H, 1)
        return super()._out(o * g, x)
