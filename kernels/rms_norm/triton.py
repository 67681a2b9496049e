"""Triton kernels for rms_norm: a fused forward and backward, one group of channels per row.

    norm(u) = u * rstd,   rstd = 1 / sqrt(mean(u^2 over the group) + eps)
    GATE = 0:  y = norm(x) * w                      (no gate)
    GATE = 1:  y = norm(x) * w * silu(z)            (norm_before_gate, the default)
    GATE = 2:  y = norm(x * silu(z)) * w            (Mamba-2's gated norm)

Layout. ``x [..., D]`` is flattened to ``[M, D]`` rows (contiguous); with ``NG = D / G`` groups of
``G`` channels, a program of the forward handles ``ROWS`` rows of one group (grid: row blocks x
groups). A group up to ``MAX_BLOCK`` channels is held whole in registers (one ``[ROWS, BLOCK]``
tile, ``BLOCK = next_pow2(G)``); a larger group is walked in ``NB`` blocks of ``MAX_BLOCK``
channels twice (sum of squares, then the output), one row at a time.

Forward: ``u`` (x, or ``x * silu(z)`` for GATE = 2), ``rstd`` per row and group (stored, fp32
``[M, NG]``, for the backward), then ``y`` in x's dtype.

Backward. Kept from the forward: the inputs (x, z, w) and ``rstd``; ``u`` and ``norm(u)`` are
recomputed (one elementwise pass, cheaper than storing an fp32 ``[M, D]`` tensor). With
``n = u * rstd``, ``e = dy`` (``dy * silu(z)`` for GATE = 1) and ``dn = e * w``:

    du = rstd * (dn - n * mean(dn * n))           (the radial part of dn removed)
    dx = du (GATE 0, 1) or du * silu(z) (GATE 2)
    dz = dy * n * w * silu'(z) (GATE 1) or du * x * silu'(z) (GATE 2)
    dw = sum over rows of e * n

A fixed number of programs per group (a few per SM) strides over the row blocks; each keeps its
share of dw in registers and writes one fp32 partial row ``[n_programs, D]``, summed in PyTorch
(deterministic, no atomics). Groups larger than ``MAX_BLOCK`` take two passes per row (the
mean, then the gradients) and add their dw share block by block into the program's own
partial row (a read-modify-write in global memory, ordered by a barrier between rows).

Precision: everything in fp32 (loads are cast), outputs in the inputs' dtypes; offsets are
int64, so ``M * D`` may pass 2^31.
"""

from __future__ import annotations

import functools

import torch

from .._triton import HAS_TRITON, check_triton_inputs, next_pow2

MAX_BLOCK = 8192  # channels of one group held in registers at once (read at call time: tests lower it)
MAX_ROWS = 16  # rows per tile when groups are small
TILE_ELEMS = 2048  # target elements per [ROWS, BLOCK] tile

__all__ = ["MAX_BLOCK", "rms_norm_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _silu_parts(zb):
        """sigmoid(z) and silu(z) in fp32."""
        sig = 1.0 / (1.0 + tl.exp(-zb))
        return sig, zb * sig

    @triton.jit
    def _load_u(x, z, offs, m, GATE: tl.constexpr):
        """x (fp32), the gate's silu (ones without a gate) and u, the tensor that is normalised."""
        xb = tl.load(x + offs, mask=m, other=0.0).to(tl.float32)
        if GATE != 0:
            zb = tl.load(z + offs, mask=m, other=0.0).to(tl.float32)
            _, s = _silu_parts(zb)
        else:
            s = xb * 0.0 + 1.0
        if GATE == 2:
            u = xb * s
        else:
            u = xb
        return xb, s, u

    @triton.jit
    def _channel_block(base, rm, b, G: tl.constexpr, BLOCK: tl.constexpr):
        """Block ``b`` of BLOCK channels of a group of G: the channels (within the group), their
        mask, the offsets of the [ROWS, BLOCK] tile from each row's ``base`` and the tile's mask."""
        ch = b * BLOCK + tl.arange(0, BLOCK)
        cm = ch < G
        return ch, cm, base[:, None] + ch[None, :], rm[:, None] & cm[None, :]

    @triton.jit
    def _store_y(y, w, u, s, r, offs, m, cols, cm, GATE: tl.constexpr, HAS_W: tl.constexpr):
        out = u * r[:, None]
        if HAS_W:
            out = out * tl.load(w + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        if GATE == 1:
            out = out * s
        tl.store(y + offs, out.to(y.dtype.element_ty), mask=m)

    @triton.jit
    def _fwd(x, z, w, y, rstd, M, eps, D: tl.constexpr, G: tl.constexpr, NG: tl.constexpr,
             ROWS: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr, GATE: tl.constexpr,
             HAS_W: tl.constexpr):
        i_r, i_g = tl.program_id(0), tl.program_id(1)
        rows = i_r * ROWS + tl.arange(0, ROWS)
        rm = rows < M
        base = rows.to(tl.int64) * D + i_g * G  # [ROWS] first channel of the group in each row
        ar = tl.arange(0, BLOCK)
        if NB == 1:  # the whole group in registers
            cm = ar < G
            offs = base[:, None] + ar[None, :]
            m = rm[:, None] & cm[None, :]
            _, s, u = _load_u(x, z, offs, m, GATE)
            r = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / G + eps)
            _store_y(y, w, u, s, r, offs, m, i_g * G + ar, cm, GATE, HAS_W)
        else:  # blocks of BLOCK channels, twice
            ss = tl.zeros([ROWS], dtype=tl.float32)
            for b in range(0, NB):
                _, _, offs, m = _channel_block(base, rm, b, G, BLOCK)
                _, s, u = _load_u(x, z, offs, m, GATE)
                ss += tl.sum(u * u, axis=1)
            r = 1.0 / tl.sqrt(ss / G + eps)
            for b in range(0, NB):
                ch, cm, offs, m = _channel_block(base, rm, b, G, BLOCK)
                _, s, u = _load_u(x, z, offs, m, GATE)
                _store_y(y, w, u, s, r, offs, m, i_g * G + ch, cm, GATE, HAS_W)
        tl.store(rstd + rows.to(tl.int64) * NG + i_g, r, mask=rm)

    @triton.jit
    def _bwd_parts(x, z, w, dy, offs, m, cols, cm, r, GATE: tl.constexpr, HAS_W: tl.constexpr):
        """Recompute one tile: x, z, silu(z), sigmoid(z), n = norm(u), dy, e (dw's factor) and dn."""
        xb = tl.load(x + offs, mask=m, other=0.0).to(tl.float32)
        dyb = tl.load(dy + offs, mask=m, other=0.0).to(tl.float32)
        if GATE != 0:
            zb = tl.load(z + offs, mask=m, other=0.0).to(tl.float32)
            sig, s = _silu_parts(zb)
        else:
            zb = xb * 0.0
            sig = zb
            s = zb + 1.0
        if GATE == 2:
            n = xb * s * r[:, None]
        else:
            n = xb * r[:, None]
        if GATE == 1:
            e = dyb * s
        else:
            e = dyb
        if HAS_W:
            wb = tl.load(w + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        else:
            wb = tl.full([1, 1], 1.0, tl.float32)
        dn = e * wb
        return xb, zb, s, sig, n, dyb, e, dn, wb

    @triton.jit
    def _bwd_store(dx, dz, xb, zb, s, sig, n, dyb, dn, wb, r, c, offs, m, GATE: tl.constexpr):
        """dx and dz of one tile given c = mean(dn * n) per row."""
        du = r[:, None] * (dn - n * c[:, None])
        dsilu = sig * (1.0 + zb * (1.0 - sig))
        if GATE == 2:
            tl.store(dx + offs, (du * s).to(dx.dtype.element_ty), mask=m)
            tl.store(dz + offs, (du * xb * dsilu).to(dz.dtype.element_ty), mask=m)
        else:
            tl.store(dx + offs, du.to(dx.dtype.element_ty), mask=m)
            if GATE == 1:
                tl.store(dz + offs, (dyb * n * wb * dsilu).to(dz.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd(x, z, w, dy, rstd, dx, dz, dw_part, M, n_rb, D: tl.constexpr, G: tl.constexpr,
             NG: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
             GATE: tl.constexpr, HAS_W: tl.constexpr):
        i_p, i_g = tl.program_id(0), tl.program_id(1)
        n_p = tl.num_programs(0)
        ar = tl.arange(0, BLOCK)
        ar_r = tl.arange(0, ROWS)
        part = dw_part + i_p.to(tl.int64) * D + i_g * G  # this program's partial dw row
        if NB == 1:
            cm = ar < G
            cols = i_g * G + ar
            acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
            for rb in range(i_p, n_rb, n_p):
                rows = rb * ROWS + ar_r
                rm = rows < M
                offs = (rows.to(tl.int64) * D + i_g * G)[:, None] + ar[None, :]
                m = rm[:, None] & cm[None, :]
                r = tl.load(rstd + rows.to(tl.int64) * NG + i_g, mask=rm, other=0.0)
                xb, zb, s, sig, n, dyb, e, dn, wb = _bwd_parts(x, z, w, dy, offs, m, cols, cm, r, GATE, HAS_W)
                c = tl.sum(dn * n, axis=1) / G
                _bwd_store(dx, dz, xb, zb, s, sig, n, dyb, dn, wb, r, c, offs, m, GATE)
                if HAS_W:
                    acc += e * n
            if HAS_W:
                tl.store(part + ar, tl.sum(acc, axis=0), mask=cm)
        else:
            for rb in range(i_p, n_rb, n_p):
                rows = rb * ROWS + ar_r
                rm = rows < M
                base = rows.to(tl.int64) * D + i_g * G
                r = tl.load(rstd + rows.to(tl.int64) * NG + i_g, mask=rm, other=0.0)
                c = tl.zeros([ROWS], dtype=tl.float32)
                for b in range(0, NB):
                    ch, cm, offs, m = _channel_block(base, rm, b, G, BLOCK)
                    _, _, _, _, n, _, _, dn, _ = _bwd_parts(
                        x, z, w, dy, offs, m, i_g * G + ch, cm, r, GATE, HAS_W)
                    c += tl.sum(dn * n, axis=1)
                c = c / G
                for b in range(0, NB):
                    ch, cm, offs, m = _channel_block(base, rm, b, G, BLOCK)
                    xb, zb, s, sig, n, dyb, e, dn, wb = _bwd_parts(
                        x, z, w, dy, offs, m, i_g * G + ch, cm, r, GATE, HAS_W)
                    _bwd_store(dx, dz, xb, zb, s, sig, n, dyb, dn, wb, r, c, offs, m, GATE)
                    if HAS_W:
                        p = tl.load(part + ch, mask=cm, other=0.0)
                        tl.store(part + ch, p + tl.sum(e * n, axis=0), mask=cm)
                        # the next row's load of this partial row may fall to other threads of the
                        # program: make the store visible to all of them first
                        tl.debug_barrier()


def _tiles(M: int, G: int) -> tuple[int, int, int, int]:
    """(BLOCK, NB, ROWS, num_warps) for rows of M groups of G channels."""
    block = max(16, min(next_pow2(G), MAX_BLOCK))
    nb = -(-G // block)
    rows = 1 if nb > 1 else max(1, min(MAX_ROWS, TILE_ELEMS // block, next_pow2(max(M, 1))))
    num_warps = min(16, max(1, rows * block // 512))
    return block, nb, rows, num_warps


@functools.cache
def _n_programs(device: torch.device) -> int:
    """Backward programs per group: a few per SM on a GPU, a handful under the interpreter."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _forward(x, z, w, eps, G, GATE):
    """x, z ``[M, D]`` contiguous; w ``[D]`` or None. Returns y ``[M, D]`` (x's dtype), rstd ``[M, NG]`` fp32."""
    M, D = x.shape
    NG = D // G
    y = torch.empty_like(x)
    rstd = torch.empty(M, NG, device=x.device, dtype=torch.float32)
    if M == 0:
        return y, rstd
    BLOCK, NB, ROWS, warps = _tiles(M, G)
    _fwd[(triton.cdiv(M, ROWS), NG)](
        x, z if z is not None else x, w if w is not None else x, y, rstd, M, eps, D=D, G=G, NG=NG,
        ROWS=ROWS, BLOCK=BLOCK, NB=NB, GATE=GATE, HAS_W=w is not None, num_warps=warps)
    return y, rstd


def _backward(x, z, w, rstd, dy, G, GATE):
    M, D = x.shape
    NG = D // G
    dx = torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    dw = None
    if M == 0:
        if w is not None:
            dw = torch.zeros(D, device=x.device, dtype=torch.float32)
        return dx, dz, dw
    BLOCK, NB, ROWS, warps = _tiles(M, G)
    n_rb = triton.cdiv(M, ROWS)
    n_p = max(1, min(n_rb, _n_programs(x.device)))
    part = torch.zeros(n_p, D, device=x.device, dtype=torch.float32) if w is not None else None
    _bwd[(n_p, NG)](
        x, z if z is not None else x, w if w is not None else x, dy, rstd, dx, dz if dz is not None else dx,
        part if part is not None else rstd, M, n_rb, D=D, G=G, NG=NG, ROWS=ROWS, BLOCK=BLOCK, NB=NB,
        GATE=GATE, HAS_W=w is not None, num_warps=warps)
    if part is not None:
        dw = part.sum(0)
    return dx, dz, dw


class _RMSNormTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, w, eps, G, GATE):
        y, rstd = _forward(x, z, w, eps, G, GATE)
        ctx.save_for_backward(x, z, w, rstd)
        ctx.G, ctx.GATE = G, GATE
        return y

    @staticmethod
    def backward(ctx, dy):
        x, z, w, rstd = ctx.saved_tensors
        dx, dz, dw = _backward(x, z, w, rstd, dy.contiguous(), ctx.G, ctx.GATE)
        return dx, dz, None if dw is None else dw.to(w.dtype), None, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                    gate: torch.Tensor | None, norm_before_gate: bool,
                    group_size: int) -> torch.Tensor:
    """rms_norm through the fused kernels: x and gate flattened to rows ``[M, D]``, one autograd
    Function over the forward and backward kernels. Arguments as ``rms_norm`` validated them; y
    comes back in x's dtype (computed in fp32)."""
    check_triton_inputs(x=x, weight=weight, gate=gate)
    shape = x.shape
    D = shape[-1]
    x2 = x.reshape(-1, D).contiguous()
    z2 = None if gate is None else gate.reshape(-1, D).contiguous()
    w = None if weight is None else weight.contiguous()
    GATE = 0 if gate is None else (1 if norm_before_gate else 2)
    y = _RMSNormTritonFn.apply(x2, z2, w, float(eps), int(group_size), GATE)
    return y.reshape(shape)
