"""delta_rule's chunk-parallel backward kernels (around the reverse state pass of ``state.py``;
``wy.py`` holds the backward through U, W and Tm):

- ``_du_intra_bwd``, per (V tile, chunk, head), before the state pass: the intra-chunk part of
  the written values' gradient, ``P^T do``.
- ``_dqk_bwd``, per (K tile, chunk, head), after it: dq, dk's output and state-update terms and
  ``dW = -du S^T``, with the gate gradients of those terms: every q_i enters as
  ``q_i exp(G_i)`` and every k_j as ``k_j exp(-G_j)``, so they contribute
  ``q_i . dq_i - k_i . dk_i`` to dG_i (plus a chunk-end term for ``G_C``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from .common import _WARPS_BIG, _chunk_program, _decay, _gates, _ld, _ld_state, _mm, _st


@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
@triton.jit
def _du_intra_bwd(q, k, G, do, du, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
                  DOT: tl.constexpr):
    """The intra-chunk part of the written values' gradient, ``P^T do`` with
    ``P = scale q k^T exp(G_i - G_j)`` (i >= j), for one chunk, head and V tile."""
    i_v, i_n, i_h, rows, rm = _chunk_program(cstart, cend, C)
    v0 = i_v * BVT
    qk = tl.zeros([C, C], dtype=tl.float32)
    for k0 in range(0, K, BKT):
        qk += _mm(_ld(q, i_h, rows, rm, k0, H, K, BKT), tl.trans(_ld(k, i_h, rows, rm, k0, H, K, BKT)), DOT)
    Gr, Gc = _gates(G, i_h, i_n, H, C, HAS_G)
    P = qk * _decay(Gr, C, False, HAS_G) * scale
    _st(du, _mm(tl.trans(P), _ld(do, i_h, rows, rm, v0, H, V, BVT), DOT),
        i_h, rows, rm, v0, H, V, BVT)


@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
@triton.jit
def _dqk_bwd(q, k, G, u, du, do, S_in, dH, dq, dk, dW, dgr, dgc, cstart, cend, scale, NK,
             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BKT: tl.constexpr,
             BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
    """The chunk-parallel gradients for one chunk, head and K tile: dq, the output's and the
    state update's part of dk, ``dW = -du S^T``; with gates, the per-step gate gradient of
    these terms (``q.dq - k.dk``, per K tile in ``dgr``) and the chunk-end term (``dgc``)."""
    i_k, i_n, i_h, rows, rm = _chunk_program(cstart, cend, C)
    k0 = i_k * BKT
    base = (i_n * H + i_h) * K * V
    dWt = tl.zeros([C, BKT], dtype=tl.float32)
    dqs = tl.zeros([C, BKT], dtype=tl.float32)
    dkd = tl.zeros([C, BKT], dtype=tl.float32)
    dP = tl.zeros([C, C], dtype=tl.float32)
    da = tl.zeros([BKT], dtype=tl.float32)
    for v0 in range(0, V, BVT):
        St = _ld_state(S_in, base, k0, v0, K, V, BKT, BVT)
        dHt = _ld_state(dH, base, k0, v0, K, V, BKT, BVT)
        ut = _ld(u, i_h, rows, rm, v0, H, V, BVT)
        dot_ = _ld(do, i_h, rows, rm, v0, H, V, BVT)
        dWt -= _mm(_ld(du, i_h, rows, rm, v0, H, V, BVT), tl.trans(St), DOT)
        dqs += _mm(dot_, tl.trans(St), DOT)
        dkd += _mm(ut, tl.trans(dHt), DOT)
        dP += _mm(dot_, tl.trans(ut), DOT)
        da += tl.sum(dHt * St, axis=1)
    qt = _ld(q, i_h, rows, rm, k0, H, K, BKT)
    kt = _ld(k, i_h, rows, rm, k0, H, K, BKT)
    Gr, Gc = _gates(G, i_h, i_n, H, C, HAS_G)
    dPs = dP * _decay(Gr, C, False, HAS_G) * scale
    dqt = dqs * (scale * tl.exp(Gr))[:, None] + _mm(dPs, kt, DOT)
    if HAS_G:
        dkd = dkd * tl.exp(Gc - Gr)[:, None]
    dkt = _mm(tl.trans(dPs), qt, DOT) + dkd
    _st(dq, dqt, i_h, rows, rm, k0, H, K, BKT)
    _st(dk, dkt, i_h, rows, rm, k0, H, K, BKT)
    _st(dW, dWt, i_h, rows, rm, k0, H, K, BKT)
    if HAS_G:
        # every q_i enters as q_i exp(G_i) and every k_j as k_j exp(-G_j) (times exp(G_C) in
        # the state update), so these terms' dG_i is q_i . dq_i - k_i . dk_i ...
        gr = tl.sum(qt * dqt - kt * dkt, axis=1)
        t = i_n * C + tl.arange(0, C)
        tl.store(dgr + (t * H + i_h) * NK + i_k, gr)
        # ... and G_C's: the state update's k_j . dk_j summed, and the decay exp(G_C) of S
        gc = tl.sum(tl.sum(kt * dkd, axis=1), axis=0) + tl.sum(da, axis=0) * tl.exp(Gc)
        tl.store(dgc + (i_n * H + i_h) * NK + i_k, gc)
