"""rms_norm: RMSNorm over the last dim, optionally per group of channels and gated by silu.

    norm(u) = u / sqrt(mean(u^2) + eps)
    y = norm(x) * weight * silu(gate)      if norm_before_gate (the default)
    y = norm(x * silu(gate)) * weight      otherwise (Mamba-2's gated norm)
"""

from __future__ import annotations

import torch

from .._common import (
    check_float,
    check_same_device,
    check_shape,
    fmt_shape,
    resolve_impl,
)
from .._library import register
from .._triton import HAS_TRITON
from .chunk import rms_norm_chunk
from .reference import rms_norm_reference

__all__ = ["rms_norm", "rms_norm_chunk", "rms_norm_reference"]


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    gate: torch.Tensor | None = None,
    norm_before_gate: bool = True,
    group_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Root-mean-square norm with an optional silu gate.

    Args:
        x: ``[..., D]``.
        weight: the scale ``[D]``, or None for no scale (a plain ``x / rms(x)``).
        eps: added to the mean of squares before the square root.
        gate: ``[..., D]`` like x, or None (no gate).
        norm_before_gate: True: ``norm(x) * weight * silu(gate)``; False:
            ``norm(x * silu(gate)) * weight``. Ignored without a gate.
        group_size: normalise each group of ``group_size`` consecutive channels separately
            (Mamba-2 with ``ngroups > 1``); must divide D. None means D (one group).
        impl: as every op, see ``postformer.kernels``: ``"reference"`` is the formula written
            out, ``"chunk"`` ``F.rms_norm``, ``"triton"`` fused kernels.

    Returns:
        y ``[..., D]`` in x's dtype, computed in float32 (float64 for float64 inputs).
        Gradients flow to x, weight and gate.
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(x=x, weight=weight, eps=eps, gate=gate, norm_before_gate=norm_before_gate,
                   group_size=group_size, impl=impl)
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError(f"x has shape {fmt_shape(x)}, expected [..., D] (at least 1 dim)")
    D = x.shape[-1]
    if weight is not None:
        check_float("weight", weight)
        check_shape("weight", weight, (D,), "[D]")
    if gate is not None:
        check_float("gate", gate)
        check_shape("gate", gate, tuple(x.shape), "[..., D] like x")
    if group_size is None:
        group_size = D
    if not isinstance(group_size, int) or group_size < 1 or D % group_size != 0:
        raise ValueError(f"group_size={group_size!r} must be a positive divisor of D={D} (x shape {fmt_shape(x)})")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    check_same_device(x=x, weight=weight, gate=gate)
    impl = resolve_impl(impl, x, weight, gate, has_triton=HAS_TRITON)
    if impl == "triton":
        from .triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, gate, norm_before_gate, group_size)
    fn = rms_norm_reference if impl == "reference" else rms_norm_chunk
    return fn(x, weight, eps, gate, norm_before_gate, group_size).to(x.dtype)


def _fake(x, weight, eps, gate, norm_before_gate, group_size, impl):
    return x.new_empty(x.shape)


_OP = register("rms_norm", rms_norm, [
    ("x", "Tensor"), ("weight", "Tensor?"), ("eps", "float"), ("gate", "Tensor?"),
    ("norm_before_gate", "bool"), ("group_size", "int?"), ("impl", "str"),
], _fake, pair=False)
