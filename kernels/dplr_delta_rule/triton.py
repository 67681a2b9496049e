"""Triton kernels for dplr_delta_rule: a fused recurrent forward and its checkpointed backward.

Per (sequence, head), row vectors, S ``[K, V]`` in fp32:

    u_t = b_t S_{t-1}                                   ([V]: what b_t reads)
    S_t = Diag(exp g_t) S_{t-1} + a_t^T u_t + k_t^T v_t
    o_t = scale q_t S_t

Layout and grid. Every call is flattened to packed sequences (``[B, T, H, D]`` ->
``[B*T, H, D]`` with offsets ``0, T, 2T, ...``, or the caller's ``cu_seqlens``; ``packed_offsets``
and ``ChunkPlan`` of ``kernels/_triton/plan.py``), so a varlen batch takes the same single launch
as a dense one. One program per (V tile of ``BV`` channels, sequence * head) holds the state tile
``[BK, BV]`` in fp32 registers through the whole sequence, ``BK`` = all of K rounded up to a power
of two (``state_tile``; padded rows and columns load 0 and stay 0). The sequence is cut into
checkpoint blocks of ``CHECKPOINT`` steps starting at its first row (the ChunkPlan's chunks: block
``n`` of sequence ``s`` is global block ``coff[s] + n``).

Forward (``_recurrent_fwd``), per step: ``u = sum_k b[k] S[k, :]``, then
``S = exp(g)[:, None] S + a[:, None] u[None, :] + k[:, None] v[None, :]`` and
``o = scale sum_k q[k] S[k, :]``. Stores o (q's dtype), the final state, and, when a backward
will follow, the state entering every checkpoint block (``ckpt [n_blocks, H, K, V]`` fp32).

Backward (``_recurrent_bwd``), the same grid, the sequence's blocks last to first. Per block:
from its checkpoint the forward steps are re-run and the state *entering* every step is written
to a per-program fp32 scratch in global memory (``[CHECKPOINT, BK, BV]``); the register tile then
holds the state after the block's last step. The steps are then walked in reverse with ``dS``,
the gradient of the loss with respect to ``S_t`` carried from later steps (the final state's
gradient at the start; zero when the final state is unused). Derivation, step t (``d`` = the
decay ``exp g_t``, ``P = S_{t-1}`` read back from the scratch, ``u = b P``):

    o_t = scale q S_t           ->  dS_t  += scale q^T do         (the total gradient of S_t)
                                    dq_t[k] = scale sum_v S_t[k, v] do[v]
    S_t = Diag(d) P + a^T u + k^T v, with that dS_t:
                                    dk_t[k] = sum_v dS_t[k, v] v[v]
                                    dv_t[v] = sum_k k[k] dS_t[k, v]
                                    da_t[k] = sum_v dS_t[k, v] u[v]
                                    du[v]   = sum_k a[k] dS_t[k, v]           (= a dS_t)
                                    dg_t[k] = d[k] sum_v P[k, v] dS_t[k, v]   (d exp(g)/dg = exp(g))
    u = b P                     ->  db_t[k] = sum_v P[k, v] du[v]
    both paths into P           ->  dS_{t-1} = Diag(d) dS_t + b^T du

then ``S_t <- P`` for the previous step. What is left after a sequence's first step is the initial
state's gradient (an empty sequence passes the final state's gradient straight through). The
K-vector gradients (q, k, a, b, g) sum over V, so each program writes its V tile's partial sums
``[NV, rows, H, K]``, summed in PyTorch (deterministic, no atomics); v's gradient is per column.
Nothing is divided by a decay (strong decay, ``g`` down to ``GATE_FLOOR``, only underflows to 0);
the recomputed states are bit-identical to the forward's (the same jit step function, fp32).

Cost per step and head (K x V state, counting a multiply-add as 2 FLOPs; loads of the K-vectors
are repeated by each of the ``NV = V / BV`` programs):

- forward: ~9 KV FLOPs (the read u 2KV; decay, rank-one and write ~5KV; the output 2KV); reads
  ``5K + V`` input elements per V tile, writes V outputs and ``4 KV / CHECKPOINT`` bytes of
  checkpoint (K = V = 128: 2 KiB per step and head at CHECKPOINT = 32, more than the bf16
  inputs themselves; none without a backward).
- backward: ~7 KV FLOPs to recompute the states and ~21 KV for the gradients; 8 KV bytes of
  scratch traffic (one fp32 state written, one read back per step), which dominates (about 3.5
  FLOPs per byte: memory bound on L2/HBM); reads ``6K + 2V`` inputs per V tile, writes ``5K``
  fp32 partials per V tile and V values.

Both are sequential over time with only ``NV * N * H`` programs in flight: latency bound unless
batch * heads fills the GPU. The next step for speed is the chunked WY form (as delta_rule's
chunk kernels and FLA's chunk_dplr): per chunk of 64 steps the product of the rank-one
transitions in UT/WY form on tensor cores, sequential only over chunks, keeping chunk states.

Precision: fp32 arithmetic and states throughout (inputs converted on load); o in q's dtype, the
final state fp32, gradients in their inputs' dtypes. Offsets are int64. g must be finite (the
op floors it at ``GATE_FLOOR``).
"""

from __future__ import annotations

import torch

from .._triton import (
    HAS_TRITON,
    autotune_configs,
    check_head_dims,
    check_triton_inputs,
    state_tile,
)
from .._triton.plan import chunk_plan, packed_offsets

__all__ = ["CHECKPOINT", "dplr_delta_rule_triton"]

#: steps between stored states: the backward re-runs at most this many steps from a checkpoint
#: and keeps their states in its scratch. Checkpoints cost 4 KV / CHECKPOINT bytes per step and
#: head, the scratch 4 KV CHECKPOINT bytes per (sequence, head): 32 balances them near T = 1024.
CHECKPOINT = 32

if HAS_TRITON:
    import triton
    import triton.language as tl

    # [128, 32] fp32 tiles: the backward holds three (S, the read-back state, dS)
    _WARPS = [{"num_warps": 4, "num_stages": 1}, {"num_warps": 8, "num_stages": 1}]

    @triton.jit
    def _row(x, t, i_h, cols, mask, H: tl.constexpr, D: tl.constexpr):
        """Row ``t`` of head ``i_h`` of the packed ``[rows, H, D]`` tensor x at ``cols``, fp32, 0 outside."""
        return tl.load(x + (t * H + i_h) * D + cols, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _step(S, t, i_h, k, v, a, b, g, rk, cv, km, vm, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
        """One step of the recurrence on the ``[BK, BV]`` tile (row t): the state after it."""
        kt = _row(k, t, i_h, rk, km, H, K)
        at = _row(a, t, i_h, rk, km, H, K)
        bt = _row(b, t, i_h, rk, km, H, K)
        gt = _row(g, t, i_h, rk, km, H, K)
        vt = _row(v, t, i_h, cv, vm, H, V)
        u = tl.sum(bt[:, None] * S, axis=0)
        S = tl.exp(gt)[:, None] * S + at[:, None] * u[None, :] + kt[:, None] * vt[None, :]
        return S

    @triton.jit
    def _program(cu, coff, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr):
        """This program's V tile ``i_v``, (sequence, head) ``i_nh`` (int64), head, sequence rows
        ``[bos, eos)``, its checkpoint blocks ``[c0, c1)`` and the tile's offsets and masks."""
        i_v, i_nh = tl.program_id(0), tl.program_id(1).to(tl.int64)
        i_n, i_h = i_nh // H, i_nh % H
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
        c0 = tl.load(coff + i_n).to(tl.int64)
        c1 = tl.load(coff + i_n + 1).to(tl.int64)
        rk = tl.arange(0, BK)
        cv = i_v * BV + tl.arange(0, BV)
        km, vm = rk < K, cv < V
        tile = rk[:, None] * V + cv[None, :]
        tm = km[:, None] & vm[None, :]
        return i_v, i_nh, i_h, bos, eos, c0, c1, rk, cv, km, vm, tile, tm

    @triton.autotune(configs=autotune_configs(_WARPS), key=["K", "V", "BK", "BV", "C", "STORE_CKPT"])
    @triton.jit
    def _recurrent_fwd(q, k, v, a, b, g, h0, o, ht, ckpt, cu, coff, scale, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                       STORE_CKPT: tl.constexpr):
        """One (V tile, sequence * head): the recurrence over the sequence's checkpoint blocks,
        storing the state entering each block (``STORE_CKPT``), o per step and the final state."""
        i_v, i_nh, i_h, bos, eos, c0, c1, rk, cv, km, vm, tile, tm = _program(cu, coff, H, K, V, BK, BV)
        S = tl.load(h0 + i_nh * K * V + tile, mask=tm, other=0.0).to(tl.float32)
        for n in range(c0, c1):
            if STORE_CKPT:
                tl.store(ckpt + (n * H + i_h) * K * V + tile, S, mask=tm)
            s = bos + (n - c0) * C
            for t in range(s, tl.minimum(s + C, eos)):
                S = _step(S, t, i_h, k, v, a, b, g, rk, cv, km, vm, H, K, V)
                ot = scale * tl.sum(_row(q, t, i_h, rk, km, H, K)[:, None] * S, axis=0)
                tl.store(o + (t * H + i_h) * V + cv, ot.to(o.dtype.element_ty), mask=vm)
        tl.store(ht + i_nh * K * V + tile, S, mask=tm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["K", "V", "BK", "BV", "C", "HAS_DHT"])
    @triton.jit
    def _recurrent_bwd(q, k, v, a, b, g, do, dht, ckpt, ws, dq, dk, dv, da, db, dg, dh0, cu, coff, rows, scale,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       C: tl.constexpr, HAS_DHT: tl.constexpr):
        """One (V tile, sequence * head): the reverse recurrence of the module docstring, blocks
        last to first, each re-run from its checkpoint into the scratch ``ws`` first. dq, dk, da,
        db, dg are this V tile's partial sums ``[NV, rows, H, K]``; dv ``[rows, H, V]``; dh0 the
        initial state's gradient ``[N, H, K, V]``."""
        i_v, i_nh, i_h, bos, eos, c0, c1, rk, cv, km, vm, tile, tm = _program(cu, coff, H, K, V, BK, BV)
        # this program's scratch: C states [BK, BV], padded (the padding holds zeros)
        wbase = ws + (i_v * tl.num_programs(1) + i_nh) * C * BK * BV
        wtile = rk[:, None] * BV + tl.arange(0, BV)[None, :]
        part = i_v * rows * H  # the first [H, K] row of this V tile's partial sums
        if HAS_DHT:
            dS = tl.load(dht + i_nh * K * V + tile, mask=tm, other=0.0).to(tl.float32)
        else:
            dS = tl.zeros([BK, BV], dtype=tl.float32)
        for i in range(0, c1 - c0):
            n = c1 - 1 - i
            s = bos + (n - c0) * C
            e = tl.minimum(s + C, eos)
            S = tl.load(ckpt + (n * H + i_h) * K * V + tile, mask=tm, other=0.0)
            for t in range(s, e):
                tl.store(wbase + (t - s) * BK * BV + wtile, S)  # the state entering step t
                S = _step(S, t, i_h, k, v, a, b, g, rk, cv, km, vm, H, K, V)
            tl.debug_barrier()  # the scratch is read back by other threads of the program
            for j in range(0, e - s):
                t = e - 1 - j
                P = tl.load(wbase + (t - s) * BK * BV + wtile)  # S_{t-1}; S holds S_t
                qt = _row(q, t, i_h, rk, km, H, K)
                kt = _row(k, t, i_h, rk, km, H, K)
                at = _row(a, t, i_h, rk, km, H, K)
                bt = _row(b, t, i_h, rk, km, H, K)
                dec = tl.exp(_row(g, t, i_h, rk, km, H, K))
                vt = _row(v, t, i_h, cv, vm, H, V)
                dot = _row(do, t, i_h, cv, vm, H, V)
                dS += scale * qt[:, None] * dot[None, :]
                u = tl.sum(bt[:, None] * P, axis=0)
                du = tl.sum(at[:, None] * dS, axis=0)
                krow = (part + t * H + i_h) * K + rk
                tl.store(dq + krow, scale * tl.sum(S * dot[None, :], axis=1), mask=km)
                tl.store(dk + krow, tl.sum(dS * vt[None, :], axis=1), mask=km)
                tl.store(da + krow, tl.sum(dS * u[None, :], axis=1), mask=km)
                tl.store(db + krow, tl.sum(P * du[None, :], axis=1), mask=km)
                tl.store(dg + krow, dec * tl.sum(P * dS, axis=1), mask=km)
                tl.store(dv + (t * H + i_h) * V + cv, tl.sum(kt[:, None] * dS, axis=0), mask=vm)
                dS = dec[:, None] * dS + bt[:, None] * du[None, :]
                S = P
            tl.debug_barrier()  # the previous block overwrites the scratch
        tl.store(dh0 + i_nh * K * V + tile, dS, mask=tm)


def _tiles(K: int, V: int, block_v: int | None) -> tuple[int, int]:
    """``(BK, BV)``: all of K by a V tile (``state_tile``), or ``block_v`` (a power of two) when given."""
    BK, BV = state_tile(K, V)
    if block_v is not None:
        if block_v < 1 or block_v & (block_v - 1):
            raise ValueError(f"block_v={block_v} must be a power of two")
        BV = block_v
    return BK, BV


def _forward(q, k, v, a, b, g, h0, scale, plan, block_v, store_ckpt):
    """The forward kernel on packed ``[rows, H, *]`` contiguous inputs and fp32 ``h0 [N, H, K, V]``:
    ``(o [rows, H, V] in q's dtype, final states [N, H, K, V] fp32, checkpoints or None)``."""
    _, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _tiles(K, V, block_v)
    o = torch.empty(v.shape, device=q.device, dtype=q.dtype)
    ht = torch.empty(plan.n_seqs, H, K, V, device=q.device, dtype=torch.float32)
    ckpt = torch.empty(max(plan.n_chunks, 1), H, K, V, device=q.device, dtype=torch.float32) if store_ckpt else ht
    _recurrent_fwd[(triton.cdiv(V, BV), plan.n_seqs * H)](
        q, k, v, a, b, g, h0, o, ht, ckpt, plan.cu, plan.coff, scale, H=H, K=K, V=V, BK=BK, BV=BV, C=CHECKPOINT,
        STORE_CKPT=store_ckpt)
    return o, ht, (ckpt if store_ckpt else None)


def _backward(q, k, v, a, b, g, ckpt, do, dht, scale, plan, block_v):
    """The backward kernel: fp32 gradients of q, k, v, a, b, g (``[rows, H, *]``) and of the
    initial states ``[N, H, K, V]``; the K-vector ones summed over the V tiles here."""
    rows, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _tiles(K, V, block_v)
    NV, NH = triton.cdiv(V, BV), plan.n_seqs * H
    f32 = dict(device=q.device, dtype=torch.float32)
    ws = torch.empty(NV * NH, CHECKPOINT, BK, BV, **f32)
    parts = torch.empty(5, NV, rows, H, K, **f32)  # dq, dk, da, db, dg per V tile
    dv = torch.empty(v.shape, **f32)
    dh0 = torch.empty(plan.n_seqs, H, K, V, **f32)
    _recurrent_bwd[(NV, NH)](
        q, k, v, a, b, g, do, dv if dht is None else dht, ckpt, ws, *parts.unbind(0)[:2], dv,
        *parts.unbind(0)[2:], dh0, plan.cu, plan.coff, rows, scale, H=H, K=K, V=V, BK=BK, BV=BV, C=CHECKPOINT,
        HAS_DHT=dht is not None)
    dq, dk, da, db, dg = parts.sum(1).unbind(0)
    return dq, dk, dv, da, db, dg, dh0


class _RecurrentFn(torch.autograd.Function):
    """dplr_delta_rule by the fused recurrent kernels on packed sequences: q, k, a, b, g
    ``[rows, H, K]``, v ``[rows, H, V]``, h0 ``[N, H, K, V]`` fp32, ``plan`` a ChunkPlan of
    ``CHECKPOINT`` steps. Returns o ``[rows, H, V]`` in q's dtype and the final states fp32.
    Saved for the backward: the inputs and the checkpoints (the states are recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, a, b, g, h0, scale, plan, block_v):
        o, ht, ckpt = _forward(q, k, v, a, b, g, h0, scale, plan, block_v, store_ckpt=True)
        ctx.save_for_backward(q, k, v, a, b, g, ckpt)
        ctx.meta = scale, plan, block_v
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, a, b, g, ckpt = ctx.saved_tensors
        scale, plan, block_v = ctx.meta
        do = torch.zeros(v.shape, device=v.device, dtype=torch.float32) if do is None else do.contiguous()
        dht = None if dht is None else dht.float().contiguous()
        dq, dk, dv, da, db, dg, dh0 = _backward(q, k, v, a, b, g, ckpt, do, dht, scale, plan, block_v)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype), dg.to(g.dtype), dh0,
                None, None, None)


def dplr_delta_rule_triton(q, k, v, a, b, g, scale, initial_state, cu_seqlens=None, *, block_v: int | None = None):
    """dplr_delta_rule through the fused recurrent kernels: one launch each way for all sequences
    (``cu_seqlens`` handled in the kernels). Arguments as ``dplr_delta_rule`` validated them
    (``g`` finite, floored by the op); ``block_v`` overrides the V tile (a power of two; tests).
    Returns ``(o [B, T, H, V] in q's dtype, final states [B or N, H, K, V] fp32)``; the
    checkpoints for the backward are stored only when a gradient is needed."""
    check_triton_inputs(q=q, k=k, v=v, a=a, b=b, g=g, initial_state=initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_head_dims(K, V)
    offsets = packed_offsets(cu_seqlens, B, T)
    n_seqs = len(offsets) - 1
    h0 = q.new_zeros(n_seqs, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    if B * T == 0:  # nothing to run: every state passes through
        return q.new_empty(B, T, H, V), h0.clone()
    plan = chunk_plan(tuple(offsets), q.device, CHECKPOINT)
    packed = [x.reshape(B * T, H, x.shape[-1]).contiguous() for x in (q, k, v, a, b, g)]
    h0 = h0.contiguous()
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, a, b, g, h0)):
        o, S = _RecurrentFn.apply(*packed, h0, float(scale), plan, block_v)
    else:
        o, S, _ = _forward(*packed, h0, float(scale), plan, block_v, store_ckpt=False)
    return o.view(B, T, H, V), S
