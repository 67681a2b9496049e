"""delta_rule's ``@triton.jit`` helpers for the fused chunk kernels: products (``_mm``), loads and
stores of row blocks and state tiles, the chunk's gates and their causal decay; and the
autotune variants.

Layout: every call is packed ([B, T, H, D] flattened to [B*T, H, D], varlen calls as given) and
cut into chunks of C = 64 rows that never cross a sequence (kernels/_triton/plan.py: chunk n
covers rows cstart[n] .. cend[n] - 1; sequence s owns chunks coff[s] .. coff[s+1] - 1). q, k, v,
beta are read in place (fp32/bf16/fp16) and every product accumulates in fp32. Chunk layout
([n_chunks * C, H], padded rows included): G, the chunk-local cumulative log gate (a padded row
repeats its chunk's last G), and the gate gradients. Per chunk: Tm [n_chunks, H, C, C], the
entering states S_in (and dH, the gradient of each chunk's leaving state) [n_chunks, H, K, V].
Per row [rows, H, *]: U, W (pseudo-values and keys), u (written values) and the gradients.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..._triton.jit import chunk_rows

# The chunk kernels hold [64, K] tiles: at K = V = 128 with bf16 inputs, sm_90 compiles show no
# spills at 8 warps and up to ~140 B at 4 (scripts/sm90_check.py), except _wy_fwd (8 B at 4,
# 56 B at 8: it runs 4 first); 2 warps spill kilobytes. The first entry runs untuned.
_WARPS_BIG = [{"num_warps": 8}, {"num_warps": 4}]


@triton.jit
def _chunk_program(cstart, cend, C: tl.constexpr):
    """A program of a (K or V tile, chunk, head) grid: its tile, its chunk ``i_n`` (int64), its
    head, and the chunk's rows and their mask."""
    i_t, i_n, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    _, _, _, rows, rm = chunk_rows(cstart, cend, i_n, C)
    return i_t, i_n, i_h, rows, rm


@triton.jit
def _mm(a, b, DOT: tl.constexpr):
    """``a @ b`` (fp32 tiles, fp32 result) as ``DOT`` says: "bf16", bf16 operands (bf16 inputs
    on a GPU: full-rate tensor cores; tiles loaded from bf16 tensors convert exactly);
    "bf16-emu", the same rounding of the operands with an fp32 product (the interpreter, whose
    bf16 products are wrong); else a ``tl.dot`` input precision ("tf32x3", "tf32")."""
    if DOT == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == "bf16-emu":
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT)


@triton.jit
def _ld(x, i_h, rows, rm, c0, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """``rows`` (mask ``rm``) and columns ``c0 .. c0 + BD`` of head ``i_h`` of the packed
    [rows, H, D] tensor x, in fp32, 0 outside."""
    cols = c0 + tl.arange(0, BD)
    ptr = x + (rows[:, None] * H + i_h) * D + cols[None, :]
    return tl.load(ptr, mask=rm[:, None] & (cols[None, :] < D), other=0.0).to(tl.float32)

@triton.jit
def _st(x, val, i_h, rows, rm, c0, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    cols = c0 + tl.arange(0, BD)
    ptr = x + (rows[:, None] * H + i_h) * D + cols[None, :]
    tl.store(ptr, val.to(x.dtype.element_ty), mask=rm[:, None] & (cols[None, :] < D))

@triton.jit
def _ld_state(x, base, k0, v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Rows ``k0 ..`` and columns ``v0 ..`` of the [K, V] state at ``x + base``."""
    rk = k0 + tl.arange(0, BK)
    cv = v0 + tl.arange(0, BV)
    return tl.load(x + base + rk[:, None] * V + cv[None, :], mask=(rk[:, None] < K) & (cv[None, :] < V),
                   other=0.0).to(tl.float32)

@triton.jit
def _st_state(x, base, val, k0, v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    rk = k0 + tl.arange(0, BK)
    cv = v0 + tl.arange(0, BV)
    tl.store(x + base + rk[:, None] * V + cv[None, :], val.to(x.dtype.element_ty),
             mask=(rk[:, None] < K) & (cv[None, :] < V))

@triton.jit
def _gates(G, i_h, i_n, H: tl.constexpr, C: tl.constexpr, HAS_G: tl.constexpr):
    """Chunk i_n's cumulative log gates ``G_i`` [C] and ``G_C`` (zeros without gates). Chunk
    indices reach the kernels as int64 (program ids converted; loop indices over int64 bounds),
    so the [n_chunks, H, K, V] offsets formed from them cannot overflow."""
    t = i_n * C + tl.arange(0, C)
    if HAS_G:
        Gr = tl.load(G + t * H + i_h)
        Gc = tl.load(G + (i_n * C + C - 1) * H + i_h)
    else:
        Gr = tl.zeros([C], dtype=tl.float32)
        Gc = 0.0
    return Gr, Gc

@triton.jit
def _decay(Gr, C: tl.constexpr, STRICT: tl.constexpr, HAS_G: tl.constexpr):
    """``exp(G_i - G_j)`` on the causal triangle (i >= j, or i > j with ``STRICT``), 0 above;
    the exponent is masked before exp, so it never overflows."""
    r = tl.arange(0, C)
    if STRICT:
        low = r[:, None] > r[None, :]
    else:
        low = r[:, None] >= r[None, :]
    if HAS_G:
        return tl.where(low, tl.exp(tl.where(low, Gr[:, None] - Gr[None, :], 0.0)), 0.0)
    else:
        return tl.where(low, 1.0, 0.0)
