"""gla's fused recurrent forward: the loop over time in registers, one program per sequence, head and
V tile, the whole [K, BV] state tile held through every step. ``mode="auto"`` takes it when the
longest sequence has at most ``RECURRENT_MAX_T`` steps (decoding, short prompts); its backward is
the chunked one.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _recurrent_fwd(q, k, v, g, h0, o, ht, cu, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr,
                   STORE_HT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    km, vm = cols_k < K, cols_v < V
    tile = cols_k[:, None] * V + cols_v[None, :]
    tm = km[:, None] & vm[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + (i_n * H + i_h) * K * V + tile, mask=tm, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        qt = tl.load(q + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
        kt = tl.load(k + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
        vt = tl.load(v + (t * H + i_h) * V + cols_v, mask=vm, other=0.0).to(tl.float32)
        if GATE == 2:
            gt = tl.load(g + (t * H + i_h) * K + cols_k, mask=km, other=0.0).to(tl.float32)
            S = S * tl.exp(gt)[:, None]
        elif GATE == 1:
            S = S * tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
        S += kt[:, None] * vt[None, :]
        ot = tl.sum(S * qt[:, None], axis=0) * scale
        tl.store(o + (t * H + i_h) * V + cols_v, ot.to(o.dtype.element_ty), mask=vm)
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h) * K * V + tile, S, mask=tm)
