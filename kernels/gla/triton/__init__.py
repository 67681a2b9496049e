"""Triton kernels for gla: chunked forward and backward, and a fused recurrent forward.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t

Layout. Every call is flattened to packed sequences: ``[B, T, H, D]`` becomes ``[B*T, H, D]``
with offsets ``[0, T, 2T, ...]`` (or the caller's ``cu_seqlens``), so one set of kernels serves
batches and varlen alike. Sequences are cut into chunks of ``BT = 64`` steps starting at each
sequence's first token; host-side tables list every chunk's first and one-past-last row, so a
kernel program handles one chunk of one head (one program per sequence and chunk), and empty
sequences own no chunk.

Forward (chunked), with G the chunk-local cumulative log gate (``G_i = g_1 + .. + g_i``):

1. ``_chunk_cumsum``: G for every chunk.
2. ``_fwd_h`` (one program per sequence, head and [BK, BV] tile): the state entering every chunk,
   ``S_{n+1} = exp(G_C) * S_n + (k * exp(G_C - G))^T v``, written to ``h [n_chunks, H, K, V]``
   (fp32 for fp32 inputs; in the input dtype for bf16/fp16, as FLA does: the chunk states are
   the largest intermediate); the final state is always fp32.
3. ``_fwd_A``: the intra-chunk scores ``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)`` for i >= j, in
   sub-blocks of ``BC = 16`` rows. Off-diagonal sub-blocks factor through a reference row r that
   lies between the query and the key rows (the last row of the key sub-block):
   ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``, both factors <= 1, so the product is a
   tensor-core matmul and nothing can overflow however strong the decay. Diagonal sub-blocks of
   a per-key gate are summed exactly, one key row at a time. No gate or a scalar gate needs
   none of this: ``_fwd_A_full`` takes a whole chunk as one [BT, BT] matmul times the masked
   decay matrix (and the backward's intra part is two [BT, BT] matmuls in ``_bwd_dqk_inter``).
4. ``_fwd_o``: ``o = scale * ((q * exp(G)) h_n + A v)``; for no gate or a scalar gate it forms
   A itself from the q and k tiles it loads (step 3 is then skipped in the forward).

Backward (chunked). Kept from the forward: only the inputs (q, k, v, g, initial state) and the
final state; the chunk states ``h`` and the scores ``A`` are recomputed (one pass each over the
inputs, cheaper than storing ``[n_chunks, H, K, V]`` and ``[T, H, 64]`` fp32 tensors between
forward and backward).

5. ``_bwd_dh``: the reverse state pass, ``dS_n = exp(G_C) dS_{n+1} + scale (q exp(G))^T do``,
   storing the gradient of the state leaving every chunk; its end is d(initial_state).
6. ``_bwd_dA``: ``dA = scale * do v^T`` (causal).  7. ``_bwd_dv``: ``dv = scale A^T do +
   (k exp(G_C - G)) dS``.  8. ``_bwd_dqk_intra`` / ``_bwd_dqk_inter``: dq and dk from dA with the
   same sub-block factorisation, plus the state terms ``scale exp(G) (do h^T)`` and
   ``exp(G_C - G) (v dS^T)``.
9. dg (in PyTorch, elementwise): with L the cumulative gate over the whole sequence, every term
   depends on L through ``exp(L_t - L_s)`` attached to a query q_t (or the final state) and a key
   k_s (or the initial state), so ``dL_t = q_t dq_t - k_t dk_t`` (+ ``sum_v S_T dS_T`` at the
   last step), and ``dg`` is its reverse cumulative sum within each sequence.

The fused recurrent kernel (``_fwd_recurrent``) runs the loop over time in registers, one
program per sequence, head and V tile; ``mode="auto"`` takes it when the longest sequence has at
most ``RECURRENT_MAX_T`` steps (decoding, short prompts). Its backward is the chunked one.

Precision: accumulation in fp32; matmuls as ``tf32x3`` (about fp32 accuracy) for fp32 inputs. For bf16/fp16
inputs the products with the chunk states (and their gradients) take operands in the input dtype,
the others TF32. Offsets are int64, so T * H * K may pass 2^31.
"""

from __future__ import annotations

import torch

from ..._triton import HAS_TRITON, autotune_configs, check_triton_inputs, interpreting, next_pow2
from ..._triton.plan import ChunkPlan, chunk_plan

BT = 64  # chunk length
BC = 16  # sub-block length inside a chunk (tl.dot needs >= 16 on each side)
RECURRENT_MAX_T = 64  # mode="auto" runs the fused recurrent kernel up to this sequence length
MAX_HEAD_DIM = 256

__all__ = ["BT", "RECURRENT_MAX_T", "gla_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    # 8 warps first (the one used untuned); 2 warps spilled in every kernel on sm_90 and 4 warps
    # in several at K = V = 128 (scripts/sm90_check.py)
    _WARPS = [{"num_warps": 8, "num_stages": 2}, {"num_warps": 4, "num_stages": 2},
              {"num_warps": 4, "num_stages": 3}]

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
    def _load_block(x, rows, rmask, cols, cmask, i_h, H: tl.constexpr, D: tl.constexpr):
        """The [rows, cols] block of head ``i_h`` of a packed ``[N, H, D]`` tensor, in fp32 (0 outside
        the masks)."""
        return tl.load(x + (rows[:, None] * H + i_h) * D + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                       other=0.0).to(tl.float32)

    @triton.jit
    def _chunk_rows(cstart, cend, i_t, BT: tl.constexpr):
        """Chunk ``i_t``'s rows: its first and one-past-last row, the offsets 0..BT-1, the rows and
        their validity mask."""
        s = tl.load(cstart + i_t).to(tl.int64)
        e = tl.load(cend + i_t).to(tl.int64)
        ar = tl.arange(0, BT)
        rows = s + ar
        return s, e, ar, rows, rows < e

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
        cols_k = i_k * BK + tl.arange(0, BK)
        cols_v = i_v * BV + tl.arange(0, BV)
        km, vm = cols_k < K, cols_v < V
        tile = cols_k[:, None] * V + cols_v[None, :]
        tm = km[:, None] & vm[None, :]
        return i_n, i_h, bos, eos, c0, nc, cols_k, cols_v, km, vm, tile, tm

    @triton.jit
    def _chunk_cumsum(g, gc, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, GATE: tl.constexpr):
        i_t, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        s, e, _, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        if GATE == 2:
            cols = i_k * BK + tl.arange(0, BK)
            m = rm[:, None] & (cols[None, :] < K)
            off = (rows[:, None] * H + i_h) * K + cols[None, :]
            x = tl.load(g + off, mask=m, other=0.0).to(tl.float32)
            tl.store(gc + off, tl.cumsum(x, axis=0), mask=m)
        else:
            off = rows * H + i_h
            x = tl.load(g + off, mask=rm, other=0.0).to(tl.float32)
            tl.store(gc + off, tl.cumsum(x, axis=0), mask=rm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
    @triton.jit
    def _fwd_h(k, v, gc, h0, hbuf, ht, cu, coff, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
               HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
        i_n, i_h, bos, eos, c0, nc, cols_k, cols_v, km, vm, tile, tm = _state_program(
            cu, coff, H, K, V, BT, BK, BV)
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            S += tl.load(h0 + (i_n * H + i_h) * K * V + tile, mask=tm, other=0.0).to(tl.float32)
        for c in range(0, nc):
            tl.store(hbuf + ((c0 + c) * H + i_h) * K * V + tile, S.to(hbuf.dtype.element_ty), mask=tm)
            rows = bos + c * BT + tl.arange(0, BT)
            rm = rows < eos
            kb = _load_block(k, rows, rm, cols_k, km, i_h, H, K)
            vb = _load_block(v, rows, rm, cols_v, vm, i_h, H, V)
            if GATE == 0:
                S += tl.dot(tl.trans(kb), vb, input_precision=PREC)
            else:
                last = tl.minimum(bos + c * BT + BT, eos) - 1
                G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
                Gl = _load_G_row(gc, last, last + 1, cols_k, km, i_h, H, K, GATE)
                kd = kb * tl.exp(tl.where(rm[:, None], Gl[None, :] - G, float("-inf")))
                S = S * tl.exp(Gl)[:, None] + tl.dot(tl.trans(kd), vb, input_precision=PREC)
        if STORE_HT:
            tl.store(ht + (i_n * H + i_h) * K * V + tile, S, mask=tm)

    @triton.jit
    def _fwd_A(q, k, gc, A, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
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
            cols = i_k * BK + tl.arange(0, BK)
            km = cols < K
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
    def _fwd_A_full(q, k, gc, A, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
        """Scores of a whole chunk at once for no gate or a scalar gate: one [BT, BT] matmul per K
        tile, then the exact decay exp(G_i - G_j), masked to i >= j before the exp."""
        i_t, i_h = tl.program_id(0), tl.program_id(1)
        s, e, ar, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        acc = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(K, BK)):
            cols = i_k * BK + tl.arange(0, BK)
            km = cols < K
            qb = _load_block(q, rows, rm, cols, km, i_h, H, K)
            kb = _load_block(k, rows, rm, cols, km, i_h, H, K)
            acc += tl.dot(qb, tl.trans(kb), input_precision=PREC)
        ok = (ar[:, None] >= ar[None, :]) & rm[:, None] & rm[None, :]
        if GATE == 1:
            G = tl.load(gc + rows * H + i_h, mask=rm, other=0.0)
            acc = acc * tl.exp(tl.where(ok, G[:, None] - G[None, :], float("-inf")))
        acc = tl.where(ok, acc, 0.0)
        tl.store(A + (rows[:, None] * H + i_h) * BT + ar[None, :], acc, mask=rm[:, None] & rm[None, :])

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
    @triton.jit
    def _fwd_o(q, k, v, gc, hbuf, A, o, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
               HALF: tl.constexpr, FUSE_A: tl.constexpr):
        """``o = scale ((q exp(G)) h + A v)``. ``FUSE_A`` (no gate or a scalar gate): the scores are
        formed here from the same q tiles, ``A = (q k^T) exp(G_i - G_j)`` masked to i >= j, instead
        of being read from ``A`` (which then is unused): a [BT, BT] fp32 tile per chunk and head
        neither written nor read back."""
        i_t, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        s, e, ar, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        cols_v = i_v * BV + tl.arange(0, BV)
        vm = cols_v < V
        acc = tl.zeros([BT, BV], dtype=tl.float32)
        qk = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(K, BK)):
            cols_k = i_k * BK + tl.arange(0, BK)
            km = cols_k < K
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
            ok = (ar[:, None] >= ar[None, :]) & rm[:, None] & rm[None, :]
            if GATE == 1:
                Gs = tl.load(gc + rows * H + i_h, mask=rm, other=0.0)
                qk = qk * tl.exp(tl.where(ok, Gs[:, None] - Gs[None, :], float("-inf")))
            Ab = tl.where(ok, qk, 0.0)
        else:
            Ab = tl.load(A + (rows[:, None] * H + i_h) * BT + ar[None, :], mask=rm[:, None] & (s + ar < e)[None, :],
                         other=0.0)
        vb = _load_block(v, rows, rm, cols_v, vm, i_h, H, V)
        acc += tl.dot(Ab, vb, input_precision=PREC)
        tl.store(o + (rows[:, None] * H + i_h) * V + cols_v[None, :], (acc * scale).to(o.dtype.element_ty),
                 mask=rm[:, None] & vm[None, :])

    @triton.jit
    def _fwd_recurrent(q, k, v, g, h0, o, ht, cu, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr,
                       STORE_HT: tl.constexpr):
        i_v, i_nh = tl.program_id(0), tl.program_id(1)
        i_n, i_h = i_nh // H, i_nh % H
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
        cols_k = tl.arange(0, BK)
        cols_v = i_v * BV + tl.arange(0, BV)
        km, vm = cols_k < K, cols_v < V
        tile = cols_k[:, None] * V + cols_v[None, :]
        tm = km[:, None] & vm[None, :]
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            S += tl.load(h0 + (i_n * H + i_h) * K * V + tile, mask=tm, other=0.0).to(tl.float32)
        for t in range(bos, eos):
            qt = tl.load(q + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
            kt = tl.load(k + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
            vt = tl.load(v + (t * H + i_h) * V + cols_v, mask=vm, other=0.0).to(tl.float32)
            if GATE == 2:
                gt = tl.load(g + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
                S = S * tl.exp(gt)[:, None]
            elif GATE == 1:
                S = S * tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
            S += kt[:, None] * vt[None, :]
            ot = tl.sum(S * qt[:, None], axis=0) * scale
            tl.store(o + (t * H + i_h) * V + cols_v, ot.to(o.dtype.element_ty), mask=vm)
        if STORE_HT:
            tl.store(ht + (i_n * H + i_h) * K * V + tile, S, mask=tm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
    @triton.jit
    def _bwd_dh(q, do, gc, dht, dh0, dhbuf, cu, coff, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
        i_n, i_h, bos, eos, c0, nc, cols_k, cols_v, km, vm, tile, tm = _state_program(
            cu, coff, H, K, V, BT, BK, BV)
        dS = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_DHT:
            dS += tl.load(dht + (i_n * H + i_h) * K * V + tile, mask=tm, other=0.0).to(tl.float32)
        for ci in range(0, nc):
            c = nc - 1 - ci
            tl.store(dhbuf + ((c0 + c) * H + i_h) * K * V + tile, dS.to(dhbuf.dtype.element_ty), mask=tm)  # leaving c
            rows = bos + c * BT + tl.arange(0, BT)
            rm = rows < eos
            qb = _load_block(q, rows, rm, cols_k, km, i_h, H, K)
            dob = _load_block(do, rows, rm, cols_v, vm, i_h, H, V)
            if GATE == 0:
                dS += tl.dot(tl.trans(qb * scale), dob, input_precision=PREC)
            else:
                last = tl.minimum(bos + c * BT + BT, eos) - 1
                G = _load_G(gc, rows, rm, cols_k, km, i_h, H, K, GATE, BT)
                Gl = _load_G_row(gc, last, last + 1, cols_k, km, i_h, H, K, GATE)
                qd = qb * (tl.exp(tl.where(rm[:, None], G, float("-inf"))) * scale)
                dS = dS * tl.exp(Gl)[:, None] + tl.dot(tl.trans(qd), dob, input_precision=PREC)
        if STORE_DH0:
            tl.store(dh0 + (i_n * H + i_h) * K * V + tile, dS, mask=tm)

    @triton.jit
    def _bwd_dA(do, v, dA, cstart, cend, scale, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BV: tl.constexpr, PREC: tl.constexpr):
        i_t, i_h = tl.program_id(0), tl.program_id(1)
        s, e, ar, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        acc = tl.zeros([BT, BT], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(V, BV)):
            cols = i_v * BV + tl.arange(0, BV)
            m = rm[:, None] & (cols < V)[None, :]
            dob = tl.load(do + (rows[:, None] * H + i_h) * V + cols[None, :], mask=m, other=0.0).to(tl.float32)
            vb = tl.load(v + (rows[:, None] * H + i_h) * V + cols[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.dot(dob, tl.trans(vb), input_precision=PREC)
        acc = tl.where(ar[:, None] >= ar[None, :], acc * scale, 0.0)
        tl.store(dA + (rows[:, None] * H + i_h) * BT + ar[None, :], acc, mask=rm[:, None] & (rows < e)[None, :])

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"])
    @triton.jit
    def _bwd_dv(k, do, gc, A, dhbuf, dv, cstart, cend, scale, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                PREC: tl.constexpr, HALF: tl.constexpr):
        i_t, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        s, e, ar, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        cols_v = i_v * BV + tl.arange(0, BV)
        vm = cols_v < V
        Ab = tl.load(A + (rows[:, None] * H + i_h) * BT + ar[None, :], mask=rm[:, None] & rm[None, :], other=0.0)
        dob = _load_block(do, rows, rm, cols_v, vm, i_h, H, V)
        acc = tl.dot(tl.trans(Ab), dob, input_precision=PREC) * scale
        last = tl.minimum(s + BT, e) - 1
        for i_k in range(0, tl.cdiv(K, BK)):
            cols_k = i_k * BK + tl.arange(0, BK)
            km = cols_k < K
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
    def _bwd_dqk_intra(q, k, gc, dA, dq, dk, cstart, cend, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
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
        cols = i_k * BK + tl.arange(0, BK)
        km = cols < K
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

    # restore_value: with per-key gates this kernel adds to the dq/dk that _bwd_dqk_intra wrote,
    # so autotuning (which runs it several times on the real buffers) must restore them.
    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "GATE"], restore_value=["dq", "dk"])
    @triton.jit
    def _bwd_dqk_inter(q, k, v, do, gc, hbuf, dhbuf, dA, dq, dk, cstart, cend, scale, H: tl.constexpr,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       GATE: tl.constexpr, FULL_INTRA: tl.constexpr, PREC: tl.constexpr, HALF: tl.constexpr):
        i_t, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        s, e, _, rows, rm = _chunk_rows(cstart, cend, i_t, BT)
        cols_k = i_k * BK + tl.arange(0, BK)
        km = cols_k < K
        dq_acc = tl.zeros([BT, BK], dtype=tl.float32)
        dk_acc = tl.zeros([BT, BK], dtype=tl.float32)
        base = (i_t.to(tl.int64) * H + i_h) * K * V
        for i_v in range(0, tl.cdiv(V, BV)):
            cols_v = i_v * BV + tl.arange(0, BV)
            vm = cols_v < V
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
            if GATE == 1:
                g1 = tl.load(gc + rows * H + i_h, mask=rm, other=0.0)
                ok = (ar[:, None] >= ar[None, :]) & rm[:, None] & rm[None, :]
                dAb = dAb * tl.exp(tl.where(ok, g1[:, None] - g1[None, :], float("-inf")))
            qb = _load_block(q, rows, rm, cols_k, km, i_h, H, K)
            kb = _load_block(k, rows, rm, cols_k, km, i_h, H, K)
            dq_acc += tl.dot(dAb, kb, input_precision=PREC)
            dk_acc += tl.dot(tl.trans(dAb), qb, input_precision=PREC)
            tl.store(dq + off, dq_acc, mask=m)
            tl.store(dk + off, dk_acc, mask=m)
        else:
            tl.store(dq + off, tl.load(dq + off, mask=m, other=0.0) + dq_acc, mask=m)
            tl.store(dk + off, tl.load(dk + off, mask=m, other=0.0) + dk_acc, mask=m)


def _plan(offsets: tuple[int, ...], device: torch.device) -> ChunkPlan:
    return chunk_plan(offsets, device, BT)


def _gate_kind(g: torch.Tensor | None) -> int:
    return 0 if g is None else (2 if g.dim() == 3 else 1)  # flattened: [N, H, K] per-key, [N, H] scalar


def _blocks(K: int, V: int) -> tuple[int, int]:
    return max(16, min(64, next_pow2(K))), max(16, min(64, next_pow2(V)))


def _cumsum(g, plan, H, K, GATE):
    gc = torch.empty(g.shape, device=g.device, dtype=torch.float32)
    BK = max(16, min(64, next_pow2(K)))
    grid = (plan.n_chunks, H, triton.cdiv(K, BK) if GATE == 2 else 1)
    _chunk_cumsum[grid](g, gc, plan.cstart, plan.cend, H=H, K=K, BT=BT, BK=BK, GATE=GATE)
    return gc


def _states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht):
    """The state entering every chunk [n_chunks, H, K, V] and the final states [N, H, K, V]."""
    BK, BV = _blocks(K, V)
    # bf16/fp16 inputs keep the chunk states in their own dtype: half the traffic of the largest
    # intermediate (K V values per chunk and head) and bf16 tensor-core products with q, k, v, do.
    hdt = k.dtype if k.dtype in (torch.bfloat16, torch.float16) else torch.float32
    hbuf = torch.empty(max(plan.n_chunks, 1), H, K, V, device=k.device, dtype=hdt)
    ht = torch.empty(plan.n_seqs, H, K, V, device=k.device, dtype=torch.float32) if want_ht else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), plan.n_seqs * H)
    _fwd_h[grid](k, v, gc if gc is not None else k, h0 if h0 is not None else k, hbuf,
                 ht if ht is not None else hbuf, plan.cu, plan.coff, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                 GATE=GATE, HAS_H0=h0 is not None, STORE_HT=want_ht, PREC=prec)
    return hbuf, ht


def _precision(q: torch.Tensor) -> str:
    """``tl.dot`` input precision: TF32 for bf16/fp16 inputs (exact for their values, not for the
    fp32 decayed operands); ``tf32x3`` (three TF32 products, about fp32 accuracy) for fp32 inputs.
    Not "ieee": on sm_90 that lowers [64, 64] tiles to scalar FMAs with heavy register spills
    (scripts/sm90_check.py), slow to compile and to run."""
    return "tf32x3" if q.dtype == torch.float32 else "tf32"


def _half_states(hbuf: torch.Tensor) -> bool:
    """Products with the chunk states take half-precision operands (see ``_sdot``)."""
    return hbuf.dtype != torch.float32 and not interpreting()


def _scores(q, k, gc, plan, H, K, GATE, prec):
    """The causal intra-chunk scores A [rows, H, BT] (fp32, zero above the diagonal)."""
    BK = max(16, min(64, next_pow2(K)))
    if GATE != 2:  # no gate or a scalar gate: whole chunks (every entry read later is written)
        A = torch.empty(q.shape[0], H, BT, device=q.device, dtype=torch.float32)
        _fwd_A_full[(plan.n_chunks, H)](q, k, gc if gc is not None else q, A, plan.cstart, plan.cend, H=H, K=K,
                                        BT=BT, BK=BK, GATE=GATE, PREC=prec)
        return A
    A = torch.zeros(q.shape[0], H, BT, device=q.device, dtype=torch.float32)  # upper blocks never written
    grid = (plan.n_chunks, (BT // BC) ** 2, H)
    _fwd_A[grid](q, k, gc, A, plan.cstart, plan.cend, H=H, K=K, BT=BT, BC=BC, BK=BK, GATE=GATE, PREC=prec)
    return A


def _forward(q, k, v, g, h0, scale, plan, want_ht, mode):
    """q, k [N, H, K]; v [N, H, V]; g None, [N, H] or [N, H, K]; h0 [S, H, K, V] or None."""
    N, H, K = q.shape
    V = v.shape[-1]
    GATE = _gate_kind(g)
    prec = _precision(q)
    o = torch.empty(N, H, V, device=q.device, dtype=q.dtype)
    if mode == "recurrent":
        BK, BV = next_pow2(max(K, 16)), max(16, min(32, next_pow2(V)))
        ht = torch.empty(plan.n_seqs, H, K, V, device=q.device, dtype=torch.float32) if want_ht else None
        _fwd_recurrent[(triton.cdiv(V, BV), plan.n_seqs * H)](
            q, k, v, g if g is not None else q, h0 if h0 is not None else q, o, ht if ht is not None else o,
            plan.cu, scale, H=H, K=K, V=V, BK=BK, BV=BV, GATE=GATE, HAS_H0=h0 is not None, STORE_HT=want_ht)
        return o, ht
    gc = _cumsum(g, plan, H, K, GATE) if GATE else None
    hbuf, ht = _states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht)
    if plan.n_chunks:
        fuse = GATE != 2  # per-key gates need the sub-block factorisation of _fwd_A
        A = q if fuse else _scores(q, k, gc, plan, H, K, GATE, prec)
        BK, BV = _blocks(K, V)
        _fwd_o[(plan.n_chunks, triton.cdiv(V, BV), H)](
            q, k, v, gc if gc is not None else q, hbuf, A, o, plan.cstart, plan.cend, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, PREC=prec, HALF=_half_states(hbuf), FUSE_A=fuse)
    return o, ht


def _backward(q, k, v, g, h0, ht, do, dht, scale, plan):
    N, H, K = q.shape
    V = v.shape[-1]
    GATE = _gate_kind(g)
    prec = _precision(q)
    BK, BV = _blocks(K, V)
    gc = _cumsum(g, plan, H, K, GATE) if GATE else None
    gcp = gc if gc is not None else q
    hbuf, _ = _states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht=False)  # recomputed, not stored
    A = _scores(q, k, gc, plan, H, K, GATE, prec) if plan.n_chunks else None  # recomputed, not stored
    dhbuf = torch.empty_like(hbuf)
    dh0 = torch.empty(plan.n_seqs, H, K, V, device=q.device, dtype=torch.float32) if h0 is not None else None
    _bwd_dh[(triton.cdiv(K, BK), triton.cdiv(V, BV), plan.n_seqs * H)](
        q, do, gcp, dht if dht is not None else do, dh0 if dh0 is not None else dhbuf, dhbuf, plan.cu, plan.coff,
        scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None, PREC=prec)
    dq = torch.zeros(N, H, K, device=q.device, dtype=torch.float32)
    dk = torch.zeros(N, H, K, device=q.device, dtype=torch.float32)
    dv = torch.zeros(N, H, V, device=q.device, dtype=torch.float32)
    if plan.n_chunks:
        dA = torch.zeros(N, H, BT, device=q.device, dtype=torch.float32)
        _bwd_dA[(plan.n_chunks, H)](do, v, dA, plan.cstart, plan.cend, scale, H=H, V=V, BT=BT, BV=BV, PREC=prec)
        _bwd_dv[(plan.n_chunks, triton.cdiv(V, BV), H)](
            k, do, gcp, A, dhbuf, dv, plan.cstart, plan.cend, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            GATE=GATE, PREC=prec, HALF=_half_states(hbuf))
        if GATE == 2:  # per-key gates: the intra-chunk part in sub-blocks (see _fwd_A)
            _bwd_dqk_intra[(triton.cdiv(K, BK), plan.n_chunks * (BT // BC), H)](
                q, k, gcp, dA, dq, dk, plan.cstart, plan.cend, H=H, K=K, BT=BT, BC=BC, BK=BK, GATE=GATE, PREC=prec)
        _bwd_dqk_inter[(plan.n_chunks, triton.cdiv(K, BK), H)](
            q, k, v, do, gcp, hbuf, dhbuf, dA, dq, dk, plan.cstart, plan.cend, scale, H=H, K=K, V=V, BT=BT, BK=BK,
            BV=BV, GATE=GATE, FULL_INTRA=GATE != 2, PREC=prec, HALF=_half_states(hbuf))
    dg = None
    if GATE:
        dL = q.float() * dq - k.float() * dk  # [N, H, K]: d/dL_t of the cumulative gate
        if dht is not None and ht is not None and plan.last_rows:
            rows = torch.tensor(plan.last_rows, device=q.device)
            seqs = torch.tensor(plan.nonempty, device=q.device)
            dL[rows] += (ht[seqs] * dht[seqs].float()).sum(-1)
        if GATE == 1:
            dL = dL.sum(-1)  # [N, H]
        # reverse cumulative sum within each sequence: total suffix minus the suffix of the next sequence
        suffix = dL.flip(0).cumsum(0).flip(0)
        nxt = plan.cu[1:][plan.seq_of_row]  # first row of the next sequence, per row
        tail = torch.cat([suffix, torch.zeros_like(suffix[:1])])[nxt]
        dg = suffix - tail
    return dq, dk, dv, dg, dh0


class _GLATritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, plan, output_final_state, mode):
        o, ht = _forward(q, k, v, g, h0, scale, plan, want_ht=output_final_state, mode=mode)
        ctx.save_for_backward(q, k, v, g, h0, ht)
        ctx.scale, ctx.plan = scale, plan
        return o, (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = _backward(q, k, v, g, h0, ht, do.contiguous(),
                                        None if dht is None else dht.contiguous(), ctx.scale, ctx.plan)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None if dg is None else dg.to(g.dtype),
                None if dh0 is None else dh0.to(h0.dtype), None, None, None, None)


def gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
    *,
    mode: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """gla through the Triton kernels. Inputs as validated by ``postformer.kernels.gla``.

    q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g None, ``[B, T, H]`` or ``[B, T, H, K]``;
    initial_state ``[B or N, H, K, V]``. ``mode``: ``"chunk"``, ``"recurrent"`` or ``"auto"``
    (recurrent when the longest sequence has at most ``RECURRENT_MAX_T`` steps). Returns
    ``(o [B, T, H, V] in q's dtype, final state fp32 or None)``.
    """
    if mode not in ("auto", "chunk", "recurrent"):
        raise ValueError(f"mode={mode!r} is not one of ('auto', 'chunk', 'recurrent')")
    check_triton_inputs(q=q, k=k, v=v, g=g, initial_state=initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports K, V <= {MAX_HEAD_DIM}, got K={K}, V={V}")
    offsets = cu_seqlens.tolist() if cu_seqlens is not None else [b * T for b in range(B + 1)]
    plan = _plan(tuple(offsets), q.device)
    if mode == "auto":
        mode = "recurrent" if plan.max_len <= RECURRENT_MAX_T else "chunk"
    dtype = q.dtype
    q, k, v = (x.reshape(B * T, H, x.shape[-1]).to(dtype).contiguous() for x in (q, k, v))
    if g is not None:
        g = g.reshape(B * T, *g.shape[2:]).float().contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht = _GLATritonFn.apply(q, k, v, g, h0, float(scale), plan, output_final_state, mode)
    return o.reshape(B, T, H, V), ht
