"""rms_norm in plain PyTorch: ``F.rms_norm`` (fused on most backends) plus the gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import accumulation_dtype


def rms_norm_chunk(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                   gate: torch.Tensor | None, norm_before_gate: bool,
                   group_size: int) -> torch.Tensor:
    """``F.rms_norm`` (over a ``[..., D // group_size, group_size]`` view when grouped, the weight
    applied after) with the silu gate before or after it. Arguments as ``rms_norm`` validated
    them; y comes back in the accumulation dtype (float32, float64 for float64 inputs)."""
    dt = accumulation_dtype(x, weight, gate)
    D = x.shape[-1]
    u = x.to(dt)
    w = None if weight is None else weight.to(dt)
    g = None if gate is None else F.silu(gate.to(dt))
    if g is not None and not norm_before_gate:
        u = u * g
    if group_size == D:
        y = F.rms_norm(u, (D,), w, eps)
    else:
        y = F.rms_norm(u.unflatten(-1, (D // group_size, group_size)), (group_size,), None, eps).flatten(-2)
        if w is not None:
            y = y * w
    if g is not None and norm_before_gate:
        y = y * g
    return y
