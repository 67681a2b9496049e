"""delta_rule: the delta-rule recurrence behind DeltaNet, Gated DeltaNet and Kimi Delta Attention.

    S' = Diag(exp g_t) S_{t-1},   S_t = S' + beta_t k_t^T (v_t - k_t S'),   o_t = scale * q_t S_t

``g`` None (DeltaNet), one log decay per head and step ``[B, T, H]`` (Gated DeltaNet) or one per
key channel ``[B, T, H, K]`` (KDA: row c of S scaled by ``exp(g_t[c])``), i.e.
``S_t = (I - beta_t k_t^T k_t) Diag(exp g_t) S_{t-1} + beta_t k_t^T v_t``.
"""

from __future__ import annotations

import torch

from .._common import (
    check_float,
    check_qkv,
    check_same_device,
    check_shape,
    check_states,
    fmt_shape,
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
    """Delta-rule linear attention (DeltaNet; Gated DeltaNet with a scalar ``g``; Kimi Delta
    Attention with a per-key ``g``).

    The op does not normalise ``k``: the recurrence is only stable for ``|k|^2 beta`` in
    ``(0, 2)``, so callers L2-normalise keys and keep ``beta`` in ``(0, 1)`` (e.g. a sigmoid).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]`` (L2-normalised by the caller).
        v: values ``[B, T, H, V]``.
        beta: write strengths ``[B, T, H]``, typically in ``(0, 1)``.
        g: a log-space decay (``g <= 0``, decay ``exp(g)``): None (DeltaNet), ``[B, T, H]``
            (Gated DeltaNet: ``S' = exp(g_t) S_{t-1}``) or ``[B, T, H, K]`` (Kimi Delta
            Attention: ``S' = Diag(exp g_t) S_{t-1}``, one decay per key channel). Per-key gates
            run ``impl="chunk"`` with 16-step chunks (the pairwise decays are ``[C, C, K]``);
            ``impl="auto"`` uses that path on CUDA too for now, and an explicit
            ``impl="triton"`` maps them onto ``dplr_delta_rule``'s Triton kernels.
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
        if tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
            raise ValueError(
                f"g has shape {fmt_shape(g)}, expected None or [B, T, H] = {[B, T, H]} (one log decay "
                f"per head and step) or [B, T, H, K] = {[B, T, H, K]} (one per key channel)"
            )
    check_states(initial_state, cu_seqlens, B, T, (H, K, V), "H, K, V")
    check_same_device(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    requested = impl
    per_key = g is not None and g.dim() == 4
    # per-key gates: no Triton kernels of our own yet, so auto keeps the chunk path (see _kda_via_dplr)
    impl, g, scale = resolve_gated(impl, q, g, scale, has_triton=HAS_TRITON, triton_ok=not per_key)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    if impl == "reference" or (T == 1 and cu_seqlens is None and requested != "triton"):
        fn = delta_rule_reference
    elif impl == "triton":  # the kernels take packed sequences themselves
        if per_key:
            o, S = _kda_via_dplr(q, k, v, beta, g, scale, initial_state, cu_seqlens)
            return o.to(q.dtype), (S if output_final_state else None)
        from .triton import delta_rule_triton

        o, S = delta_rule_triton(q, k, v, beta, g, scale, initial_state, cu_seqlens)
        return o.to(q.dtype), (S if output_final_state else None)
    else:
        fn = delta_rule_chunk
    # with cu_seqlens, one sequence at a time, each with its own state
    o, S = run_packed(fn, cu_seqlens, (q, k, v, beta, g), initial_state, scale)
    return o.to(q.dtype), (S if output_final_state else None)


def _kda_via_dplr(q, k, v, beta, g, scale, initial_state, cu_seqlens):
    """A per-key gate (KDA) through ``dplr_delta_rule``'s Triton kernels.

    ``S_t = Diag(exp g_t) S_{t-1} - beta_t k_t^T (k_t Diag(exp g_t) S_{t-1}) + beta_t k_t^T v_t``
    is the diagonal-plus-low-rank recurrence ``S_t = Diag(exp g_t) S_{t-1} + a_t^T (b_t S_{t-1})
    + k'_t^T v_t`` with ``a = -beta k``, ``b = k exp(g)``, ``k' = beta k``; gradients reach q, k,
    v, beta, g and the initial state through this mapping by autograd. Arguments as
    ``delta_rule`` validated them (g floored); returns ``(o, final_state)``."""
    try:
        from ..dplr_delta_rule.triton import dplr_delta_rule_triton
    except ImportError as err:
        raise ValueError(f"impl='triton' with a per-key g [B, T, H, K] needs kernels/dplr_delta_rule/triton.py, "
                         f"which does not import here ({err}); use impl='chunk'") from None
    beta_k = beta.unsqueeze(-1) * k
    a = (-beta_k).to(k.dtype)
    b = (k * g.exp()).to(k.dtype)
    return dplr_delta_rule_triton(q, beta_k.to(k.dtype), v, a, b, g, scale, initial_state, cu_seqlens)


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
