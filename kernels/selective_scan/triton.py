"""Triton kernels for selective_scan (Mamba-1): a fused recurrent forward and a reverse-scan backward.

    delta_t   = softplus(dt_t + dt_bias)    (bias and softplus each optional)
    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[g(d), n] x_t[d]
    y_t[d]    = (sum_n C_t[g(d), n] h_t[d, n] + D[d] x_t[d]) * silu(z_t[d])

with ``g(d) = d // (D / G)`` the B/C group of channel d.

Layout and grid. Inputs are made contiguous: x, dt, z ``[B, T, D]``, B/C ``[B, T, G, N]``. One
program per (channel tile of ``BD`` channels, batch row); its state tile ``[BD, NP]`` (``NP`` =
N rounded up to a power of two, padded columns masked: A = 0 there, so the padded state stays 0)
lives in registers. ``BD`` is a power of two dividing ``D / G``, so a tile lies in one group and
reads one row of B and C per step.

Forward (``_fwd``): a loop over time, the softplus/bias, the D skip and the silu(z) gate fused.
When a backward will follow it also stores the state entering every block of ``CHK = 64`` steps
(``hck [B, n_blocks, D, N]`` fp32, 1/64 of all the states).

Backward (``_bwd``), the same grid, blocks of time in reverse. Per block: recompute the states
from its checkpoint forward, writing the state entering every step to a per-program scratch
``[CHK, BD, NP]`` (fp32, global memory), then walk the block backward with ``dh [BD, NP]`` in
registers (started from d(final state)):

    dy = dout * silu(z);  dz = dout * (C h + D x) * silu'(z)
    dh += dy C;  dC[n] = sum_d dy h_t;  dB[n] = sum_d dh (delta x)
    d(delta x) = sum_n dh B  ->  dx = d(delta x) delta + dy D,  ddelta = d(delta x) x
    dlogdecay = dh h_{t-1} exp(delta A)  ->  ddelta += sum_n dlogdecay A,  dA += dlogdecay delta
    dh <- dh exp(delta A);  ddt = ddelta * sigmoid(dt + bias) under softplus

Nothing is divided by a decay, so strong decay (``exp(delta A)`` underflowing to 0) is safe.
Reductions across programs go through per-program partial sums finished in PyTorch
(deterministic, no atomics): dB/dC ``[B, T, D/BD, N]`` summed over the tiles of a group;
dA ``[B, D, N]``, dD and d(dt_bias) ``[B, D]`` summed over the batch. The end of the reverse
walk is d(initial_state).

Precision: everything in fp32 registers; outputs in the input dtypes; the final state fp32.
Offsets are int64. float64 is not supported (``impl="auto"`` keeps it on the chunk path).
"""

from __future__ import annotations

import torch

from .._triton import HAS_TRITON, check_triton_inputs, next_pow2

CHK = 64  # time steps per checkpointed block (forward checkpoints, backward recompute)
MAX_N = 256

__all__ = ["CHK", "selective_scan_triton"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _softplus(v):
        return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))

    @triton.jit
    def _step_inputs(x, dt, bias_d, Bm, Cm, b, t, T, D: tl.constexpr, G: tl.constexpr, N: tl.constexpr,
                     grp, cols_d, dm, cols_n, nm, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """x_t, the raw step (dt + bias) and delta_t of the tile [BD], and B_t, C_t of its group [NP]."""
        row = b * T + t  # int64
        xv = tl.load(x + row * D + cols_d, mask=dm, other=0.0).to(tl.float32)
        raw = tl.load(dt + row * D + cols_d, mask=dm, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += bias_d
        if SOFTPLUS:
            delta = _softplus(raw)
        else:
            delta = raw
        bc = (row * G + grp) * N + cols_n
        Bv = tl.load(Bm + bc, mask=nm, other=0.0).to(tl.float32)
        Cv = tl.load(Cm + bc, mask=nm, other=0.0).to(tl.float32)
        return row, xv, raw, delta, Bv, Cv

    @triton.jit
    def _fwd(x, dt, A, Bm, Cm, Dp, z, bias, h0, y, ht, hck, T, NCK, D: tl.constexpr, G: tl.constexpr,
             N: tl.constexpr, DG: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, CHK: tl.constexpr,
             HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             HAS_H0: tl.constexpr, STORE_CK: tl.constexpr):
        i_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        cols_d = i_d * BD + tl.arange(0, BD)
        cols_n = tl.arange(0, NP)
        dm, nm = cols_d < D, cols_n < N
        grp = (i_d * BD) // DG
        tile = cols_d[:, None] * N + cols_n[None, :]
        tm = dm[:, None] & nm[None, :]
        Am = tl.load(A + tile, mask=tm, other=0.0).to(tl.float32)
        bias_d = tl.load(bias + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
        Dv = tl.load(Dp + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_D else 0.0
        h = tl.zeros([BD, NP], dtype=tl.float32)
        if HAS_H0:
            h += tl.load(h0 + b * D * N + tile, mask=tm, other=0.0).to(tl.float32)
        for t in range(T):
            if STORE_CK:
                if t % CHK == 0:
                    tl.store(hck + (b * NCK + t // CHK) * D * N + tile, h, mask=tm)
            row, xv, raw, delta, Bv, Cv = _step_inputs(x, dt, bias_d, Bm, Cm, b, t, T, D, G, N, grp, cols_d, dm,
                                                       cols_n, nm, HAS_BIAS, SOFTPLUS)
            h = tl.exp(delta[:, None] * Am) * h + (delta * xv)[:, None] * Bv[None, :]
            out = tl.sum(h * Cv[None, :], axis=1)
            if HAS_D:
                out += Dv * xv
            if HAS_Z:
                zv = tl.load(z + row * D + cols_d, mask=dm, other=0.0).to(tl.float32)
                out = out * zv * tl.sigmoid(zv)
            tl.store(y + row * D + cols_d, out.to(y.dtype.element_ty), mask=dm)
        tl.store(ht + b * D * N + tile, h, mask=tm)

    @triton.jit
    def _bwd(x, dt, A, Bm, Cm, Dp, z, bias, dy, dht, hck, ws, dx, ddt, dz, dBp, dCp, dAp, dDp, dbp, dh0,
             T, NCK, D: tl.constexpr, G: tl.constexpr, N: tl.constexpr, DG: tl.constexpr, BD: tl.constexpr,
             NP: tl.constexpr, CHK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr):
        i_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        NT: tl.constexpr = D // BD
        cols_d = i_d * BD + tl.arange(0, BD)
        cols_n = tl.arange(0, NP)
        dm, nm = cols_d < D, cols_n < N
        grp = (i_d * BD) // DG
        tile = cols_d[:, None] * N + cols_n[None, :]
        tm = dm[:, None] & nm[None, :]
        wtile = tl.arange(0, BD)[:, None] * NP + cols_n[None, :]
        wbase = ws + (b * NT + i_d) * CHK * BD * NP
        Am = tl.load(A + tile, mask=tm, other=0.0).to(tl.float32)
        bias_d = tl.load(bias + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
        Dv = tl.load(Dp + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_D else 0.0
        dh = tl.zeros([BD, NP], dtype=tl.float32)
        if HAS_DHT:
            dh += tl.load(dht + b * D * N + tile, mask=tm, other=0.0).to(tl.float32)
        dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
        dD_acc = tl.zeros([BD], dtype=tl.float32)
        db_acc = tl.zeros([BD], dtype=tl.float32)
        for cc in range(NCK):
            c = NCK - 1 - cc
            t0 = c * CHK
            steps = tl.minimum(T - t0, CHK)
            # recompute the block's states from its checkpoint; slot i keeps the state before step i
            h = tl.load(hck + (b * NCK + c) * D * N + tile, mask=tm, other=0.0)
            for i in range(steps):
                tl.store(wbase + i * BD * NP + wtile, h)
                row, xv, raw, delta, Bv, Cv = _step_inputs(x, dt, bias_d, Bm, Cm, b, t0 + i, T, D, G, N, grp,
                                                           cols_d, dm, cols_n, nm, HAS_BIAS, SOFTPLUS)
                h = tl.exp(delta[:, None] * Am) * h + (delta * xv)[:, None] * Bv[None, :]
            tl.debug_barrier()
            for j in range(steps):
                i = steps - 1 - j
                row, xv, raw, delta, Bv, Cv = _step_inputs(x, dt, bias_d, Bm, Cm, b, t0 + i, T, D, G, N, grp,
                                                           cols_d, dm, cols_n, nm, HAS_BIAS, SOFTPLUS)
                hp = tl.load(wbase + i * BD * NP + wtile)
                decay = tl.exp(delta[:, None] * Am)
                u = delta * xv
                h = decay * hp + u[:, None] * Bv[None, :]
                g_out = tl.load(dy + row * D + cols_d, mask=dm, other=0.0).to(tl.float32)
                if HAS_Z:
                    zv = tl.load(z + row * D + cols_d, mask=dm, other=0.0).to(tl.float32)
                    s = tl.sigmoid(zv)
                    full = tl.sum(h * Cv[None, :], axis=1)
                    if HAS_D:
                        full += Dv * xv
                    tl.store(dz + row * D + cols_d, g_out * full * s * (1.0 + zv * (1.0 - s)), mask=dm)
                    dyv = g_out * zv * s
                else:
                    dyv = g_out
                dh += dyv[:, None] * Cv[None, :]
                part = (row * NT + i_d) * N + cols_n
                tl.store(dCp + part, tl.sum(dyv[:, None] * h, axis=0), mask=nm)
                tl.store(dBp + part, tl.sum(dh * u[:, None], axis=0), mask=nm)
                du = tl.sum(dh * Bv[None, :], axis=1)
                dxv = du * delta
                if HAS_D:
                    dxv += dyv * Dv
                    dD_acc += dyv * xv
                tl.store(dx + row * D + cols_d, dxv, mask=dm)
                dlog = dh * hp * decay  # d/d(delta A)
                ddelta = du * xv + tl.sum(dlog * Am, axis=1)
                dA_acc += dlog * delta[:, None]
                dh = dh * decay
                if SOFTPLUS:
                    ddelta = ddelta * tl.sigmoid(raw)
                tl.store(ddt + row * D + cols_d, ddelta, mask=dm)
                db_acc += ddelta
            tl.debug_barrier()  # the next block overwrites the scratch
        tl.store(dh0 + b * D * N + tile, dh, mask=tm)
        tl.store(dAp + b * D * N + tile, dA_acc, mask=tm)
        tl.store(dDp + b * D + cols_d, dD_acc, mask=dm)
        tl.store(dbp + b * D + cols_d, db_acc, mask=dm)


def _tile(dim: int, groups: int, NP: int) -> int:
    """Channels per program: the largest power of two dividing D / G (a tile never straddles two
    groups), at most 64 and at most 4096 / NP (registers)."""
    per_group = dim // groups
    bd = per_group & -per_group  # largest power-of-two divisor
    return max(1, min(bd, 64, 4096 // NP))


def _meta(x, A, B):
    batch, T, dim = x.shape
    N, G = A.shape[1], B.shape[2]
    NP = max(2, next_pow2(N))
    BD = _tile(dim, G, NP)
    return batch, T, dim, N, G, NP, BD, triton.cdiv(T, CHK)


def _forward(x, dt, A, B, C, D, z, bias, h0, softplus, store_ck):
    batch, T, dim, N, G, NP, BD, NCK = _meta(x, A, B)
    y = torch.empty_like(x)
    ht = torch.empty(batch, dim, N, device=x.device, dtype=torch.float32)
    hck = torch.empty(batch, NCK, dim, N, device=x.device, dtype=torch.float32) if store_ck else ht
    _fwd[(dim // BD, batch)](
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x, bias if bias is not None else x,
        h0 if h0 is not None else x, y, ht, hck, T, NCK, D=dim, G=G, N=N, DG=dim // G, BD=BD, NP=NP, CHK=CHK,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        HAS_H0=h0 is not None, STORE_CK=store_ck)
    return y, ht, (hck if store_ck else None)


def _backward(x, dt, A, B, C, D, z, bias, hck, dy, dht, softplus):
    batch, T, dim, N, G, NP, BD, NCK = _meta(x, A, B)
    NT = dim // BD
    f32 = dict(device=x.device, dtype=torch.float32)
    ws = torch.empty(batch * NT, CHK, BD, NP, **f32)
    dx, ddt = torch.empty(batch, T, dim, **f32), torch.empty(batch, T, dim, **f32)
    dz = torch.empty(batch, T, dim, **f32) if z is not None else None
    dBp, dCp = torch.empty(batch, T, NT, N, **f32), torch.empty(batch, T, NT, N, **f32)
    dAp, dh0 = torch.empty(batch, dim, N, **f32), torch.empty(batch, dim, N, **f32)
    dDp, dbp = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    _bwd[(NT, batch)](
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x, bias if bias is not None else x,
        dy, dht if dht is not None else x, hck, ws, dx, ddt, dz if dz is not None else dx, dBp, dCp, dAp, dDp,
        dbp, dh0, T, NCK, D=dim, G=G, N=N, DG=dim // G, BD=BD, NP=NP, CHK=CHK, HAS_D=D is not None,
        HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus, HAS_DHT=dht is not None)
    # the tiles of one group are consecutive: [B, T, G, tiles per group, N] summed over the tiles
    dB = dBp.view(batch, T, G, NT // G, N).sum(3)
    dC = dCp.view(batch, T, G, NT // G, N).sum(3)
    return dx, ddt, dAp.sum(0), dB, dC, dDp.sum(0), dz, dbp.sum(0), dh0


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, bias, h0, softplus):
        y, ht, hck = _forward(x, dt, A, B, C, D, z, bias, h0, softplus, store_ck=True)
        ctx.save_for_backward(x, dt, A, B, C, D, z, bias, h0, hck)
        ctx.softplus = softplus
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        x, dt, A, B, C, D, z, bias, h0, hck = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dD, dz, db, dh0 = _backward(
            x, dt, A, B, C, D, z, bias, hck, dy.contiguous(), None if dht is None else dht.contiguous(),
            ctx.softplus)

        def cast(g, like):
            return None if like is None else g.to(like.dtype)

        return (cast(dx, x), cast(ddt, dt), cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), cast(dz, z),
                cast(db, bias), cast(dh0, h0), None)


def selective_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton path of ``selective_scan`` (inputs already validated by the public function).

    x, dt, z ``[B, T, D]``; A ``[D, N]``; B, C ``[B, T, N]`` or ``[B, T, G, N]``; D, dt_bias ``[D]``;
    initial_state ``[B, D, N]``. Returns y ``[B, T, D]`` in x's dtype and the final state
    ``[B, D, N]`` fp32 (None unless ``output_final_state``).
    """
    check_triton_inputs(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
    if A.shape[1] > MAX_N:
        raise ValueError(f"A has shape {list(A.shape)}: the Triton kernels take N <= {MAX_N}; use impl='chunk'")
    batch, T, dim = x.shape
    if T == 0:
        S = A.new_zeros(batch, dim, A.shape[1], dtype=torch.float32) if initial_state is None else \
            initial_state.float()
        return x.new_zeros(batch, 0, dim), (S if output_final_state else None)
    Bg = B.unsqueeze(2) if B.dim() == 3 else B
    Cg = C.unsqueeze(2) if C.dim() == 3 else C
    args = [t if t is None else t.contiguous() for t in (x, dt, A, Bg, Cg, D, z, dt_bias, initial_state)]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
    if needs_grad:
        y, S = _SelectiveScanFn.apply(*args, dt_softplus)
    else:
        y, S, _ = _forward(*args, dt_softplus, store_ck=False)
    return y, (S if output_final_state else None)
