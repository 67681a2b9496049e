"""causal_conv1d: the depthwise causal convolution ("short conv") in front of most mixers.

    y_t[d] = act(bias[d] + sum_{w=0}^{W-1} weight[d, w] * x_{t-(W-1)+w}[d])

The state is the last ``W-1`` inputs ``[B, D, W-1]`` (oldest first); a step before the start
of the sequence reads from it (zeros when there is none).
"""

from __future__ import annotations

import torch

from .._common import (
    check_btd,
    check_float,
    check_same_device,
    check_shape,
    check_states,
    fmt_shape,
    resolve_impl,
    run_packed,
)
from .._library import fake_pair, register
from .._triton import HAS_TRITON
from .chunk import causal_conv1d_chunk, causal_conv1d_step, causal_conv1d_varlen
from .reference import causal_conv1d_reference

ACTIVATIONS = (None, "silu")

__all__ = ["causal_conv1d", "causal_conv1d_chunk", "causal_conv1d_reference", "causal_conv1d_step"]


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    activation: str | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal 1-D convolution over time, optionally continuing from a state.

    Args:
        x: inputs ``[B, T, D]``.
        weight: ``[D, W]``, one W-tap filter per channel; tap ``W-1`` multiplies the current
            step (an ``nn.Conv1d(D, D, W, groups=D)`` weight ``[D, 1, W]`` squeezed).
        bias: ``[D]`` or None.
        activation: None or ``"silu"``, applied after the bias.
        initial_state, output_final_state, cu_seqlens, impl: as every op, see
            ``postformer.kernels``. The state is the ``W-1`` inputs before ``x``, oldest first,
            ``[B, D, W-1]`` (``[N, D, W-1]`` with ``cu_seqlens``); the final state is the last
            ``W-1`` inputs (taken from ``initial_state`` too when ``T < W-1``). ``impl``:
            ``"reference"`` is a loop over time and taps, ``"chunk"`` a grouped ``F.conv1d``,
            ``"triton"`` one fused pass (taps, bias, SiLU and state) for ``W <= 8``; ``"auto"``
            takes ``"chunk"`` for wider filters.

    Returns:
        ``(y, final_state)``: ``y`` ``[B, T, D]`` in x's dtype (computed in float32, float64
        for float64 inputs); ``final_state`` ``[B, D, W-1]`` (``[N, D, W-1]`` with
        ``cu_seqlens``) in x's dtype (it holds inputs, not sums), or None unless
        ``output_final_state``.

    A call with ``T == 1`` and an ``initial_state`` (decoding) is a window multiply-sum.
    """
    if torch.compiler.is_compiling():  # traced: the custom op (see kernels/_library.py)
        return _OP(x=x, weight=weight, bias=bias, activation=activation,
                   initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens, impl=impl)
    B, T, D = check_btd(x)
    check_float("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        raise ValueError(f"weight has shape {fmt_shape(weight)}, expected [D, W] = [{D}, W] with W >= 1")
    W = weight.shape[1]
    if bias is not None:
        check_float("bias", bias)
        check_shape("bias", bias, (D,), "[D]")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
    check_states(initial_state, cu_seqlens, B, T, (D, W - 1), "D, W-1")
    check_same_device(x=x, weight=weight, bias=bias, initial_state=initial_state)
    # the kernels unroll at most triton.MAX_WIDTH = 8 taps
    impl = resolve_impl(impl, x, weight, bias, initial_state, has_triton=HAS_TRITON, triton_ok=W <= 8)
    if impl == "triton":
        from .triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation, initial_state, output_final_state, cu_seqlens)

    if impl == "reference":  # with cu_seqlens one sequence at a time, each from its own state
        y, state = run_packed(causal_conv1d_reference, cu_seqlens, (x,), initial_state, weight, bias, activation)
    elif cu_seqlens is not None:
        y, state = causal_conv1d_varlen(x, weight, bias, activation, initial_state, cu_seqlens)
    elif T == 1 and initial_state is not None and W > 1:
        y, state = causal_conv1d_step(x, weight, bias, activation, initial_state)
    else:
        y, state = causal_conv1d_chunk(x, weight, bias, activation, initial_state)
    return y.to(x.dtype), (state if output_final_state else None)


def _fake(x, weight, bias, activation, initial_state, output_final_state, impl):
    B, T, D = x.shape
    return fake_pair(x, (B, T, D), (B, D, weight.shape[1] - 1), x.dtype, output_final_state)


_OP = register("causal_conv1d", causal_conv1d, [
    ("x", "Tensor"), ("weight", "Tensor"), ("bias", "Tensor?"), ("activation", "str?"),
    ("initial_state", "Tensor?"), ("output_final_state", "bool"), ("impl", "str"),
], _fake)
