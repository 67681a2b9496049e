"""rms_norm written out, the definition the other paths match.

    norm(u) = u / sqrt(mean(u^2 over each group of channels) + eps)
    y = norm(x) * weight * silu(gate)        (norm_before_gate=True)
    y = norm(x * silu(gate)) * weight        (norm_before_gate=False, Mamba-2's gated norm)
"""

from __future__ import annotations

import torch

from .._common import accumulation_dtype


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                       gate: torch.Tensor | None, norm_before_gate: bool,
                       group_size: int) -> torch.Tensor:
    """The formula of the module docstring written out with elementwise ops (the silu too), no
    fused kernel. Arguments as ``rms_norm`` validated them; y comes back in the accumulation
    dtype (float32, float64 for float64 inputs)."""
    dt = accumulation_dtype(x, weight, gate)
    D = x.shape[-1]
    u = x.to(dt)
    silu_gate = None
    if gate is not None:
        g = gate.to(dt)
        silu_gate = g / (1 + torch.exp(-g))
    if silu_gate is not None and not norm_before_gate:
        u = u * silu_gate
    groups = u.reshape(*u.shape[:-1], D // group_size, group_size)
    mean_sq = (groups * groups).sum(-1, keepdim=True) / group_size
    y = (groups / torch.sqrt(mean_sq + eps)).reshape(u.shape)
    if weight is not None:
        y = y * weight.to(dt)
    if silu_gate is not None and norm_before_gate:
        y = y * silu_gate
    return y
