"""gla's chunk-parallel backward kernels, after the reverse state pass (``state.py``) has stored dS,
the gradient of the state leaving every chunk, and with the recomputed scores A:

- ``_dA_bwd``: ``dA = scale * do v^T`` (causal).
- ``_dv_bwd``: ``dv = scale A^T do + (k exp(G_C - G)) dS``.
- ``_dqk_intra_bwd`` (per-key gates) and ``_dqk_inter_bwd``: dq and dk from dA with the sub-block
  factorisation of ``_scores_fwd``, plus the state terms ``scale exp(G) (do h^T)`` and
  ``exp(G_C - G) (v dS^T)``; for no gate or a scalar gate ``_dqk_inter_bwd`` also takes the
  intra-chunk part, as two [BT, BT] matmuls.

The gates' gradient follows in PyTorch (``_backward`` in ``__init__.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from ..._triton.jit import chunk_rows
from .common import _WARPS, _causal_decay, _cols, _load_block, _load_G, _load_G_row, _sdot


@triton.jit
def _dA_bwd(do, v, dA, cstart, cend, scale, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
            BV: tl.constexpr, PREC: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    s, e, ar, rows, rm = chunk_rows(cstart, cend, i_t, BT)
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        cols, vm = _cols(i_v, BV, V)
        m = rm[:, None] & vm[None, :]
        dob = tl.load(do + (rows[:, None] * H + i_h) * V + cols[None, :], mask=m, other=0.0).to(tl.float32)
        vb = tl.load(v + (rows[:, None] * H + i_h) * V + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.dot(dob, tl.trans(vb), input_precision=PREC)
    acc = tl.where(ar[:, None] >= ar[None, :], acc * scale, 0.0)
    tl.store(dA + (rows[:, None] * H + i_h) * BT + ar[None, :], acc, mask=rm[:, None] & (rows < e)[None, :])

@triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
@triton.jit
def _dv_bwd(k, do, gc, A, dhbuf, dv, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr,
            V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
            PREC: tl.constexpr, HALF: tl.constexpr):
    i_t, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s, e, ar, rows, rm = chunk_rows(cstart, cend, i_t, BT)
    cols_v, vm = _cols(i_v, BV, V)
    Ab = tl.load(A + (rows[:, None] * H + i_h) * BT + ar[None, :], mask=rm[:, None] & rm[None, :], other=0.0)
    dob = _load_block(do, rows, rm, cols_v, vm, i_h, H, V)
    acc = tl.dot(tl.trans(Ab), dob, input_precision=PREC) * scale
    last = tl.minimum(s + BT, e) - 1
    for i_k in range(0, tl.cdiv(K, BK)):
        cols_k, km = _cols(i_k, BK, K)
        kb = _load_block(k, rows, rm, cols_k, km, i_h, H, K)
        if GATE != 0:
            G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
            Gl = _load_G_row(gc, last, last + 1, cols_k, km, i_h, H, K, GATE)
            kb = kb * tl.exp(tl.where(rm[:, None], Gl[None, :] - G, float("-inf")))
        dhb = tl.load(dhbuf + (i_t.to(tl.int64) * H + i_h) * K * V + cols_k[:, None] * V + cols_v[None, :],
                      mask=km[:, None] & vm[None, :], other=0.0)
        acc += _sdot(kb, dhb, PREC, HALF)
    tl.store(dv + (rows[:, None] * H + i_h) * V + cols_v[None, :], acc, mask=rm[:, None] & vm[None, :])

@triton.jit
def _dqk_intra_bwd(q, k, gc, dA, dq, dk, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                   BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Intra-chunk dq, dk for per-key gates (GATE == 2), one program per [BC]-row sub-block."""
    NC: tl.constexpr = BT // BC
    i_k, i_tc, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, i_c = i_tc // NC, i_tc % NC
    s = tl.load(cstart + i_t).to(tl.int64)
    e = tl.load(cend + i_t).to(tl.int64)
    if s + i_c * BC >= e:
        return
    ar = tl.arange(0, BC)
    ri = s + i_c * BC + ar
    mi = ri < e
    cols, km = _cols(i_k, BK, K)
    mik = mi[:, None] & km[None, :]
    Gi = _load_G(gc, ri, mi, cols, km, i_h, H, K, GATE, BC)
    qi = tl.load(q + (ri[:, None] * H + i_h) * K + cols[None, :], mask=mik, other=0.0).to(tl.float32)
    dqi = tl.zeros([BC, BK], dtype=tl.float32)
    dki = tl.zeros([BC, BK], dtype=tl.float32)
    # dq from the earlier key sub-blocks (all rows valid there)
    for j in range(0, i_c):
        rj = s + j * BC + ar
        dAb = tl.load(dA + (ri[:, None] * H + i_h) * BT + j * BC + ar[None, :], mask=mi[:, None], other=0.0)
        kj = tl.load(k + (rj[:, None] * H + i_h) * K + cols[None, :], mask=km[None, :], other=0.0).to(tl.float32)
        r = s + j * BC + BC - 1
        Gj = _load_G(gc, rj, rj < e, cols, km, i_h, H, K, GATE, BC)
        Gr = _load_G_row(gc, r, e, cols, km, i_h, H, K, GATE)
        kd = kj * tl.exp(Gr[None, :] - Gj)
        dqi += tl.dot(dAb, kd, input_precision=PREC) * tl.exp(
            tl.where(mi[:, None], Gi - Gr[None, :], float("-inf")))
    # the diagonal sub-block (dA is already causal: zero above the diagonal)
    dAd = tl.load(dA + (ri[:, None] * H + i_h) * BT + i_c * BC + ar[None, :], mask=mi[:, None] & mi[None, :],
                  other=0.0)
    for jj in range(0, BC):
        row = s + i_c * BC + jj
        valid = cols * 0 + row < e  # a vector: the interpreter rejects block & scalar masks
        krow = tl.load(k + (row * H + i_h) * K + cols, mask=km & valid, other=0.0).to(tl.float32)
        Grow = _load_G_row(gc, row, e, cols, km, i_h, H, K, GATE)
        w = tl.exp(tl.where(((ar >= jj) & mi)[:, None], Gi - Grow[None, :], float("-inf")))
        dcol = tl.sum(tl.where(ar[None, :] == jj, dAd, 0.0), axis=1)  # dA[:, jj]
        dqi += dcol[:, None] * krow[None, :] * w
        dkrow = tl.sum(dcol[:, None] * qi * w, axis=0)
        dki += tl.where(ar[:, None] == jj, dkrow[None, :], 0.0)
    # dk from the later query sub-blocks
    for j in range(i_c + 1, NC):
        rj = s + j * BC + ar
        mj = rj < e
        dAb = tl.load(dA + (rj[:, None] * H + i_h) * BT + i_c * BC + ar[None, :], mask=mj[:, None], other=0.0)
        qj = _load_block(q, rj, mj, cols, km, i_h, H, K)
        r = s + i_c * BC + BC - 1
        Gj = _load_G(gc, rj, mj, cols, km, i_h, H, K, GATE, BC)
        Gr = _load_G_row(gc, r, e, cols, km, i_h, H, K, GATE)
        qd = qj * tl.exp(tl.where(mj[:, None], Gj - Gr[None, :], float("-inf")))
        dki += tl.dot(tl.trans(dAb), qd, input_precision=PREC) * tl.exp(
            tl.where(mi[:, None], Gr[None, :] - Gi, float("-inf")))
    off = (ri[:, None] * H + i_h) * K + cols[None, :]
    tl.store(dq + off, dqi, mask=mik)
    tl.store(dk + off, dki, mask=mik)

# restore_value: with per-key gates this kernel adds to the dq/dk that _dqk_intra_bwd wrote,
# so autotuning (which runs it several times on the real buffers) must restore them.
@triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"], restore_value=["dq", "dk"])
@triton.jit
def _dqk_inter_bwd(q, k, v, do, gc, hbuf, dhbuf, dA, dq, dk, cstart, cend, scale, H: tl.constexpr,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GATE: tl.constexpr, FULL_INTRA: tl.constexpr, PREC: tl.constexpr, HALF: tl.constexpr):
    i_t, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s, e, _, rows, rm = chunk_rows(cstart, cend, i_t, BT)
    cols_k, km = _cols(i_k, BK, K)
    dq_acc = tl.zeros([BT, BK], dtype=tl.float32)
    dk_acc = tl.zeros([BT, BK], dtype=tl.float32)
    base = (i_t.to(tl.int64) * H + i_h) * K * V
    for i_v in range(0, tl.cdiv(V, BV)):
        cols_v, vm = _cols(i_v, BV, V)
        m = rm[:, None] & vm[None, :]
        dob = tl.load(do + (rows[:, None] * H + i_h) * V + cols_v[None, :], mask=m, other=0.0).to(tl.float32)
        vb = tl.load(v + (rows[:, None] * H + i_h) * V + cols_v[None, :], mask=m, other=0.0).to(tl.float32)
        tile = cols_k[None, :] * V + cols_v[:, None]  # [BV, BK]: the transposed state tile
        tmask = vm[:, None] & km[None, :]
        hT = tl.load(hbuf + base + tile, mask=tmask, other=0.0)
        dhT = tl.load(dhbuf + base + tile, mask=tmask, other=0.0)
        dq_acc += _sdot(dob, hT, PREC, HALF)
        dk_acc += _sdot(vb, dhT, PREC, HALF)
    dq_acc = dq_acc * scale
    if GATE != 0:
        last = tl.minimum(s + BT, e) - 1
        G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
        Gl = _load_G_row(gc, last, last + 1, cols_k, km, i_h, H, K, GATE)
        dq_acc = dq_acc * tl.exp(tl.where(rm[:, None], G, float("-inf")))
        dk_acc = dk_acc * tl.exp(tl.where(rm[:, None], Gl[None, :] - G, float("-inf")))
    off = (rows[:, None] * H + i_h) * K + cols_k[None, :]
    m = rm[:, None] & km[None, :]
    if FULL_INTRA:
        # no gate or a scalar gate: the intra-chunk part in two [BT, BT] matmuls, here
        ar = tl.arange(0, BT)
        dAb = tl.load(dA + (rows[:, None] * H + i_h) * BT + ar[None, :], mask=rm[:, None] & rm[None, :],
                      other=0.0)
        dAb = _causal_decay(dAb, gc, rows, rm, ar, i_h, H, GATE)  # dA is causal: only the decay is new
        qb = _load_block(q, rows, rm, cols_k, km, i_h, H, K)
        kb = _load_block(k, rows, rm, cols_k, km, i_h, H, K)
        dq_acc += tl.dot(dAb, kb, input_precision=PREC)
        dk_acc += tl.dot(tl.trans(dAb), qb, input_precision=PREC)
        tl.store(dq + off, dq_acc, mask=m)
        tl.store(dk + off, dk_acc, mask=m)
    else:
        tl.store(dq + off, tl.load(dq + off, mask=m, other=0.0) + dq_acc, mask=m)
        tl.store(dk + off, tl.load(dk + off, mask=m, other=0.0) + dk_acc, mask=m)
