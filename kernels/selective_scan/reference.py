"""The selective_scan (Mamba-1) recurrence as a loop over time: the definition every other
path is tested against.

Per batch row, channel d and state n (channel d reads the B/C group d // (D / G)):

    delta_t = dt_t (+ dt_bias), then softplus if dt_softplus
    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d],      y_t *= silu(z_t) if z is given
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import accumulation_dtype


def step_size(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    """delta = dt + dt_bias (when given), through softplus when ``dt_softplus``; in ``dtype``."""
    delta = dt.to(dtype)
    if dt_bias is not None:
        delta = delta + dt_bias.to(dtype)
    return F.softplus(delta) if dt_softplus else delta


def skip_and_gate(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """y ``[B, T, D]`` (accumulation dtype) -> ``(y + D x) * silu(z)``, each part when given."""
    if D is not None:
        y = y + D.to(y.dtype) * x.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def as_groups(M: torch.Tensor) -> torch.Tensor:
    """B or C ``[B, T, N]`` or ``[B, T, G, N]`` -> ``[B, T, G, N]``."""
    return M.unsqueeze(2) if M.dim() == 3 else M


def selective_scan_reference(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence of the module docstring as a Python loop over time, the state held as
    ``[B, G, D/G, N]`` so that each channel group meets its own row of B and C. Arguments as
    ``selective_scan`` validated them; y and the final state come back in the accumulation dtype
    (float32, or float64 for float64 inputs)."""
    acc = accumulation_dtype(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, T, dim = x.shape
    N = A.shape[-1]
    B, C = as_groups(B).to(acc), as_groups(C).to(acc)  # (B, T, G, N)
    G = B.shape[2]
    delta = step_size(dt, dt_bias, dt_softplus, acc)  # (B, T, D)
    A = A.to(acc).reshape(G, dim // G, N)
    h = x.new_zeros(batch, dim, N, dtype=acc) if initial_state is None else initial_state.to(acc)
    h = h.reshape(batch, G, dim // G, N)  # channel d = (group, channel in group)
    ys = []
    # unbind, not [:, t]: one stack in the backward instead of a full-size zero tensor per step
    steps = zip(delta.unbind(1), x.to(acc).unbind(1), B.unbind(1), C.unbind(1))
    for d_t, x_t, B_t, C_t in steps:
        d_t = d_t.reshape(batch, G, dim // G, 1)
        h = torch.exp(d_t * A) * h + (d_t * x_t.reshape(batch, G, dim // G, 1)) * B_t.unsqueeze(2)
        ys.append((h * C_t.unsqueeze(2)).sum(-1).reshape(batch, dim))  # (B, D)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, dim, dtype=acc)
    return skip_and_gate(y, x, D, z), h.reshape(batch, dim, N)
