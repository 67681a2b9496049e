"""delta_rule's WY/UT phase: per chunk and head, ``A = tril(beta_i (k_i . k_j) exp(G_i - G_j), -1)``,
its inverse ``Tm = (I + A)^{-1}`` and the pseudo-values and keys ``U = Tm (beta v)``,
``W = Tm (beta exp(G) k)`` (``_wy_fwd``), and the backward through them (``_wy_bwd``).

``_wy_fwd``, one program per (chunk, head): A by 16 x 16 blocks over K tiles (the exponent masked
before exp, so strong decay underflows to 0 and never overflows), the inverse by blocks in fp32
(``_ut_invert``: diagonal blocks by forward substitution, then
``Tm_ij = -Tm_ii sum_{j<=k<i} A_ik Tm_kj``), then U and W. Stores Tm, U, W.

``_wy_bwd``, per (chunk, head): ``dRv = Tm^T du``, ``dRk = Tm^T dW``,
``dA = -tril(dRv U^T + dRk W^T, -1)`` (from ``d(M^{-1}) = -M^{-1} dM M^{-1}``), and from them dv,
dbeta, the rest of dk and the gate gradient of A and W's right-hand side.

Precision: the products with Tm, the inverse, take ``PREC`` (TF32 at least) whatever the inputs:
its entries are where the chunk's precision is decided; the inverse's own 16 x 16 blocks are
"ieee" (cheap at that size).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton import autotune_configs
from ..._triton.jit import chunk_rows
from .common import _WARPS_BIG, _decay, _gates, _ld, _mm, _st


@triton.jit
def _ut_store(Tm, base, C, x, bi: tl.constexpr, bj: tl.constexpr, BS: tl.constexpr):
    r = bi * BS + tl.arange(0, BS)
    c = bj * BS + tl.arange(0, BS)
    tl.store(Tm + base + r[:, None] * C + c[None, :], x, mask=(r[:, None] < C) & (c[None, :] < C))

@triton.jit
def _ut_inv_diag(Ad, BS: tl.constexpr):
    """``(I + Ad)^{-1}`` of a strictly lower ``[BS, BS]`` block by forward substitution: row i
    of the inverse is ``e_i - sum_{k<i} Ad_ik Tm_k``, one masked vector update per row (rows
    k >= i still hold e_k, which Ad_ik = 0 leaves out)."""
    r = tl.arange(0, BS)
    rows = r[:, None] + 0 * r[None, :]
    cols = 0 * r[:, None] + r[None, :]
    Tm = tl.where(rows == cols, 1.0, 0.0)
    for i in tl.static_range(1, BS):
        a_i = tl.sum(tl.where(rows == i, Ad, 0.0), axis=0)  # row i of Ad, indexed by column k
        upd = tl.sum(a_i[:, None] * Tm, axis=0)  # sum_k Ad_ik Tm_k
        Tm = tl.where(rows == i, Tm - upd[None, :], Tm)
    return Tm

@triton.jit
def _ut_invert(A00, A10, A11, A20, A21, A22, A30, A31, A32, A33, BS: tl.constexpr):
    """``Tm = (I + A)^{-1}`` of a strictly lower [4 BS, 4 BS] matrix given as its ten lower
    [BS, BS] blocks (diagonal blocks strictly lower); returns Tm's ten lower blocks in the same
    order. Diagonal blocks by forward substitution, then ``Tm_ij = -Tm_ii sum_{j<=k<i} A_ik Tm_kj``
    (fp32, "ieee": these 16 x 16 products are cheap and the inverse is where precision is lost)."""
    T00 = _ut_inv_diag(A00, BS)
    T11 = _ut_inv_diag(A11, BS)
    T22 = _ut_inv_diag(A22, BS)
    T33 = _ut_inv_diag(A33, BS)
    T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision="ieee"), input_precision="ieee")
    T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision="ieee"), input_precision="ieee")
    T20 = -tl.dot(T22, tl.dot(A20, T00, input_precision="ieee") + tl.dot(A21, T10, input_precision="ieee"),
                  input_precision="ieee")
    T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision="ieee"), input_precision="ieee")
    T31 = -tl.dot(T33, tl.dot(A31, T11, input_precision="ieee") + tl.dot(A32, T21, input_precision="ieee"),
                  input_precision="ieee")
    acc = tl.dot(A30, T00, input_precision="ieee") + tl.dot(A31, T10, input_precision="ieee")
    T30 = -tl.dot(T33, acc + tl.dot(A32, T20, input_precision="ieee"), input_precision="ieee")
    return T00, T10, T11, T20, T21, T22, T30, T31, T32, T33

@triton.jit
def _ut_store_all(Tm, base, C, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, BS: tl.constexpr):
    """All sixteen blocks of Tm at ``Tm + base`` ([C, C] row-major), the upper ones as zeros
    (so Tm can be allocated uninitialised)."""
    zero = tl.zeros([BS, BS], dtype=tl.float32)
    _ut_store(Tm, base, C, T00, 0, 0, BS)
    _ut_store(Tm, base, C, zero, 0, 1, BS)
    _ut_store(Tm, base, C, zero, 0, 2, BS)
    _ut_store(Tm, base, C, zero, 0, 3, BS)
    _ut_store(Tm, base, C, T10, 1, 0, BS)
    _ut_store(Tm, base, C, T11, 1, 1, BS)
    _ut_store(Tm, base, C, zero, 1, 2, BS)
    _ut_store(Tm, base, C, zero, 1, 3, BS)
    _ut_store(Tm, base, C, T20, 2, 0, BS)
    _ut_store(Tm, base, C, T21, 2, 1, BS)
    _ut_store(Tm, base, C, T22, 2, 2, BS)
    _ut_store(Tm, base, C, zero, 2, 3, BS)
    _ut_store(Tm, base, C, T30, 3, 0, BS)
    _ut_store(Tm, base, C, T31, 3, 1, BS)
    _ut_store(Tm, base, C, T32, 3, 2, BS)
    _ut_store(Tm, base, C, T33, 3, 3, BS)

@triton.jit
def _ut_apply(PREC: tl.constexpr, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, R0, R1, R2, R3):
    """``Tm R`` by row blocks: block i is ``sum_{j<=i} Tm_ij R_j``."""
    U0 = tl.dot(T00, R0, input_precision=PREC)
    U1 = tl.dot(T10, R0, input_precision=PREC) + tl.dot(T11, R1, input_precision=PREC)
    U2 = tl.dot(T20, R0, input_precision=PREC) + tl.dot(T21, R1, input_precision=PREC)
    U2 += tl.dot(T22, R2, input_precision=PREC)
    U3 = tl.dot(T30, R0, input_precision=PREC) + tl.dot(T31, R1, input_precision=PREC)
    U3 += tl.dot(T32, R2, input_precision=PREC) + tl.dot(T33, R3, input_precision=PREC)
    return U0, U1, U2, U3


@triton.jit
def _kkt_gated(A, beta_i, Gi, Gj, BS: tl.constexpr, DIAG: tl.constexpr, HAS_G: tl.constexpr):
    """A block of ``beta_i (k_i . k_j) exp(G_i - G_j)`` from its ``k_i . k_j`` block; a diagonal
    block keeps its strictly lower part only (exponent masked before exp)."""
    x = A * beta_i[:, None]
    if DIAG:
        r = tl.arange(0, BS)
        low = r[:, None] > r[None, :]
        if HAS_G:
            x = x * tl.exp(tl.where(low, Gi[:, None] - Gj[None, :], 0.0))
        x = tl.where(low, x, 0.0)
    else:
        if HAS_G:
            x = x * tl.exp(Gi[:, None] - Gj[None, :])  # rows after columns: exponent <= 0
    return x

@triton.jit
def _ld_blk(x, i_h, s, e, bi: tl.constexpr, c0, H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
            BD: tl.constexpr):
    """Row block ``bi`` ([BS, BD]) of the chunk whose rows start at s and end before e."""
    rows = s + bi * BS + tl.arange(0, BS)
    return _ld(x, i_h, rows, rows < e, c0, H, D, BD)

@triton.jit
def _st_blk(x, val, i_h, s, e, bi: tl.constexpr, c0, H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
            BD: tl.constexpr):
    rows = s + bi * BS + tl.arange(0, BS)
    _st(x, val, i_h, rows, rows < e, c0, H, D, BD)

@triton.jit
def _vec_blk(x, i_h, s, e, bi: tl.constexpr, H: tl.constexpr, BS: tl.constexpr):
    """Row block ``bi`` of a per-row [rows, H] tensor (fp32, 0 past the chunk's end)."""
    rows = s + bi * BS + tl.arange(0, BS)
    return tl.load(x + rows * H + i_h, mask=rows < e, other=0.0).to(tl.float32)

@triton.jit
def _solve_rows(x, Y, i_h, s, e, r0, r1, r2, r3, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33,
                H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """``Y = Tm (r * x)`` for one chunk's rows of the [rows, H, D] tensor x, with the row scales
    r0..r3 of its four row blocks, in [C, BD] column tiles (U: x = v, r = beta; W: x = k,
    r = beta exp(G))."""
    for c0 in range(0, D, BD):
        Y0, Y1, Y2, Y3 = _ut_apply(
            PREC, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33,
            _ld_blk(x, i_h, s, e, 0, c0, H, D, BS, BD) * r0[:, None],
            _ld_blk(x, i_h, s, e, 1, c0, H, D, BS, BD) * r1[:, None],
            _ld_blk(x, i_h, s, e, 2, c0, H, D, BS, BD) * r2[:, None],
            _ld_blk(x, i_h, s, e, 3, c0, H, D, BS, BD) * r3[:, None])
        _st_blk(Y, Y0, i_h, s, e, 0, c0, H, D, BS, BD)
        _st_blk(Y, Y1, i_h, s, e, 1, c0, H, D, BS, BD)
        _st_blk(Y, Y2, i_h, s, e, 2, c0, H, D, BS, BD)
        _st_blk(Y, Y3, i_h, s, e, 3, c0, H, D, BS, BD)

@triton.autotune(configs=autotune_configs(_WARPS_BIG[::-1]), key=["K", "V", "HAS_G", "PREC", "DOT"])
@triton.jit
def _wy_fwd(k, v, beta, G, Tm, U, W, cstart, cend, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
            C: tl.constexpr, BS: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr, HAS_G: tl.constexpr,
            PREC: tl.constexpr, DOT: tl.constexpr):
    """One chunk and head: A = strictly lower ``beta_i (k_i . k_j) exp(G_i - G_j)`` formed by
    [BS, BS] blocks over K tiles, ``Tm = (I + A)^{-1}`` (stored), then ``U = Tm (beta v)`` and
    ``W = Tm (beta exp(G) k)``."""
    i_n, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    s = tl.load(cstart + i_n).to(tl.int64)
    e = tl.load(cend + i_n)
    b0 = _vec_blk(beta, i_h, s, e, 0, H, BS)
    b1 = _vec_blk(beta, i_h, s, e, 1, H, BS)
    b2 = _vec_blk(beta, i_h, s, e, 2, H, BS)
    b3 = _vec_blk(beta, i_h, s, e, 3, H, BS)
    if HAS_G:  # chunk layout: every row present
        g0 = i_n * C
        G0 = _vec_blk(G, i_h, g0, g0 + C, 0, H, BS)
        G1 = _vec_blk(G, i_h, g0, g0 + C, 1, H, BS)
        G2 = _vec_blk(G, i_h, g0, g0 + C, 2, H, BS)
        G3 = _vec_blk(G, i_h, g0, g0 + C, 3, H, BS)
    else:
        G0 = tl.zeros([BS], dtype=tl.float32)
        G1 = G0
        G2 = G0
        G3 = G0
    A00 = tl.zeros([BS, BS], dtype=tl.float32)
    A10 = A00
    A11 = A00
    A20 = A00
    A21 = A00
    A22 = A00
    A30 = A00
    A31 = A00
    A32 = A00
    A33 = A00
    for k0 in range(0, K, BKT):
        k0s = _ld_blk(k, i_h, s, e, 0, k0, H, K, BS, BKT)
        k1s = _ld_blk(k, i_h, s, e, 1, k0, H, K, BS, BKT)
        k2s = _ld_blk(k, i_h, s, e, 2, k0, H, K, BS, BKT)
        k3s = _ld_blk(k, i_h, s, e, 3, k0, H, K, BS, BKT)
        A00 += _mm(k0s, tl.trans(k0s), DOT)
        A10 += _mm(k1s, tl.trans(k0s), DOT)
        A11 += _mm(k1s, tl.trans(k1s), DOT)
        A20 += _mm(k2s, tl.trans(k0s), DOT)
        A21 += _mm(k2s, tl.trans(k1s), DOT)
        A22 += _mm(k2s, tl.trans(k2s), DOT)
        A30 += _mm(k3s, tl.trans(k0s), DOT)
        A31 += _mm(k3s, tl.trans(k1s), DOT)
        A32 += _mm(k3s, tl.trans(k2s), DOT)
        A33 += _mm(k3s, tl.trans(k3s), DOT)
    T00, T10, T11, T20, T21, T22, T30, T31, T32, T33 = _ut_invert(
        _kkt_gated(A00, b0, G0, G0, BS, True, HAS_G), _kkt_gated(A10, b1, G1, G0, BS, False, HAS_G),
        _kkt_gated(A11, b1, G1, G1, BS, True, HAS_G), _kkt_gated(A20, b2, G2, G0, BS, False, HAS_G),
        _kkt_gated(A21, b2, G2, G1, BS, False, HAS_G), _kkt_gated(A22, b2, G2, G2, BS, True, HAS_G),
        _kkt_gated(A30, b3, G3, G0, BS, False, HAS_G), _kkt_gated(A31, b3, G3, G1, BS, False, HAS_G),
        _kkt_gated(A32, b3, G3, G2, BS, False, HAS_G), _kkt_gated(A33, b3, G3, G3, BS, True, HAS_G), BS)
    _ut_store_all(Tm, (i_n * H + i_h) * C * C, C, T00, T10, T11, T20, T21, T22, T30, T31, T32,
                  T33, BS)
    _solve_rows(v, U, i_h, s, e, b0, b1, b2, b3, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, H, V, BS, BVT,
                PREC)
    _solve_rows(k, W, i_h, s, e, b0 * tl.exp(G0), b1 * tl.exp(G1), b2 * tl.exp(G2), b3 * tl.exp(G3),
                T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, H, K, BS, BKT, PREC)


@triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"], restore_value=["dk"])
@triton.jit
def _wy_bwd(k, v, beta, G, Tm, U, W, du, dW, dk, dv, dbeta, dgw, cstart, cend, H: tl.constexpr,
            K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr,
            HAS_G: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
    """Back through ``U = Tm (beta v)``, ``W = Tm (beta exp(G) k)`` and
    ``A = beta_i (k_i . k_j) exp(G_i - G_j)`` for one chunk and head: ``dRv = Tm^T dU``,
    ``dRk = Tm^T dW``, ``dA = -tril(dRv U^T + dRk W^T, -1)``; writes dv, dbeta, the gate
    gradient of these terms (``dgw``, chunk layout) and adds to dk."""
    i_n, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    r = tl.arange(0, C)
    _, _, _, rows, rm = chunk_rows(cstart, cend, i_n, C)
    Tmm = tl.load(Tm + (i_n * H + i_h) * C * C + r[:, None] * C + r[None, :])
    TmT = tl.trans(Tmm)
    b = tl.load(beta + rows * H + i_h, mask=rm, other=0.0).to(tl.float32)
    Gr, Gc = _gates(G, i_h, i_n, H, C, HAS_G)
    eb = b * tl.exp(Gr)  # the row scale of W's right-hand side
    dA = tl.zeros([C, C], dtype=tl.float32)
    kk = tl.zeros([C, C], dtype=tl.float32)
    db = tl.zeros([C], dtype=tl.float32)
    dg = tl.zeros([C], dtype=tl.float32)
    for v0 in range(0, V, BVT):
        dRv = tl.dot(TmT, _ld(du, i_h, rows, rm, v0, H, V, BVT), input_precision=PREC)
        _st(dv, dRv * b[:, None], i_h, rows, rm, v0, H, V, BVT)
        db += tl.sum(dRv * _ld(v, i_h, rows, rm, v0, H, V, BVT), axis=1)
        dA += _mm(dRv, tl.trans(_ld(U, i_h, rows, rm, v0, H, V, BVT)), DOT)
    for k0 in range(0, K, BKT):
        kt = _ld(k, i_h, rows, rm, k0, H, K, BKT)
        dRk = tl.dot(TmT, _ld(dW, i_h, rows, rm, k0, H, K, BKT), input_precision=PREC)
        dA += _mm(dRk, tl.trans(_ld(W, i_h, rows, rm, k0, H, K, BKT)), DOT)
        s = tl.sum(dRk * kt, axis=1) * tl.exp(Gr)
        db += s
        dg += s * b
        kk += _mm(kt, tl.trans(kt), DOT)
    dAD = -dA * _decay(Gr, C, True, HAS_G)  # d(beta_i kk_ij) for i > j, 0 elsewhere
    db += tl.sum(dAD * kk, axis=1)
    Bm = dAD * b[:, None]  # d(kk_ij)
    if HAS_G:
        M = Bm * kk  # dA_ij A_ij: +G_i, -G_j
        dg += tl.sum(M, axis=1) - tl.sum(M, axis=0)
        tl.store(dgw + (i_n * C + r) * H + i_h, dg)
    tl.store(dbeta + rows * H + i_h, db, mask=rm)
    for k0 in range(0, K, BKT):
        kt = _ld(k, i_h, rows, rm, k0, H, K, BKT)
        dRk = tl.dot(TmT, _ld(dW, i_h, rows, rm, k0, H, K, BKT), input_precision=PREC)
        dkt = _ld(dk, i_h, rows, rm, k0, H, K, BKT) + dRk * eb[:, None]
        dkt += _mm(Bm, kt, DOT) + _mm(tl.trans(Bm), kt, DOT)
        _st(dk, dkt, i_h, rows, rm, k0, H, K, BKT)

