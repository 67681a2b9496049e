"""selective_scan: Mamba-1's selective state-space model, channel layout (no heads).

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d],      then y *= silu(z)
"""

from __future__ import annotations

import torch

from .._common import (
    check_btd,
    check_float,
    check_initial_state,
    check_same_device,
    check_shape,
    fmt_shape,
    resolve_impl,
)
from .._library import fake_pair, register, state_dtype
from .._triton import HAS_TRITON
from .chunk import selective_scan_chunk
from .reference import selective_scan_reference

__all__ = ["selective_scan", "selective_scan_chunk", "selective_scan_reference"]


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    *,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-1's selective scan.

    Args:
        x: inputs ``[B, T, D]`` (D channels).
        dt: step sizes ``[B, T, D]`` (raw when ``dt_softplus``, else used as given).
        A: ``[D, N]``, real and normally negative; used as given (the decay is ``exp(dt A)``).
        B: input projection ``[B, T, N]`` or grouped ``[B, T, G, N]`` (``D % G == 0``; channel
            ``d`` uses group ``d // (D / G)``).
        C: output projection, shaped like B.
        D: skip ``[D]`` or None.
        z: gate ``[B, T, D]`` or None; the output is multiplied by ``silu(z)``.
        dt_bias: ``[D]`` or None, added to dt (before the softplus when ``dt_softplus``).
        dt_softplus: apply ``softplus(dt + dt_bias)``.
        initial_state, output_final_state, impl: as every op, see ``postformer.kernels``; the
            state is ``[B, D, N]`` (no ``cu_seqlens``). ``"triton"`` takes ``N <= 256``;
            ``"auto"`` takes ``"chunk"`` for larger N.

    Returns:
        ``(y, final_state)``: ``y`` ``[B, T, D]`` in x's dtype; ``final_state`` float32
        ``[B, D, N]`` (float64 for float64 inputs), or None unless ``output_final_state``.
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                   initial_state=initial_state, output_final_state=output_final_state, impl=impl)
    batch, T, dim = check_btd(x)
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_float(name, t)
    check_shape("dt", dt, (batch, T, dim), "[B, T, D] like x")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A has shape {fmt_shape(A)}, expected [D, N] = [{dim}, N]")
    N = A.shape[1]
    if B.dim() == 3:
        check_shape("B", B, (batch, T, N), "[B, T, N] or [B, T, G, N]")
    elif B.dim() == 4 and tuple(B.shape[:2]) == (batch, T) and B.shape[3] == N:
        G = B.shape[2]
        if G == 0 or dim % G != 0:
            raise ValueError(
                f"B has shape {fmt_shape(B)} with G={G} groups, but D={dim} is not a multiple of G"
            )
    else:
        raise ValueError(
            f"B has shape {fmt_shape(B)}, expected [B, T, N] = {[batch, T, N]} or "
            f"[B, T, G, N] = [{batch}, {T}, G, {N}]"
        )
    check_shape("C", C, tuple(B.shape), "the shape of B")
    if D is not None:
        check_float("D", D)
        check_shape("D", D, (dim,), "[D]")
    if z is not None:
        check_float("z", z)
        check_shape("z", z, (batch, T, dim), "[B, T, D] like x")
    if dt_bias is not None:
        check_float("dt_bias", dt_bias)
        check_shape("dt_bias", dt_bias, (dim,), "[D]")
    check_initial_state(initial_state, batch, (dim, N), "D, N", packed=False)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
    # the kernels keep the state in registers (N <= triton.MAX_N = 256)
    impl = resolve_impl(impl, x, dt, A, B, C, D, z, dt_bias, initial_state, has_triton=HAS_TRITON,
                        triton_ok=N <= 256)
    if impl == "triton":
        from .triton import selective_scan_triton

        return selective_scan_triton(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, output_final_state)
    # A single step (the decoding call) is cheapest as the recurrence itself: no chunk set-up.
    fn = selective_scan_reference if impl == "reference" or T == 1 else selective_scan_chunk
    y, S = fn(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state)
    return y.to(x.dtype), (S if output_final_state else None)


def _fake(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, output_final_state, impl):
    batch, T, dim = x.shape
    return fake_pair(x, (batch, T, dim), (batch, dim, A.shape[1]),
                     state_dtype(x, dt, A, B, C, D, z, dt_bias, initial_state), output_final_state)


_OP = register("selective_scan", selective_scan, [
    ("x", "Tensor"), ("dt", "Tensor"), ("A", "Tensor"), ("B", "Tensor"), ("C", "Tensor"),
    ("D", "Tensor?"), ("z", "Tensor?"), ("dt_bias", "Tensor?"), ("dt_softplus", "bool"),
    ("initial_state", "Tensor?"), ("output_final_state", "bool"), ("impl", "str"),
], _fake)
