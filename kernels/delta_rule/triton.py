"""Triton path of delta_rule: the chunk form (``chunk.py``, WY/UT representation) with its
intra-chunk triangular solve and its chunk-to-chunk state pass as Triton kernels.

UT solve (``_ut_fwd``, ``solve_unit_lower_triton``; passed to ``delta_rule_chunk`` as ``solve``).
The chunk form builds, for every chunk at once in PyTorch (float32 even for bf16/fp16 inputs),
``A_ij = beta_i (k_i . k_j) exp(G_i - G_j)`` (i > j; the exponent is masked to -inf above the
diagonal before exp, so strong decay underflows to 0 and never overflows) and the right-hand side
``R = [beta v | beta exp(G) k]``. One kernel program per (chunk, batch*head) then computes, in
fp32, ``Tm = (I + A)^{-1}`` by 16 x 16 blocks (C <= 64; padded rows are masked and invert to the
identity):

- the four diagonal blocks by forward substitution, one masked vector update per row;
- the off-diagonal blocks as ``Tm_ij = -Tm_ii sum_{j<=k<i} A_ik Tm_kj`` (``tl.dot``, "ieee");
- ``UW = Tm R`` in [C, 64] column tiles, stored float32 ``[B, H, N, C, V + K]`` with Tm
  ``[B, H, N, C, C]``.

Only A's strictly lower triangle is read, as in ``solve_triangular(..., unitriangular=True)``.
The backward is PyTorch, batched over all chunks: ``dR = Tm^T dUW`` and ``dA = -tril(dR UW^T, -1)``
(``dTm = dUW R^T``, ``dA = -Tm^T dTm Tm^T``); autograd chains dA and dR to k, beta, v and g
through the chunk form's PyTorch. ``ut_inverse_triton`` exposes the inverse alone (same kernel).

State pass (``_state_fwd`` / ``_state_bwd``): the one sequential part of the chunk form,

    S_{n+1} = a_n S_n + R_n - KW_n S_n          (a_n = exp(G_C), R_n = Kd^T U, KW_n = Kd^T W)

as one kernel launch each way instead of a Python loop of T/64 small matmuls, one program per
(batch, head, V tile) carrying its [K, BV] state tile in registers through all chunks:

- forward: store the state entering every chunk (needed by the readout and the pseudo-values),
  then update it; the final state last.
- backward: the reverse recurrence ``dS_n = dS_in[n] + a_n dS_{n+1} - KW_n^T dS_{n+1}``,
  storing ``dR_n = dS_{n+1}``; then ``dKW_n = -dR_n S_n^T`` (one batched matmul) and
  ``da_n = <dR_n, S_n>`` in PyTorch. Kept from the forward: the entering states (which the
  chunk form keeps anyway).

The [K, K] @ [K, BV] products run as ``tf32x3`` (``MM_PREC``): "ieee" fp32 dots of these tiles
compile to scalar FMAs with kilobytes of register spills per thread (sm_90, checked offline with
``triton.compile`` + ``cuobjdump``); the forward took 33 ms at B=4, T=8K, H=16, K=V=128 on an
H200 that way. BV = 16 at K = 128 with 8 warps keeps spills to a few words.

Still PyTorch (batched matmuls over all chunks, autograd gradients): A and R, the products
``Kd^T [U | W]``, the written values ``u = U - W S`` and the output.

A fused recurrent kernel (``_recurrent_fwd``) runs short sequences and decoding steps (T <=
``RECURRENT_MAX_T``): the loop over time with the [K, BV] state in registers, one program per
(batch, head, V tile); its backward recomputes through the chunk form (autograd), which is
cheap at those lengths. Remaining for the delta-rule kernel issue: forming A (and R) inside the
UT kernel, and fused kernels for the output and the backward.
"""

from __future__ import annotations

import torch

from .._triton import HAS_TRITON, autotune_configs, check_triton_inputs, next_pow2

__all__ = ["RECURRENT_MAX_T", "delta_rule_triton", "pass_states_triton", "solve_unit_lower_triton",
           "ut_inverse_triton"]

MAX_HEAD_DIM = 256
RECURRENT_MAX_T = 64  # the fused recurrent kernel runs sequences up to this length
#: precision of the large fp32 products (state pass, ``Tm R``): three TF32 tensor-core products
#: (``tf32x3``: about fp32 accuracy). Plain fp32 ("ieee") lowers [128, 128] tiles to scalar FMAs,
#: which on the first H200 run made the T=8K forward take 33 ms. The 16 x 16 blocks of the
#: inverse itself stay "ieee". (The interpreter computes all of them in fp32.)
MM_PREC = "tf32x3"  # read by the kernels as the constexpr _MM_PREC

if HAS_TRITON:
    import triton
    import triton.language as tl

    _MM_PREC = tl.constexpr(MM_PREC)

    _WARPS = [{"num_warps": 4}, {"num_warps": 8}, {"num_warps": 2}]
    _STATE_WARPS = [{"num_warps": 8}, {"num_warps": 4}]  # 8 first: the one used untuned

    @triton.jit
    def _tiles(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        """Offsets and masks of a program's [BK, BV] state tile (all K rows, V tile ``i_v``) and of
        a full [BK, BK] matrix of the chunk map."""
        rk = tl.arange(0, BK)
        cv = i_v * BV + tl.arange(0, BV)
        km, vm = rk < K, cv < V
        return (rk[:, None] * V + cv[None, :], km[:, None] & vm[None, :],
                rk[:, None] * K + rk[None, :], km[:, None] & km[None, :])

    @triton.autotune(configs=autotune_configs(_STATE_WARPS), key=["BK", "BV", "HAS_A"])
    @triton.jit
    def _state_fwd(R, KW, a, S0, S_in, S_out, N, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, HAS_A: tl.constexpr):
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_bh = i_bh.to(tl.int64)
        tile, tm, kk, kkm = _tiles(i_v, K, V, BK, BV)
        S = tl.load(S0 + i_bh * K * V + tile, mask=tm, other=0.0)
        for n in range(0, N):
            base = i_bh * N + n
            tl.store(S_in + base * K * V + tile, S, mask=tm)
            Rn = tl.load(R + base * K * V + tile, mask=tm, other=0.0)
            KWn = tl.load(KW + base * K * K + kk, mask=kkm, other=0.0)
            upd = Rn - tl.dot(KWn, S, input_precision=_MM_PREC)
            if HAS_A:
                S = tl.load(a + base) * S + upd
            else:
                S = S + upd
        tl.store(S_out + i_bh * K * V + tile, S, mask=tm)

    @triton.autotune(configs=autotune_configs(_STATE_WARPS), key=["BK", "BV", "HAS_A"])
    @triton.jit
    def _state_bwd(KW, a, dS_in, dS_out, dR, dS0, N, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, HAS_A: tl.constexpr):
        """The reverse recurrence only; dKW and da are products of its output dR with the kept
        entering states, formed in PyTorch (one batched matmul, no per-V-tile partial sums)."""
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_bh = i_bh.to(tl.int64)
        tile, tm, kk, kkm = _tiles(i_v, K, V, BK, BV)
        dS = tl.load(dS_out + i_bh * K * V + tile, mask=tm, other=0.0)  # grad of the state after the last chunk
        for i in range(0, N):
            n = N - 1 - i
            base = i_bh * N + n
            tl.store(dR + base * K * V + tile, dS, mask=tm)
            KWn = tl.load(KW + base * K * K + kk, mask=kkm, other=0.0)
            back = -tl.dot(tl.trans(KWn), dS, input_precision=_MM_PREC)
            if HAS_A:
                back += tl.load(a + base) * dS
            else:
                back += dS
            dS = back + tl.load(dS_in + base * K * V + tile, mask=tm, other=0.0)
        tl.store(dS0 + i_bh * K * V + tile, dS, mask=tm)


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
    def _ut_load(A, base, C, bi: tl.constexpr, bj: tl.constexpr, BS: tl.constexpr):
        """Block (bi, bj) ``[BS, BS]`` of the ``[C, C]`` matrix at ``A + base``, in fp32, zero
        outside the matrix; a diagonal block keeps only its strictly lower part (the diagonal and
        upper triangle of A are never read, as in a unit-triangular solve)."""
        r = bi * BS + tl.arange(0, BS)
        c = bj * BS + tl.arange(0, BS)
        mask = (r[:, None] < C) & (c[None, :] < C)
        if bi == bj:
            mask = mask & (r[:, None] > c[None, :])
        return tl.load(A + base + r[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _ut_store(Tm, base, C, x, bi: tl.constexpr, bj: tl.constexpr, BS: tl.constexpr):
        r = bi * BS + tl.arange(0, BS)
        c = bj * BS + tl.arange(0, BS)
        tl.store(Tm + base + r[:, None] * C + c[None, :], x, mask=(r[:, None] < C) & (c[None, :] < C))

    @triton.jit
    def _ut_load_rows(R, base, C, D, r, cols, bi: tl.constexpr, BS: tl.constexpr):
        """Rows ``bi*BS ..`` (block bi) and columns ``cols`` of the [C, D] matrix at ``R + base``."""
        rows = bi * BS + r
        mask = (rows[:, None] < C) & (cols[None, :] < D)
        return tl.load(R + base + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _ut_store_rows(UW, base, C, D, r, cols, x, bi: tl.constexpr, BS: tl.constexpr):
        rows = bi * BS + r
        tl.store(UW + base + rows[:, None] * D + cols[None, :], x, mask=(rows[:, None] < C) & (cols[None, :] < D))

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

    # sm_90 with BD = 64: about 210-255 registers per thread at 4 warps (a few bytes spilled with
    # HAS_R), none spilled at 8; 1 and 2 warps spill heavily, so they are not offered.
    @triton.autotune(configs=autotune_configs([{"num_warps": 8}, {"num_warps": 4}]), key=["C", "D", "HAS_R"])
    @triton.jit
    def _ut_fwd(A, R, Tm, UW, N, C, D, BS: tl.constexpr, BD: tl.constexpr, HAS_R: tl.constexpr):
        """One chunk's ``Tm = (I + A)^{-1}`` (A strictly lower, C <= 4 * BS rows; rows past C are
        padding whose inverse is the identity, never stored). Blocks of BS = 16: the four diagonal
        blocks by forward substitution, then ``Tm_ij = -Tm_ii sum_{j<=k<i} A_ik Tm_kj``. Every
        upper block is stored as zeros, so Tm can be allocated uninitialised. With ``HAS_R``, also
        ``UW = Tm R`` for the chunk's right-hand side R ``[C, D]``, in [C, BD] column tiles."""
        i_n, i_bh = tl.program_id(0), tl.program_id(1)
        base = (i_bh.to(tl.int64) * N + i_n) * C * C
        T00 = _ut_inv_diag(_ut_load(A, base, C, 0, 0, BS), BS)
        T11 = _ut_inv_diag(_ut_load(A, base, C, 1, 1, BS), BS)
        T22 = _ut_inv_diag(_ut_load(A, base, C, 2, 2, BS), BS)
        T33 = _ut_inv_diag(_ut_load(A, base, C, 3, 3, BS), BS)
        A10 = _ut_load(A, base, C, 1, 0, BS)
        A20 = _ut_load(A, base, C, 2, 0, BS)
        A21 = _ut_load(A, base, C, 2, 1, BS)
        A30 = _ut_load(A, base, C, 3, 0, BS)
        A31 = _ut_load(A, base, C, 3, 1, BS)
        A32 = _ut_load(A, base, C, 3, 2, BS)
        T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision="ieee"), input_precision="ieee")
        T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision="ieee"), input_precision="ieee")
        T20 = -tl.dot(T22, tl.dot(A20, T00, input_precision="ieee") + tl.dot(A21, T10, input_precision="ieee"),
                      input_precision="ieee")
        T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision="ieee"), input_precision="ieee")
        T31 = -tl.dot(T33, tl.dot(A31, T11, input_precision="ieee") + tl.dot(A32, T21, input_precision="ieee"),
                      input_precision="ieee")
        acc = tl.dot(A30, T00, input_precision="ieee") + tl.dot(A31, T10, input_precision="ieee")
        T30 = -tl.dot(T33, acc + tl.dot(A32, T20, input_precision="ieee"), input_precision="ieee")
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
        if HAS_R:
            rbase = (i_bh.to(tl.int64) * N + i_n) * C * D
            r = tl.arange(0, BS)
            for d0 in range(0, D, BD):
                cols = d0 + tl.arange(0, BD)
                R0 = _ut_load_rows(R, rbase, C, D, r, cols, 0, BS)
                R1 = _ut_load_rows(R, rbase, C, D, r, cols, 1, BS)
                R2 = _ut_load_rows(R, rbase, C, D, r, cols, 2, BS)
                R3 = _ut_load_rows(R, rbase, C, D, r, cols, 3, BS)
                U0 = tl.dot(T00, R0, input_precision=_MM_PREC)
                U1 = tl.dot(T10, R0, input_precision=_MM_PREC) + tl.dot(T11, R1, input_precision=_MM_PREC)
                U2 = tl.dot(T20, R0, input_precision=_MM_PREC) + tl.dot(T21, R1, input_precision=_MM_PREC)
                U2 += tl.dot(T22, R2, input_precision=_MM_PREC)
                U3 = tl.dot(T30, R0, input_precision=_MM_PREC) + tl.dot(T31, R1, input_precision=_MM_PREC)
                U3 += tl.dot(T32, R2, input_precision=_MM_PREC) + tl.dot(T33, R3, input_precision=_MM_PREC)
                _ut_store_rows(UW, rbase, C, D, r, cols, U0, 0, BS)
                _ut_store_rows(UW, rbase, C, D, r, cols, U1, 1, BS)
                _ut_store_rows(UW, rbase, C, D, r, cols, U2, 2, BS)
                _ut_store_rows(UW, rbase, C, D, r, cols, U3, 3, BS)


UT_BLOCK = 16  # the inverse's block size (tl.dot needs >= 16 per side)
UT_MAX_C = 4 * UT_BLOCK  # the largest chunk the kernel inverts (the chunk form uses 64)


def _ut_launch(A, R=None):
    """Tm (and ``UW = Tm R`` when R ``[..., C, D]`` is given) for A ``[..., C, C]``; float32."""
    C = A.shape[-1]
    M = A.numel() // (C * C) if C else 0
    N = A.shape[-3] if A.dim() >= 3 else 1
    Ac = A.float().contiguous()
    Tm = torch.empty(Ac.shape, device=A.device, dtype=torch.float32)
    D = 0 if R is None else R.shape[-1]
    Rc = None if R is None else R.float().contiguous()
    UW = None if R is None else torch.empty(Rc.shape, device=A.device, dtype=torch.float32)
    if M and C:
        BD = max(16, min(64, next_pow2(D)))
        _ut_fwd[(N, M // N)](Ac, Ac if Rc is None else Rc, Tm, Tm if UW is None else UW, N, C, max(D, 1),
                             BS=UT_BLOCK, BD=BD, HAS_R=R is not None)
    return Tm, UW


class _UTInverseFn(torch.autograd.Function):
    """``Tm = (I + tril(A, -1))^{-1}``: forward by ``_ut_fwd``, backward in PyTorch."""

    @staticmethod
    def forward(ctx, A):
        Tm, _ = _ut_launch(A)
        ctx.save_for_backward(Tm)
        ctx.a_dtype = A.dtype
        return Tm

    @staticmethod
    def backward(ctx, dTm):
        # d(M^{-1}) = -M^{-1} dM M^{-1}, so dM = -Tm^T dTm Tm^T; A enters M = I + A only through
        # its strictly lower triangle.
        (Tm,) = ctx.saved_tensors
        TmT = Tm.transpose(-1, -2)
        dA = -(TmT @ dTm.to(Tm.dtype) @ TmT)
        return dA.tril_(-1).to(ctx.a_dtype)


class _UTSolveFn(torch.autograd.Function):
    """``UW = (I + tril(A, -1))^{-1} R``: forward by ``_ut_fwd`` (inverse and product in one
    kernel), backward in PyTorch: ``dR = Tm^T dUW`` and ``dA = -tril(dR UW^T, -1)`` (from
    ``dTm = dUW R^T`` and ``dA = -Tm^T dTm Tm^T``, with ``Tm R = UW``)."""

    @staticmethod
    def forward(ctx, A, R):
        Tm, UW = _ut_launch(A, R)
        ctx.save_for_backward(Tm, UW)
        ctx.dtypes = A.dtype, R.dtype
        return UW

    @staticmethod
    def backward(ctx, dUW):
        Tm, UW = ctx.saved_tensors
        dR = Tm.transpose(-1, -2) @ dUW.to(Tm.dtype)
        dA = -(dR @ UW.transpose(-1, -2))
        return dA.tril_(-1).to(ctx.dtypes[0]), dR.to(ctx.dtypes[1])


def ut_inverse_triton(A: torch.Tensor) -> torch.Tensor:
    """``(I + tril(A, -1))^{-1}`` of every ``[C, C]`` matrix of A ``[..., N, C, C]`` (C <=
    ``UT_MAX_C``; only A's strictly lower triangle is read), float32, through the blocked Triton
    kernel (one program per matrix, grid ``(N, prod(...))``); differentiable (PyTorch backward)."""
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"ut_inverse_triton: A must be [..., C, C] (square), got {tuple(A.shape)}")
    if A.shape[-1] > UT_MAX_C:
        raise ValueError(f"ut_inverse_triton: chunks of at most {UT_MAX_C} rows, got C={A.shape[-1]}")
    check_triton_inputs(A=A)
    return _UTInverseFn.apply(A)


def solve_unit_lower_triton(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``chunk.solve_unit_lower`` by the Triton kernel: ``(I + tril(A, -1))^{-1} rhs`` for A
    ``[..., N, C, C]`` and rhs ``[..., N, C, D]``, inverse and product in one launch (float32;
    differentiable, PyTorch backward). Chunks longer than ``UT_MAX_C`` take the PyTorch solve."""
    if A.shape[-1] > UT_MAX_C:
        from .chunk import solve_unit_lower

        return solve_unit_lower(A, rhs)
    if A.dim() < 2 or A.shape[-1] != A.shape[-2] or rhs.shape[:-1] != A.shape[:-1]:
        raise ValueError(f"solve_unit_lower_triton: A [..., C, C] and rhs [..., C, D] expected, got "
                         f"{tuple(A.shape)} and {tuple(rhs.shape)}")
    check_triton_inputs(A=A, rhs=rhs)
    return _UTSolveFn.apply(A, rhs)


class _RecurrentFn(torch.autograd.Function):
    """Forward by the fused recurrent kernel; backward by autograd through the chunk form."""

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
        from .chunk import delta_rule_chunk

        saved = ctx.saved_tensors
        leaves = [None if x is None else x.detach().requires_grad_() for x in saved]
        with torch.enable_grad():
            o, ht = delta_rule_chunk(*leaves[:5], ctx.scale, leaves[5])
            pairs = [(y, dy) for y, dy in ((o, do), (ht, dht)) if dy is not None and y.requires_grad]
            wanted = [x for x in leaves if x is not None]
            if not pairs:  # e.g. an empty sequence whose state is not used
                return (*(None for _ in leaves), None)
            grads = torch.autograd.grad([y for y, _ in pairs], wanted, [dy for _, dy in pairs], allow_unused=True)
        grads = iter(grads)
        return (*(None if x is None else next(grads) for x in leaves), None)


def _blocks(K: int, V: int) -> tuple[int, int]:
    """State tiles [BK = all of K, BV]: BV = 16 for K >= 128 keeps the [K, K] operand and the
    state in registers at 8 warps (sm_90 compile: 15 spilled words with tf32x3, against ~75 at
    BV = 32 and thousands with "ieee" at any BV)."""
    return max(16, next_pow2(K)), 16 if K >= 128 else max(16, min(32, next_pow2(V)))


class _StatePassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, R, KW, a, S0):
        B, H, N, K, V = R.shape
        BK, BV = _blocks(K, V)
        R, KW, S0 = R.contiguous(), KW.contiguous(), S0.contiguous()
        a_flat = None if a is None else a.reshape(B * H * N).contiguous()
        S_in = torch.empty_like(R)
        S_out = torch.empty_like(S0)
        _state_fwd[(triton.cdiv(V, BV), B * H)](
            R, KW, a_flat if a_flat is not None else R, S0, S_in, S_out, N, K=K, V=V, BK=BK, BV=BV,
            HAS_A=a is not None)
        ctx.save_for_backward(KW, a_flat, S_in)
        ctx.shape, ctx.a_shape = (B, H, N, K, V), None if a is None else a.shape
        return S_in, S_out

    @staticmethod
    def backward(ctx, dS_in, dS_out):
        KW, a_flat, S_in = ctx.saved_tensors
        B, H, N, K, V = ctx.shape
        BK, BV = _blocks(K, V)
        NV = triton.cdiv(V, BV)
        dS_in = torch.zeros_like(S_in) if dS_in is None else dS_in.contiguous()
        dS_out = S_in.new_zeros(B, H, K, V) if dS_out is None else dS_out.contiguous()
        dR = torch.empty_like(S_in)
        dS0 = S_in.new_empty(B, H, K, V)
        _state_bwd[(NV, B * H)](
            KW, a_flat if a_flat is not None else KW, dS_in, dS_out, dR, dS0, N, K=K, V=V, BK=BK, BV=BV,
            HAS_A=a_flat is not None)
        # dR_n is the gradient of the state leaving chunk n; S_in[n] the state entering it
        dKW = -(dR @ S_in.transpose(-1, -2))
        da = None if a_flat is None else (dR * S_in).sum((-2, -1)).view(ctx.a_shape)
        return dR, dKW, da, dS0


def pass_states_triton(R, KW, a, S):
    """``chunk.pass_states`` as Triton kernels (same arguments and results; float32)."""
    return _StatePassFn.apply(R, KW, a, S)


def delta_rule_triton(q, k, v, beta, g, scale, initial_state, *, mode: str = "auto"):
    """delta_rule through Triton for one batch of equal-length sequences (``__init__`` loops
    packed sequences): the fused recurrent kernel when T <= ``RECURRENT_MAX_T`` (``mode="auto"``)
    or ``mode="recurrent"``, else the chunk form with the Triton state pass (``mode="chunk"``).
    Returns ``(o, final_state)``."""
    from .chunk import delta_rule_chunk

    if mode not in ("auto", "chunk", "recurrent"):
        raise ValueError(f"mode={mode!r} is not one of ('auto', 'chunk', 'recurrent')")
    check_triton_inputs(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports K, V <= {MAX_HEAD_DIM}, got K={K}, V={V}")
    if initial_state is None:
        B, _, H, _ = q.shape
        initial_state = q.new_zeros(B, H, K, V, dtype=torch.float32)
    if mode == "recurrent" or (mode == "auto" and q.shape[1] <= RECURRENT_MAX_T):
        return _RecurrentFn.apply(q, k, v, beta, g, initial_state, float(scale))
    return delta_rule_chunk(q, k, v, beta, g, scale, initial_state.float(), state_pass=pass_states_triton,
                            solve=solve_unit_lower_triton)
