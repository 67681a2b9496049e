"""gla's state passes, one program per sequence, head and [BK, BV] state tile, the sequence's
chunks in order (forward) or in reverse (backward); ``G`` the chunk-local cumulative log gate,
``G_C`` its value at the chunk's last row.

- ``_state_fwd``: the state entering every chunk, ``S_{n+1} = exp(G_C) * S_n + (k * exp(G_C - G))^T v``,
  written to ``h [n_chunks, H, K, V]`` (fp32 for fp32 inputs; in the input dtype for bf16/fp16,
  as FLA does: the chunk states are the largest intermediate); the final state is always fp32.
- ``_state_bwd``: the reverse pass, ``dS_n = exp(G_C) dS_{n+1} + scale (q exp(G))^T do``, storing
  the gradient of the state leaving every chunk; its end is d(initial_state).

Both are the one loop ``_state_pass``, ``S = exp(G_C) S + (scale x w)^T y``, run forward over
(k, v) and in reverse over (q, do).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from .common import _WARPS, _cols, _load_block, _load_G, _load_G_row


@triton.jit
def _state_program(cu, coff, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr):
    """What a state-passing program (grid: K tiles, V tiles, sequences x heads) works on: its
    sequence and head, the sequence's rows [bos, eos), its first global chunk c0 and chunk
    count nc, and its [BK, BV] state tile (offsets and mask)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(coff + i_n).to(tl.int64)
    nc = tl.cdiv(eos - bos, BT)
    cols_k, km = _cols(i_k, BK, K)
    cols_v, vm = _cols(i_v, BV, V)
    tile = cols_k[:, None] * V + cols_v[None, :]
    tm = km[:, None] & vm[None, :]
    return i_n, i_h, bos, eos, c0, nc, cols_k, cols_v, km, vm, tile, tm


@triton.jit
def _state_pass(x, y, gc, s0, sbuf, s_end, cu, coff, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_S0: tl.constexpr,
                STORE_END: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr):
    """Both state passes: ``S = exp(G_C) S + (scale x w)^T y`` over the sequence's chunks, in order
    (keys x = k, values y = v, row weights w = exp(G_C - G)) or in reverse (``REVERSE``: queries
    x = q, y = do, w = exp(G)), starting from ``s0`` (or zeros), storing S in ``sbuf`` before each
    chunk's update and the end state in ``s_end``. Every exponent is <= 0 (masked before exp)."""
    i_n, i_h, bos, eos, c0, nc, cols_k, cols_v, km, vm, tile, tm = _state_program(
        cu, coff, H, K, V, BT, BK, BV)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        S += tl.load(s0 + (i_n * H + i_h) * K * V + tile, mask=tm, other=0.0).to(tl.float32)
    for i in range(0, nc):
        if REVERSE:
            c = nc - 1 - i
        else:
            c = i
        tl.store(sbuf + ((c0 + c) * H + i_h) * K * V + tile, S.to(sbuf.dtype.element_ty), mask=tm)
        rows = bos + c * BT + tl.arange(0, BT)
        rm = rows < eos
        xb = _load_block(x, rows, rm, cols_k, km, i_h, H, K) * scale
        yb = _load_block(y, rows, rm, cols_v, vm, i_h, H, V)
        if GATE == 0:
            S += tl.dot(tl.trans(xb), yb, input_precision=PREC)
        else:
            last = tl.minimum(bos + c * BT + BT, eos) - 1
            G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
            Gl = _load_G_row(gc, last, last + 1, cols_k, km, i_h, H, K, GATE)
            if REVERSE:
                w = G
            else:
                w = Gl[None, :] - G
            xd = xb * tl.exp(tl.where(rm[:, None], w, float("-inf")))
            S = S * tl.exp(Gl)[:, None] + tl.dot(tl.trans(xd), yb, input_precision=PREC)
    if STORE_END:
        tl.store(s_end + (i_n * H + i_h) * K * V + tile, S, mask=tm)


@triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
@triton.jit
def _state_fwd(k, v, gc, h0, hbuf, ht, cu, coff, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
               HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    _state_pass(k, v, gc, h0, hbuf, ht, cu, coff, 1.0, H, K, V, BT, BK, BV, GATE, HAS_H0, STORE_HT, False, PREC)


@triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
@triton.jit
def _state_bwd(q, do, gc, dht, dh0, dhbuf, cu, coff, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
               HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    # dhbuf: the gradient of the state leaving each chunk (stored before the chunk's update)
    _state_pass(q, do, gc, dht, dhbuf, dh0, cu, coff, scale, H, K, V, BT, BK, BV, GATE, HAS_DHT, STORE_DH0, True,
                PREC)
