"""gla: gated linear attention, the recurrence behind linear attention, RetNet, Mamba-2 (SSD),
lightning attention, GLA and HGRN2.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t
"""

from __future__ import annotations

import torch

from .._common import (
    check_float,
    check_qkv,
    check_same_device,
    check_states,
    fmt_shape,
    resolve_gated,
    run_packed,
)
from .._library import fake_pair, register, state_dtype
from .._triton import HAS_TRITON
from .chunk import gla_chunk
from .reference import gla_reference

__all__ = ["gla", "gla_chunk", "gla_reference"]


def gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: log-space decay (``g <= 0``; the decay is ``exp(g)``): None (no decay),
            ``[B, T, H]`` (one per head and step) or ``[B, T, H, K]`` (one per key channel).
        scale, initial_state, output_final_state, cu_seqlens, impl: as every op, see
            ``postformer.kernels``. The state S is ``[B, H, K, V]`` (``[N, H, K, V]`` with
            ``cu_seqlens``).

    Returns:
        ``(o, final_state)``: the outputs ``o`` ``[B, T, H, V]`` in q's dtype and the state
        after the last step (None unless ``output_final_state``).
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(q=q, k=k, v=v, g=g, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, impl=impl)
    B, T, H, K, V = check_qkv(q, k, v)
    if g is not None:
        check_float("g", g)
        if tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
            raise ValueError(
                f"g has shape {fmt_shape(g)}, expected None, [B, T, H] = {[B, T, H]} "
                f"or [B, T, H, K] = {[B, T, H, K]}"
            )
    check_states(initial_state, cu_seqlens, B, T, (H, K, V), "H, K, V")
    check_same_device(q=q, k=k, v=v, g=g, initial_state=initial_state)
    impl, g, scale = resolve_gated(impl, q, g, scale, has_triton=HAS_TRITON)
    if impl == "triton":
        from .triton import gla_triton

        return gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    fn = gla_reference if impl == "reference" or (T == 1 and cu_seqlens is None) else gla_chunk
    # with cu_seqlens, one sequence at a time, each with its own state
    o, S = run_packed(fn, cu_seqlens, (q, k, v, g), initial_state, scale)
    return o.to(q.dtype), (S if output_final_state else None)


def _fake(q, k, v, g, scale, initial_state, output_final_state, impl):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return fake_pair(q, (B, T, H, V), (B, H, K, V), state_dtype(q, k, v, g, initial_state),
                     output_final_state)


_OP = register("gla", gla, [
    ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("g", "Tensor?"), ("scale", "float?"),
    ("initial_state", "Tensor?"), ("output_final_state", "bool"), ("impl", "str"),
], _fake)
