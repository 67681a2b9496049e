"""Triton path of gla: chunked forward and backward, and a fused recurrent forward.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t

This package holds the host side (the launchers, the autograd Function, ``gla_triton``); the
kernels sit in one module per phase, each with its derivation: ``common.py`` (jit helpers),
``state.py`` (the state passes, forward and backward), ``output.py`` (scores
and output), ``recurrent.py`` (the fused recurrent forward) and ``backward.py`` (the
chunk-parallel gradients). ``chunk.py`` of the family is the PyTorch form of the same computation,
written as the same phases (``chunk_gates``, ``state_pass``, ``scores``, ``output``): each launcher
below has a twin there to test against (tests/kernels/test_gla_phases.py).

Layout. Every call is flattened to packed sequences: ``[B, T, H, D]`` becomes ``[B*T, H, D]``
with offsets ``[0, T, 2T, ...]`` (or the caller's ``cu_seqlens``), so one set of kernels serves
batches and varlen alike. Sequences are cut into chunks of ``BT = 64`` steps starting at each
sequence's first token; host-side tables (``kernels/_triton/plan.py``) list every chunk's first
and one-past-last row, so a kernel program handles one chunk of one head (one program per
sequence and chunk), and empty sequences own no chunk.

Forward (chunked), with G the chunk-local cumulative log gate (``G_i = g_1 + .. + g_i``):

1. ``_chunk_gates``: G for every chunk (``chunk_cumsum`` of ``kernels/_triton/plan.py``, PyTorch,
   shared with delta_rule).
2. ``_chunk_states`` (``_state_fwd``): the state entering every chunk (``state.py``).
3. ``_scores`` (``_scores_fwd``, per-key gates only): the intra-chunk scores A by sub-blocks
   (``output.py``).
4. ``_output`` (``_output_fwd``): ``o = scale * ((q * exp(G)) h_n + A v)`` (forming A itself for no gate or a
   scalar gate).

Backward (chunked). Kept from the forward: only the inputs (q, k, v, g, initial state) and the
final state; the chunk states ``h`` and the scores ``A`` are recomputed (one pass each over the
inputs, cheaper than storing ``[n_chunks, H, K, V]`` and ``[T, H, 64]`` fp32 tensors between
forward and backward): ``_state_fwd`` and ``_scores_fwd`` / ``_scores_full_fwd`` again, then

5. ``_state_bwd``: the reverse state pass (``state.py``).
6. ``_dA_bwd``, ``_dv_bwd``, ``_dqk_intra_bwd`` / ``_dqk_inter_bwd``: dA, dv, dq, dk
   (``backward.py``).
7. dg (in PyTorch, elementwise): with L the cumulative gate over the whole sequence, every term
   depends on L through ``exp(L_t - L_s)`` attached to a query q_t (or the final state) and a key
   k_s (or the initial state), so ``dL_t = q_t dq_t - k_t dk_t`` (+ ``sum_v S_T dS_T`` at the
   last step), and ``dg`` is its reverse cumulative sum within each sequence.

The fused recurrent kernel (``_recurrent_fwd``) runs the loop over time in registers;
``mode="auto"`` takes it when the longest sequence has at most ``RECURRENT_MAX_T`` steps. Its
backward is the chunked one.

Precision: accumulation in fp32; matmuls as ``dot_precision`` says (``tf32x3``, about fp32
accuracy, for fp32 inputs; TF32 for bf16/fp16). For bf16/fp16 inputs the products with the chunk
states (and their gradients) take operands in the input dtype (``_sdot``). Offsets are int64, so
T * H * K may pass 2^31.
"""

from __future__ import annotations

import torch

from ..._triton import (
    HAS_TRITON,
    check_head_dims,
    check_triton_inputs,
    chunk_tiles,
    dot_precision,
    interpreting,
    state_tile,
    tile,
)
from ..._triton.plan import ChunkPlan, chunk_cumsum, chunk_plan, packed_offsets

BT = 64  # chunk length
BC = 16  # sub-block length inside a chunk (tl.dot needs >= 16 on each side)
RECURRENT_MAX_T = 64  # mode="auto" runs the fused recurrent kernel up to this sequence length

__all__ = ["BT", "RECURRENT_MAX_T", "gla_triton"]

if HAS_TRITON:  # the launchers look the kernels up here (scripts/sm90_check.py records them here)
    import triton

    from .backward import _dA_bwd, _dqk_inter_bwd, _dqk_intra_bwd, _dv_bwd
    from .output import _output_fwd, _scores_full_fwd, _scores_fwd
    from .recurrent import _recurrent_fwd
    from .state import _state_bwd, _state_fwd


def _plan(offsets: tuple[int, ...], device: torch.device) -> ChunkPlan:
    return chunk_plan(offsets, device, BT)


def _gate_kind(g: torch.Tensor | None) -> int:
    return 0 if g is None else (2 if g.dim() == 3 else 1)  # flattened: [N, H, K] per-key, [N, H] scalar


def _chunk_gates(g: torch.Tensor | None, plan: ChunkPlan) -> torch.Tensor | None:
    """The chunk-local cumulative log gates G in the packed row layout of g (fp32 ``[rows, H]``
    or ``[rows, H, K]``; None without gates): ``chunk_cumsum``, shared with delta_rule."""
    return None if g is None else chunk_cumsum(g, plan, "rows")


def _chunk_states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht):
    """``_state_fwd``: the state entering every chunk [n_chunks, H, K, V] and the final states
    [N, H, K, V]."""
    BK, BV = chunk_tiles(K, V)
    # bf16/fp16 inputs keep the chunk states in their own dtype: half the traffic of the largest
    # intermediate (K V values per chunk and head) and bf16 tensor-core products with q, k, v, do.
    hdt = k.dtype if k.dtype in (torch.bfloat16, torch.float16) else torch.float32
    hbuf = torch.empty(max(plan.n_chunks, 1), H, K, V, device=k.device, dtype=hdt)
    ht = torch.empty(plan.n_seqs, H, K, V, device=k.device, dtype=torch.float32) if want_ht else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), plan.n_seqs * H)
    _state_fwd[grid](k, v, gc if gc is not None else k, h0 if h0 is not None else k, hbuf,
                     ht if ht is not None else hbuf, plan.cu, plan.coff, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                     GATE=GATE, HAS_H0=h0 is not None, STORE_HT=want_ht, PREC=prec)
    return hbuf, ht


def _half_states(hbuf: torch.Tensor) -> bool:
    """Products with the chunk states take half-precision operands (see ``_sdot``)."""
    return hbuf.dtype != torch.float32 and not interpreting()


def _scores(q, k, gc, plan, H, K, GATE, prec):
    """The causal intra-chunk scores A [rows, H, BT] (fp32, zero above the diagonal)."""
    BK = tile(K)
    if GATE != 2:  # no gate or a scalar gate: whole chunks (every entry read later is written)
        A = torch.empty(q.shape[0], H, BT, device=q.device, dtype=torch.float32)
        _scores_full_fwd[(plan.n_chunks, H)](q, k, gc if gc is not None else q, A, plan.cstart, plan.cend, H=H,
                                             K=K, BT=BT, BK=BK, GATE=GATE, PREC=prec)
        return A
    A = torch.zeros(q.shape[0], H, BT, device=q.device, dtype=torch.float32)  # upper blocks never written
    grid = (plan.n_chunks, (BT // BC) ** 2, H)
    _scores_fwd[grid](q, k, gc, A, plan.cstart, plan.cend, H=H, K=K, BT=BT, BC=BC, BK=BK, GATE=GATE, PREC=prec)
    return A


def _forward(q, k, v, g, h0, scale, plan, want_ht, mode):
    """q, k [N, H, K]; v [N, H, V]; g None, [N, H] or [N, H, K]; h0 [S, H, K, V] or None."""
    N, H, K = q.shape
    V = v.shape[-1]
    GATE = _gate_kind(g)
    prec = dot_precision(q.dtype)
    o = torch.empty(N, H, V, device=q.device, dtype=q.dtype)
    if mode == "recurrent":
        BK, BV = state_tile(K, V)
        ht = torch.empty(plan.n_seqs, H, K, V, device=q.device, dtype=torch.float32) if want_ht else None
        _recurrent_fwd[(triton.cdiv(V, BV), plan.n_seqs * H)](
            q, k, v, g if g is not None else q, h0 if h0 is not None else q, o, ht if ht is not None else o,
            plan.cu, scale, H=H, K=K, V=V, BK=BK, BV=BV, GATE=GATE, HAS_H0=h0 is not None, STORE_HT=want_ht)
        return o, ht
    gc = _chunk_gates(g, plan)
    hbuf, ht = _chunk_states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht)
    _output(q, k, v, gc, hbuf, o, scale, plan, GATE, prec)
    return o, ht


def _output(q, k, v, gc, hbuf, o, scale, plan, GATE, prec):
    """``_output_fwd`` (after ``_scores_fwd`` for per-key gates) into ``o`` [rows, H, V]: the
    outputs given the chunk-local gates ``gc`` and the entering states ``hbuf`` [n_chunks, H, K, V]."""
    H, K, V = q.shape[1], q.shape[2], v.shape[-1]
    if plan.n_chunks:
        fuse = GATE != 2  # per-key gates need the sub-block factorisation of _scores_fwd
        A = q if fuse else _scores(q, k, gc, plan, H, K, GATE, prec)
        BK, BV = chunk_tiles(K, V)
        _output_fwd[(plan.n_chunks, triton.cdiv(V, BV), H)](
            q, k, v, gc if gc is not None else q, hbuf, A, o, plan.cstart, plan.cend, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, PREC=prec, HALF=_half_states(hbuf), FUSE_A=fuse)
    return o


def _backward(q, k, v, g, h0, ht, do, dht, scale, plan):
    N, H, K = q.shape
    V = v.shape[-1]
    GATE = _gate_kind(g)
    prec = dot_precision(q.dtype)
    BK, BV = chunk_tiles(K, V)
    gc = _chunk_gates(g, plan)
    gcp = gc if gc is not None else q
    hbuf, _ = _chunk_states(k, v, gc, h0, plan, H, K, V, GATE, prec, want_ht=False)  # recomputed, not stored
    A = _scores(q, k, gc, plan, H, K, GATE, prec) if plan.n_chunks else None  # recomputed, not stored
    dhbuf = torch.empty_like(hbuf)
    dh0 = torch.empty(plan.n_seqs, H, K, V, device=q.device, dtype=torch.float32) if h0 is not None else None
    _state_bwd[(triton.cdiv(K, BK), triton.cdiv(V, BV), plan.n_seqs * H)](
        q, do, gcp, dht if dht is not None else do, dh0 if dh0 is not None else dhbuf, dhbuf, plan.cu, plan.coff,
        scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None, PREC=prec)
    dq = torch.zeros(N, H, K, device=q.device, dtype=torch.float32)
    dk = torch.zeros(N, H, K, device=q.device, dtype=torch.float32)
    dv = torch.zeros(N, H, V, device=q.device, dtype=torch.float32)
    if plan.n_chunks:
        dA = torch.zeros(N, H, BT, device=q.device, dtype=torch.float32)
        _dA_bwd[(plan.n_chunks, H)](do, v, dA, plan.cstart, plan.cend, scale, H=H, V=V, BT=BT, BV=BV, PREC=prec)
        _dv_bwd[(plan.n_chunks, triton.cdiv(V, BV), H)](
            k, do, gcp, A, dhbuf, dv, plan.cstart, plan.cend, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            GATE=GATE, PREC=prec, HALF=_half_states(hbuf))
        if GATE == 2:  # per-key gates: the intra-chunk part in sub-blocks (see _scores_fwd)
            _dqk_intra_bwd[(triton.cdiv(K, BK), plan.n_chunks * (BT // BC), H)](
                q, k, gcp, dA, dq, dk, plan.cstart, plan.cend, H=H, K=K, BT=BT, BC=BC, BK=BK, GATE=GATE, PREC=prec)
        _dqk_inter_bwd[(plan.n_chunks, triton.cdiv(K, BK), H)](
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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, scale: float,
    initial_state: torch.Tensor | None, output_final_state: bool, cu_seqlens: torch.Tensor | None,
    *, mode: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """gla through the kernels: the call flattened to packed sequences (the module docstring's
    layout), then one autograd Function whose forward is the chunked kernels (``mode="chunk"``)
    or the fused recurrent one (``"recurrent"``; ``"auto"`` when the longest sequence has at most
    ``RECURRENT_MAX_T`` steps). Arguments as ``gla`` validated them; o comes back in q's dtype,
    the final state fp32 (None unless ``output_final_state``)."""
    if mode not in ("auto", "chunk", "recurrent"):
        raise ValueError(f"mode={mode!r} is not one of ('auto', 'chunk', 'recurrent')")
    check_triton_inputs(q=q, k=k, v=v, g=g, initial_state=initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_head_dims(K, V)
    offsets = packed_offsets(cu_seqlens, B, T)
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
