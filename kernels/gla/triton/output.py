"""gla's output phase, one program per chunk (and sub-block pair, or V tile) and head.

- ``_scores_fwd``: the intra-chunk scores ``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)`` for i >= j of a
  per-key gate, in sub-blocks of ``BC = 16`` rows. Off-diagonal sub-blocks factor through a
  reference row r that lies between the query and the key rows (the last row of the key
  sub-block): ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``, both factors <= 1, so the
  product is a tensor-core matmul and nothing can overflow however strong the decay. Diagonal
  sub-blocks are summed exactly, one key row at a time.
- ``_scores_full_fwd``: no gate or a scalar gate needs none of this: a whole chunk as one
  [BT, BT] matmul times the masked decay matrix (the backward recomputes the scores with it).
- ``_output_fwd``: ``o = scale * ((q * exp(G)) h_n + A v)``; for no gate or a scalar gate it forms
  A itself from the q and k tiles it loads (the forward then launches no scores kernel).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from ..._triton.jit import chunk_rows
from .common import _WARPS, _causal_decay, _cols, _load_block, _load_G, _load_G_row, _sdot


@triton.jit
def _scores_fwd(q, k, gc, A, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Scores for per-key gates (GATE == 2), one program per chunk and [BC, BC] sub-block pair."""
    NC: tl.constexpr = BT // BC
    i_t, i_ij, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_i, i_j = i_ij // NC, i_ij % NC
    if i_j > i_i:
        return
    s = tl.load(cstart + i_t).to(tl.int64)
    e = tl.load(cend + i_t).to(tl.int64)
    if s + i_i * BC >= e:
        return
    ar = tl.arange(0, BC)
    ri, rj = s + i_i * BC + ar, s + i_j * BC + ar
    mi, mj = ri < e, rj < e
    acc = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        cols, km = _cols(i_k, BK, K)
        qb = _load_block(q, ri, mi, cols, km, i_h, H, K)
        kb = _load_block(k, rj, mj, cols, km, i_h, H, K)
        if i_i > i_j:
            # reference row: the last of the key sub-block, between every key and every query
            r = s + i_j * BC + BC - 1
            Gi = _load_G(gc, ri, mi, cols, km, i_h, H, K, GATE, BC)
            Gj = _load_G(gc, rj, mj, cols, km, i_h, H, K, GATE, BC)
            Gr = _load_G_row(gc, r, e, cols, km, i_h, H, K, GATE)
            qd = qb * tl.exp(tl.where(mi[:, None], Gi - Gr[None, :], float("-inf")))
            kd = kb * tl.exp(tl.where(mj[:, None], Gr[None, :] - Gj, float("-inf")))
            acc += tl.dot(qd, tl.trans(kd), input_precision=PREC)
        else:
            # diagonal sub-block of a per-key gate: exact, one key row at a time
            Gi = _load_G(gc, ri, mi, cols, km, i_h, H, K, GATE, BC)
            for jj in range(0, BC):
                row = s + i_j * BC + jj
                valid = cols * 0 + row < e  # a vector: the interpreter rejects block & scalar masks
                krow = tl.load(k + (row * H + i_h) * K + cols, mask=km & valid, other=0.0).to(tl.float32)
                Grow = _load_G_row(gc, row, e, cols, km, i_h, H, K, GATE)
                ok = (ar >= jj) & mi
                w = tl.exp(tl.where(ok[:, None], Gi - Grow[None, :], float("-inf")))
                col = tl.sum(qb * krow[None, :] * w, axis=1)
                acc += tl.where(ar[None, :] == jj, col[:, None], 0.0)
    acc = tl.where((ri[:, None] >= rj[None, :]) & mi[:, None] & mj[None, :], acc, 0.0)
    tl.store(A + (ri[:, None] * H + i_h) * BT + i_j * BC + ar[None, :], acc, mask=mi[:, None] & mj[None, :])

@triton.jit
def _scores_full_fwd(q, k, gc, A, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Scores of a whole chunk at once for no gate or a scalar gate: one [BT, BT] matmul per K
    tile, then the exact decay exp(G_i - G_j), masked to i >= j before the exp."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    s, e, ar, rows, rm = chunk_rows(cstart, cend, i_t, BT)
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        cols, km = _cols(i_k, BK, K)
        qb = _load_block(q, rows, rm, cols, km, i_h, H, K)
        kb = _load_block(k, rows, rm, cols, km, i_h, H, K)
        acc += tl.dot(qb, tl.trans(kb), input_precision=PREC)
    acc = _causal_decay(acc, gc, rows, rm, ar, i_h, H, GATE)
    tl.store(A + (rows[:, None] * H + i_h) * BT + ar[None, :], acc, mask=rm[:, None] & rm[None, :])

@triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
@triton.jit
def _output_fwd(q, k, v, gc, hbuf, A, o, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                HALF: tl.constexpr, FUSE_A: tl.constexpr):
    """``o = scale ((q exp(G)) h + A v)``. ``FUSE_A`` (no gate or a scalar gate): the scores are
    formed here from the same q tiles, ``A = (q k^T) exp(G_i - G_j)`` masked to i >= j, instead
    of being read from ``A`` (which then is unused): a [BT, BT] fp32 tile per chunk and head
    neither written nor read back."""
    i_t, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s, e, ar, rows, rm = chunk_rows(cstart, cend, i_t, BT)
    cols_v, vm = _cols(i_v, BV, V)
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    qk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        cols_k, km = _cols(i_k, BK, K)
        qb = _load_block(q, rows, rm, cols_k, km, i_h, H, K)
        if FUSE_A:
            kb = _load_block(k, rows, rm, cols_k, km, i_h, H, K)
            qk += tl.dot(qb, tl.trans(kb), input_precision=PREC)
        if GATE != 0:
            G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
            qb = qb * tl.exp(tl.where(rm[:, None], G, float("-inf")))
        hb = tl.load(hbuf + (i_t.to(tl.int64) * H + i_h) * K * V + cols_k[:, None] * V + cols_v[None, :],
                     mask=km[:, None] & vm[None, :], other=0.0)
        acc += _sdot(qb, hb, PREC, HALF)
    if FUSE_A:
        Ab = _causal_decay(qk, gc, rows, rm, ar, i_h, H, GATE)
    else:
        Ab = tl.load(A + (rows[:, None] * H + i_h) * BT + ar[None, :], mask=rm[:, None] & (s + ar < e)[None, :],
                     other=0.0)
    vb = _load_block(v, rows, rm, cols_v, vm, i_h, H, V)
    acc += tl.dot(Ab, vb, input_precision=PREC)
    tl.store(o + (rows[:, None] * H + i_h) * V + cols_v[None, :], (acc * scale).to(o.dtype.element_ty),
             mask=rm[:, None] & vm[None, :])
