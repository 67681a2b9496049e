"""Helpers the op tests share (imported as ``kernel_testing``: pytest puts this folder on the
path, since tests/ has no __init__.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in the Frobenius norm, computed in float64 on the CPU."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def linear_scan_inputs(B, T, D, dtype=torch.float32, n_states=None, seed=0):
    """x, g (log decays near -0.3) ``[B, T, D]`` and initial states ``[n_states or B, D]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, D, generator=gen) + 1).to(dtype)
    h0 = torch.randn(n_states or B, D, generator=gen)
    return x, g, h0


def conv_inputs(B, T, D, W, dtype=torch.float32, seed=0, n_states=None, device="cpu"):
    """x ``[B, T, D]``, weight ``[D, W]``, bias ``[D]``, initial states ``[n_states or B, D, W-1]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    w = torch.randn(D, W, generator=gen)
    b = torch.randn(D, generator=gen)
    h0 = torch.randn(n_states or B, D, W - 1, generator=gen)
    return [t.to(dtype).to(device) for t in (x, w, b, h0)]
