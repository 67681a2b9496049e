"""The gla recurrence as a loop over time: the definition every other path is tested against.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [K, V] per (batch, head)
    o_t = scale * q_t S_t

``g`` is None (no decay: plain linear attention), ``[B, T, H]`` (one decay per head and step,
e.g. RetNet, Mamba-2) or ``[B, T, H, K]`` (one decay per key channel, e.g. GLA, HGRN2).
"""

from __future__ import annotations

import torch
from einops import rearrange

from .._common import accumulation_dtype


def gla_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, scale: float,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences (the op loops over packed ones): a Python loop over
    time, one decay and one rank-1 write of the ``[B, H, K, V]`` state per step. Arguments as
    ``gla`` validated them; o and the final state come back in the accumulation dtype."""
    dt = accumulation_dtype(q, k, v, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v = (rearrange(x.to(dt), "b t h d -> t b h d") for x in (q, k, v))
    if g is not None:
        g = g.to(dt)
        # one decay per key channel, broadcast over V: [T, B, H, K|1, 1]
        g = rearrange(g, "b t h k -> t b h k 1") if g.dim() == 4 else rearrange(g, "b t h -> t b h 1 1")
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dt)
    outs = []
    for t in range(T):
        if g is not None:
            S = S * torch.exp(g[t])
        S = S + k[t].unsqueeze(-1) * v[t].unsqueeze(-2)  # (B, H, K, V)
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[t], S))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, V).transpose(0, 1)
    return o.reshape(B, T, H, V), S
