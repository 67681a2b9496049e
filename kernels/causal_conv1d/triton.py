"""Triton kernels for causal_conv1d: a fused forward (taps, bias, SiLU, state) and its backward.

    y_t[d] = act(bias[d] + sum_{w=0}^{W-1} weight[d, w] * x_{t-(W-1)+w}[d])

Layout. Every call is flattened to packed sequences: ``[B, T, D]`` becomes ``[B*T, D]`` with
offsets ``[0, T, 2T, ...]`` (or the caller's ``cu_seqlens``), so one set of kernels serves
batches and varlen alike. Each sequence is cut into time blocks of ``BT`` rows starting at its
first token; host-side tables give every block its rows ``[start, end)``, its sequence and the
sequence's first row ``bos``, so nothing can leak across a boundary (a tap that would read
before ``bos`` reads the sequence's own state instead) and empty sequences own no block. The
state of sequence ``n`` is ``[D, W-1]``, the ``W-1`` inputs before its first token, oldest
first: stream position ``c`` of "state ++ inputs" is ``state[c]`` for ``c < W-1`` and
``x[bos + c - (W-1)]`` after.

Forward:

1. ``_fwd`` (one program per time block and channel tile): the ``W`` taps unrolled (``W`` is a
   constexpr, up to ``MAX_WIDTH``), each a masked load of the shifted rows from x or, before
   ``bos``, from the state; bias; SiLU; stored in x's dtype.
2. ``_fwd_state`` (one program per sequence and channel tile): the final state, stream
   positions ``L .. L+W-2`` of the sequence (from the initial state when ``L < W-1``; the
   initial state itself for an empty sequence), copied in x's dtype.

Backward. Kept from the forward: only the inputs (x, weight, bias, initial state); the
pre-activations are recomputed (one more read of x, cheaper than storing them).

3. ``_bwd_dpre`` (per time block and channel tile): ``dpre = dy * silu'(pre)`` with ``pre``
   recomputed, written to an fp32 buffer (skipped without activation: ``dpre = dy``); the
   block's partial sums of dbias (``sum_t dpre_t``) and dweight (``sum_t dpre_t x_{t-(W-1)+w}``,
   state rows included), to ``[n_blocks, D]`` and ``[n_blocks, D, W]`` buffers that one
   ``torch.sum`` reduces (deterministic, no atomics).
4. ``_bwd_dx`` (per time block and channel tile): the transposed conv, reading dpre ahead,
   ``dx_p = sum_w weight[w] * dpre_{p+(W-1)-w}`` for ``p+(W-1)-w < eos``, plus the final
   state's gradient for the last ``W-1`` inputs of each sequence.
5. ``_bwd_dh0`` (per sequence and channel tile): d(initial_state), the taps of the first
   ``W-1`` outputs that read state entries, plus the final state's gradient for the entries
   that were passed through (``L < W-1``).

Precision: every sum in fp32; outputs and gradients in their input's dtype. Row offsets are
int64, so ``B*T*D`` may pass 2^31.
"""

from __future__ import annotations

import functools

import torch

from .._triton import HAS_TRITON, autotune_configs, check_triton_inputs, next_pow2
from .._triton.plan import packed_offsets

BT = 64  # rows (time steps) per block
MAX_BD = 64  # channels per program
MAX_WIDTH = 8  # the widest filter the kernels unroll

__all__ = ["BT", "MAX_WIDTH", "causal_conv1d_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    # 8 warps first (the one used untuned): at 4 and 2 warps the kernels with an initial state
    # spill (scripts/sm90_check.py: 840 B and 4.9 KB per thread for _fwd on sm_90)
    _WARPS = [{"num_warps": 8, "num_stages": 2}, {"num_warps": 4, "num_stages": 2}]

    @triton.jit
    def _block(bstart, bend, bbos, bseq, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
        """What a time-block program (grid: blocks, channel tiles) works on: its rows (int64,
        [BT]) and their mask, its sequence, the sequence's first row, its channels and mask."""
        i_b, i_d = tl.program_id(0), tl.program_id(1)
        s = tl.load(bstart + i_b).to(tl.int64)
        e = tl.load(bend + i_b).to(tl.int64)
        bos = tl.load(bbos + i_b).to(tl.int64)
        seq = tl.load(bseq + i_b).to(tl.int64)
        rows = s + tl.arange(0, BT).to(tl.int64)
        cols = i_d * BD + tl.arange(0, BD)
        return i_b, rows, rows < e, seq, bos, cols, cols < D

    @triton.jit
    def _tap(x, h0, rows, rm, seq, bos, cols, cm, tap, D: tl.constexpr, W: tl.constexpr,
             HAS_H0: tl.constexpr):
        """The input tap ``tap`` reads for output ``rows``: x at row ``rows - (W-1) + tap``, or the
        sequence's state entry for a row before ``bos`` (zero without a state); fp32 [BT, BD]."""
        p = rows - (W - 1) + tap
        inx = rm & (p >= bos)
        val = tl.load(x + p[:, None] * D + cols[None, :], mask=inx[:, None] & cm[None, :],
                      other=0.0).to(tl.float32)
        if HAS_H0:
            j = p - bos + (W - 1)  # stream position, in [0, W-1) where p < bos
            ins = rm & (p < bos)
            val += tl.load(h0 + (seq * D + cols[None, :]) * (W - 1) + j[:, None],
                           mask=ins[:, None] & cm[None, :], other=0.0).to(tl.float32)
        return val

    @triton.jit
    def _preact(x, w, b, h0, rows, rm, seq, bos, cols, cm, D: tl.constexpr, W: tl.constexpr,
                BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr):
        """bias + sum over taps, fp32 [BT, BD]."""
        acc = tl.zeros([BT, BD], dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        for tap in tl.static_range(W):
            wt = tl.load(w + cols * W + tap, mask=cm, other=0.0).to(tl.float32)
            acc += wt[None, :] * _tap(x, h0, rows, rm, seq, bos, cols, cm, tap, D, W, HAS_H0)
        return acc

    @triton.autotune(configs=autotune_configs(_WARPS), key=["D", "W", "BD", "ACT"])
    @triton.jit
    def _fwd(x, w, b, h0, y, bstart, bend, bbos, bseq, D: tl.constexpr, W: tl.constexpr,
             BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
             ACT: tl.constexpr):
        _, rows, rm, seq, bos, cols, cm = _block(bstart, bend, bbos, bseq, D, BT, BD)
        acc = _preact(x, w, b, h0, rows, rm, seq, bos, cols, cm, D, W, BT, BD, HAS_BIAS, HAS_H0)
        if ACT:
            acc = acc * tl.sigmoid(acc)
        tl.store(y + rows[:, None] * D + cols[None, :], acc.to(y.dtype.element_ty),
                 mask=rm[:, None] & cm[None, :])

    @triton.jit
    def _fwd_state(x, h0, ht, cu, D: tl.constexpr, W: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
                   HAS_H0: tl.constexpr):
        """Final state of one sequence: stream positions L .. L+W-2 ([BS, BD] tile, j x d)."""
        i_n, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
        j = tl.arange(0, BS).to(tl.int64)
        cols = i_d * BD + tl.arange(0, BD)
        jm, cm = j < W - 1, cols < D
        c = eos - bos + j  # stream position of final-state entry j
        fromx = jm & (c >= W - 1)
        val = tl.load(x + (bos + c - (W - 1))[:, None] * D + cols[None, :], mask=fromx[:, None] & cm[None, :],
                      other=0.0)
        if HAS_H0:
            froms = jm & (c < W - 1)
            val += tl.load(h0 + (i_n * D + cols[None, :]) * (W - 1) + c[:, None],
                           mask=froms[:, None] & cm[None, :], other=0.0).to(val.dtype)
        tl.store(ht + (i_n * D + cols[None, :]) * (W - 1) + j[:, None], val.to(ht.dtype.element_ty),
                 mask=jm[:, None] & cm[None, :])

    @triton.autotune(configs=autotune_configs(_WARPS), key=["D", "W", "BD", "ACT"])
    @triton.jit
    def _bwd_dpre(x, w, b, h0, dy, dpre, dwp, dbp, bstart, bend, bbos, bseq, D: tl.constexpr,
                  W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_H0: tl.constexpr, ACT: tl.constexpr):
        i_b, rows, rm, seq, bos, cols, cm = _block(bstart, bend, bbos, bseq, D, BT, BD)
        m = rm[:, None] & cm[None, :]
        g = tl.load(dy + rows[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if ACT:
            z = _preact(x, w, b, h0, rows, rm, seq, bos, cols, cm, D, W, BT, BD, HAS_BIAS, HAS_H0)
            sg = tl.sigmoid(z)
            g = g * sg * (1.0 + z * (1.0 - sg))  # silu'(z)
            tl.store(dpre + rows[:, None] * D + cols[None, :], g, mask=m)
        i_b64 = i_b.to(tl.int64)
        if HAS_BIAS:
            tl.store(dbp + i_b64 * D + cols, tl.sum(g, axis=0), mask=cm)
        for tap in tl.static_range(W):
            src = _tap(x, h0, rows, rm, seq, bos, cols, cm, tap, D, W, HAS_H0)
            tl.store(dwp + (i_b64 * D + cols) * W + tap, tl.sum(g * src, axis=0), mask=cm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["D", "W", "BD"])
    @triton.jit
    def _bwd_dx(w, dpre, dht, dx, bstart, bend, bbos, bseq, cu, D: tl.constexpr, W: tl.constexpr,
                BT: tl.constexpr, BD: tl.constexpr, HAS_DHT: tl.constexpr):
        _, rows, rm, seq, bos, cols, cm = _block(bstart, bend, bbos, bseq, D, BT, BD)
        eos = tl.load(cu + seq + 1).to(tl.int64)
        acc = tl.zeros([BT, BD], dtype=tl.float32)
        for tap in tl.static_range(W):
            t = rows + (W - 1) - tap  # the output that reads row p through this tap
            tm = rm & (t < eos)
            wt = tl.load(w + cols * W + tap, mask=cm, other=0.0).to(tl.float32)
            acc += wt[None, :] * tl.load(dpre + t[:, None] * D + cols[None, :], mask=tm[:, None] & cm[None, :],
                                         other=0.0).to(tl.float32)
        if HAS_DHT:
            j = rows - eos + (W - 1)  # final-state entry holding row p, when >= 0
            jm = rm & (j >= 0)
            acc += tl.load(dht + (seq * D + cols[None, :]) * (W - 1) + j[:, None], mask=jm[:, None] & cm[None, :],
                           other=0.0).to(tl.float32)
        tl.store(dx + rows[:, None] * D + cols[None, :], acc.to(dx.dtype.element_ty),
                 mask=rm[:, None] & cm[None, :])

    @triton.jit
    def _bwd_dh0(w, dpre, dht, dh0, cu, D: tl.constexpr, W: tl.constexpr, BS: tl.constexpr,
                 BD: tl.constexpr, HAS_DHT: tl.constexpr):
        i_n, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
        bos = tl.load(cu + i_n).to(tl.int64)
        L = tl.load(cu + i_n + 1).to(tl.int64) - bos
        j = tl.arange(0, BS).to(tl.int64)
        cols = i_d * BD + tl.arange(0, BD)
        jm, cm = j < W - 1, cols < D
        acc = tl.zeros([BS, BD], dtype=tl.float32)
        for tap in tl.static_range(W):
            t = j - tap  # local output reading state entry j through this tap
            tm = jm & (t >= 0) & (t < L)
            wt = tl.load(w + cols * W + tap, mask=cm, other=0.0).to(tl.float32)
            acc += wt[None, :] * tl.load(dpre + (bos + t)[:, None] * D + cols[None, :],
                                         mask=tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        if HAS_DHT:
            k = j - L  # final-state entry that still holds state entry j (L < W-1)
            km = jm & (k >= 0)
            acc += tl.load(dht + (i_n * D + cols[None, :]) * (W - 1) + k[:, None], mask=km[:, None] & cm[None, :],
                           other=0.0).to(tl.float32)
        tl.store(dh0 + (i_n * D + cols[None, :]) * (W - 1) + j[:, None], acc, mask=jm[:, None] & cm[None, :])


class _Plan:
    """Host-side block tables of one call: the rows, sequence and sequence start of every block."""

    def __init__(self, offsets: list[int], device: torch.device) -> None:
        starts, ends, bos_of, seq_of = [], [], [], []
        for n, (bos, eos) in enumerate(zip(offsets[:-1], offsets[1:])):
            for s in range(bos, eos, BT):
                starts.append(s)
                ends.append(min(s + BT, eos))
                bos_of.append(bos)
                seq_of.append(n)
        self.n_seqs = len(offsets) - 1
        self.n_blocks = len(starts)
        i64 = dict(device=device, dtype=torch.int64)
        self.cu = torch.tensor(offsets, **i64)
        self.bstart = torch.tensor(starts or [0], **i64)
        self.bend = torch.tensor(ends or [0], **i64)
        self.bbos = torch.tensor(bos_of or [0], **i64)
        self.bseq = torch.tensor(seq_of or [0], **i64)

    def tables(self) -> tuple[torch.Tensor, ...]:
        return self.bstart, self.bend, self.bbos, self.bseq


@functools.lru_cache(maxsize=64)
def _plan(offsets: tuple[int, ...], device: torch.device) -> _Plan:
    """Cached by shape: a decoding loop (T=1 every step) builds its tables once."""
    return _Plan(list(offsets), device)


def _bd(D: int) -> int:
    return max(16, min(MAX_BD, next_pow2(D)))


def _forward(x, weight, bias, h0, plan, act):
    """x [R, D] (packed rows), weight [D, W], bias [D] or None, h0 [N, D, W-1] or None ->
    (y [R, D] in x's dtype, final state [N, D, W-1] in x's dtype)."""
    R, D = x.shape
    W = weight.shape[1]
    BD = _bd(D)
    y = torch.empty_like(x)
    if plan.n_blocks:
        _fwd[(plan.n_blocks, triton.cdiv(D, BD))](
            x, weight, bias if bias is not None else weight, h0 if h0 is not None else x, y, *plan.tables(),
            D=D, W=W, BT=BT, BD=BD, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, ACT=act)
    ht = torch.empty(plan.n_seqs, D, W - 1, device=x.device, dtype=x.dtype)
    if W > 1 and plan.n_seqs:
        _fwd_state[(plan.n_seqs, triton.cdiv(D, BD))](
            x, h0 if h0 is not None else x, ht, plan.cu, D=D, W=W, BS=next_pow2(W - 1), BD=BD,
            HAS_H0=h0 is not None)
    return y, ht


def _backward(x, weight, bias, h0, dy, dht, plan, act):
    """Gradients (dx, dweight, dbias, dh0) in fp32 except dx (x's dtype); dbias / dh0 None when
    there is no bias / initial state."""
    R, D = x.shape
    W = weight.shape[1]
    BD = _bd(D)
    nd = triton.cdiv(D, BD)
    dev = x.device
    dx = torch.empty_like(x)
    nb = max(plan.n_blocks, 1)
    dwp = torch.zeros(nb, D, W, device=dev, dtype=torch.float32)
    dbp = torch.zeros(nb, D, device=dev, dtype=torch.float32) if bias is not None else None
    dpre = torch.empty(R, D, device=dev, dtype=torch.float32) if act else dy
    if plan.n_blocks:
        _bwd_dpre[(plan.n_blocks, nd)](
            x, weight, bias if bias is not None else weight, h0 if h0 is not None else x, dy, dpre,
            dwp, dbp if dbp is not None else dwp, *plan.tables(), D=D, W=W, BT=BT, BD=BD,
            HAS_BIAS=bias is not None, HAS_H0=h0 is not None, ACT=act)
        _bwd_dx[(plan.n_blocks, nd)](
            weight, dpre, dht if dht is not None else dy, dx, *plan.tables(), plan.cu, D=D, W=W, BT=BT, BD=BD,
            HAS_DHT=dht is not None and W > 1)
    dh0 = None
    if h0 is not None:
        dh0 = torch.zeros(plan.n_seqs, D, W - 1, device=dev, dtype=torch.float32)
        if W > 1 and plan.n_seqs:
            _bwd_dh0[(plan.n_seqs, nd)](
                weight, dpre, dht if dht is not None else dy, dh0, plan.cu, D=D, W=W, BS=next_pow2(W - 1),
                BD=BD, HAS_DHT=dht is not None)
    return dx, dwp.sum(0), None if dbp is None else dbp.sum(0), dh0


class _CausalConv1dTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, h0, plan, act, output_final_state):
        y, ht = _forward(x, weight, bias, h0, plan, act)
        ctx.save_for_backward(x, weight, bias, h0)
        ctx.plan, ctx.act = plan, act
        return y, (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, dy, dht):
        x, weight, bias, h0 = ctx.saved_tensors
        dx, dw, db, dh0 = _backward(x, weight, bias, h0, dy.contiguous(),
                                    None if dht is None else dht.contiguous(), ctx.plan, ctx.act)
        return (dx, dw.to(weight.dtype), None if db is None else db.to(bias.dtype),
                None if dh0 is None else dh0.to(h0.dtype), None, None, None)


def causal_conv1d_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
    initial_state: torch.Tensor | None, output_final_state: bool, cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """causal_conv1d through the fused kernels (``W <= MAX_WIDTH``): a batch flattened to packed
    sequences (offsets ``0, T, 2T, ...`` or ``cu_seqlens``), one autograd Function over the
    forward and backward passes. Arguments as ``causal_conv1d`` validated them; y and the final
    state (None unless ``output_final_state``) come back in x's dtype."""
    check_triton_inputs(x=x, weight=weight, bias=bias, initial_state=initial_state)
    B, T, D = x.shape
    W = weight.shape[1]
    if W > MAX_WIDTH:
        raise ValueError(f"impl='triton' supports filter widths W <= {MAX_WIDTH}, got weight of shape "
                         f"{list(weight.shape)}; use impl='chunk'")
    offsets = packed_offsets(cu_seqlens, B, T)
    plan = _plan(tuple(offsets), x.device)
    xs = x.reshape(B * T, D).contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    y, ht = _CausalConv1dTritonFn.apply(
        xs, weight.contiguous(), None if bias is None else bias.contiguous(), h0, plan,
        activation == "silu", output_final_state)
    return y.reshape(B, T, D), ht
