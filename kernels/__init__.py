"""Sequence-mixing ops. One public function per recurrence family, one contract for all.

See DESIGN.md ("kernels/: the op contract"): layout ``[B, T, H, D]``, log-space gates,
float32 states, ``initial_state``/``output_final_state``, ``cu_seqlens`` for packed batches,
and ``impl="auto" | "reference" | "chunk" | "triton"``.
"""

from .causal_conv1d import causal_conv1d
from .delta_rule import delta_rule
from .gla import gla
from .linear_scan import linear_scan
from .rms_norm import rms_norm
from .selective_scan import selective_scan

__all__ = ["causal_conv1d", "delta_rule", "gla", "linear_scan", "rms_norm", "selective_scan"]
