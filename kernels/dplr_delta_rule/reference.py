"""The dplr_delta_rule recurrence as a loop over time: the definition every other path is tested
against.

Per (batch, head), row-vector convention, ``S`` is ``[K, V]``, ``q, k, a, b, g`` rows of ``K``:

    u_t = b_t S_{t-1}                                          (a [V] row: what b_t reads)
    S_t = Diag(exp g_t) S_{t-1} + a_t^T u_t + k_t^T v_t        (diagonal plus low rank)
    o_t = scale * q_t S_t

The transition ``Diag(exp g_t) + a_t^T b_t`` is a diagonal plus a rank-one matrix, hence the
name (DPLR). ``b_t`` reads the state *before* the step's decay.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .._common import accumulation_dtype


def dplr_delta_rule_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    g: torch.Tensor, scale: float, initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences (the op loops over packed ones): a Python loop over
    time, one decay, one rank-one read-and-write and one write per step. Arguments as
    ``dplr_delta_rule`` validated them (``g`` not floored: ``-inf`` is ``exp = 0`` here); o and
    the final state come back in the accumulation dtype (float32, float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, a, b, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v, a, b = (rearrange(x.to(dt), "b t h d -> t b h d") for x in (q, k, v, a, b))
    decay = rearrange(g.to(dt), "b t h d -> t b h d 1").exp()
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dt)
    # unbind, not x[t]: each indexing op's backward would allocate a zero tensor of the full
    # [T, ...] size, making the backward quadratic in T.
    outs = []
    for q_t, k_t, v_t, a_t, b_t, decay_t in zip(*(x.unbind(0) for x in (q, k, v, a, b, decay))):
        # products with S as multiply-and-sum: one row against one [K, V] state per head
        u = (b_t.unsqueeze(-1) * S).sum(-2)  # (B, H, V), read from S_{t-1}
        S = decay_t * S + a_t.unsqueeze(-1) * u.unsqueeze(-2) + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append(scale * (q_t.unsqueeze(-1) * S).sum(-2))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, V)
    return o, S
