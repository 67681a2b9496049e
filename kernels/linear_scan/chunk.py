"""Chunked PyTorch form of linear_scan, and the elementwise scan selective_scan is built on.

The recurrence ``h_t = a_t * h_{t-1} + u_t`` (``a_t = exp(g_t)``, elementwise over M channels)
is split into chunks of C steps and solved in two levels, with no Python loop per time step:

1. *inside every chunk at once*: a loop over the C positions of a chunk, each step one
   multiply-add on a ``[B, n_chunks, M]`` slice (all chunks together), gives the chunk-local
   states ``l_i`` (the scan started from zero) and the cumulative decays ``P_i = a_1 ... a_i``;
2. *between chunks*: a loop over the n_chunks chunks carries the state entering each chunk,
   ``S_{n+1} = P_C S_n + l_C``, and one fused multiply-add ``h_i = l_i + P_i S_n`` finishes.

That is C + T/C Python iterations (C is about sqrt(T)) and O(T M) arithmetic. Decays are
only ever multiplied, never divided, and every product is of factors ``exp(g) <= 1``
(``g <= 0``), so strong decay (g = -20 per step) underflows gracefully to 0 instead of
overflowing; there is no ``exp(-cumsum)``.

Autograd: ``ChunkScan`` is a ``torch.autograd.Function`` whose backward is the same two-level
scan run in reverse (``lam_t = dh_t + a_{t+1} lam_{t+1}``, ``du = lam``,
``dg_t = lam_t a_t h_{t-1}``); it keeps g and h and recomputes the decays. Both directions
run over time blocks of about ``BLOCK_ELEMS`` elements, carrying the state (or the adjoint)
from block to block, so the decay and scratch buffers are small, cache-resident and reused
instead of fresh ``[B, T, M]`` tensors (on CPU the allocation and page faults of those cost
more than the arithmetic). ``bench/test_scans.py`` times it against the reference loop; the
measurements behind this design are in ``docs/bench/2026-11-cpu-2core-scans.md``. A masked ``[C, C]``
decay matrix per channel would cost C times the memory of the states for an elementwise
scan (there is no matmul to gain, unlike gla's shared-decay case).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._common import accumulation_dtype

BLOCK_ELEMS = 1 << 19  # elements per time block (2 MiB of float32): see the module docstring


def default_chunk(T: int) -> int:
    """The chunk length: a power of two near sqrt(T), between 16 and 64."""
    return int(min(64, max(16, 2 ** round(math.log2(max(T, 1)) / 2))))


def plan(T: int, width: int, chunk_size: int | None = None, block_size: int | None = None) -> tuple[int, int]:
    """(chunk length C, time-block length, a multiple of C) for T steps of ``width`` = B*M elements."""
    target = block_size or max(1, BLOCK_ELEMS // max(width, 1))
    C = chunk_size or default_chunk(min(T, target))
    return C, max(C, target // C * C)


def blocks(T: int, block: int) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive time blocks covering T steps."""
    return [(s, min(s + block, T)) for s in range(0, T, block)]


def scan_inplace(h: torch.Tensor, P: torch.Tensor, h0: torch.Tensor | None, C: int) -> torch.Tensor:
    """Solve ``h_t = a_t h_{t-1} + u_t`` in place over ``[B, T, M]`` buffers (T a multiple of C).

    On entry ``h`` holds u and ``P`` holds the decays a; on exit ``h`` holds every state and
    ``P`` the in-chunk cumulative decays. Returns the final state ``[B, M]``. Both must be
    viewable as ``[B, T/C, C, M]``: contiguous, or a time slice of a contiguous tensor.
    """
    B, T, M = h.shape
    n = T // C
    hc, Pc = h.view(B, n, C, M), P.view(B, n, C, M)
    hs, ps = hc.unbind(2), Pc.unbind(2)
    for i in range(1, C):  # every chunk at once, one position at a time
        hs[i].addcmul_(ps[i], hs[i - 1])  # ps[i] is still a_i here
        ps[i].mul_(ps[i - 1])
    S = h.new_zeros(B, M) if h0 is None else h0
    entering = []
    for l_last, p_last in zip(hs[-1].unbind(1), ps[-1].unbind(1)):  # one chunk at a time
        entering.append(S)
        S = torch.addcmul(l_last, p_last, S)
    if h0 is None:  # nothing enters the first chunk
        if n > 1:
            hc[:, 1:].addcmul_(Pc[:, 1:], torch.stack(entering[1:], 1).unsqueeze(2))
    else:
        hc.addcmul_(Pc, torch.stack(entering, 1).unsqueeze(2))
    return S


def adjoint_inplace(
    lam: torch.Tensor, a: torch.Tensor, P: torch.Tensor, dS: torch.Tensor | None, C: int
) -> torch.Tensor:
    """The adjoint scan ``lam_t = dh_t + a_{t+1} lam_{t+1}``, ``lam_T = dh_T + dS``, in place.

    ``lam`` holds dh on entry and lam on exit; ``a`` the decays; ``P`` is scratch (on exit the
    in-chunk suffix products ``a_{i+1} ... a_C``). All ``[B, T, M]``, T a multiple of C, laid
    out as in ``scan_inplace``. Returns ``a_1 lam_1`` ``[B, M]``, the gradient of the state
    entering the first step.
    """
    B, T, M = lam.shape
    n = T // C
    lc, Pc, ac = lam.view(B, n, C, M), P.view(B, n, C, M), a.view(B, n, C, M)
    ls, ps = lc.unbind(2), Pc.unbind(2)
    as_ = ac.unbind(2)
    Pc[:, :, :-1] = ac[:, :, 1:]
    ps[-1].fill_(1.0)
    for i in range(C - 2, -1, -1):
        ls[i].addcmul_(as_[i + 1], ls[i + 1])
        if i < C - 2:
            ps[i].mul_(ps[i + 1])
    R = lam.new_zeros(B, M) if dS is None else dS  # what reaches a chunk's last step from the next
    entering = [R] * n
    for k, (l_first, p_first, a_first) in reversed(
        list(enumerate(zip(ls[0].unbind(1), ps[0].unbind(1), as_[0].unbind(1))))
    ):
        entering[k] = R
        R = a_first * torch.addcmul(l_first, p_first, R)
    lc.addcmul_(Pc, torch.stack(entering, 1).unsqueeze(2))
    return R


def decay_grad_(lam_a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Turn ``lam * a`` into ``dg_t = lam_t a_t h_{t-1}`` in place (h_0 = h0 or zeros)."""
    lam_a[:, 1:].mul_(h[:, :-1])
    if h0 is None:
        lam_a[:, 0].zero_()
    else:
        lam_a[:, 0].mul_(h0)
    return lam_a


class ChunkScan(torch.autograd.Function):
    """``h_t = exp(g_t) * h_{t-1} + u_t`` elementwise, by the two-level chunked scan.

    u, g: ``[B, T, M]`` with T a multiple of ``chunk`` (pad with u = g = 0, which leaves the
    state unchanged); h0: ``[B, M]`` or None; ``block``: time steps per block (a multiple of
    ``chunk``). Returns (h ``[B, T, M]``, h_T ``[B, M]``). ``g = -inf`` is allowed (the decay
    is then exactly 0: a reset). Keeps g and h for the backward, which recomputes the decays.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None, chunk: int, block: int):
        h = u.clone(memory_format=torch.contiguous_format)
        S = h0
        for s, e in blocks(h.shape[1], block):
            S = scan_inplace(h[:, s:e], g[:, s:e].exp().contiguous(), S, chunk)
        ctx.save_for_backward(g, h, h0)
        ctx.chunk, ctx.block = chunk, block
        return h, S

    @staticmethod
    @once_differentiable
    def backward(ctx, dh: torch.Tensor | None, dS: torch.Tensor | None):
        g, h, h0 = ctx.saved_tensors
        lam = torch.zeros_like(h) if dh is None else dh.clone(memory_format=torch.contiguous_format)
        dg = torch.empty_like(h) if ctx.needs_input_grad[1] else None
        R = dS  # the gradient reaching the end of a block from the blocks after it
        for s, e in reversed(blocks(h.shape[1], ctx.block)):
            a = g[:, s:e].exp().contiguous()
            R = adjoint_inplace(lam[:, s:e], a, torch.empty_like(a), R, ctx.chunk)
            if dg is not None:
                prev = h0 if s == 0 else h[:, s - 1]
                decay_grad_(torch.mul(lam[:, s:e], a, out=dg[:, s:e]), h[:, s:e], prev)
        return lam, dg, (R if h0 is not None else None), None, None


def linear_scan_chunk(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    chunk_size: int | None = None,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, g: ``[B, T, D]``; initial_state ``[B, D]`` or None. ``chunk_size`` and ``block_size``
    (time steps) override the defaults of ``plan``.

    Returns every state h ``[B, T, D]`` and the final state ``[B, D]``, both in the
    accumulation dtype (float32, or float64 for float64 inputs).
    """
    dt = accumulation_dtype(x, g, initial_state)
    B, T, D = x.shape
    h0 = None if initial_state is None else initial_state.to(dt)
    if T == 0:
        return x.new_zeros(B, 0, D, dtype=dt), (x.new_zeros(B, D, dtype=dt) if h0 is None else h0)
    C, block = plan(T, B * D, chunk_size, block_size)
    pad = (-T) % C
    x, g = x.to(dt), g.to(dt)
    if pad:  # u = g = 0 at the end: the state passes through unchanged
        x, g = F.pad(x, (0, 0, 0, pad)), F.pad(g, (0, 0, 0, pad))
    h, S = ChunkScan.apply(x, g, h0, C, block)
    return h[:, :T], S


def linear_scan_varlen_chunk(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    bounds: list[int],
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences in one scan. x, g: ``[1, T, D]``; initial_state ``[N, D]`` or None;
    ``bounds`` the N+1 offsets (validated).

    At the first step of every sequence the decay is set to exactly 0 (``g = -inf``) and the
    sequence's own initial state enters through the input, ``x_bos + exp(g_bos) h0``, so one
    scan over the packed batch never mixes sequences. Returns h ``[1, T, D]`` and the final
    states ``[N, D]`` (an empty sequence returns its initial state), in the accumulation dtype.
    """
    dt = accumulation_dtype(x, g, initial_state)
    _, T, D = x.shape
    N = len(bounds) - 1
    nonempty = [i for i in range(N) if bounds[i + 1] > bounds[i]]
    S0 = x.new_zeros(N, D, dtype=dt) if initial_state is None else initial_state.to(dt)
    if not nonempty:
        return x.new_zeros(1, T, D, dtype=dt), S0
    dev = x.device
    ids = torch.tensor(nonempty, device=dev)
    bos = torch.tensor([bounds[i] for i in nonempty], device=dev)
    eos = torch.tensor([bounds[i + 1] - 1 for i in nonempty], device=dev)
    x, g = x.to(dt), g.to(dt)
    if initial_state is not None:
        x = x.index_add(1, bos, (g[:, bos].exp() * S0[ids]))
    reset = torch.zeros(T, dtype=torch.bool, device=dev)
    reset[bos] = True
    g = g.masked_fill(reset.view(1, T, 1), float("-inf"))
    h, _ = linear_scan_chunk(x, g, None, chunk_size)
    return h, S0.index_copy(0, ids, h[0, eos])
