"""Helpers the op tests share (imported as ``kernel_testing``: pytest puts this folder on the
path, since tests/ has no __init__.py)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
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


def fla_naive(relpath: str):
    """A module of FLA's pure-PyTorch reference loops (``fla/<relpath>``, e.g.
    ``ops/kda/naive.py``), loaded from its file (importing ``fla.ops`` takes seconds, and needs
    no GPU this way); skips the test without the `peers` extra or where this fla lacks the file."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("install the `peers` extra (fla-core)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / relpath
    if not path.exists():
        pytest.skip(f"this fla has no {relpath}")
    mod_spec = importlib.util.spec_from_file_location("_fla_" + relpath.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module
