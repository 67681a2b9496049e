"""Triton path of delta_rule, first stage: the chunk-to-chunk state pass as a kernel.

The chunked form (``chunk.py``, WY/UT representation) does everything inside a chunk as
matmuls batched over all chunks at once; its one sequential part is the state recurrence

    S_{n+1} = a_n S_n + R_n - KW_n S_n          (a_n = exp(G_C), R_n = Kd^T U, KW_n = Kd^T W)

which the PyTorch path runs as a Python loop of T/64 small matmuls (and as many again in the
backward). Here it is one kernel launch each way, one program per (batch, head, V tile) carrying
its [K, BV] state tile in registers through all chunks:

- forward: store the state entering every chunk (needed by the readout and the pseudo-values),
  then update it; the final state last.
- backward: the reverse recurrence ``dS_n = dS_in[n] + a_n dS_{n+1} - KW_n^T dS_{n+1}`` with
  ``dR_n = dS_{n+1}``, ``dKW_n = -dS_{n+1} S_n^T`` and ``da_n = <dS_{n+1}, S_n>``; the last
  two are summed over V tiles in PyTorch (each program writes its tile's share). Kept from the
  forward: the entering states (which the chunk form keeps anyway).

Everything else (the triangular solve, the pseudo-values, the output) stays in the chunk path's
batched PyTorch matmuls, whose gradients autograd provides.

A fused recurrent kernel (``_recurrent_fwd``) runs short sequences and decoding steps (T <=
``RECURRENT_MAX_T``): the loop over time with the [K, BV] state in registers, one program per
(batch, head, V tile); its backward recomputes through the chunk form (autograd), which is
cheap at those lengths. Fully fused Triton kernels for the intra-chunk work and the backward
through the triangular solve are the remaining part of the delta-rule kernel issue.
"""

from __future__ import annotations

import torch

from .._triton import HAS_TRITON, autotune_configs, check_triton_inputs, next_pow2

__all__ = ["RECURRENT_MAX_T", "delta_rule_triton", "pass_states_triton"]

MAX_HEAD_DIM = 256
RECURRENT_MAX_T = 64  # the fused recurrent kernel runs sequences up to this length

if HAS_TRITON:
    import triton
    import triton.language as tl

    _WARPS = [{"num_warps": 4}, {"num_warps": 8}, {"num_warps": 2}]

    @triton.jit
    def _tiles(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        """Offsets and masks of a program's [BK, BV] state tile (all K rows, V tile ``i_v``) and of
        a full [BK, BK] matrix of the chunk map."""
        rk = tl.arange(0, BK)
        cv = i_v * BV + tl.arange(0, BV)
        km, vm = rk < K, cv < V
        return (rk[:, None] * V + cv[None, :], km[:, None] & vm[None, :],
                rk[:, None] * K + rk[None, :], km[:, None] & km[None, :])

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "HAS_A"])
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
            upd = Rn - tl.dot(KWn, S, input_precision="ieee")
            if HAS_A:
                S = tl.load(a + base) * S + upd
            else:
                S = S + upd
        tl.store(S_out + i_bh * K * V + tile, S, mask=tm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BK", "BV", "HAS_A"])
    @triton.jit
    def _state_bwd(KW, a, S_in, dS_in, dS_out, dR, dKW_part, da_part, dS0, N, BH, K: tl.constexpr,
                   V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_A: tl.constexpr):
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_bh = i_bh.to(tl.int64)
        tile, tm, kk, kkm = _tiles(i_v, K, V, BK, BV)
        dS = tl.load(dS_out + i_bh * K * V + tile, mask=tm, other=0.0)  # grad of the state after the last chunk
        part = i_v.to(tl.int64) * BH + i_bh  # this V tile's share of dKW and da
        for i in range(0, N):
            n = N - 1 - i
            base = i_bh * N + n
            tl.store(dR + base * K * V + tile, dS, mask=tm)
            Sn = tl.load(S_in + base * K * V + tile, mask=tm, other=0.0)
            KWn = tl.load(KW + base * K * K + kk, mask=kkm, other=0.0)
            tl.store(dKW_part + (part * N + n) * K * K + kk, -tl.dot(dS, tl.trans(Sn), input_precision="ieee"),
                     mask=kkm)
            back = -tl.dot(tl.trans(KWn), dS, input_precision="ieee")
            if HAS_A:
                tl.store(da_part + part * N + n, tl.sum(tl.sum(dS * Sn, axis=1), axis=0))
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
    return max(16, next_pow2(K)), max(16, min(32, next_pow2(V)))


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
        dKW_part = S_in.new_empty(NV, B * H, N, K, K)
        da_part = S_in.new_zeros(NV, B * H, N)
        dS0 = S_in.new_empty(B, H, K, V)
        _state_bwd[(NV, B * H)](
            KW, a_flat if a_flat is not None else KW, S_in, dS_in, dS_out, dR, dKW_part, da_part, dS0, N, B * H,
            K=K, V=V, BK=BK, BV=BV, HAS_A=a_flat is not None)
        dKW = dKW_part.sum(0).view(B, H, N, K, K)
        da = None if a_flat is None else da_part.sum(0).view(ctx.a_shape)
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
    return delta_rule_chunk(q, k, v, beta, g, scale, initial_state.float(), state_pass=pass_states_triton)
