"""delta_rule's state passes, the only sequential part: one program per (V tile, sequence * head)
with its [K, BV] state tile in registers through all the sequence's chunks.

- ``_state_fwd``: per chunk, store the entering state, form the written values ``u = U - W S``
  (stored), then ``S = exp(G_C) S + (k exp(G_C - G))^T u``.
- ``_state_bwd``, chunks last to first: ``dH`` (gradient of the state leaving the chunk),
  ``du += (k exp(G_C - G)) dH``, and the entering state's
  ``dS = exp(G_C) dH + scale (q exp(G))^T do - W^T du``; the last one is the initial state's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from ..._triton.jit import chunk_rows
from .common import _WARPS_BIG, _gates, _ld, _ld_state, _mm, _st, _st_state


@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "BV", "HAS_G", "PREC", "DOT"])
@triton.jit
def _state_fwd(k, G, U, W, u, S0, S_in, S_out, cstart, cend, coff, H: tl.constexpr, K: tl.constexpr,
               V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
               PREC: tl.constexpr, DOT: tl.constexpr):
    """The sequential part, one program per (V tile, sequence * head) with its [K, BV] state tile
    in registers: per chunk of the sequence, store the entering state, form the written values
    ``u = U - W S`` (stored), then ``S = exp(G_C) S + (k exp(G_C - G))^T u``."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    i_s, i_h = i_sh // H, i_sh % H
    v0 = i_v * BV
    S = _ld_state(S0, i_sh.to(tl.int64) * K * V, 0, v0, K, V, BK, BV)
    for n in range(tl.load(coff + i_s), tl.load(coff + i_s + 1)):
        _st_state(S_in, (n * H + i_h) * K * V, S, 0, v0, K, V, BK, BV)
        _, _, _, rows, rm = chunk_rows(cstart, cend, n, C)
        un = _ld(U, i_h, rows, rm, v0, H, V, BV) - _mm(_ld(W, i_h, rows, rm, 0, H, K, BK), S, DOT)
        _st(u, un, i_h, rows, rm, v0, H, V, BV)
        kn = _ld(k, i_h, rows, rm, 0, H, K, BK)
        if HAS_G:
            Gr, Gc = _gates(G, i_h, n, H, C, HAS_G)
            kn = kn * tl.exp(Gc - Gr)[:, None]
            S = S * tl.exp(Gc)
        S += _mm(tl.trans(kn), un, DOT)
    _st_state(S_out, i_sh.to(tl.int64) * K * V, S, 0, v0, K, V, BK, BV)


# du is read and written in place: the autotuner's timing runs must each start from the original
@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "BV", "HAS_G", "HAS_DSF", "PREC", "DOT"],
                 restore_value=["du"])
@triton.jit
def _state_bwd(q, k, G, W, do, du, dSf, dH, dS0, cstart, cend, coff, scale, H: tl.constexpr, K: tl.constexpr,
               V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
               HAS_DSF: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
    """The reverse recurrence, one program per (V tile, sequence * head), the sequence's chunks
    last to first: store dH (the gradient of the state leaving the chunk), complete the written
    values' gradient ``du = du_local + (k exp(G_C - G)) dH`` (in place), then the entering
    state's ``dS = exp(G_C) dH + scale (q exp(G))^T do - W^T du``."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    i_s, i_h = i_sh // H, i_sh % H
    v0 = i_v * BV
    if HAS_DSF:
        dS = _ld_state(dSf, i_sh.to(tl.int64) * K * V, 0, v0, K, V, BK, BV)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    c0 = tl.load(coff + i_s)
    c1 = tl.load(coff + i_s + 1)
    for i in range(0, c1 - c0):
        n = c1 - 1 - i
        _st_state(dH, (n * H + i_h) * K * V, dS, 0, v0, K, V, BK, BV)
        _, _, _, rows, rm = chunk_rows(cstart, cend, n, C)
        Gr, Gc = _gates(G, i_h, n, H, C, HAS_G)
        kn = _ld(k, i_h, rows, rm, 0, H, K, BK)
        if HAS_G:
            kn = kn * tl.exp(Gc - Gr)[:, None]
        dun = _ld(du, i_h, rows, rm, v0, H, V, BV) + _mm(kn, dS, DOT)
        _st(du, dun, i_h, rows, rm, v0, H, V, BV)
        qn = _ld(q, i_h, rows, rm, 0, H, K, BK) * (scale * tl.exp(Gr))[:, None]
        back = _mm(tl.trans(qn), _ld(do, i_h, rows, rm, v0, H, V, BV), DOT)
        back -= _mm(tl.trans(_ld(W, i_h, rows, rm, 0, H, K, BK)), dun, DOT)
        if HAS_G:
            dS = dS * tl.exp(Gc) + back
        else:
            dS = dS + back
    _st_state(dS0, i_sh.to(tl.int64) * K * V, dS, 0, v0, K, V, BK, BV)
