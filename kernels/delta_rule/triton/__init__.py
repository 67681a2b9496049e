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

This package holds the host side (the launchers, the autograd Functions, ``delta_rule_triton``);
the kernels sit in one module per phase, each with its derivation: ``common.py`` (jit helpers),
``wy.py`` (A, its inverse, U and W, and their backward), ``state.py`` (the state passes, forward
and backward), ``output.py``, ``backward.py`` (the chunk-parallel gradients) and
``recurrent.py``.

Forward, three launches (``_ChunkFn.forward``), after the chunk-local cumulative gates
(``_chunk_gates``: ``chunk_cumsum`` of ``kernels/_triton/plan.py``, PyTorch, shared with gla),
each behind a launcher with a PyTorch twin of the same name in ``chunk.py`` (tested against each
other in tests/kernels/test_delta_rule_phases.py):

1. ``_wy_prepare`` (``_wy_fwd``), one program per (chunk, head): A, Tm, U, W (``wy.py``; twins
   ``wy_prepare`` and ``wy_inverse``).
2. ``_state_pass`` (``_state_fwd``), one program per (V tile, sequence * head), the only
   sequential part: stores every entering state and u (``state.py``).
3. ``_output`` (``_output_fwd``), one program per (V tile, chunk, head): the output
   (``output.py``).

Backward, four launches (``_ChunkFn.backward``), nothing recomputed:

1. ``_du_intra_bwd``: the intra-chunk part of u's gradient, ``P^T do`` (``backward.py``).
2. ``_state_bwd``, sequential, chunks last to first: dH, the rest of du and the entering states'
   gradients; the last one is the initial state's (``state.py``).
3. ``_dqk_bwd``, per (K tile, chunk, head): dq, dk's output and state-update terms, dW and their
   gate gradients (``backward.py``).
4. ``_wy_bwd``, per (chunk, head): back through Tm, U and W: dv, dbeta, the rest of dk and the
   gate gradient of A and W's right-hand side (``wy.py``).
   g's gradient is the reverse cumulative sum of dG within each chunk (PyTorch, [B, T, H]).

Precision: every kernel accumulates in fp32 and the recurrent state stays fp32 in registers.
bf16 inputs: the products take bf16 operands (``_mm``; full-rate tensor cores) and the stored
intermediates (U, W, u, the chunk states, dH) are bf16, as FLA does; about 1% relative error
on outputs and gradients against float64 under the interpreter's emulation. Products with Tm,
the inverse, stay TF32 whatever the inputs. fp32 inputs: fp32 intermediates and ``tf32x3``
products (``dot_precision``, about fp32 accuracy); fp16 inputs: fp32 intermediates and one TF32
product. Never "ieee" for large tiles (see ``dot_precision``); only the inverse's 16 x 16 blocks
use it. sm_90 compiles (``scripts/sm90_check.py``) of the bf16 kernels at K = V = 128 show no
spills at 8 warps except a few bytes in ``_wy_fwd``; the fp32 ones spill up to ~1.3 KB per
thread (tf32x3 splits every operand in two). The sequential kernels' V tile (``_state_tile``):
32 for bf16, 16 for fp32 at K >= 128. Memory kept for the backward: U, W, u (as large as k and
v), Tm (C fp32 per step) and the entering states (K * V per chunk: at K = V = 128 and bf16,
512 B per step and head).

The fused recurrent kernel (``_recurrent_fwd``) runs short sequences and decoding steps (T <=
``RECURRENT_MAX_T``, equal-length batches). Varlen calls always take the chunk kernels.
"""

from __future__ import annotations

import torch

from ..._common import run_packed
from ..._triton import (
    HAS_TRITON,
    check_head_dims,
    check_triton_inputs,
    chunk_tiles,
    dot_precision,
    interpreting,
    state_tile,
)
from ..._triton.plan import chunk_cumsum, chunk_plan, packed_offsets

__all__ = ["RECURRENT_MAX_T", "delta_rule_triton"]

CHUNK = 64  # the fused chunk path's chunk length (= 4 * UT_BLOCK, the inverse's blocking)
UT_BLOCK = 16  # the inverse's block size (tl.dot needs >= 16 per side)
RECURRENT_MAX_T = 64  # mode="auto" runs the fused recurrent kernel up to this sequence length

if HAS_TRITON:  # the launchers look the kernels up here (scripts/sm90_check.py records them here)
    import triton

    from .backward import _dqk_bwd, _du_intra_bwd
    from .output import _output_fwd
    from .recurrent import _recurrent_fwd
    from .state import _state_bwd, _state_fwd
    from .wy import _wy_bwd, _wy_fwd


class _RecurrentFn(torch.autograd.Function):
    """Forward by the fused recurrent kernel; backward by autograd through the fused chunk kernels
    (a recomputed forward, cheap at the lengths this runs)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV = state_tile(K, V)
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
            o, ht = delta_rule_triton_packed(*leaves[:5], ctx.scale, leaves[5], packed_offsets(None, B, T))
            pairs = [(y, dy) for y, dy in ((o, do), (ht, dht)) if dy is not None and y.requires_grad]
            wanted = [x for x in leaves if x is not None]
            if not pairs:  # e.g. an empty sequence whose state is not used
                return (*(None for _ in leaves), None)
            grads = torch.autograd.grad([y for y, _ in pairs], wanted, [dy for _, dy in pairs], allow_unused=True)
        grads = iter(grads)
        return (*(None if x is None else next(grads) for x in leaves), None)


def _state_tile(K: int, V: int, half: bool) -> tuple[int, int]:
    """The sequential kernels' state tile [BK = all of K, BV] (``state_tile``, narrower for fp32
    operands at K >= 128). sm_90 compiles at K = V = 128, 8
    warps (scripts/sm90_check.py): with bf16 operands ``half``, BV = 16/32/64 take 80/104/146
    registers in ``_state_fwd`` and 141/164/212 in ``_state_bwd``, none spilled; BV = 32 halves the
    redundant reads of W and k (every V tile reads them whole) and still fits two programs per
    SM. With fp32 operands (tf32x3 splits each in two) BV = 16 at K >= 128 keeps spills to a few
    hundred bytes, against ~0.5 KB more at BV = 32."""
    BK, BV = state_tile(K, V)
    return BK, 16 if K >= 128 and not half else BV


def _dot_mode(q: torch.Tensor) -> str:
    """The chunk kernels' ``_mm`` mode: bf16 operands for bf16 inputs (emulated under the
    interpreter), else ``dot_precision``'s TF32 mode. The products with Tm (the inverse) always take
    ``dot_precision``: its entries are where the chunk's precision is decided."""
    if q.dtype == torch.bfloat16:
        return "bf16-emu" if interpreting() else "bf16"
    return dot_precision(q.dtype)


def _chunk_gates(g: torch.Tensor | None, plan) -> torch.Tensor | None:
    """The chunk-local cumulative log gates in the chunk layout, fp32 ``[n_chunks * C, H]`` (a
    padded row adds 0, so it repeats its chunk's last G); None without gates. g: ``[rows, H]``.
    ``chunk_cumsum`` of ``kernels/_triton/plan.py``, shared with gla."""
    return None if g is None else chunk_cumsum(g, plan, "chunks")


def _wy_prepare(k, v, beta, G, plan, dot: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_wy_fwd`` over every chunk: ``Tm = (I + A)^{-1}`` fp32 ``[n_chunks, H, C, C]`` (zero
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
        BKT, BVT = chunk_tiles(K, V)
        _wy_fwd[(NC, H)](k, v, beta, beta if G is None else G, Tm, U, W, plan.cstart, plan.cend, H=H, K=K, V=V,
                         C=C, BS=UT_BLOCK, BKT=BKT, BVT=BVT, HAS_G=G is not None,
                         PREC="tf32" if dot.startswith("bf16") else dot, DOT=dot)
    return Tm, U, W


def _dims(q: torch.Tensor, K: int, V: int, gated: bool) -> dict:
    """The constexprs every chunk kernel takes."""
    H = q.shape[1]
    return dict(H=H, K=K, V=V, C=CHUNK, HAS_G=gated, PREC=dot_precision(q.dtype), DOT=_dot_mode(q))


def _state_pass(k, G, U, W, h0, plan, dot: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_state_fwd``, sequential over each sequence's chunks: the state entering every chunk
    ``S_in`` ``[n_chunks, H, K, V]``, the written values ``u = U - W S_in`` ``[rows, H, V]`` (both
    in U's dtype) and the final states ``[n_seqs, H, K, V]`` fp32. U, W from ``_wy_prepare``; h0
    ``[n_seqs, H, K, V]`` fp32 contiguous."""
    _, H, K = k.shape
    V = U.shape[-1]
    BK, BV = _state_tile(K, V, dot.startswith("bf16"))
    sdt = dict(device=k.device, dtype=U.dtype)  # the stored intermediates' dtype (see _wy_prepare)
    u = torch.empty(U.shape, **sdt)
    S_in = torch.empty(plan.n_chunks, H, K, V, **sdt)
    S_T = torch.empty(plan.n_seqs, H, K, V, device=k.device, dtype=torch.float32)
    _state_fwd[(triton.cdiv(V, BV), plan.n_seqs * H)](
        k, k if G is None else G, U, W, u, h0, S_in, S_T, plan.cstart, plan.cend, plan.coff, BK=BK, BV=BV,
        **_dims(k, K, V, G is not None))
    return S_in, u, S_T


def _output(q, k, G, u, S_in, scale: float, plan) -> torch.Tensor:
    """``_output_fwd``: ``o = scale [(q exp(G)) S_in + (q k^T exp(G_i - G_j), i >= j) u]``
    ``[rows, H, V]`` in q's dtype, given the entering states and written values of
    ``_state_pass``."""
    _, H, K = q.shape
    V = u.shape[-1]
    o = torch.empty(u.shape, device=q.device, dtype=q.dtype)  # stored once, in the inputs' dtype
    if plan.n_chunks:
        BKT, BVT = chunk_tiles(K, V)
        _output_fwd[(triton.cdiv(V, BVT), plan.n_chunks, H)](
            q, k, k if G is None else G, u, S_in, o, plan.cstart, plan.cend, scale, BKT=BKT, BVT=BVT,
            **_dims(q, K, V, G is not None))
    return o


class _ChunkFn(torch.autograd.Function):
    """delta_rule by the fused chunk kernels, forward and backward (see the module docstring), on
    packed sequences: q, k ``[rows, H, K]``, v ``[rows, H, V]``, beta and g ``[rows, H]``, h0
    ``[n_seqs, H, K, V]`` fp32, ``plan`` a ChunkPlan. Returns o ``[rows, H, V]`` in q's dtype and
    the final states ``[n_seqs, H, K, V]`` in fp32.

    Saved for the backward: the inputs, the chunk-layout G, Tm, U, W, the written values u and
    the entering states (fp32; nothing is recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, plan):
        q, k, v, beta, h0 = (x.contiguous() for x in (q, k, v, beta, h0))
        G = _chunk_gates(g, plan)
        Tm, U, W = _wy_prepare(k, v, beta, G, plan, _dot_mode(q))
        S_in, u, S_T = _state_pass(k, G, U, W, h0, plan, _dot_mode(q))
        o = _output(q, k, G, u, S_in, scale, plan)
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
        BKT, BVT = chunk_tiles(K, V)
        BK, BV = _state_tile(K, V, _dot_mode(q).startswith("bf16"))
        NK = triton.cdiv(K, BKT)
        dims = dict(H=H, K=K, V=V, C=C, HAS_G=gated, PREC=dot_precision(q.dtype), DOT=_dot_mode(q))
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
            _du_intra_bwd[(triton.cdiv(V, BVT), NC, H)](q, k, Gp, do, du, plan.cstart, plan.cend, scale,
                                                        BKT=BKT, BVT=BVT, **dims)
        _state_bwd[(triton.cdiv(V, BV), plan.n_seqs * H)](
            q, k, Gp, W, do, du, du if dS_T is None else dS_T, dH, dS0, plan.cstart, plan.cend, plan.coff, scale,
            BK=BK, BV=BV, HAS_DSF=dS_T is not None, **dims)
        if NC:
            _dqk_bwd[(NK, NC, H)](q, k, Gp, u, du, do, S_in, dH, dq, dk, dW, dgr, dgc, plan.cstart, plan.cend,
                                  scale, NK, BKT=BKT, BVT=BVT, **dims)
            _wy_bwd[(NC, H)](k, v, beta, Gp, Tm, U, W, du, dW, dk, dv, dbeta, dgw, plan.cstart, plan.cend, BKT=BKT,
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
    check_head_dims(K, V)
    if mode == "recurrent" or (mode == "auto" and T <= RECURRENT_MAX_T and cu_seqlens is None):
        if cu_seqlens is not None:
            return run_packed(_recurrent, cu_seqlens, (q, k, v, beta, g), initial_state, scale)
        return _recurrent(q, k, v, beta, g, scale, initial_state)
    offsets = packed_offsets(cu_seqlens, B, T)
    return delta_rule_triton_packed(q, k, v, beta, g, scale, initial_state, offsets)


def _recurrent(q, k, v, beta, g, scale, initial_state):
    if initial_state is None:
        B, _, H, K = q.shape
        initial_state = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    return _RecurrentFn.apply(q, k, v, beta, g, initial_state.float(), float(scale))
