"""delta_rule: the delta-rule recurrence behind DeltaNet and Gated DeltaNet.

    S' = exp(g_t) S_{t-1},   S_t = S' + beta_t k_t^T (v_t - k_t S'),   o_t = scale * q_t S_t
"""

from __future__ import annotations

import torch

from .._common import (
    check_float,
    check_qkv,
    check_same_device,
    check_shape,
    check_states,
    resolve_gated,
    run_packed,
)
from .._library import fake_pair, register, state_dtype
from .._triton import HAS_TRITON
from .chunk import delta_rule_chunk
from .reference import delta_rule_reference

__all__ = ["delta_rule", "delta_rule_chunk", "delta_rule_reference"]


def delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
    g: torch.Tensor | None = None, *, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Delta-rule linear attention (DeltaNet; Gated DeltaNet with ``g``).

    The op does not normalise ``k``: the recurrence is only stable for ``|k|^2 beta`` in
    ``(0, 2)``, so callers L2-normalise keys and keep ``beta`` in ``(0, 1)`` (e.g. a sigmoid).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]`` (L2-normalised by the caller).
        v: values ``[B, T, H, V]``.
        beta: write strengths ``[B, T, H]``, typically in ``(0, 1)``.
        g: None (DeltaNet) or a log-space decay ``[B, T, H]`` (``g <= 0``, decay ``exp(g)``).
        scale, initial_state, output_final_state, cu_seqlens, impl: as every op, see
            ``postformer.kernels``; the state S (``[K, V]`` per head) is ``[B, H, K, V]``
            (``[N, H, K, V]`` with ``cu_seqlens``).

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in q's dtype, and the state after the last
        step or None (without ``output_final_state``).
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(q=q, k=k, v=v, beta=beta, g=g, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, impl=impl)
    B, T, H, K, V = check_qkv(q, k, v)
    check_float("beta", beta)
    check_shape("beta", beta, (B, T, H), "[B, T, H]")
    if g is not None:
        check_float("g", g)
        check_shape("g", g, (B, T, H), "None or [B, T, H] (one log decay per head and step)")
    check_states(initial_state, cu_seqlens, B, T, (H, K, V), "H, K, V")
    check_same_device(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    requested = impl
    impl, g, scale = resolve_gated(impl, q, g, scale, has_triton=HAS_TRITON)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    if impl == "reference" or (T == 1 and cu_seqlens is None and requested != "triton"):
        fn = delta_rule_reference
    elif impl == "triton":  # the kernels take packed sequences themselves
        from .triton import delta_rule_triton

        o, S = delta_rule_triton(q, k, v, beta, g, scale, initial_state, cu_seqlens)
        return o.to(q.dtype), (S if output_final_state else None)
    else:
        fn = delta_rule_chunk
    # with cu_seqlens, one sequence at a time, each with its own state
    o, S = run_packed(fn, cu_seqlens, (q, k, v, beta, g), initial_state, scale)
    return o.to(q.dtype), (S if output_final_state else None)


def _fake(q, k, v, beta, g, scale, initial_state, output_final_state, impl):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return fake_pair(q, (B, T, H, V), (B, H, K, V), state_dtype(q, k, v, beta, g, initial_state),
                     output_final_state)


_OP = register("delta_rule", delta_rule, [
    ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("beta", "Tensor"), ("g", "Tensor?"),
    ("scale", "float?"), ("initial_state", "Tensor?"), ("output_final_state", "bool"),
    ("impl", "str"),
], _fake)
