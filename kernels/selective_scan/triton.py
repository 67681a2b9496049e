"""Triton kernels for selective_scan (Mamba-1): a blocked parallel scan over time, forward and backward.

    delta_t   = softplus(dt_t + dt_bias)    (bias and softplus each optional)
    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[g(d), n] x_t[d]
    y_t[d]    = (sum_n C_t[g(d), n] h_t[d, n] + D[d] x_t[d]) * silu(z_t[d])

with ``g(d) = d // (D / G)`` the B/C group of channel d.

Layout and grid. Inputs are made contiguous: x, dt, z ``[B, T, D]``, B/C ``[B, T, G, N]``. One
program per (channel tile of ``BD`` channels, batch row). ``NP`` = N rounded up to a power of two
(padded columns masked: A = 0 there, so the padded state stays 0). ``BD`` is a power of two
dividing ``D / G`` (a tile lies in one group and reads one row of B and C per step), capped so
that a ``[BT, BD, NP]`` tile holds at most ``FWD_TILE`` (forward) / ``BWD_TILE`` (backward) fp32
values.

Time is cut into blocks of ``BT`` steps (``BT`` = min(16, CHK), a power of two dividing ``CHK``,
halved while one channel's ``[BT, NP]`` exceeds the tile budget, e.g. 8 in the backward for N = 256).
Per block the kernel loads x, dt, z ``[BT, BD]`` and B, C ``[BT, NP]``, computes delta (bias,
softplus) and the pairs

    a_t = exp(delta_t A)   [BT, BD, NP],     b_t = delta_t x_t B_t   [BT, BD, NP]

and combines them over the time axis with ``tl.associative_scan`` of the operator
``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``; the inclusive prefixes ``(P_t, Q_t)`` give every
state of the block at once, ``h_t = P_t h_in + Q_t`` with ``h_in`` the state entering the block
(carried in registers from block to block). Rows past ``T`` get delta = 0, i.e. the identity
pair (1, 0), so the last row of a block is always the state after its last valid step.

Forward (``_fwd``): the scan above with the softplus/bias, the D skip and the silu(z) gate fused:
``y_t = (sum_n C_t h_t + D x_t) silu(z_t)``. When a backward will follow it also stores the state
entering every block of ``CHK = 64`` steps (``hck [B, n_ck, D, N]`` fp32, 1/64 of all the states).

Backward (``_bwd``), the same grid, checkpoint blocks in reverse. Per checkpoint block: from its
checkpoint, ``tl.reduce`` of the same pairs over each time block gives the state entering every
time block (``CHK / BT`` states of ``[BD, NP]`` kept in a per-program fp32 scratch in global memory).
Then the time blocks are walked in reverse, each fully parallel over its ``BT`` rows:

* states: the scan of the pairs shifted by one row, ``(a_{t-1}, b_{t-1})`` (identity in row 0),
  gives the state entering each step ``h_{t-1} = P'_t h_in + Q'_t``; then ``h_t = a_t h_{t-1} + b_t``.
* state gradient: with ``g_t = dy_t C_t`` (``dy = dout silu(z)``) the direct gradient of h_t and
  ``S_t`` the gradient reaching h_t from later steps, ``S_t = a_{t+1} (g_{t+1} + S_{t+1})``: a
  reverse ``tl.associative_scan`` of the pairs ``(a_{t+1}, a_{t+1} g_{t+1})`` (identity in the
  last row) started from the carry ``S`` of the next block (d(final state) at the end);
  ``dh_t = g_t + S_t``, and the carry into the previous block is ``a_{t0} dh_{t0}``.
* per row, all vectorised:

    dz = dout (C h + D x) silu'(z);  dC[n] = sum_d dy h;  dB[n] = sum_d dh (delta x)
    d(delta x) = sum_n dh B  ->  dx = d(delta x) delta + dy D,  ddelta = d(delta x) x
    dlogdecay = dh a_t h_{t-1}  ->  ddelta += sum_n dlogdecay A,  dA += dlogdecay delta
    ddt = ddelta * sigmoid(dt + bias) under softplus

Nothing is divided by a decay and the only exponentials are the decays ``exp(delta A)`` themselves
(<= 1 for the usual A <= 0), so strong decay (``exp(delta A)`` underflowing to 0) is safe. Reductions across programs go through per-program
partial sums finished in PyTorch (deterministic, no atomics): dB/dC ``[B, T, D/BD, N]`` summed
over the tiles of a group; dA ``[B, D, N]``, dD and d(dt_bias) ``[B, D]`` summed over the batch.
The carry left after the first block is d(initial_state).

Precision: everything in fp32 registers; outputs in the input dtypes; the final state fp32.
Offsets are int64. float64 is not supported (``impl="auto"`` keeps it on the chunk path).
"""

from __future__ import annotations

import torch

from .._triton import HAS_TRITON, autotune_configs, check_triton_inputs, next_pow2

CHK = 64  # time steps per checkpointed block (forward checkpoints, backward recompute); a power of two
BT = 16  # time steps per parallel-scan block (capped at CHK); a power of two
FWD_TILE = 4096  # at most this many fp32 values in a [BT, BD, NP] tile of the forward
BWD_TILE = 2048  # ... and of the backward (more such tiles live at once there)
MAX_N = 256

__all__ = ["CHK", "selective_scan_triton"]

_WARPS = [dict(num_warps=4), dict(num_warps=8)]

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _softplus(v):
        return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))

    @triton.jit
    def _combine(a1, b1, a2, b2):
        """(a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2."""
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _rows_d(p, r, ok, cols_d, dm, D: tl.constexpr):
        """Rows r [BT] (int64 offsets into [B*T]) of a [B, T, D] tensor at the tile's channels: [BT, BD] fp32."""
        return tl.load(p + r[:, None] * D + cols_d[None, :], mask=ok[:, None] & dm[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _rows_n(p, r, ok, grp, cols_n, nm, G: tl.constexpr, N: tl.constexpr):
        """Rows r [BT] of a [B, T, G, N] tensor at group grp: [BT, NP] fp32."""
        off = (r[:, None] * G + grp) * N + cols_n[None, :]
        return tl.load(p + off, mask=ok[:, None] & nm[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _rows_delta(dt, r, ok, cols_d, dm, bias_d, D: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr):
        """The raw step dt + bias and delta [BT, BD]; delta is 0 on rows that are not ok (identity step)."""
        raw = _rows_d(dt, r, ok, cols_d, dm, D)
        if HAS_BIAS:
            raw += bias_d[None, :]
        if SOFTPLUS:
            delta = _softplus(raw)
        else:
            delta = raw
        delta = tl.where(ok[:, None] & dm[None, :], delta, 0.0)
        return raw, delta

    @triton.jit
    def _channel_tile(A, bias, i_d, D: tl.constexpr, N: tl.constexpr, DG: tl.constexpr, BD: tl.constexpr,
              NP: tl.constexpr, HAS_BIAS: tl.constexpr):
        """A program's channel tile: channels cols_d [BD] and states cols_n [NP] with their masks,
        its B/C group, the [BD, NP] offsets and mask of A and of a state tile, A [BD, NP] and the
        dt bias [BD] (zeros without one), in fp32."""
        cols_d = i_d * BD + tl.arange(0, BD)
        cols_n = tl.arange(0, NP)
        dm, nm = cols_d < D, cols_n < N
        grp = (i_d * BD) // DG
        tile = cols_d[:, None] * N + cols_n[None, :]
        tm = dm[:, None] & nm[None, :]
        Am = tl.load(A + tile, mask=tm, other=0.0).to(tl.float32)
        bias_d = tl.load(bias + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros([BD], tl.float32)
        return cols_d, cols_n, dm, nm, grp, tile, tm, Am, bias_d

    @triton.jit
    def _block_inputs(x, dt, Bm, Cm, Am, bias_d, b, rows, T, cols_d, dm, grp, cols_n, nm, D: tl.constexpr,
                      G: tl.constexpr, N: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """One time block's inputs: row offsets r, validity ok [BT] and m2 [BT, BD], x, the raw
        step and delta [BT, BD], B and C of the group [BT, NP], and the decays exp(delta A)
        [BT, BD, NP] (1 on rows past T, where delta is 0)."""
        ok = rows < T
        r = b * T + rows
        m2 = ok[:, None] & dm[None, :]
        xv = _rows_d(x, r, ok, cols_d, dm, D)
        raw, delta = _rows_delta(dt, r, ok, cols_d, dm, bias_d, D, HAS_BIAS, SOFTPLUS)
        Bv = _rows_n(Bm, r, ok, grp, cols_n, nm, G, N)
        Cv = _rows_n(Cm, r, ok, grp, cols_n, nm, G, N)
        a = tl.exp(delta[:, :, None] * Am[None, :, :])
        return ok, r, m2, xv, raw, delta, Bv, Cv, a

    @triton.jit
    def _rows_gate(dout, z, r, ok, cols_d, dm, D: tl.constexpr, HAS_Z: tl.constexpr):
        """dy = dout silu(z) [BT, BD] (dout where there is no gate), 0 on rows that are not ok."""
        g = _rows_d(dout, r, ok, cols_d, dm, D)
        if HAS_Z:
            zv = _rows_d(z, r, ok, cols_d, dm, D)
            g = g * zv * tl.sigmoid(zv)
        return g

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BD", "NP", "BT"])
    @triton.jit
    def _fwd(x, dt, A, Bm, Cm, Dp, z, bias, h0, y, ht, hck, T, NCK, D: tl.constexpr, G: tl.constexpr,
             N: tl.constexpr, DG: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr,
             CHK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
             SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CK: tl.constexpr):
        i_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        cols_d, cols_n, dm, nm, grp, tile, tm, Am, bias_d = _channel_tile(A, bias, i_d, D, N, DG, BD, NP, HAS_BIAS)
        Dv = tl.load(Dp + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BD], tl.float32)
        h = tl.zeros([BD, NP], dtype=tl.float32)
        if HAS_H0:
            h += tl.load(h0 + b * D * N + tile, mask=tm, other=0.0).to(tl.float32)
        it = tl.arange(0, BT)
        last = (it == BT - 1)[:, None, None]
        for c in range(NCK):
            if STORE_CK:
                tl.store(hck + (b * NCK + c) * D * N + tile, h, mask=tm)
            for k in range(0, tl.minimum(T - c * CHK, CHK), BT):
                ok, r, m2, xv, raw, delta, Bv, Cv, a = _block_inputs(
                    x, dt, Bm, Cm, Am, bias_d, b, c * CHK + k + it, T, cols_d, dm, grp, cols_n, nm, D, G, N,
                    HAS_BIAS, SOFTPLUS)
                bb = (delta * xv)[:, :, None] * Bv[:, None, :]
                P, Q = tl.associative_scan((a, bb), 0, _combine)
                hs = P * h[None, :, :] + Q  # [BT, BD, NP]: the state after each step
                out = tl.sum(hs * Cv[:, None, :], axis=2)
                if HAS_D:
                    out += Dv[None, :] * xv
                if HAS_Z:
                    zv = _rows_d(z, r, ok, cols_d, dm, D)
                    out = out * zv * tl.sigmoid(zv)
                tl.store(y + r[:, None] * D + cols_d[None, :], out.to(y.dtype.element_ty), mask=m2)
                h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # padded rows are identity steps
        tl.store(ht + b * D * N + tile, h, mask=tm)

    @triton.autotune(configs=autotune_configs(_WARPS), key=["BD", "NP", "BT"])
    @triton.jit
    def _bwd(x, dt, A, Bm, Cm, Dp, z, bias, dy, dht, hck, ws, dx, ddt, dz, dBp, dCp, dAp, dDp, dbp, dh0,
             T, NCK, D: tl.constexpr, G: tl.constexpr, N: tl.constexpr, DG: tl.constexpr, BD: tl.constexpr,
             NP: tl.constexpr, BT: tl.constexpr, CHK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr):
        i_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        NT: tl.constexpr = D // BD
        NS: tl.constexpr = CHK // BT
        cols_d, cols_n, dm, nm, grp, tile, tm, Am, bias_d = _channel_tile(A, bias, i_d, D, N, DG, BD, NP, HAS_BIAS)
        wtile = tl.arange(0, BD)[:, None] * NP + cols_n[None, :]
        wbase = ws + (b * NT + i_d) * NS * BD * NP
        Dv = tl.load(Dp + cols_d, mask=dm, other=0.0).to(tl.float32) if HAS_D else tl.zeros([BD], tl.float32)
        carry = tl.zeros([BD, NP], dtype=tl.float32)  # d loss / d(state leaving the current block)
        if HAS_DHT:
            carry += tl.load(dht + b * D * N + tile, mask=tm, other=0.0).to(tl.float32)
        dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
        dD_acc = tl.zeros([BD], dtype=tl.float32)
        db_acc = tl.zeros([BD], dtype=tl.float32)
        it = tl.arange(0, BT)
        first = (it == 0)[:, None, None]
        for cc in range(NCK):
            c = NCK - 1 - cc
            nsb = (tl.minimum(T - c * CHK, CHK) + BT - 1) // BT  # time blocks in this checkpoint block
            # the state entering each time block, from the checkpoint: one reduction per block
            h = tl.load(hck + (b * NCK + c) * D * N + tile, mask=tm, other=0.0)
            for k in range(nsb):
                tl.store(wbase + k * BD * NP + wtile, h)
                rows = c * CHK + k * BT + it
                ok = rows < T
                r = b * T + rows
                xv = _rows_d(x, r, ok, cols_d, dm, D)
                raw, delta = _rows_delta(dt, r, ok, cols_d, dm, bias_d, D, HAS_BIAS, SOFTPLUS)
                Bv = _rows_n(Bm, r, ok, grp, cols_n, nm, G, N)
                a = tl.exp(delta[:, :, None] * Am[None, :, :])
                bb = (delta * xv)[:, :, None] * Bv[:, None, :]
                Pa, Pb = tl.reduce((a, bb), 0, _combine)
                h = Pa * h + Pb
            tl.debug_barrier()
            for kk in range(nsb):
                k = nsb - 1 - kk
                h_in = tl.load(wbase + k * BD * NP + wtile)
                rows = c * CHK + k * BT + it  # this block's rows
                ok, r, m2, xv, raw, delta, Bv, Cv, a = _block_inputs(
                    x, dt, Bm, Cm, Am, bias_d, b, rows, T, cols_d, dm, grp, cols_n, nm, D, G, N, HAS_BIAS, SOFTPLUS)
                u = delta * xv
                # the state entering each step: the scan of the pairs one row earlier (identity in row 0)
                okp = (it >= 1) & (rows - 1 < T)
                xp = _rows_d(x, r - 1, okp, cols_d, dm, D)
                _rawp, dp = _rows_delta(dt, r - 1, okp, cols_d, dm, bias_d, D, HAS_BIAS, SOFTPLUS)
                Bp = _rows_n(Bm, r - 1, okp, grp, cols_n, nm, G, N)
                P, Q = tl.associative_scan((tl.exp(dp[:, :, None] * Am[None, :, :]),
                                            (dp * xp)[:, :, None] * Bp[:, None, :]), 0, _combine)
                hp = P * h_in[None, :, :] + Q
                hs = a * hp + u[:, :, None] * Bv[:, None, :]
                gout = _rows_d(dy, r, ok, cols_d, dm, D)
                if HAS_Z:
                    zv = _rows_d(z, r, ok, cols_d, dm, D)
                    s = tl.sigmoid(zv)
                    full = tl.sum(hs * Cv[:, None, :], axis=2)
                    if HAS_D:
                        full += Dv[None, :] * xv
                    tl.store(dz + r[:, None] * D + cols_d[None, :], gout * full * s * (1.0 + zv * (1.0 - s)),
                             mask=m2)
                    dyv = gout * zv * s
                else:
                    dyv = gout
                # the gradient reaching each state from later steps: a reverse scan of the pairs one row later
                okn = (it < BT - 1) & (rows + 1 < T)
                _rawn, dn = _rows_delta(dt, r + 1, okn, cols_d, dm, bias_d, D, HAS_BIAS, SOFTPLUS)
                gn = _rows_gate(dy, z, r + 1, okn, cols_d, dm, D, HAS_Z)
                Cn = _rows_n(Cm, r + 1, okn, grp, cols_n, nm, G, N)
                an = tl.exp(dn[:, :, None] * Am[None, :, :])
                R1, R2 = tl.associative_scan((an, an * (gn[:, :, None] * Cn[:, None, :])), 0, _combine,
                                             reverse=True)
                dh = dyv[:, :, None] * Cv[:, None, :] + R1 * carry[None, :, :] + R2  # [BT, BD, NP]
                part = (r[:, None] * NT + i_d) * N + cols_n[None, :]
                pm = ok[:, None] & nm[None, :]
                tl.store(dCp + part, tl.sum(dyv[:, :, None] * hs, axis=1), mask=pm)
                tl.store(dBp + part, tl.sum(dh * u[:, :, None], axis=1), mask=pm)
                du = tl.sum(dh * Bv[:, None, :], axis=2)
                dxv = du * delta
                if HAS_D:
                    dxv += dyv * Dv[None, :]
                    dD_acc += tl.sum(dyv * xv, axis=0)
                tl.store(dx + r[:, None] * D + cols_d[None, :], dxv, mask=m2)
                dlog = dh * a * hp  # d/d(delta A)
                ddelta = du * xv + tl.sum(dlog * Am[None, :, :], axis=2)
                dA_acc += tl.sum(dlog * delta[:, :, None], axis=0)
                if SOFTPLUS:
                    ddelta = ddelta * tl.sigmoid(raw)
                ddelta = tl.where(m2, ddelta, 0.0)
                tl.store(ddt + r[:, None] * D + cols_d[None, :], ddelta, mask=m2)
                db_acc += tl.sum(ddelta, axis=0)
                carry = tl.sum(tl.where(first, a * dh, 0.0), axis=0)
            tl.debug_barrier()  # the next checkpoint block overwrites the scratch
        tl.store(dh0 + b * D * N + tile, carry, mask=tm)
        tl.store(dAp + b * D * N + tile, dA_acc, mask=tm)
        tl.store(dDp + b * D + cols_d, dD_acc, mask=dm)
        tl.store(dbp + b * D + cols_d, db_acc, mask=dm)


def _tile(dim: int, groups: int, NP: int, bt: int, budget: int) -> int:
    """Channels per program: the largest power of two dividing D / G (a tile never straddles two
    groups), at most 64 and at most budget / (BT NP) (registers)."""
    per_group = dim // groups
    bd = per_group & -per_group  # largest power-of-two divisor
    return max(1, min(bd, 64, budget // (bt * NP)))


def _meta(x, A, B, budget):
    if CHK < 1 or CHK & (CHK - 1):
        raise ValueError(f"CHK = {CHK} must be a power of two")
    batch, T, dim = x.shape
    N, G = A.shape[1], B.shape[2]
    NP = max(2, next_pow2(N))
    bt = min(next_pow2(BT), CHK)
    while bt > 2 and bt * NP > budget:  # large N: shorter time blocks rather than register spills
        bt //= 2
    BD = _tile(dim, G, NP, bt, budget)
    return batch, T, dim, N, G, NP, BD, bt, triton.cdiv(T, CHK)


def _forward(x, dt, A, B, C, D, z, bias, h0, softplus, store_ck):
    batch, T, dim, N, G, NP, BD, bt, NCK = _meta(x, A, B, FWD_TILE)
    y = torch.empty_like(x)
    ht = torch.empty(batch, dim, N, device=x.device, dtype=torch.float32)
    hck = torch.empty(batch, NCK, dim, N, device=x.device, dtype=torch.float32) if store_ck else ht
    _fwd[(dim // BD, batch)](
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x, bias if bias is not None else x,
        h0 if h0 is not None else x, y, ht, hck, T, NCK, D=dim, G=G, N=N, DG=dim // G, BD=BD, NP=NP, BT=bt,
        CHK=CHK, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        HAS_H0=h0 is not None, STORE_CK=store_ck)
    return y, ht, (hck if store_ck else None)


def _backward(x, dt, A, B, C, D, z, bias, hck, dy, dht, softplus):
    batch, T, dim, N, G, NP, BD, bt, NCK = _meta(x, A, B, BWD_TILE)
    NT = dim // BD
    f32 = dict(device=x.device, dtype=torch.float32)
    ws = torch.empty(batch * NT, CHK // bt, BD, NP, **f32)
    dx, ddt = torch.empty(batch, T, dim, **f32), torch.empty(batch, T, dim, **f32)
    dz = torch.empty(batch, T, dim, **f32) if z is not None else None
    dBp, dCp = torch.empty(batch, T, NT, N, **f32), torch.empty(batch, T, NT, N, **f32)
    dAp, dh0 = torch.empty(batch, dim, N, **f32), torch.empty(batch, dim, N, **f32)
    dDp, dbp = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    _bwd[(NT, batch)](
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x, bias if bias is not None else x,
        dy, dht if dht is not None else x, hck, ws, dx, ddt, dz if dz is not None else dx, dBp, dCp, dAp, dDp,
        dbp, dh0, T, NCK, D=dim, G=G, N=N, DG=dim // G, BD=BD, NP=NP, BT=bt, CHK=CHK, HAS_D=D is not None,
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
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
    initial_state: torch.Tensor | None, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """selective_scan through the kernels (``N <= MAX_N``): B and C as ``[B, T, G, N]``, every
    input contiguous, then the autograd Function, or the forward kernel alone (no checkpoints
    stored) when no gradient is needed. Arguments as ``selective_scan`` validated them; y comes
    back in x's dtype, the final state fp32 (None unless ``output_final_state``)."""
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
