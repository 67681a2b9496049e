"""causal_conv1d as an explicit loop over time and taps: the definition the other paths match.

    y_t[d] = bias[d] + sum_{w=0}^{W-1} weight[d, w] * x_{t-(W-1)+w}[d]

with the inputs before the start taken from ``initial_state`` (the last ``W-1`` inputs,
oldest first; zeros when None). Tap ``W-1`` multiplies the current step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import accumulation_dtype


def causal_conv1d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences (no varlen: the op loops over packed ones), a Python
    loop over time and taps keeping the inputs seen so far. Arguments as ``causal_conv1d``
    validated them; y comes back in the accumulation dtype (float32, float64 for float64
    inputs), the final state in x's dtype."""
    dt = accumulation_dtype(x, weight, bias, initial_state)
    B, T, D = x.shape
    W = weight.shape[1]
    w = weight.to(dt)
    # history: the inputs seen so far, each [B, D], oldest first; starts with the W-1 state inputs
    if initial_state is None:
        history = [x.new_zeros(B, D, dtype=dt) for _ in range(W - 1)]
    else:
        history = list(initial_state.to(dt).unbind(-1))
    xs = x.to(dt).unbind(1)
    outs = []
    for t in range(T):
        history.append(xs[t])
        window = history[len(history) - W :]  # W inputs, the current one last
        y_t = torch.zeros(B, D, dtype=dt, device=x.device) if bias is None else bias.to(dt).expand(B, D)
        for tap in range(W):
            y_t = y_t + w[:, tap] * window[tap]
        outs.append(y_t)
    y = torch.stack(outs, dim=1) if outs else x.new_zeros(B, 0, D, dtype=dt)
    if activation == "silu":
        y = F.silu(y)
    last = history[len(history) - (W - 1) :] if W > 1 else []
    final = torch.stack(last, dim=-1) if last else x.new_zeros(B, D, 0, dtype=dt)
    return y, final.to(x.dtype)
