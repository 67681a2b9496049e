"""Sequence-mixing ops. One public function per recurrence family, one contract for all.

See docs/design.md ("kernels/: the op contract"): layout ``[B, T, H, D]`` (``[B, T, D]`` for the
channel ops), log-space gates (``g <= 0``, the decay is ``exp(g)``), float32 states,
``initial_state``/``output_final_state``, ``cu_seqlens`` for packed batches, and
``impl="auto" | "reference" | "chunk" | "triton"``. Each op's docstring documents its own
inputs, its state's shape and its return; the keyword arguments below mean the same in every op
that takes them:

    scale: multiplies ``q`` (gla, delta_rule, dplr_delta_rule); None means ``K ** -0.5``.
    initial_state: the state before the first step, one per batch row (``[B, ...]``) or, with
        ``cu_seqlens``, one per packed sequence (``[N, ...]``); None means zeros. float32
        preferred; gradients flow into it.
    output_final_state: also return the state after the last step (``[B, ...]``, or ``[N, ...]``
        with ``cu_seqlens``; an empty sequence's is its initial state); otherwise the second
        result is None.
    cu_seqlens: ``[N+1]`` int32/int64 offsets of N sequences packed along T (B must be 1); each
        sequence runs on its own, from its own initial state (or zeros).
    impl: ``"auto"`` (``"triton"`` for CUDA tensors, ``"chunk"`` otherwise and for float64
        inputs; the environment variable ``POSTFORMER_IMPL`` overrides ``auto``),
        ``"reference"`` (the loop over time: the definition every path is tested against),
        ``"chunk"`` (PyTorch: chunked or fused, no per-step loop) or ``"triton"`` (the kernels:
        float32/bf16/fp16 inputs, CUDA tensors or ``TRITON_INTERPRET=1``).

Outputs come back in the dtype of the op's first input (computed in float32, float64 for float64
inputs); final states in float32 (float64 for float64 inputs) unless the op says otherwise.
"""

from .causal_conv1d import causal_conv1d
from .delta_rule import delta_rule
from .dplr_delta_rule import dplr_delta_rule
from .gla import gla
from .linear_scan import linear_scan
from .rms_norm import rms_norm
from .selective_scan import selective_scan

__all__ = ["causal_conv1d", "delta_rule", "dplr_delta_rule", "gla", "linear_scan", "rms_norm",
           "selective_scan"]
