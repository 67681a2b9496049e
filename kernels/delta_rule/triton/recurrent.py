"""delta_rule's fused recurrent forward for short sequences and decoding steps: the loop over time
with the [K, BV] state tile in registers, one program per (batch, head, V tile). Its backward
recomputes the forward through the chunk kernels and runs their backward (``_RecurrentFn``),
which is cheap at those lengths.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
