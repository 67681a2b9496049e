"""``@triton.jit`` helpers shared by the chunked families' kernels (gla, delta_rule).

Imported only where Triton is (``HAS_TRITON``): the kernel modules that use it are themselves
imported behind that guard.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_rows(cstart, cend, i_t, BT: tl.constexpr):
    """Chunk ``i_t`` of a ``ChunkPlan`` (``plan.py``; ``cstart``/``cend`` its tables): its first and
    one-past-last packed row ``s``, ``e`` (int64), the offsets ``ar = 0 .. BT-1``, the rows
    ``s + ar`` and their validity mask ``rows < e``."""
    s = tl.load(cstart + i_t).to(tl.int64)
    e = tl.load(cend + i_t).to(tl.int64)
    ar = tl.arange(0, BT)
    rows = s + ar
    return s, e, ar, rows, rows < e
