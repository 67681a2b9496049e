"""Triton path of delta_rule: the chunked WY/UT form of ``chunk.py`` (read its derivation first)
as fused kernels, forward and backward, plus a fused recurrent kernel for short sequences.

Notation per chunk of C = 64 steps and (batch, head): ``G`` the chunk-local cumulative log gate
(``G_C`` its last value), ``A = tril(beta_i (k_i . k_j) exp(G_i - G_j), -1)``, ``Tm = (I + A)^{-1}``,
``U = Tm (beta v)``, ``W = Tm (beta exp(G) k)``, S the state entering the chunk. Then

    u = U - W S                                                 (the values actually written)
    o = scale [(q exp(G)) S + (q k^T exp(G_i - G_j), i >= j) u]
    S_next = exp(G_C) S + (k exp(G_C - G))^T u

Every call is packed: ``[B, T, H, D]`` is flattened to ``[B*T, H, D]`` with sequence offsets
``0, T, 2T, ...``, or ``cu_seqlens`` for varlen, and cut into chunks that never cross a sequence
(``kernels/_triton/plan.py``), so a varlen batch takes the same launches as a dense one.

Forward, three launches (``_ChunkFn.forward``):

1. ``_prep_fwd``, one program per (chunk, head): A by 16 x 16 blocks over K tiles (the
   exponent masked before exp, so strong decay underflows to 0 and never overflows), the inverse
   by blocks in fp32 (``_ut_invert``: diagonal blocks by forward substitution, then
   ``Tm_ij = -Tm_ii sum_{j<=k<i} A_ik Tm_kj``), then U and W. Stores Tm, U, W.
2. ``_h_fwd``, one program per (V tile, sequence * head), the only sequential part: the [K, BV] state
   tile stays in registers through all chunks; stores every entering state and u.
3. ``_o_fwd``, one program per (V tile, chunk, head): the output.

Backward, four launches (``_ChunkFn.backward``), nothing recomputed:

1. ``_du_local``: the intra-chunk part of u's gradient, ``P^T do``.
2. ``_h_bwd``, sequential, chunks last to first: ``dH`` (gradient of the state leaving the
   chunk), ``du += (k exp(G_C - G)) dH``, and the entering state's
   ``dS = exp(G_C) dH + scale (q exp(G))^T do - W^T du``; the last one is the initial state's.
3. ``_bwd_chunk``, per (K tile, chunk, head): dq, dk's output and state-update terms and
   ``dW = -du S^T``, with the gate gradients of those terms: every q_i enters as
   ``q_i exp(G_i)`` and every k_j as ``k_j exp(-G_j)``, so they contribute
   ``q_i . dq_i - k_i . dk_i`` to dG_i (plus a chunk-end term for ``G_C``).
4. ``_bwd_wy``, per (chunk, head): ``dRv = Tm^T du``, ``dRk = Tm^T dW``,
   ``dA = -tril(dRv U^T + dRk W^T, -1)`` (from ``d(M^{-1}) = -M^{-1} dM M^{-1}``), and from them
   dv, dbeta, the rest of dk and the gate gradient of A and W's right-hand side.
   g's gradient is the reverse cumulative sum of dG within each chunk (PyTorch, [B, T, H]).

Precision: every kernel accumulates in fp32 and the recurrent state stays fp32 in registers.
bf16 inputs: the products take bf16 operands (``_mm``; full-rate tensor cores) and the stored
intermediates (U, W, u, the chunk states, dH) are bf16, as FLA does; about 1% relative error
on outputs and gradients against float64 under the interpreter's emulation. Products with Tm,
the inverse, stay TF32 whatever the inputs. fp32 inputs: fp32 intermediates and ``tf32x3``
products (``MM_PREC``, about fp32 accuracy); fp16 inputs: fp32 intermediates and one TF32
product. Never "ieee" for large tiles: on sm_90 it lowers [64, 128] x [128, BV] tiles to
scalar FMAs with kilobytes of register spills per thread (the first H200 run's T=8K forward
took 33 ms that way); only the inverse's 16 x 16 blocks use it. sm_90 compiles
(``scripts/sm90_check.py``) of the bf16 kernels at K = V = 128 show no spills at 8 warps
except a few bytes in ``_prep_fwd``; the fp32 ones spill up to ~1.3 KB per thread (tf32x3
splits every operand in two). The sequential kernels' V tile (``_blocks``): 32 for bf16, 16
for fp32 at K >= 128. Memory kept for the backward: U, W, u (as large as k and v), Tm (C fp32
per step) and the entering states (K * V per chunk: at K = V = 128 and bf16, 512 B per step
and head).

A fused recurrent kernel (``_recurrent_fwd``) runs short sequences and decoding steps (T <=
``RECURRENT_MAX_T``): the loop over time with the [K, BV] state in registers, one program per
(batch, head, V tile); its backward recomputes the forward through the chunk kernels and runs
their backward, which is cheap at those lengths. Varlen calls always take the chunk kernels.
"""

from __future__ import annotations

import torch

from ..._common import run_packed
from ..._triton import HAS_TRITON, autotune_configs, check_triton_inputs, interpreting, next_pow2
from ..._triton.plan import chunk_plan

__all__ = ["RECURRENT_MAX_T", "delta_rule_triton"]

MAX_HEAD_DIM = 256
RECURRENT_MAX_T = 64  # the fused recurrent kernel runs sequences up to this length
#: precision of the large fp32 products (all but the inverse's 16 x 16 blocks) for fp32 inputs:
#: three TF32 tensor-core products (``tf32x3``: about fp32 accuracy; half inputs take one TF32
#: product, see ``_precision``). Plain fp32 ("ieee") lowers [128, 128] tiles to scalar FMAs,
#: which on the first H200 run made the T=8K forward take 33 ms. The 16 x 16 blocks of the
#: inverse itself stay "ieee". (The interpreter computes all of them in fp32.)
MM_PREC = "tf32x3"

if HAS_TRITON:
    import triton
    import triton.language as tl

    # The chunk kernels hold [64, K] tiles: at K = V = 128 with bf16 inputs, sm_90 compiles show no
    # spills at 8 warps and up to ~140 B at 4 (scripts/sm90_check.py), except _prep_fwd (8 B at 4,
    # 56 B at 8: it runs 4 first); 2 warps spill kilobytes. The first entry runs untuned.
    _WARPS_BIG = [{"num_warps": 8}, {"num_warps": 4}]

if HAS_TRITON:

    @triton.jit
    def _recurrent_fwd(q, k, v, beta, g, h0, o, ht, T, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr):
        """One (batch, head, V tile): S' = exp(g) S; S = S' + beta k^T (v - k S'); o = scale q S."""
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = i_bh // H, i_bh % H
        rk = tl.arange(0, BK)
        cv = i_v * BV + tl.arange(0, BV)
        km, vm = rk < K, cv < V
        tile = rk[:, None] * V + cv[None, :]
        tm = km[:, None] & vm[None, :]
        S = tl.load(h0 + i_bh.to(tl.int64) * K * V + tile, mask=tm, other=0.0)
        for t in range(0, T):
            row = (i_b.to(tl.int64) * T + t) * H + i_h  # [B, T, H] position
            qt = tl.load(q + row * K + rk, mask=km, other=0.0).to(tl.float32)
            kt = tl.load(k + row * K + rk, mask=km, other=0.0).to(tl.float32)
            vt = tl.load(v + row * V + cv, mask=vm, other=0.0).to(tl.float32)
            bt = tl.load(beta + row).to(tl.float32)
            if HAS_G:
                S = S * tl.exp(tl.load(g + row).to(tl.float32))
            u = bt * (vt - tl.sum(S * kt[:, None], axis=0))  # beta (v - k S')
            S += kt[:, None] * u[None, :]
            ot = tl.sum(S * qt[:, None], axis=0) * scale
            tl.store(o + row * V + cv, ot.to(o.dtype.element_ty), mask=vm)
        tl.store(ht + i_bh.to(tl.int64) * K * V + tile, S, mask=tm)


if HAS_TRITON:

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



if HAS_TRITON:
    # The fused chunk path. Layout: every call is packed ([B, T, H, D] flattened to [B*T, H, D],
    # varlen calls as given) and cut into chunks of C = 64 rows that never cross a sequence
    # (kernels/_triton/plan.py: chunk n covers rows cstart[n] .. cend[n] - 1; sequence s owns
    # chunks coff[s] .. coff[s+1] - 1). q, k, v, beta are read in place (fp32/bf16/fp16) and every
    # product is in fp32. Chunk layout ([n_chunks * C, H], padded rows included): G, the
    # chunk-local cumulative log gate (a padded row repeats its chunk's last G), and the gate
    # gradients. Per chunk: Tm [n_chunks, H, C, C], the entering states S_in (and dH, the
    # gradient of each chunk's leaving state) [n_chunks, H, K, V]. Per row, fp32 [rows, H, *]:
    # U, W (pseudo-values and keys), u (written values) and the gradients.

    @triton.jit
    def _mm(a, b, DOT: tl.constexpr):
        """``a @ b`` (fp32 tiles, fp32 result) as ``DOT`` says: "bf16", bf16 operands (bf16 inputs
        on a GPU: full-rate tensor cores; tiles loaded from bf16 tensors convert exactly);
        "bf16-emu", the same rounding of the operands with an fp32 product (the interpreter, whose
        bf16 products are wrong); else a ``tl.dot`` input precision ("tf32x3", "tf32")."""
        if DOT == "bf16":
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        elif DOT == "bf16-emu":
            return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=DOT)

    @triton.jit
    def _chunk(cstart, cend, i_n, C: tl.constexpr):
        """Chunk ``i_n``'s packed rows [C] and their validity mask."""
        rows = tl.load(cstart + i_n).to(tl.int64) + tl.arange(0, C)
        return rows, rows < tl.load(cend + i_n)

    @triton.jit
    def _ld(x, i_h, rows, rm, c0, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
        """``rows`` (mask ``rm``) and columns ``c0 .. c0 + BD`` of head ``i_h`` of the packed
        [rows, H, D] tensor x, in fp32, 0 outside."""
        cols = c0 + tl.arange(0, BD)
        ptr = x + (rows[:, None] * H + i_h) * D + cols[None, :]
        return tl.load(ptr, mask=rm[:, None] & (cols[None, :] < D), other=0.0).to(tl.float32)

    @triton.jit
    def _st(x, val, i_h, rows, rm, c0, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
        cols = c0 + tl.arange(0, BD)
        ptr = x + (rows[:, None] * H + i_h) * D + cols[None, :]
        tl.store(ptr, val.to(x.dtype.element_ty), mask=rm[:, None] & (cols[None, :] < D))

    @triton.jit
    def _ld_state(x, base, k0, v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        """Rows ``k0 ..`` and columns ``v0 ..`` of the [K, V] state at ``x + base``."""
        rk = k0 + tl.arange(0, BK)
        cv = v0 + tl.arange(0, BV)
        return tl.load(x + base + rk[:, None] * V + cv[None, :], mask=(rk[:, None] < K) & (cv[None, :] < V),
                       other=0.0).to(tl.float32)

    @triton.jit
    def _st_state(x, base, val, k0, v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        rk = k0 + tl.arange(0, BK)
        cv = v0 + tl.arange(0, BV)
        tl.store(x + base + rk[:, None] * V + cv[None, :], val.to(x.dtype.element_ty),
                 mask=(rk[:, None] < K) & (cv[None, :] < V))

    @triton.jit
    def _gates(G, i_h, i_n, H: tl.constexpr, C: tl.constexpr, HAS_G: tl.constexpr):
        """Chunk i_n's cumulative log gates ``G_i`` [C] and ``G_C`` (zeros without gates). Chunk
        indices reach the kernels as int64 (program ids converted; loop indices over int64 bounds),
        so the [n_chunks, H, K, V] offsets formed from them cannot overflow."""
        t = i_n * C + tl.arange(0, C)
        if HAS_G:
            Gr = tl.load(G + t * H + i_h)
            Gc = tl.load(G + (i_n * C + C - 1) * H + i_h)
        else:
            Gr = tl.zeros([C], dtype=tl.float32)
            Gc = 0.0
        return Gr, Gc

    @triton.jit
    def _decay(Gr, C: tl.constexpr, STRICT: tl.constexpr, HAS_G: tl.constexpr):
        """``exp(G_i - G_j)`` on the causal triangle (i >= j, or i > j with ``STRICT``), 0 above;
        the exponent is masked before exp, so it never overflows."""
        r = tl.arange(0, C)
        if STRICT:
            low = r[:, None] > r[None, :]
        else:
            low = r[:, None] >= r[None, :]
        if HAS_G:
            return tl.where(low, tl.exp(tl.where(low, Gr[:, None] - Gr[None, :], 0.0)), 0.0)
        else:
            return tl.where(low, 1.0, 0.0)

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
    def _prep_fwd(k, v, beta, G, Tm, U, W, cstart, cend, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
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

    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "BV", "HAS_G", "PREC", "DOT"])
    @triton.jit
    def _h_fwd(k, G, U, W, u, S0, S_in, S_out, cstart, cend, coff, H: tl.constexpr, K: tl.constexpr,
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
            rows, rm = _chunk(cstart, cend, n, C)
            un = _ld(U, i_h, rows, rm, v0, H, V, BV) - _mm(_ld(W, i_h, rows, rm, 0, H, K, BK), S, DOT)
            _st(u, un, i_h, rows, rm, v0, H, V, BV)
            kn = _ld(k, i_h, rows, rm, 0, H, K, BK)
            if HAS_G:
                Gr, Gc = _gates(G, i_h, n, H, C, HAS_G)
                kn = kn * tl.exp(Gc - Gr)[:, None]
                S = S * tl.exp(Gc)
            S += _mm(tl.trans(kn), un, DOT)
        _st_state(S_out, i_sh.to(tl.int64) * K * V, S, 0, v0, K, V, BK, BV)

    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
    @triton.jit
    def _o_fwd(q, k, G, u, S_in, o, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
               DOT: tl.constexpr):
        """``o = scale [(q exp(G)) S + (q k^T exp(G_i - G_j), i >= j) u]`` for one chunk, head and V tile."""
        i_v, i_n, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
        v0 = i_v * BVT
        rows, rm = _chunk(cstart, cend, i_n, C)
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

    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
    @triton.jit
    def _du_local(q, k, G, do, du, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
               DOT: tl.constexpr):
        """The intra-chunk part of the written values' gradient, ``P^T do`` with
        ``P = scale q k^T exp(G_i - G_j)`` (i >= j), for one chunk, head and V tile."""
        i_v, i_n, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
        v0 = i_v * BVT
        rows, rm = _chunk(cstart, cend, i_n, C)
        qk = tl.zeros([C, C], dtype=tl.float32)
        for k0 in range(0, K, BKT):
            qk += _mm(_ld(q, i_h, rows, rm, k0, H, K, BKT), tl.trans(_ld(k, i_h, rows, rm, k0, H, K, BKT)), DOT)
        Gr, Gc = _gates(G, i_h, i_n, H, C, HAS_G)
        P = qk * _decay(Gr, C, False, HAS_G) * scale
        _st(du, _mm(tl.trans(P), _ld(do, i_h, rows, rm, v0, H, V, BVT), DOT),
            i_h, rows, rm, v0, H, V, BVT)

    # du is read and written in place: the autotuner's timing runs must each start from the original
    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "BV", "HAS_G", "HAS_DSF", "PREC", "DOT"],
                     restore_value=["du"])
    @triton.jit
    def _h_bwd(q, k, G, W, do, du, dSf, dH, dS0, cstart, cend, coff, scale, H: tl.constexpr, K: tl.constexpr,
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
            rows, rm = _chunk(cstart, cend, n, C)
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

    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"])
    @triton.jit
    def _bwd_chunk(q, k, G, u, du, do, S_in, dH, dq, dk, dW, dgr, dgc, cstart, cend, scale, NK,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BKT: tl.constexpr,
                   BVT: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
        """The chunk-parallel gradients for one chunk, head and K tile: dq, the output's and the
        state update's part of dk, ``dW = -du S^T``; with gates, the per-step gate gradient of
        these terms (``q.dq - k.dk``, per K tile in ``dgr``) and the chunk-end term (``dgc``)."""
        i_k, i_n, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
        k0 = i_k * BKT
        rows, rm = _chunk(cstart, cend, i_n, C)
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

    @triton.autotune(configs=autotune_configs(_WARPS_BIG), key=["K", "V", "HAS_G", "PREC", "DOT"], restore_value=["dk"])
    @triton.jit
    def _bwd_wy(k, v, beta, G, Tm, U, W, du, dW, dk, dv, dbeta, dgw, cstart, cend, H: tl.constexpr,
                K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BKT: tl.constexpr, BVT: tl.constexpr,
                HAS_G: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr):
        """Back through ``U = Tm (beta v)``, ``W = Tm (beta exp(G) k)`` and
        ``A = beta_i (k_i . k_j) exp(G_i - G_j)`` for one chunk and head: ``dRv = Tm^T dU``,
        ``dRk = Tm^T dW``, ``dA = -tril(dRv U^T + dRk W^T, -1)``; writes dv, dbeta, the gate
        gradient of these terms (``dgw``, chunk layout) and adds to dk."""
        i_n, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
        r = tl.arange(0, C)
        rows, rm = _chunk(cstart, cend, i_n, C)
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


UT_BLOCK = 16  # the inverse's block size (tl.dot needs >= 16 per side)


class _RecurrentFn(torch.autograd.Function):
    """Forward by the fused recurrent kernel; backward by autograd through the fused chunk kernels
    (a recomputed forward, cheap at the lengths this runs)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = max(16, next_pow2(K)), max(16, min(32, next_pow2(V)))
        qc, kc, vc, bc = (x.contiguous() for x in (q, k, v, beta))
        gc = None if g is None else g.float().contiguous()
        h0c = h0.float().contiguous()
        o = torch.empty(B, T, H, V, device=q.device, dtype=torch.float32)
        ht = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
        _recurrent_fwd[(triton.cdiv(V, BV), B * H)](
            qc, kc, vc, bc, gc if gc is not None else bc, h0c, o, ht, T, scale, H=H, K=K, V=V, BK=BK, BV=BV,
            HAS_G=g is not None)
        ctx.save_for_backward(q, k, v, beta, g, h0)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        saved = ctx.saved_tensors
        leaves = [None if x is None else x.detach().requires_grad_() for x in saved]
        B, T = leaves[0].shape[:2]
        with torch.enable_grad():
            o, ht = delta_rule_triton_packed(*leaves[:5], ctx.scale, leaves[5], _batch_offsets(B, T))
            pairs = [(y, dy) for y, dy in ((o, do), (ht, dht)) if dy is not None and y.requires_grad]
            wanted = [x for x in leaves if x is not None]
            if not pairs:  # e.g. an empty sequence whose state is not used
                return (*(None for _ in leaves), None)
            grads = torch.autograd.grad([y for y, _ in pairs], wanted, [dy for _, dy in pairs], allow_unused=True)
        grads = iter(grads)
        return (*(None if x is None else next(grads) for x in leaves), None)


def _blocks(K: int, V: int, half: bool) -> tuple[int, int]:
    """The sequential kernels' state tile [BK = all of K, BV]. sm_90 compiles at K = V = 128, 8
    warps (scripts/sm90_check.py): with bf16 operands ``half``, BV = 16/32/64 take 80/104/146
    registers in ``_h_fwd`` and 141/164/212 in ``_h_bwd``, none spilled; BV = 32 halves the
    redundant reads of W and k (every V tile reads them whole) and still fits two programs per
    SM. With fp32 operands (tf32x3 splits each in two) BV = 16 at K >= 128 keeps spills to a few
    hundred bytes, against ~0.5 KB more at BV = 32."""
    if half:
        return max(16, next_pow2(K)), max(16, min(32, next_pow2(V)))
    return max(16, next_pow2(K)), 16 if K >= 128 else max(16, min(32, next_pow2(V)))


def _dot_mode(q: torch.Tensor) -> str:
    """The chunk kernels' ``_mm`` mode: bf16 operands for bf16 inputs (emulated under the
    interpreter), else ``_precision``'s TF32 mode. The products with Tm (the inverse) always take
    ``_precision``: its entries are where the chunk's precision is decided."""
    if q.dtype == torch.bfloat16:
        return "bf16-emu" if interpreting() else "bf16"
    return _precision(q)


def _precision(q: torch.Tensor) -> str:
    """The chunk kernels' ``tl.dot`` precision: ``MM_PREC`` (tf32x3) for fp32 inputs; one TF32
    product for bf16/fp16 inputs, whose values TF32 holds exactly (products with the fp32
    intermediates round to TF32's 10-bit mantissa, finer than the inputs), at a third of the
    tensor-core work and without tf32x3's split operands in registers."""
    return MM_PREC if q.dtype == torch.float32 else "tf32"


CHUNK = 64  # the fused chunk path's chunk length (= 4 * UT_BLOCK, the inverse's blocking)


def _tiles(K: int, V: int) -> tuple[int, int]:
    """The chunk-parallel kernels' K and V tiles."""
    return min(64, max(16, next_pow2(K))), min(64, max(16, next_pow2(V)))


def _chunk_gates(g: torch.Tensor | None, plan) -> torch.Tensor | None:
    """The chunk-local cumulative log gates in the chunk layout, fp32 ``[n_chunks * C, H]`` (a
    padded row adds 0, so it repeats its chunk's last G); None without gates. g: ``[rows, H]``."""
    if g is None:
        return None
    rows, valid = plan.chunk_rows
    return torch.where(valid[..., None], g.float()[rows], 0.0).cumsum(1).reshape(-1, g.shape[-1]).contiguous()


def _prepare(k, v, beta, G, plan, dot: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_prep_fwd`` over every chunk: ``Tm = (I + A)^{-1}`` fp32 ``[n_chunks, H, C, C]`` (zero
    above the diagonal, the identity on padded rows), ``U = Tm (beta v)`` and
    ``W = Tm (beta exp(G) k)`` (``[rows, H, V]`` and ``[rows, H, K]``, bf16 when ``dot`` is a bf16
    mode, else fp32). k, v ``[rows, H, *]`` and beta ``[rows, H]`` contiguous; G from
    ``_chunk_gates``; ``dot`` from ``_dot_mode``."""
    _, H, K = k.shape
    V = v.shape[-1]
    C, NC = CHUNK, plan.n_chunks
    sdt = torch.bfloat16 if dot.startswith("bf16") else torch.float32  # of every stored intermediate
    Tm = torch.empty(NC, H, C, C, device=k.device, dtype=torch.float32)
    U = torch.empty(v.shape, device=k.device, dtype=sdt)
    W = torch.empty(k.shape, device=k.device, dtype=sdt)
    if NC:
        BKT, BVT = _tiles(K, V)
        _prep_fwd[(NC, H)](k, v, beta, beta if G is None else G, Tm, U, W, plan.cstart, plan.cend, H=H, K=K, V=V,
                           C=C, BS=UT_BLOCK, BKT=BKT, BVT=BVT, HAS_G=G is not None, PREC="tf32" if dot.startswith("bf16") else dot,
                           DOT=dot)
    return Tm, U, W


class _ChunkFn(torch.autograd.Function):
    """delta_rule by the fused chunk kernels, forward and backward (see the module docstring), on
    packed sequences: q, k ``[rows, H, K]``, v ``[rows, H, V]``, beta and g ``[rows, H]``, h0
    ``[n_seqs, H, K, V]`` fp32, ``plan`` a ChunkPlan. Returns o ``[rows, H, V]`` in q's dtype and
    the final states ``[n_seqs, H, K, V]`` in fp32.

    Saved for the backward: the inputs, the chunk-layout G, Tm, U, W, the written values u and
    the entering states (fp32; nothing is recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, plan):
        _, H, K = q.shape
        V = v.shape[-1]
        C, NC = CHUNK, plan.n_chunks
        q, k, v, beta, h0 = (x.contiguous() for x in (q, k, v, beta, h0))
        G = _chunk_gates(g, plan)
        f32 = dict(device=q.device, dtype=torch.float32)
        BKT, BVT = _tiles(K, V)
        BK, BV = _blocks(K, V, _dot_mode(q).startswith("bf16"))
        dims = dict(H=H, K=K, V=V, C=C, HAS_G=g is not None, PREC=_precision(q), DOT=_dot_mode(q))
        Gp = beta if G is None else G  # a placeholder pointer without gates (never read)
        Tm, U, W = _prepare(k, v, beta, G, plan, _dot_mode(q))
        sdt = dict(device=q.device, dtype=U.dtype)  # the stored intermediates' dtype (see _prepare)
        u = torch.empty(v.shape, **sdt)
        o = torch.empty(v.shape, device=q.device, dtype=q.dtype)  # stored once, in the inputs' dtype
        S_in = torch.empty(NC, H, K, V, **sdt)
        S_T = torch.empty(plan.n_seqs, H, K, V, **f32)
        _h_fwd[(triton.cdiv(V, BV), plan.n_seqs * H)](k, Gp, U, W, u, h0, S_in, S_T, plan.cstart, plan.cend,
                                                      plan.coff, BK=BK, BV=BV, **dims)
        if NC:
            _o_fwd[(triton.cdiv(V, BVT), NC, H)](q, k, Gp, u, S_in, o, plan.cstart, plan.cend, scale, BKT=BKT,
                                                 BVT=BVT, **dims)
        ctx.save_for_backward(q, k, v, beta, G, Tm, U, W, u, S_in)
        ctx.meta = scale, plan, g is not None, None if g is None else g.dtype
        return o, S_T

    @staticmethod
    def backward(ctx, do, dS_T):
        q, k, v, beta, G, Tm, U, W, u, S_in = ctx.saved_tensors
        scale, plan, gated, g_dtype = ctx.meta
        _, H, K = q.shape
        V = v.shape[-1]
        C, NC = CHUNK, plan.n_chunks
        f32 = dict(device=q.device, dtype=torch.float32)
        BKT, BVT = _tiles(K, V)
        BK, BV = _blocks(K, V, _dot_mode(q).startswith("bf16"))
        NK = triton.cdiv(K, BKT)
        dims = dict(H=H, K=K, V=V, C=C, HAS_G=gated, PREC=_precision(q), DOT=_dot_mode(q))
        Gp = beta if G is None else G
        do = torch.zeros(v.shape, **f32) if do is None else do.contiguous()  # read in fp32 by the kernels
        dS_T = None if dS_T is None else dS_T.float().contiguous()
        du = torch.empty(v.shape, **f32)
        dH = torch.empty_like(S_in)
        dS0 = torch.empty(plan.n_seqs, H, K, V, **f32)
        dq, dk, dW = (torch.empty(k.shape, **f32) for _ in range(3))
        dv = torch.empty(v.shape, **f32)
        dbeta = torch.empty(beta.shape, **f32)
        dgr = torch.empty(NC * C, H, NK, **f32) if gated else dq
        dgc = torch.empty(NC, H, NK, **f32) if gated else dq
        dgw = torch.empty(NC * C, H, **f32) if gated else dq
        if NC:
            _du_local[(triton.cdiv(V, BVT), NC, H)](q, k, Gp, do, du, plan.cstart, plan.cend, scale, BKT=BKT,
                                                    BVT=BVT, **dims)
        _h_bwd[(triton.cdiv(V, BV), plan.n_seqs * H)](
            q, k, Gp, W, do, du, du if dS_T is None else dS_T, dH, dS0, plan.cstart, plan.cend, plan.coff, scale,
            BK=BK, BV=BV, HAS_DSF=dS_T is not None, **dims)
        if NC:
            _bwd_chunk[(NK, NC, H)](q, k, Gp, u, du, do, S_in, dH, dq, dk, dW, dgr, dgc, plan.cstart, plan.cend,
                                    scale, NK, BKT=BKT, BVT=BVT, **dims)
            _bwd_wy[(NC, H)](k, v, beta, Gp, Tm, U, W, du, dW, dk, dv, dbeta, dgw, plan.cstart, plan.cend, BKT=BKT,
                             BVT=BVT, **dims)
        dg = None
        if gated:
            dG = (dgw + dgr.sum(-1)).view(NC, C, H)
            dG[:, -1] += dgc.sum(-1)
            # G is the chunk-local cumulative sum of g: g_t's gradient sums dG over the chunk's steps >= t
            dG = dG.flip(1).cumsum(1).flip(1)
            rows, valid = plan.chunk_rows
            dg = torch.zeros(beta.shape, **f32)
            dg[rows[valid]] = dG[valid]
            dg = dg.to(g_dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta.to(beta.dtype), dg, dS0, None, None)


def delta_rule_triton_packed(q, k, v, beta, g, scale, initial_state, offsets):
    """The fused chunk kernels on packed sequences: q, k ``[B, T, H, K]`` etc. with ``offsets``
    the packed sequence boundaries along ``B*T`` (``(0, T, 2T, ...)`` for a batch; ``cu_seqlens``
    for varlen, B = 1). Returns ``(o [B, T, H, V] in q's dtype, final states [n_seqs, H, K, V] fp32)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = chunk_plan(tuple(offsets), q.device, CHUNK)
    if initial_state is None:
        initial_state = q.new_zeros(plan.n_seqs, H, K, V, dtype=torch.float32)
    o, S = _ChunkFn.apply(q.reshape(B * T, H, K), k.reshape(B * T, H, K), v.reshape(B * T, H, V),
                          beta.reshape(B * T, H), None if g is None else g.reshape(B * T, H),
                          initial_state.float(), float(scale), plan)
    return o.view(B, T, H, V), S


def delta_rule_triton(q, k, v, beta, g, scale, initial_state, cu_seqlens=None, *, mode: str = "auto"):
    """delta_rule through Triton: the fused recurrent kernel when T <= ``RECURRENT_MAX_T``
    (``mode="auto"``, equal-length batches only) or ``mode="recurrent"``, else the fused chunk
    kernels (``mode="chunk"``), which take packed sequences (``cu_seqlens``) in one launch each.
    Arguments as ``delta_rule`` (validated there); returns ``(o, final_state)`` (o in q's dtype
    from the chunk kernels, fp32 from the recurrent one; states fp32)."""
    if mode not in ("auto", "chunk", "recurrent"):
        raise ValueError(f"mode={mode!r} is not one of ('auto', 'chunk', 'recurrent')")
    check_triton_inputs(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports K, V <= {MAX_HEAD_DIM}, got K={K}, V={V}")
    if mode == "recurrent" or (mode == "auto" and T <= RECURRENT_MAX_T and cu_seqlens is None):
        if cu_seqlens is not None:
            return run_packed(_recurrent, cu_seqlens, (q, k, v, beta, g), initial_state, scale)
        return _recurrent(q, k, v, beta, g, scale, initial_state)
    offsets = _batch_offsets(B, T) if cu_seqlens is None else cu_seqlens.tolist()
    return delta_rule_triton_packed(q, k, v, beta, g, scale, initial_state, offsets)


def _batch_offsets(B: int, T: int) -> list[int]:
    """A batch of B sequences of T steps as packed offsets."""
    return [b * T for b in range(B + 1)]


def _recurrent(q, k, v, beta, g, scale, initial_state):
    if initial_state is None:
        B, _, H, K = q.shape
        initial_state = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    return _RecurrentFn.apply(q, k, v, beta, g, initial_state.float(), float(scale))
