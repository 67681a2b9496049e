"""Chunked PyTorch form of delta_rule: the WY/UT representation (Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length"), with the scalar gates of Gated
DeltaNet (Yang, Kautz, Hatamizadeh 2024).

Derivation. Split the sequence into chunks of C steps; inside one chunk let ``S0`` be the state
entering it, ``G_i = g_1 + ... + g_i`` the cumulative log gate (``G_0 = 0``), and write each
step's update as ``S_i = S'_i + k_i^T u_i`` with ``S'_i = exp(g_i) S_{i-1}`` and the *written
value* ``u_i = beta_i (v_i - k_i S'_i)``. Unrolling,

    S_i  = exp(G_i) S0 + sum_{j<=i} exp(G_i - G_j) k_j^T u_j                        (1)
    S'_i = exp(G_i) S0 + sum_{j<i}  exp(G_i - G_j) k_j^T u_j

so substituting S'_i into the definition of u_i gives a lower-triangular linear system in u:

    u_i + sum_{j<i} A_ij u_j = beta_i v_i - beta_i exp(G_i) k_i S0,
    A_ij = beta_i (k_i . k_j) exp(G_i - G_j)   (i > j; 0 on and above the diagonal).

With ``L = (I + A)^{-1}`` (unit lower triangular, one per chunk), ``U = L (beta * v)`` (the
pseudo-values) and ``W = L (beta * exp(G) * k)``, the solution is linear in S0:

    u = U - W S0                                                                     (2)

and from (1) with ``o_i = scale * q_i S_i``:

    o   = scale * [ (q * exp(G)) S0 + (q k^T * exp(G_i - G_j), causal i >= j) u ]
    S_C = exp(G_C) S0 + (k * exp(G_C - G))^T u

U, W, the causal score matrix and the decayed keys ``Kd = k * exp(G_C - G)`` depend only on the
chunk's own inputs, so they are computed for every chunk at once (one batched triangular solve
against the concatenated right-hand side [beta*v | beta*exp(G)*k]). Substituting (2) into the
state update makes the chunk-to-chunk map affine,

    S_C = exp(G_C) S0 + Kd^T U - (Kd^T W) S0,

so ``Kd^T U`` and ``Kd^T W`` are batched matmuls too, and the only sequential part is a loop over
the T/C chunks doing one [K, K] @ [K, V] product each. The entering states are then stacked and
``u`` and ``o`` follow from batched matmuls again.

Exactness under strong decay: every exponent formed is ``G_i - G_j`` with ``i >= j`` (masked to
``-inf`` before exp where i < j), ``G_i`` or ``G_C - G_j``, all <= 0 for ``g <= 0``; the
shortcut ``exp(G_i) exp(-G_j)`` would overflow at g = -10 per step and is never formed.

Per-key gates (Kimi Delta Attention, ``g`` ``[B, T, H, K]``: ``S' = Diag(exp g_t) S_{t-1}``). The
derivation is the same with ``exp(G_i)`` a diagonal ``[K, K]`` matrix: G is ``[C, K]`` and every
decay acts on the key channel it belongs to,

    A_ij = beta_i sum_c k_ic k_jc exp(G_ic - G_jc)        (i > j)
    W    = (I + A)^{-1} (beta * k * exp(G)),   U = (I + A)^{-1} (beta v),   u = U - W S0
    o    = scale * [ (q * exp(G)) S0 + (sum_c q_ic k_jc exp(G_ic - G_jc), causal i >= j) u ]
    S_C  = Diag(exp G_C) S0 + (k * exp(G_C - G))^T u

The pairwise decays ``exp(G_ic - G_jc)`` are a ``[C, C, K]`` tensor per chunk (the one large
intermediate, masked to ``-inf`` above the diagonal before the exp, so again no positive
exponent): ``B H T C K`` elements per call, C times the size of ``k``. So per-key gates use
short chunks (``PER_KEY_CHUNK = 16``: 16x k's memory, rebuilt in the backward rather than
stored; gla's ``PerKeyDecayedScores`` forms both A and the output scores), the scalar gate
chunks of ``CHUNK = 64``. The state map between chunks stays affine,
``S_{n+1} = Diag(exp G_C) S_n + Kd^T U - (Kd^T W) S_n`` with ``Kd = k * exp(G_C - G)``.

A ragged last chunk is padded with ``q = k = v = 0``, ``beta = 0``, ``g = 0``: padded steps write
nothing (``u = 0``) and do not decay, so the final state is untouched.

Phases. ``delta_rule_chunk`` composes the same phases as the Triton kernels
(``triton/__init__.py``), each a function here, so every Triton phase has a PyTorch twin to test
against (tests/kernels/test_delta_rule_phases.py); tensors are in the chunk layout
``[B, H, N, C, D]``:

1. ``chunk_gates`` (``kernels/_common.py``, shared with gla): G (Triton: ``chunk_cumsum``).
2. ``wy_prepare``: U and W, by one triangular solve (``_wy_fwd``, which also stores the inverse
   Tm; its twin is ``wy_inverse``).
3. ``state_pass``: the state entering every chunk, the written values u and the final state
   (``_state_fwd``).
4. ``output``: o from q, k, G, u and the entering states (``_output_fwd``).
"""

from __future__ import annotations

import torch

from .._common import accumulation_dtype, chunk_gates, to_chunks
from ..gla.chunk import PerKeyDecayedScores

CHUNK = 64
#: chunk length for per-key gates (g ``[B, T, H, K]``): the pairwise decays are ``[C, C, K]``
PER_KEY_CHUNK = 16

__all__ = ["chunk_gates", "decay", "delta_rule_chunk", "output", "state_pass", "wy_inverse", "wy_prepare"]


def solve_unit_lower(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(I + tril(A, -1))^{-1} rhs`` for A ``[..., C, C]``, rhs ``[..., C, D]``: one unit-lower-
    triangular solve per matrix. Only the strictly lower triangle of A is read
    (``linalg.solve_triangular(..., unitriangular=True)``)."""
    return torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)


def decay(G: torch.Tensor) -> torch.Tensor:
    """``D = exp(G_i - G_j)`` for i >= j, 0 above the diagonal (masked before the exp: never
    overflows): G ``[..., C]`` -> ``[..., C, C]``. Shared by ``wy_prepare`` and ``output`` (each
    forms it from G when not given it)."""
    C = G.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    return (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()


def _per_key(G: torch.Tensor | None) -> bool:
    """G from ``chunk_gates`` of a per-key gate (``[B, H, N, C, K]``), not a scalar one."""
    return G is not None and G.dim() == 5


def _wy_system(k_beta: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """A ``[B, H, N, C, C]`` whose strictly lower triangle is ``beta_i (k_i . k_j) exp(G_i - G_j)``
    (on and above the diagonal: whatever the product gives; the solves read only below it)."""
    A = k_beta @ k.transpose(-1, -2)  # beta_i k_i . k_j
    return A if D is None else A * D


def _wy_system_per_key(k_beta: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """A ``[B, H, N, C, C]`` with ``A_ij = beta_i sum_c k_ic k_jc exp(G_ic - G_jc)`` for i >= j and
    0 above the diagonal (the solves read only the strictly lower triangle); G ``[..., C, K]``."""
    return PerKeyDecayedScores.apply(k_beta, k, G)


def wy_prepare(
    k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, G: torch.Tensor | None,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2: the pseudo-values ``U = (I + A)^{-1} (beta v)`` ``[B, H, N, C, V]`` and
    ``W = (I + A)^{-1} (beta exp(G) k)`` ``[B, H, N, C, K]``, one unit-lower-triangular solve per
    chunk against the concatenated right-hand side, all chunks at once. k ``[B, H, N, C, K]``,
    v ``[B, H, N, C, V]``, beta ``[B, H, N, C]``, G None, ``[B, H, N, C]`` (scalar gate) or
    ``[B, H, N, C, K]`` (per-key gate, ``exp(G)`` elementwise on k) from ``chunk_gates`` (D, scalar
    gate only: ``decay(G)``, formed here unless given)."""
    b = beta.unsqueeze(-1)
    k_beta = k * b
    if _per_key(G):
        A, rhs_k = _wy_system_per_key(k_beta, k, G), k_beta * G.exp()
    elif G is None:
        A, rhs_k = _wy_system(k_beta, k, None), k_beta
    else:
        A, rhs_k = _wy_system(k_beta, k, decay(G) if D is None else D), k_beta * G.exp().unsqueeze(-1)
    UW = solve_unit_lower(A, torch.cat([v * b, rhs_k], -1))
    return UW.split([v.shape[-1], k.shape[-1]], dim=-1)


def wy_inverse(k: torch.Tensor, beta: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """``Tm = (I + A)^{-1}`` ``[B, H, N, C, C]`` (unit lower triangular), which ``_wy_fwd`` stores
    for the backward; ``wy_prepare`` never forms it (it solves against the right-hand sides)."""
    k_beta = k * beta.unsqueeze(-1)
    A = _wy_system_per_key(k_beta, k, G) if _per_key(G) else _wy_system(k_beta, k, None if G is None else decay(G))
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    return solve_unit_lower(A, eye)


def state_pass(
    k: torch.Tensor, G: torch.Tensor | None, U: torch.Tensor, W: torch.Tensor, S0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phase 3: the states. k ``[B, H, N, C, K]``, G None or from ``chunk_gates`` (scalar or per
    key), U and W from ``wy_prepare``, S0 ``[B, H, K, V]`` -> (the state entering every chunk ``S_in``
    ``[B, H, N, K, V]``, the written values ``u = U - W S_in`` ``[B, H, N, C, V]``, the final
    state ``[B, H, K, V]``).

    Per chunk the state map is affine, ``S_{n+1} = exp(G_C) S_n + R_n - KW_n S_n`` with the
    decayed keys ``Kd = k exp(G_C - G)``, ``R_n = Kd^T U_n`` and ``KW_n = Kd^T W_n`` (matmuls
    batched over every chunk); the only sequential part is a loop over the N chunks of one
    ``[K, K] @ [K, V]`` product each. unbind, not R[:, :, n]: each indexing op's backward would
    allocate a zero tensor as large as R."""
    if G is None:
        Kd, a_n = k, (None,) * k.shape[2]
    elif _per_key(G):  # Diag(exp G_C) scales the rows (keys) of the state
        G_last = G[..., -1:, :]  # (B, H, N, 1, K)
        Kd = k * (G_last - G).exp()
        a_n = G_last.exp().transpose(-1, -2).unbind(2)  # (B, H, K, 1) per chunk
    else:
        G_last = G[..., -1:]
        Kd = k * (G_last - G).exp().unsqueeze(-1)
        a_n = G_last.exp().unsqueeze(-1).unbind(2)  # (B, H, 1, 1) per chunk
    Kd_t = Kd.transpose(-1, -2)
    R, KW = Kd_t @ U, Kd_t @ W  # (B, H, N, K, V), (B, H, N, K, K)
    S = S0
    entering = []
    for R_n, KW_n, decay in zip(R.unbind(2), KW.unbind(2), a_n):
        entering.append(S)
        S = (S if decay is None else decay * S) + (R_n - KW_n @ S)
    S_in = torch.stack(entering, dim=2)
    return S_in, U - W @ S_in, S


def output(
    q: torch.Tensor, k: torch.Tensor, G: torch.Tensor | None, u: torch.Tensor, S_in: torch.Tensor,
    scale: float, D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Phase 4: ``o = scale [(q exp(G)) S_in + (q k^T exp(G_i - G_j), i >= j) u]``
    ``[B, H, N, C, V]``: q, k ``[B, H, N, C, K]``, G None or from ``chunk_gates`` (D, scalar gate
    only: ``decay(G)``, formed here unless given), u and S_in from ``state_pass``. A per-key G
    ``[B, H, N, C, K]`` decays each key channel: the scores are ``sum_c q_ic k_jc exp(G_ic - G_jc)``."""
    if _per_key(G):
        return (q * (G.exp() * scale)) @ S_in + PerKeyDecayedScores.apply(q * scale, k, G) @ u
    qk = (q * scale) @ k.transpose(-1, -2)
    if G is None:
        C = q.shape[-2]
        P = qk.masked_fill(~torch.ones(C, C, dtype=torch.bool, device=q.device).tril(), 0.0)
        q_in = q * scale
    else:
        P = qk * (decay(G) if D is None else D)
        q_in = q * (G.exp().unsqueeze(-1) * scale)
    return q_in @ S_in + P @ u


def delta_rule_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
    scale: float, initial_state: torch.Tensor | None, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The WY/UT form of the module docstring on one batch of equal-length sequences (the op
    loops over packed ones; ``triton/`` has this computation as fused kernels): chunks of
    ``chunk_size`` steps (default ``CHUNK``, ``PER_KEY_CHUNK`` for a per-key g ``[B, T, H, K]``),
    the end padded; the phases ``chunk_gates``,
    ``wy_prepare``, ``state_pass``, ``output``. Arguments as ``delta_rule`` validated them
    (gates floored); o and the final state come back in the accumulation dtype (float32, or
    float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, beta, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S0 = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    if T == 0:
        return q.new_zeros(B, 0, H, V, dtype=dt), S0

    per_key = g is not None and g.dim() == 4
    C = min(chunk_size or (PER_KEY_CHUNK if per_key else CHUNK), T)
    q, k, v, beta = (to_chunks(x.to(dt), C) for x in (q, k, v, beta))  # (B, H, N, C, *D)
    G = None if g is None else chunk_gates(g.to(dt), C)  # (B, H, N, C) or (B, H, N, C, K)
    D = None if G is None or per_key else decay(G)  # formed once for both phases that use it
    U, W = wy_prepare(k, v, beta, G, D)
    S_in, u, S = state_pass(k, G, U, W, S0)
    o = output(q, k, G, u, S_in, scale, D)  # (B, H, N, C, V)
    return o.movedim(1, 3).flatten(1, 2)[:, :T], S
