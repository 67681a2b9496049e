"""linear_scan: the elementwise gated linear recurrence behind HGRN, RG-LRU (Hawk/Griffin)
and minGRU.

    h_t = exp(g_t) * h_{t-1} + x_t        elementwise over D channels
"""

from __future__ import annotations

import torch

from .._common import (
    check_btd,
    check_float,
    check_same_device,
    check_shape,
    check_states,
    resolve_impl,
    run_packed,
)
from .._library import fake_pair, register, state_dtype
from .._triton import HAS_TRITON
from .chunk import linear_scan_chunk, linear_scan_varlen_chunk
from .reference import linear_scan_reference

__all__ = ["linear_scan", "linear_scan_chunk", "linear_scan_reference"]


def linear_scan(
    x: torch.Tensor, g: torch.Tensor, *, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elementwise gated linear scan.

    Args:
        x: inputs ``[B, T, D]``.
        g: log-space decay ``[B, T, D]`` (normally ``g <= 0``; the decay is ``exp(g)``).
        initial_state, output_final_state, cu_seqlens, impl: as every op, see
            ``postformer.kernels``; the state is ``[B, D]`` (``[N, D]`` with ``cu_seqlens``).

    Returns:
        ``(h, final_state)``: every state ``h`` ``[B, T, D]`` in x's dtype, and the last one
        (``[B, D]``, or ``[N, D]``) or None unless ``output_final_state``.
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(x=x, g=g, initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens, impl=impl)
    B, T, D = check_btd(x)
    check_float("g", g)
    check_shape("g", g, (B, T, D), "[B, T, D] like x")
    check_states(initial_state, cu_seqlens, B, T, (D,), "D")
    check_same_device(x=x, g=g, initial_state=initial_state)
    impl = resolve_impl(impl, x, g, initial_state, has_triton=HAS_TRITON)
    if impl == "triton":
        from .triton import linear_scan_triton

        return linear_scan_triton(x, g, initial_state, output_final_state, cu_seqlens)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    fn = linear_scan_reference if impl == "reference" or (T == 1 and cu_seqlens is None) else linear_scan_chunk

    if cu_seqlens is not None and fn is linear_scan_chunk:
        # One scan over the packed batch, the state reset at each sequence's first step.
        h, S = linear_scan_varlen_chunk(x, g, initial_state, cu_seqlens.tolist())
    else:  # with cu_seqlens one sequence at a time, each from its own state
        h, S = run_packed(fn, cu_seqlens, (x, g), initial_state)
    return h.to(x.dtype), (S if output_final_state else None)


def _fake(x, g, initial_state, output_final_state, impl):
    B, T, D = x.shape
    return fake_pair(x, (B, T, D), (B, D), state_dtype(x, g, initial_state), output_final_state)


_OP = register("linear_scan", linear_scan, [
    ("x", "Tensor"), ("g", "Tensor"), ("initial_state", "Tensor?"), ("output_final_state", "bool"),
    ("impl", "str"),
], _fake)
