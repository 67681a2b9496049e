"""Chunked PyTorch form of dplr_delta_rule: triangular solves and matmuls inside chunks, a short
loop passing states between them.

Split the sequence into chunks of C steps. Inside a chunk let ``G`` be the cumulative log gates
per key (``G_i = g_1 + ... + g_i``, ``G_0 = 0``, non-increasing), ``S_0`` the state entering the
chunk and ``u_j = b_j S_{j-1}`` the row that ``b_j`` reads. Unrolling
``S_i = Diag(exp g_i) S_{i-1} + a_i^T u_i + k_i^T v_i`` gives (products of decays are
``Gamma_i / Gamma_j = Diag(exp(G_i - G_j))``)

    S_i = Diag(exp G_i) S_0 + sum_{j<=i} (a_j * exp(G_i - G_j))^T u_j + (k_j * exp(G_i - G_j))^T v_j

so the reads solve a strictly lower-triangular system (``j > l``):

    u_j = (b_j * exp G_{j-1}) S_0 + sum_{l<j} L_jl u_l + sum_{l<j} M_jl v_l,
    L_jl = sum_K b_j a_l exp(G_{j-1} - G_l),   M_jl = sum_K b_j k_l exp(G_{j-1} - G_l),

i.e. ``u = P S_0 + R`` with ``P = (I - L)^{-1} (b * exp G_{-1})`` and ``R = (I - L)^{-1} M v``
(one unitriangular solve per chunk, batched over all of them). Then

    o_i  = scale * [ (q_i * exp G_i) S_0 + sum_{j<=i} A_ij u_j + Q_ij v_j ],
           A_ij = sum_K q_i a_j exp(G_i - G_j),   Q_ij = sum_K q_i k_j exp(G_i - G_j)
    S_C  = (Diag(exp G_C) + Ahat^T P) S_0 + Ahat^T R + Khat^T v,   Ahat_j = a_j * exp(G_C - G_j)
                                                                    Khat_j = k_j * exp(G_C - G_j)

Every exponent is a difference ``G_i - G_j`` (i >= j) or ``G_{j-1} - G_l`` (j > l), masked before
the exp, hence <= 0: nothing overflows however strong the decay. The price is a ``[C, C, K]``
decay tensor per chunk (the per-key gate), so chunks are short (``CHUNK = 16``).

Between chunks only states move: ``S_{n+1} = T_n S_n + U_n`` with the chunk's transition
``T_n = Diag(exp G_C) + Ahat^T P`` ``[K, K]``, a loop over T/C chunks of one small matmul each.
Gradients are PyTorch autograd through these ops (no hand-written backward).

Phases, on tensors in the chunk layout ``[B, H, N, C, D]``:

1. ``chunk_gates`` (``kernels/_common.py``): G.
2. ``wy_prepare``: P and R, the reads as a function of the entering state.
3. ``state_pass``: the state entering every chunk and the final state.
4. ``scores``: the causal decayed intra-chunk scores of q against a and k.
5. ``output``: ``o = (q * exp G) S_in + A u + Q v``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import DecayedScores, accumulation_dtype, chunk_gates, to_chunks

CHUNK = 16

__all__ = ["CHUNK", "chunk_gates", "dplr_delta_rule_chunk", "output", "scores", "state_pass",
           "wy_prepare"]


def _exclusive(G: torch.Tensor) -> torch.Tensor:
    """``G_{i-1}`` (0 for the chunk's first step) along the chunk dim (-2)."""
    return F.pad(G, (0, 0, 1, 0))[..., :-1, :]


def wy_prepare(
    k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, G: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2: the reads ``u = P S_0 + R`` of each chunk as a function of its entering state.
    k, a, b, G ``[B, H, N, C, K]``, v ``[B, H, N, C, V]`` -> P ``[B, H, N, C, K]``,
    R ``[B, H, N, C, V]``: one unitriangular solve ``(I - L) [P R] = [b * exp G_{-1}, M v]``."""
    K = k.shape[-1]
    Gx = _exclusive(G)
    L, M = DecayedScores.apply(b, Gx, G, True, a, k).unbind(0)  # exp(G_{j-1} - G_l), l < j
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    rhs = torch.cat([b * Gx.exp(), M @ v], dim=-1)
    X = torch.linalg.solve_triangular(eye - L, rhs, upper=False, unitriangular=True)
    return X[..., :K], X[..., K:]


def state_pass(
    k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, G: torch.Tensor, P: torch.Tensor,
    R: torch.Tensor, S0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 3: the states. k, a, G, P ``[B, H, N, C, K]``, v, R ``[B, H, N, C, V]``, S0
    ``[B, H, K, V]`` -> (the state entering every chunk ``[B, H, N, K, V]``, the final state).

    Each chunk's transition ``T_n = Diag(exp G_C) + Ahat^T P`` ``[K, K]`` and input
    ``U_n = Ahat^T R + Khat^T v`` ``[K, V]`` are batched over every chunk; the loop over chunks
    does ``S_{n+1} = T_n S_n + U_n``."""
    G_last = G[..., -1:, :]  # (B, H, N, 1, K)
    tail = (G_last - G).exp()  # exp(G_C - G_j) <= 1
    a_hat, k_hat = (a * tail).transpose(-1, -2), (k * tail).transpose(-1, -2)  # (B, H, N, K, C)
    Tn = torch.diag_embed(G_last.squeeze(-2).exp()) + a_hat @ P  # (B, H, N, K, K)
    Un = a_hat @ R + k_hat @ v  # (B, H, N, K, V)
    S = S0
    entering = []
    # unbind, not x[:, :, n]: one stack in the backward instead of a zero tensor per chunk
    for t_n, u_n in zip(Tn.unbind(2), Un.unbind(2)):
        entering.append(S)
        S = t_n @ S + u_n
    return torch.stack(entering, dim=2), S


def scores(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, G: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 4: the causal intra-chunk scores ``A_ij = sum_K q_i a_j exp(G_i - G_j)`` and
    ``Q_ij = sum_K q_i k_j exp(G_i - G_j)`` for i >= j (0 above the diagonal). q (scaled), k,
    a, G ``[B, H, N, C, K]`` -> A, Q ``[B, H, N, C, C]``."""
    qa, qk = DecayedScores.apply(q, G, G, False, a, k).unbind(0)
    return qa, qk


def output(q: torch.Tensor, v: torch.Tensor, G: torch.Tensor, A: torch.Tensor, Q: torch.Tensor,
           P: torch.Tensor, R: torch.Tensor, S_in: torch.Tensor) -> torch.Tensor:
    """Phase 5: ``o = (q * exp G) S_in + A u + Q v`` ``[B, H, N, C, V]`` with the reads
    ``u = P S_in + R``; q (scaled), G, P ``[B, H, N, C, K]``, v, R ``[B, H, N, C, V]``, A, Q from
    ``scores``, S_in from ``state_pass``."""
    u = P @ S_in + R
    return (q * G.exp()) @ S_in + A @ u + Q @ v


def dplr_delta_rule_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    g: torch.Tensor, scale: float, initial_state: torch.Tensor | None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked form of the module docstring on one batch of equal-length sequences: chunks of
    ``chunk_size`` steps (default ``CHUNK``), the end padded with zeros (a zero gate, key, value,
    a and b leave the state untouched). Arguments as ``dplr_delta_rule`` validated them (gates
    floored at ``GATE_FLOOR``); o and the final state come back in the accumulation dtype
    (float32, or float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, a, b, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S0 = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    if T == 0:
        return q.new_zeros(B, 0, H, V, dtype=dt), S0
    C = min(chunk_size or CHUNK, T)
    q, k, v, a, b = (to_chunks(x.to(dt), C) for x in (q, k, v, a, b))  # (B, H, N, C, D)
    q = q * scale
    G = chunk_gates(g.to(dt), C)
    P, R = wy_prepare(k, v, a, b, G)
    S_in, S = state_pass(k, v, a, G, P, R, S0)
    A, Q = scores(q, k, a, G)
    o = output(q, v, G, A, Q, P, R, S_in)
    return o.movedim(1, 3).flatten(1, 2)[:, :T], S
