"""Chunked PyTorch form of gla: matmuls inside chunks, a short loop passing states between them.

Split the sequence into chunks of C steps. With ``G`` the cumulative sum of the log gates
inside a chunk (G_i = g_1 + ... + g_i, so G is non-increasing), and ``S0`` the state entering
the chunk, the recurrence unrolls to

    o_i = scale * [ (q_i * exp(G_i)) S0  +  sum_{j<=i} (q_i * exp(G_i - G_j)) . k_j  v_j ]
    S_C = exp(G_C) * S0 + sum_j (k_j * exp(G_C - G_j))^T v_j

Every exponent above is a *difference G_i - G_j with i >= j*, hence <= 0: nothing overflows
however strong the decay (Mamba-2's dt*A reaches -10 per step, -640 over a 64-step chunk).
The textbook shortcut (q * exp(G)) (k * exp(-G))^T exponentiates -G > 0 and overflows; we
never form it. The cost is that a per-key gate ([B, T, H, K]) needs the decay for every
(i, j, key) triple inside a chunk, a [C, C, K] tensor, so per-key gates use short chunks
(16); a scalar gate ([B, T, H]) only needs [C, C] and uses chunks of 64.

Between chunks only states move: S_{n+1} = a_n * S_n + U_n, a loop over T/C chunks of one
multiply-add each; all matmuls are batched over every chunk at once.

Phases. ``gla_chunk`` composes the same phases as the Triton kernels (``triton/__init__.py``),
each a function here, so every Triton phase has a PyTorch twin to test against
(tests/kernels/test_gla_phases.py); tensors are in the chunk layout ``[B, H, N, C, D]``:

1. ``chunk_gates`` (``kernels/_common.py``, shared with delta_rule): G, the chunk-local
   cumulative log gates (Triton: ``chunk_cumsum``).
2. ``state_pass``: the state entering every chunk and the final state (``_state_fwd``).
3. ``scores``: the causal decayed intra-chunk scores A (``_scores_fwd``; fused into
   ``_output_fwd`` for no gate or a scalar gate).
4. ``output``: ``o = (q * exp(G)) S_in + A v`` (``_output_fwd``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._common import accumulation_dtype, chunk_gates, pair_decay, to_chunks

SCALAR_CHUNK = 64
PER_KEY_CHUNK = 16

__all__ = ["chunk_gates", "gla_chunk", "output", "scores", "state_pass"]


def _unbind_chunks(x: torch.Tensor | None, n: int) -> tuple:
    # unbind, not x[:, :, n]: the backward of one unbind is one stack, while each indexing
    # op's backward would write a zero tensor as large as x (quadratic in the chunk count).
    return (None,) * n if x is None else x.unbind(2)


def state_pass(
    k: torch.Tensor, v: torch.Tensor, G: torch.Tensor | None, S0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2: the states. k ``[B, H, N, C, K]``, v ``[B, H, N, C, V]``, G None or from
    ``chunk_gates``, S0 ``[B, H, K, V]`` -> (the state entering every chunk ``[B, H, N, K, V]``,
    the final state ``[B, H, K, V]``).

    Each chunk's contribution ``U_n = (k * exp(G_C - G))^T v`` ``[B, H, N, K, V]`` and decay
    ``a_n = exp(G_C)`` come from matmuls batched over every chunk; the loop over the N chunks does
    one multiply-add each, ``S_{n+1} = a_n S_n + U_n``."""
    if G is None:
        U = k.transpose(-1, -2) @ v  # (B, H, N, K, V)
        a = None
    elif G.dim() == 4:  # scalar gate
        G_last = G[..., -1:]  # (B, H, N, 1)
        U = (k * (G_last - G).exp().unsqueeze(-1)).transpose(-1, -2) @ v
        a = G_last.exp().unsqueeze(-1)  # (B, H, N, 1, 1)
    else:  # per-key gate
        G_last = G[..., -1:, :]  # (B, H, N, 1, K)
        U = (k * (G_last - G).exp()).transpose(-1, -2) @ v
        a = G_last.exp().transpose(-1, -2)  # (B, H, N, K, 1)
    S = S0
    entering = []
    for u, decay in zip(U.unbind(2), _unbind_chunks(a, U.shape[2])):
        entering.append(S)
        S = (S if decay is None else decay * S) + u
    return torch.stack(entering, dim=2), S


def scores(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """Phase 3: the causal intra-chunk scores ``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)`` for
    i >= j, 0 above the diagonal. q, k ``[B, H, N, C, K]`` (q scaled), G None or from
    ``chunk_gates`` -> A ``[B, H, N, C, C]``. Every exponent is a difference ``G_i - G_j <= 0``,
    masked before the exp."""
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if G is None:
        return (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
    if G.dim() == 4:  # scalar gate: a [C, C] decay
        diff = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
        return (q @ k.transpose(-1, -2)) * diff.exp()
    return PerKeyDecayedScores.apply(q, k, G)  # per-key gate: a [C, C, K] decay


def output(
    q: torch.Tensor, v: torch.Tensor, G: torch.Tensor | None, A: torch.Tensor, S_in: torch.Tensor
) -> torch.Tensor:
    """Phase 4: ``o = A v + (q * exp(G)) S_in`` ``[B, H, N, C, V]``: q ``[B, H, N, C, K]``
    (scaled), v ``[B, H, N, C, V]``, G None or from ``chunk_gates``, A from ``scores``, S_in
    (the entering states) from ``state_pass``."""
    if G is not None:
        q = q * (G.exp().unsqueeze(-1) if G.dim() == 4 else G.exp())
    return A @ v + q @ S_in


def gla_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, scale: float,
    initial_state: torch.Tensor | None, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form of the module docstring on one batch of equal-length sequences: chunks of
    ``chunk_size`` steps (default ``SCALAR_CHUNK``, ``PER_KEY_CHUNK`` for per-key gates), the
    end padded; the phases ``chunk_gates``, ``state_pass``, ``scores``, ``output``. Arguments
    as ``gla`` validated them (gates floored); o and the final state come back in the
    accumulation dtype (float32, or float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S0 = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    if T == 0:
        return q.new_zeros(B, 0, H, V, dtype=dt), S0

    per_key = g is not None and g.dim() == 4
    C = min(chunk_size or (PER_KEY_CHUNK if per_key else SCALAR_CHUNK), T)
    q, k, v = (to_chunks(x.to(dt), C) for x in (q, k, v))  # (B, H, N, C, D)
    q = q * scale
    G = None if g is None else chunk_gates(g.to(dt), C)
    S_in, S = state_pass(k, v, G, S0)
    o = output(q, v, G, scores(q, k, G), S_in)  # (B, H, N, C, V)
    return o.movedim(1, 3).flatten(1, 2)[:, :T], S


def _pair_decay(G: torch.Tensor) -> torch.Tensor:
    """G ``[..., C, K]`` -> ``exp(G_i - G_j)`` ``[..., C(i), C(j), K]`` for i >= j, 0 above."""
    return pair_decay(G, G)


class PerKeyDecayedScores(torch.autograd.Function):
    """``A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)`` for ``i >= j`` (0 above the diagonal).

    q, k, G: ``[..., C, K]`` -> A ``[..., C, C]``. The decay tensor ``[..., C, C, K]`` is the
    one large intermediate of per-key gating; this Function builds it in place once in the
    forward and once again in the backward instead of letting autograd keep several copies.
    Gradients: ``dq_ik = sum_j W_ijk k_jk``, ``dk_jk = sum_i W_ijk q_ik`` with
    ``W_ijk = dA_ij exp(G_ik - G_jk)``, and ``dG = q * dq - k * dk`` (G enters as
    ``+G_i`` on the query side and ``-G_j`` on the key side).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k, G)
        P = _pair_decay(G).mul_(q.unsqueeze(-2)).mul_(k.unsqueeze(-3))  # (..., C, C, K)
        return P.sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, dA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, G = ctx.saved_tensors
        W = _pair_decay(G).mul_(dA.unsqueeze(-1))  # (..., C, C, K)
        dq = (W * k.unsqueeze(-3)).sum(-2)  # (..., C, K)
        dk = W.mul_(q.unsqueeze(-2)).sum(-3)  # (..., C, K)
        return dq, dk, q * dq - k * dk
