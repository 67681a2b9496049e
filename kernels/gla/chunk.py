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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.autograd.function import once_differentiable

from .._common import accumulation_dtype

SCALAR_CHUNK = 64
PER_KEY_CHUNK = 16


def gla_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, scale: float,
    initial_state: torch.Tensor | None, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form of the module docstring on one batch of equal-length sequences: chunks of
    ``chunk_size`` steps (default ``SCALAR_CHUNK``, ``PER_KEY_CHUNK`` for per-key gates), the
    end padded. Arguments as ``gla`` validated them (gates floored); o and the final state come
    back in the accumulation dtype (float32, or float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    per_key = g is not None and g.dim() == 4
    if T == 0:
        S = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
        return q.new_zeros(B, 0, H, V, dtype=dt), S

    C = min(chunk_size or (PER_KEY_CHUNK if per_key else SCALAR_CHUNK), T)
    pad = (-T) % C
    # Padding at the end with k = v = 0 and g = 0 leaves the state untouched.
    q, k, v = (
        rearrange(F.pad(x.to(dt), (0, 0, 0, 0, 0, pad)), "b (n c) h d -> b h n c d", c=C)
        for x in (q, k, v)
    )  # (B, H, N, C, D)
    q = q * scale
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    if g is None:
        A = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
        o = A @ v
        U = k.transpose(-1, -2) @ v  # (B, H, N, K, V): each chunk's contribution to the state
        a = None
        q_in = q
    elif not per_key:
        G = rearrange(F.pad(g.to(dt), (0, 0, 0, pad)), "b (n c) h -> b h n c", c=C).cumsum(-1)
        diff = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
        A = (q @ k.transpose(-1, -2)) * diff.exp()  # (B, H, N, C, C)
        o = A @ v
        G_last = G[..., -1:]  # (B, H, N, 1)
        U = (k * (G_last - G).exp().unsqueeze(-1)).transpose(-1, -2) @ v  # (B, H, N, K, V)
        a = G_last.exp().unsqueeze(-1)  # (B, H, N, 1, 1)
        q_in = q * G.exp().unsqueeze(-1)
    else:
        G = rearrange(F.pad(g.to(dt), (0, 0, 0, 0, 0, pad)), "b (n c) h k -> b h n c k", c=C)
        G = G.cumsum(-2)  # (B, H, N, C, K)
        A = PerKeyDecayedScores.apply(q, k, G)  # (B, H, N, C, C)
        o = A @ v
        G_last = G[..., -1:, :]  # (B, H, N, 1, K)
        U = (k * (G_last - G).exp()).transpose(-1, -2) @ v
        a = rearrange(G_last.exp(), "b h n 1 k -> b h n k 1")
        q_in = q * G.exp()

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dt)
    # unbind, not U[:, :, n]: the backward of one unbind is one stack, while each indexing
    # op's backward would write a zero tensor as large as U (quadratic in the chunk count).
    U_n = U.unbind(2)
    a_n = (None,) * len(U_n) if a is None else a.unbind(2)
    entering = []
    for u, decay in zip(U_n, a_n):
        entering.append(S)
        S = (S if decay is None else decay * S) + u
    o = o + q_in @ torch.stack(entering, dim=2)  # (B, H, N, C, V)
    o = rearrange(o, "b h n c d -> b (n c) h d")[:, :T]
    return o, S


def _pair_decay(G: torch.Tensor) -> torch.Tensor:
    """G ``[..., C, K]`` -> ``exp(G_i - G_j)`` ``[..., C(i), C(j), K]`` for i >= j, 0 above."""
    C = G.shape[-2]
    upper = torch.ones(C, C, dtype=torch.bool, device=G.device).triu(1).unsqueeze(-1)  # (C, C, 1)
    E = G.unsqueeze(-2) - G.unsqueeze(-3)  # (..., C, C, K)
    return E.masked_fill_(upper, float("-inf")).exp_()


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
