"""dplr_delta_rule: the generalized delta rule, a diagonal-plus-low-rank transition (RWKV-7,
the general form of Kimi Delta Attention).

    S_t = Diag(exp g_t) S_{t-1} + a_t^T (b_t S_{t-1}) + k_t^T v_t,      o_t = scale * q_t S_t
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
from .chunk import dplr_delta_rule_chunk
from .reference import dplr_delta_rule_reference

__all__ = ["dplr_delta_rule", "dplr_delta_rule_chunk", "dplr_delta_rule_reference"]


def dplr_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    g: torch.Tensor, *, scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generalized (diagonal-plus-low-rank) delta rule, per head, row vectors, S ``[K, V]``:

        S_t = Diag(exp g_t) S_{t-1} + a_t^T (b_t S_{t-1}) + k_t^T v_t,    o_t = scale * q_t S_t

    The transition ``Diag(exp g_t) + a_t^T b_t`` decays every key channel and then replaces
    along ``a_t`` what ``b_t`` reads (``b_t`` reads the state before the step's decay). RWKV-7
    (``S_t = S_{t-1} (diag(w_t) - kk_t^T (s_t * kk_t)) + v_t^T k_t`` in its ``[V, K]`` layout):
    ``a = -(s * kk)``, ``b = kk`` (``kk`` the normalised key, read; ``s`` in (0, 1) the
    in-context learning rate, scaling what is written). A per-key gated delta rule (KDA,
    ``S_t = (I - beta_t k_t^T k_t) Diag(exp g_t) S_{t-1} + beta_t k_t^T v_t``) is
    ``a = -beta k``, ``b = k * exp(g)``, ``k' = beta k``.

    The op normalises nothing: the recurrence is only stable when the transition is a
    contraction (as with the two mappings above for unit keys and ``s``, ``beta`` in (0, 1)).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]`` (the write ``k_t^T v_t``).
        v: values ``[B, T, H, V]``.
        a: the low-rank write direction ``[B, T, H, K]``.
        b: the low-rank read direction ``[B, T, H, K]``.
        g: log-space decay per key channel ``[B, T, H, K]`` (``g <= 0``, decay ``exp(g)``;
            ``-inf`` is a full reset of that channel).
        scale, initial_state, output_final_state, cu_seqlens, impl: as every op, see
            ``postformer.kernels``; the state S (``[K, V]`` per head) is ``[B, H, K, V]``
            (``[N, H, K, V]`` with ``cu_seqlens``).

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in q's dtype, and the state after the last
        step or None (without ``output_final_state``).
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(q=q, k=k, v=v, a=a, b=b, g=g, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, impl=impl)
    B, T, H, K, V = check_qkv(q, k, v)
    for name, x in (("a", a), ("b", b)):
        check_float(name, x)
        check_shape(name, x, (B, T, H, K), "[B, T, H, K] like q")
    check_float("g", g)
    check_shape("g", g, (B, T, H, K), "[B, T, H, K] (one log decay per key channel)")
    check_states(initial_state, cu_seqlens, B, T, (H, K, V), "H, K, V")
    check_same_device(q=q, k=k, v=v, a=a, b=b, g=g, initial_state=initial_state)
    requested = impl
    impl, g, scale = resolve_gated(impl, q, g, scale, has_triton=HAS_TRITON)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    if impl == "reference" or (T == 1 and cu_seqlens is None and requested != "triton"):
        fn = dplr_delta_rule_reference
    elif impl == "triton":  # the kernels take packed sequences themselves
        from .triton import dplr_delta_rule_triton

        o, S = dplr_delta_rule_triton(q, k, v, a, b, g, scale, initial_state, cu_seqlens)
        return o.to(q.dtype), (S if output_final_state else None)
    else:
        fn = dplr_delta_rule_chunk
    # with cu_seqlens, one sequence at a time, each with its own state
    o, S = run_packed(fn, cu_seqlens, (q, k, v, a, b, g), initial_state, scale)
    return o.to(q.dtype), (S if output_final_state else None)


def _fake(q, k, v, a, b, g, scale, initial_state, output_final_state, impl):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return fake_pair(q, (B, T, H, V), (B, H, K, V), state_dtype(q, k, v, a, b, g, initial_state),
                     output_final_state)


_OP = register("dplr_delta_rule", dplr_delta_rule, [
    ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("a", "Tensor"), ("b", "Tensor"),
    ("g", "Tensor"), ("scale", "float?"), ("initial_state", "Tensor?"),
    ("output_final_state", "bool"), ("impl", "str"),
], _fake)
