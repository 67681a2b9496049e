"""The linear_scan recurrence as a loop over time: the definition every other path is tested against.

    h_t = exp(g_t) * h_{t-1} + x_t        elementwise, h: [D] per batch row
"""

from __future__ import annotations

import torch

from .._common import accumulation_dtype


def linear_scan_reference(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences, no varlen. x, g: ``[B, T, D]``; initial_state ``[B, D]``.

    Returns every state h ``[B, T, D]`` and the final state ``[B, D]``, both in the
    accumulation dtype (float32, or float64 for float64 inputs).
    """
    dt = accumulation_dtype(x, g, initial_state)
    B, T, D = x.shape
    x, g = x.to(dt), g.to(dt)
    h = x.new_zeros(B, D) if initial_state is None else initial_state.to(dt)
    hs = []
    for x_t, g_t in zip(x.unbind(1), g.unbind(1)):
        h = torch.exp(g_t) * h + x_t
        hs.append(h)
    out = torch.stack(hs, dim=1) if hs else x.new_zeros(B, 0, D)
    return out, h
