"""gla's ``@triton.jit`` helpers: loading gates, blocks and products with the chunk states; the
autotune variants.

Gates reach the kernels as ``GATE``: 0 none, 1 scalar (``[rows, H]``), 2 per key (``[rows, H, K]``);
``gc`` is their chunk-local cumulative sum ``G`` in the packed row layout (``chunk_cumsum`` of
``kernels/_triton/plan.py``, in PyTorch).
"""

from __future__ import annotations

import triton
import triton.language as tl

# 8 warps first (the one used untuned); 2 warps spilled in every kernel on sm_90 and 4 warps
# in several at K = V = 128 (scripts/sm90_check.py)
_WARPS = [{"num_warps": 8, "num_stages": 2}, {"num_warps": 4, "num_stages": 2},
          {"num_warps": 4, "num_stages": 3}]


@triton.jit
def _cols(i, BLOCK: tl.constexpr, N: tl.constexpr):
    """Tile ``i`` of BLOCK columns (of K or V): the columns ``i * BLOCK + 0 .. BLOCK-1`` and their
    mask ``< N``."""
    cols = i * BLOCK + tl.arange(0, BLOCK)
    return cols, cols < N


@triton.jit
def _load_G(gc, rows, rmask, cols, kmask, i_h, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr,
            NR: tl.constexpr):
    """Cumulative gates of ``rows`` x ``cols``: [NR, BK] (per-key), [NR, 1] (scalar) or zeros."""
    if GATE == 2:
        G = tl.load(gc + (rows[:, None] * H + i_h) * K + cols[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
    elif GATE == 1:
        G = tl.load(gc + rows * H + i_h, mask=rmask, other=0.0)[:, None]
    else:
        G = tl.zeros([NR, 1], dtype=tl.float32)
    return G

@triton.jit
def _load_G_row(gc, row, limit, cols, kmask, i_h, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """Cumulative gate of one row (zero unless ``row < limit``): [BK] (per-key) or [1] (scalar, none)."""
    if GATE == 2:
        G = tl.load(gc + (row * H + i_h) * K + cols, mask=kmask & (cols * 0 + row < limit), other=0.0)
    elif GATE == 1:
        G = tl.zeros([1], dtype=tl.float32) + tl.load(gc + row * H + i_h, mask=row < limit, other=0.0)
    else:
        G = tl.zeros([1], dtype=tl.float32)
    return G

@triton.jit
def _sdot(a, h, PREC: tl.constexpr, HALF: tl.constexpr):
    """``a @ h`` with ``h`` a tile of chunk states as stored: bf16/fp16 operands when the
    states are kept in half precision (``HALF``), fp32 otherwise. ``HALF`` is off under the
    interpreter, whose half-precision products are wrong (it multiplies raw bit patterns)."""
    if HALF:
        return tl.dot(a.to(h.dtype), h)
    else:
        return tl.dot(a, h.to(tl.float32), input_precision=PREC)

@triton.jit
def _causal_decay(x, gc, rows, rm, ar, i_h, H: tl.constexpr, GATE: tl.constexpr):
    """A chunk's [BT, BT] scores (or their gradient) ``x`` kept on i >= j between valid rows, 0
    elsewhere, and for a scalar gate (``GATE == 1``) times the exact decay ``exp(G_i - G_j)``,
    masked before the exp."""
    ok = (ar[:, None] >= ar[None, :]) & rm[:, None] & rm[None, :]
    if GATE == 1:
        G = tl.load(gc + rows * H + i_h, mask=rm, other=0.0)
        x = x * tl.exp(tl.where(ok, G[:, None] - G[None, :], float("-inf")))
    return tl.where(ok, x, 0.0)


@triton.jit
def _load_block(x, rows, rmask, cols, cmask, i_h, H: tl.constexpr, D: tl.constexpr):
    """The [rows, cols] block of head ``i_h`` of a packed ``[N, H, D]`` tensor, in fp32 (0 outside
    the masks)."""
    return tl.load(x + (rows[:, None] * H + i_h) * D + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                   other=0.0).to(tl.float32)
