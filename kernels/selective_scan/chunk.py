"""Chunked PyTorch form of selective_scan: the SSM as one elementwise scan over D*N channels.

Per channel d and state n the recurrence ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t``
is an elementwise linear scan with decay ``a = exp(delta * A)`` and input
``u = (delta * x) B`` over M = D*N channels. ``SelectiveScanFn`` solves it with
linear_scan's two-level chunked scan (a loop over the C positions of a chunk, all chunks at
once, then a loop over the chunks: no Python loop per time step), then ``y_t = C_t h_t``.
Its backward is the reverse (adjoint) scan; the other gradients are products and sums.

Why a hand-written Function, run over time blocks: on CPU this op is memory-bound, and a
fresh ``[B, T, D, N]`` tensor costs more (allocation, page faults, cache misses) than the
arithmetic on it. The Function allocates the states h at full size (kept for the backward)
and nothing else: a, u and the backward's buffers are one time block's (~2 MiB, see
linear_scan.chunk.BLOCK_ELEMS), reused in place, and the scan state is carried from block to
block. Rejected on the way, each slower on CPU (``docs/bench/2026-11-cpu-2core-scans.md`` has
the timings; ``bench/test_scans.py`` measures this path): the same two-level scan under plain
autograd, a log-depth (Hillis-Steele) scan inside short chunks, the Function without time
blocks. A masked ``[C, C]`` decay matrix per (d, n) would hold C times the memory of the
states; it was not pursued.

Exactness under strong decay (delta*A down to -20 per step): decays are only multiplied,
never divided; there is no ``exp`` of a positive cumulative sum. Memory: O(B T D N) (the
states), plus O(block) scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._common import accumulation_dtype
from ..linear_scan.chunk import adjoint_inplace, blocks, decay_grad_, plan, scan_inplace
from .reference import as_groups, skip_and_gate, step_size


class SelectiveScanFn(torch.autograd.Function):
    """The selective SSM core: ``h_t = exp(delta_t A) h_{t-1} + dx_t B_t``, ``y_t = C_t h_t``.

    delta, dx (= delta * x): ``[B, T, D]``; A: ``[D, N]``; Bg, Cg: ``[B, T, G, N]``; h0:
    ``[B, D, N]`` or None; T a multiple of ``chunk`` (pad with delta = dx = 0); ``block``
    time steps per block, a multiple of ``chunk``; ``keep``: keep the states for a backward
    (False when no gradient will be asked for). Returns y ``[B, T, D]`` and the final state
    ``[B, D, N]``. All inputs in one float dtype.

    Only the states h ``[B, T, D, N]`` are allocated at full size (and kept for the backward;
    not at all without gradients); every other ``[., ., D, N]`` tensor is one time block's.
    """

    @staticmethod
    def forward(ctx, delta, dx, A, Bg, Cg, h0, chunk: int, block: int, keep: bool = True):
        batch, T, dim = delta.shape
        G, N = Bg.shape[2], Bg.shape[3]
        P = dim // G
        h_all = delta.new_empty(batch, T, G, P, N) if keep else None
        S = None if h0 is None else h0.reshape(batch, dim * N)
        ys = []
        for s, e in blocks(T, block):
            L = e - s
            a = torch.mul(delta[:, s:e].unsqueeze(-1), A).contiguous().exp_()  # (B, L, D, N)
            h = h_all[:, s:e] if keep else torch.empty_like(a).view(batch, L, G, P, N)
            torch.mul(dx[:, s:e].reshape(batch, L, G, P, 1), Bg[:, s:e].unsqueeze(3), out=h)
            S = scan_inplace(h.view(batch, L, dim * N), a.view(batch, L, dim * N), S, chunk)
            # y = C h: the product into the decay buffer (free now), summed over N
            ys.append(torch.mul(h, Cg[:, s:e].unsqueeze(3), out=a.view(batch, L, G, P, N)).sum(-1))
        ctx.save_for_backward(delta, dx, A, Bg, Cg, h0, h_all)
        ctx.chunk, ctx.block = chunk, block
        return torch.cat(ys, 1).reshape(batch, T, dim), S.view(batch, dim, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dS):
        delta, dx, A, Bg, Cg, h0, h_all = ctx.saved_tensors
        if h_all is None:
            raise RuntimeError("SelectiveScanFn ran with keep=False: it kept no states for a backward")
        batch, T, dim = delta.shape
        G, N = Bg.shape[2], Bg.shape[3]
        P = dim // G
        if dy is None:
            dy = delta.new_zeros(batch, T, dim)
        dy = dy.reshape(batch, T, G, P, 1)
        dC, dB = torch.empty_like(Bg), torch.empty_like(Bg)
        ddx, ddelta = torch.empty_like(dx), torch.empty_like(delta)
        dA = torch.zeros_like(A)
        R = None if dS is None else dS.reshape(batch, dim * N)  # reaches the end of a block from later ones
        for s, e in reversed(blocks(T, ctx.block)):
            L = e - s
            shape5, flat = (batch, L, G, P, N), (batch, L, dim * N)
            h, dyb = h_all[:, s:e], dy[:, s:e]
            lam = torch.mul(dyb, Cg[:, s:e].unsqueeze(3))  # (B, L, G, P, N): dL/dh from y, then the adjoint
            a = torch.mul(delta[:, s:e].unsqueeze(-1), A).contiguous().exp_()  # (B, L, D, N)
            scratch = torch.empty_like(a)
            # Small matrices per (b, t, g) make bmm slow on CPU: products into scratch + sums.
            torch.sum(torch.mul(h, dyb, out=scratch.view(shape5)), 3, out=dC[:, s:e])
            R = adjoint_inplace(lam.view(flat), a.view(flat), scratch.view(flat), R, ctx.chunk)
            prod = torch.mul(lam, Bg[:, s:e].unsqueeze(3), out=scratch.view(shape5))
            torch.sum(prod, -1, out=ddx[:, s:e].view(batch, L, G, P))
            torch.sum(torch.mul(lam, dx[:, s:e].reshape(batch, L, G, P, 1), out=scratch.view(shape5)), 3,
                      out=dB[:, s:e])
            prev = (None if h0 is None else h0.reshape(batch, dim * N)) if s == 0 else h_all[:, s - 1].reshape(
                batch, dim * N)
            dg = decay_grad_(torch.mul(lam.view(flat), a.view(flat), out=scratch.view(flat)), h.view(flat), prev)
            dg = dg.view(batch, L, dim, N)
            # g = delta * A: the two free buffers take the two products
            dA += torch.mul(dg, delta[:, s:e].unsqueeze(-1), out=lam.view(batch, L, dim, N)).sum((0, 1))
            torch.sum(torch.mul(dg, A, out=a), -1, out=ddelta[:, s:e])
        dh0 = None if h0 is None else R.view(batch, dim, N)
        return ddelta, ddx, dA, dB, dC, dh0, None, None, None


def selective_scan_chunk(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
    initial_state: torch.Tensor | None, chunk_size: int | None = None, block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step sizes and ``delta * x`` in PyTorch, padded to whole chunks, then
    ``SelectiveScanFn`` (the scan over D*N channels, time block by time block), then the skip
    and the gate. ``chunk_size`` and ``block_size`` (time steps) override the defaults of
    linear_scan's ``plan``. Other arguments as ``selective_scan`` validated them; y and the
    final state come back in the accumulation dtype (float32, or float64 for float64 inputs)."""
    acc = accumulation_dtype(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, T, dim = x.shape
    N = A.shape[-1]
    h0 = None if initial_state is None else initial_state.to(acc)
    if T == 0:
        S = x.new_zeros(batch, dim, N, dtype=acc) if h0 is None else h0
        return x.new_zeros(batch, 0, dim, dtype=acc), S
    Bg, Cg = as_groups(B).to(acc), as_groups(C).to(acc)  # (B, T, G, N)
    delta = step_size(dt, dt_bias, dt_softplus, acc)  # (B, T, D)
    dx = delta * x.to(acc)
    chunk, block = plan(T, batch * dim * N, chunk_size, block_size)
    pad = (-T) % chunk
    if pad:  # delta = dx = 0 at the end: no decay and no input, the state passes through
        delta, dx = F.pad(delta, (0, 0, 0, pad)), F.pad(dx, (0, 0, 0, pad))
        Bg, Cg = F.pad(Bg, (0, 0, 0, 0, 0, pad)), F.pad(Cg, (0, 0, 0, 0, 0, pad))
    # the Function views these by time block and channel group: make them dense (they are small)
    delta, dx, Bg, Cg, A = (t.contiguous() for t in (delta, dx, Bg, Cg, A.to(acc)))
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (delta, dx, A, Bg, Cg, h0))
    y, S = SelectiveScanFn.apply(delta, dx, A, Bg, Cg, h0, chunk, block, keep)
    return skip_and_gate(y[:, :T], x, D, z), S
