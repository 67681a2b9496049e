"""The delta_rule recurrence as a loop over time: the definition every other path is tested against.

Per (batch, head), row-vector convention, ``S`` is ``[K, V]``:

    S'  = Diag(exp g_t) S_{t-1}                      (g is None: no decay, DeltaNet)
    S_t = S' + beta_t k_t^T (v_t - k_t S')           (one delta-rule write)
    o_t = scale * q_t S_t

The write replaces the value stored under key ``k_t`` by ``v_t`` with strength ``beta_t``
(equivalently ``S_t = (I - beta_t k_t^T k_t) S' + beta_t k_t^T v_t``). ``g`` is None (DeltaNet),
``[B, T, H]`` (Gated DeltaNet: one log-space decay per head and step, ``exp(g_t) S_{t-1}``) or
``[B, T, H, K]`` (Kimi Delta Attention: one per key channel, row ``c`` of S scaled by
``exp(g_t[c])``).
"""

from __future__ import annotations

import torch
from einops import rearrange

from .._common import accumulation_dtype


def delta_rule_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
    scale: float, initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences (the op loops over packed ones): a Python loop over
    time, one decay and one delta-rule write per step. Arguments as ``delta_rule`` validated
    them; o and the final state come back in the accumulation dtype (float32, float64 for
    float64 inputs)."""
    dt = accumulation_dtype(q, k, v, beta, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v = (rearrange(x.to(dt), "b t h d -> t b h d") for x in (q, k, v))
    beta = rearrange(beta.to(dt), "b t h -> t b h 1")
    if g is None:
        decay = None
    elif g.dim() == 3:  # one decay per head: scales the whole state
        decay = rearrange(g.to(dt), "b t h -> t b h 1 1").exp()
    else:  # one decay per key channel: scales the rows of the state
        decay = rearrange(g.to(dt), "b t h k -> t b h k 1").exp()
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dt)
    # unbind, not x[t]: each indexing op's backward would allocate a zero tensor of the full
    # [T, ...] size, making the backward quadratic in T.
    steps = zip(q.unbind(0), k.unbind(0), v.unbind(0), beta.unbind(0),
                (None,) * T if decay is None else decay.unbind(0))
    outs = []
    for q_t, k_t, v_t, beta_t, decay_t in steps:
        if decay_t is not None:
            S = S * decay_t
        # Products with S as multiply-and-sum rather than matmuls: at these sizes (one row
        # against one [K, V] state) the elementwise form is faster and avoids thread start-up.
        old = (k_t.unsqueeze(-1) * S).sum(-2)  # (B, H, V): the value stored under k_t
        S = S + k_t.unsqueeze(-1) * (beta_t * (v_t - old)).unsqueeze(-2)
        outs.append(scale * (q_t.unsqueeze(-1) * S).sum(-2))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, V)
    return o, S
