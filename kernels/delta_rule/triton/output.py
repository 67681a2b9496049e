"""delta_rule's output, one program per (V tile, chunk, head), after the state pass:

    o = scale [(q exp(G)) S + (q k^T exp(G_i - G_j), i >= j) u]
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from .common import _WARPS_BIG, _chunk_program, _decay, _gates, _ld, _ld_state, _mm, _st


@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
@triton.jit
def _output_fwd(q, k, G, u, S_in, o, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
                DOT: tl.constexpr):
    """``o = scale [(q exp(G)) S + (q k^T exp(G_i - G_j), i >= j) u]`` for one chunk, head and V tile."""
    i_v, i_n, i_h, rows, rm = _chunk_program(cstart, cend, C)
    v0 = i_v * BVT
    base = (i_n * H + i_h) * K * V
    qk = tl.zeros([C, C], dtype=tl.float32)
    qs = tl.zeros([C, BVT], dtype=tl.float32)
    for k0 in range(0, K, BKT):
        qt = _ld(q, i_h, rows, rm, k0, H, K, BKT)
        qk += _mm(qt, tl.trans(_ld(k, i_h, rows, rm, k0, H, K, BKT)), DOT)
        qs += _mm(qt, _ld_state(S_in, base, k0, v0, K, V, BKT, BVT), DOT)
    Gr, Gc = _gates(G, i_h, i_n, H, C, HAS_G)
    P = qk * _decay(Gr, C, False, HAS_G) * scale
    out = qs * (scale * tl.exp(Gr))[:, None] + _mm(P, _ld(u, i_h, rows, rm, v0, H, V, BVT), DOT)
    _st(o, out, i_h, rows, rm, v0, H, V, BVT)
