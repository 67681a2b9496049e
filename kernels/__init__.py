"""Sequence-mixing ops. One public function per recurrence family, one contract for all.

See DESIGN.md ("kernels/: the op contract"): layout ``[B, T, H, D]``, log-space gates,
float32 states, ``initial_state``/``output_final_state``, ``cu_seqlens`` for packed batches,
and ``impl="auto" | "reference" | "chunk" | "triton"``.
"""

from .gla import gla

__all__ = ["gla"]
