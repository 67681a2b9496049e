"""Triton kernels for linear_scan: a blocked associative scan forward and its reverse backward.

    h_t = exp(g_t) * h_{t-1} + x_t        elementwise over D channels

Layout. Every call is flattened to packed sequences: ``[B, T, D]`` becomes ``[B*T, D]`` with
offsets ``[0, T, 2T, ...]`` (or the caller's ``cu_seqlens``). One program handles one sequence
and one tile of ``BD`` channels (grid: channel tiles x sequences) and walks the sequence in
time blocks of ``BT`` steps, carrying the ``[BD]`` state from block to block in registers.
Empty sequences run no block: their final state is their initial state.

Forward (``_fwd``). Inside a block, the affine maps ``h -> a_t h + x_t`` (``a_t = exp(g_t)``)
compose associatively, ``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)``, so one
``tl.associative_scan`` over the ``[BT, BD]`` pairs gives, for every row, the cumulative decay
``A_t = a_1 ... a_t`` and the state started from zero ``B_t``; then ``h_t = A_t h_in + B_t``
with ``h_in`` the carried state, and the block's last row is the next carry. Rows past the end
of the sequence load ``(a, x) = (1, 0)``, the identity map, so the last row of a partial block
is the state at the last valid step. Decays are only multiplied (factors ``<= 1`` for
``g <= 0``): strong decay underflows to 0, nothing overflows.

Backward (``_bwd``). The adjoint ``lam_t = dh_t + a_{t+1} lam_{t+1}`` (``lam`` after the last
step is the gradient of the final state) is the same scan run backwards in time: blocks are
visited last to first and rows are loaded in reversed order (index arithmetic, no
``reverse=True``), with pairs ``(a_{t+1}, dh_t)``. Then ``dx_t = lam_t``,
``dg_t = lam_t a_t h_{t-1}`` (``h_0`` the initial state) and
``d(initial_state) = a_1 lam_1`` (the final-state gradient itself for an empty sequence).
Kept from the forward: g, the initial state and every state ``h`` in float32 (so ``dg`` uses
exact states even for bf16/fp16 inputs; for float32 inputs that buffer is the output itself);
the decays are recomputed.

Precision: all arithmetic in float32; outputs in the input dtype, the final state in float32.
Offsets are int64, so T * D may pass 2^31. Blocks are powers of two (``BT = 64``,
``BD`` = 16..64), legal on real GPUs.
"""

from __future__ import annotations

import functools

import torch

from .._triton import HAS_TRITON, autotune_configs, check_triton_inputs, next_pow2
from .._triton.plan import packed_offsets

BT = 64  # time steps per block

__all__ = ["BT", "linear_scan_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    # 8 warps first: _bwd spills at 4 warps (72-104 B) and 2 (1.2 KB) on sm_90 (scripts/sm90_check.py)
    _WARPS = [{"num_warps": 8, "num_stages": 1}, {"num_warps": 4, "num_stages": 1}]

    @triton.jit
    def _compose(a1, b1, a2, b2):
        """The affine map ``h -> a1 h + b1`` followed by ``h -> a2 h + b2``."""
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _program_tile(cu, D: tl.constexpr, BD: tl.constexpr):
        """This program's sequence ``i_n``, its rows ``[bos, eos)``, its BD channels and their mask."""
        i_d, i_n = tl.program_id(0), tl.program_id(1)
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
        cols = i_d * BD + tl.arange(0, BD)
        return i_n, bos, eos, cols, cols < D

    @triton.jit
    def _state_row(s, i_n, cols, cm, D: tl.constexpr, BD: tl.constexpr, HAS: tl.constexpr):
        """Row ``i_n`` of an ``[N, D]`` state at ``cols`` in fp32; zeros when the state is absent."""
        if HAS:
            row = tl.load(s + i_n * D + cols, mask=cm, other=0.0).to(tl.float32)
        else:
            row = tl.zeros([BD], dtype=tl.float32)
        return row

    @triton.autotune(configs=autotune_configs(_WARPS), key=["D", "BT", "BD"])
    @triton.jit
    def _fwd(x, g, h0, h, ht, cu, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
             HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
        """x, g [rows, D] (any float dtype); h0 [N, D] fp32; h [rows, D] fp32 out; ht [N, D] fp32 out."""
        i_n, bos, eos, cols, cm = _program_tile(cu, D, BD)
        carry = _state_row(h0, i_n, cols, cm, D, BD, HAS_H0)
        last = (tl.arange(0, BT) == BT - 1)[:, None]
        nblk = tl.cdiv(eos - bos, BT)
        for i in range(nblk):
            rows = bos + i * BT + tl.arange(0, BT)
            m = (rows < eos)[:, None] & cm[None, :]
            off = rows[:, None] * D + cols[None, :]
            a = tl.exp(tl.load(g + off, mask=m, other=0.0).to(tl.float32))  # 1 outside: identity
            u = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
            A, Bs = tl.associative_scan((a, u), 0, _compose)
            hb = A * carry[None, :] + Bs
            tl.store(h + off, hb, mask=m)
            carry = tl.sum(tl.where(last, hb, 0.0), axis=0)
        if STORE_HT:
            tl.store(ht + i_n * D + cols, carry, mask=cm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["D", "BT", "BD"])
    @triton.jit
    def _bwd(g, h0, h, dh, dht, dx, dg, dh0, cu, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
             HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr):
        """g [rows, D]; h0 [N, D] fp32; h [rows, D] fp32 (the forward's states); dh [rows, D];
        dht [N, D] fp32. Out: dx, dg [rows, D] fp32; dh0 [N, D] fp32 (when HAS_H0)."""
        i_n, bos, eos, cols, cm = _program_tile(cu, D, BD)
        carry = _state_row(dht, i_n, cols, cm, D, BD, HAS_DHT)  # lam after the last step
        first = _state_row(h0, i_n, cols, cm, D, BD, HAS_H0)
        last = (tl.arange(0, BT) == BT - 1)[:, None]
        nblk = tl.cdiv(eos - bos, BT)
        for j in range(nblk):
            i = nblk - 1 - j
            rows = bos + i * BT + (BT - 1 - tl.arange(0, BT))  # reversed: row 0 is the block's last step
            valid = rows < eos
            m = valid[:, None] & cm[None, :]
            off = rows[:, None] * D + cols[None, :]
            # a_{t+1}: 1 at the sequence's last step (the carry is then d(final state)) and outside
            mn = (rows + 1 < eos)[:, None] & cm[None, :]
            a_next = tl.exp(tl.load(g + off + D, mask=mn, other=0.0).to(tl.float32))
            d = tl.load(dh + off, mask=m, other=0.0).to(tl.float32)
            A, Bs = tl.associative_scan((a_next, d), 0, _compose)
            lam = A * carry[None, :] + Bs
            carry = tl.sum(tl.where(last, lam, 0.0), axis=0)  # lam at the block's first step
            a = tl.exp(tl.load(g + off, mask=m, other=0.0).to(tl.float32))
            mp = (rows > bos)[:, None] & m
            hp = tl.load(h + off - D, mask=mp, other=0.0)
            hp = tl.where((rows == bos)[:, None], first[None, :], hp)  # h_{t-1}; h0 before the first step
            tl.store(dx + off, lam, mask=m)
            tl.store(dg + off, lam * a * hp, mask=m)
        if HAS_H0:
            # a_1 lam_1 (a_1 = 1 for an empty sequence, whose lam is d(final state) itself)
            mb = (cols * 0 + bos < eos) & cm
            a1 = tl.exp(tl.load(g + bos * D + cols, mask=mb, other=0.0).to(tl.float32))
            tl.store(dh0 + i_n * D + cols, a1 * carry, mask=cm)


def _block_d(D: int) -> int:
    return max(16, min(64, next_pow2(D)))


@functools.lru_cache(maxsize=64)
def _offsets(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int64 offsets on the device, cached by shape (a decoding loop reuses one tensor)."""
    return torch.tensor(offsets, dtype=torch.int64, device=device)


class _LinearScanTritonFn(torch.autograd.Function):
    """x, g ``[rows, D]`` contiguous; h0 ``[N, D]`` fp32 contiguous or None; cu int64 ``[N+1]``."""

    @staticmethod
    def forward(ctx, x, g, h0, cu, output_final_state):
        rows, D = x.shape
        N = cu.numel() - 1
        BD = _block_d(D)
        h = torch.empty(rows, D, device=x.device, dtype=torch.float32)
        ht = torch.empty(N, D, device=x.device, dtype=torch.float32)
        _fwd[(triton.cdiv(D, BD), N)](x, g, h0 if h0 is not None else ht, h, ht, cu, D=D, BT=BT, BD=BD,
                                      HAS_H0=h0 is not None, STORE_HT=True)
        ctx.save_for_backward(g, h0, h)
        ctx.cu, ctx.x_dtype = cu, x.dtype
        out = h if x.dtype == torch.float32 else h.to(x.dtype)
        return out, (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, dh, dht):
        g, h0, h = ctx.saved_tensors
        cu = ctx.cu
        rows, D = h.shape
        N = cu.numel() - 1
        BD = _block_d(D)
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dx = torch.empty(rows, D, device=h.device, dtype=torch.float32)
        dg = torch.empty(rows, D, device=h.device, dtype=torch.float32)
        dh0 = torch.empty(N, D, device=h.device, dtype=torch.float32) if h0 is not None else None
        _bwd[(triton.cdiv(D, BD), N)](g, h0 if h0 is not None else h, h, dh,
                                      dht.contiguous() if dht is not None else h, dx, dg,
                                      dh0 if dh0 is not None else dx, cu, D=D, BT=BT, BD=BD,
                                      HAS_H0=h0 is not None, HAS_DHT=dht is not None)
        return dx.to(ctx.x_dtype), dg.to(g.dtype), dh0, None, None


def linear_scan_triton(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """linear_scan through the Triton kernels. Inputs as validated by ``postformer.kernels.linear_scan``.

    x, g ``[B, T, D]``; initial_state ``[B, D]`` (``[N, D]`` with ``cu_seqlens``) or None.
    Returns ``(h [B, T, D] in x's dtype, final state [B or N, D] fp32, or None)``.
    """
    check_triton_inputs(x=x, g=g, initial_state=initial_state)
    B, T, D = x.shape
    offsets = packed_offsets(cu_seqlens, B, T)
    cu = _offsets(tuple(offsets), x.device)
    xf = x.reshape(B * T, D).contiguous()
    gf = g.reshape(B * T, D).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    h, ht = _LinearScanTritonFn.apply(xf, gf, h0, cu, output_final_state)
    return h.reshape(B, T, D), ht
