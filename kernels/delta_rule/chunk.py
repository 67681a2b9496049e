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

so ``Kd^T [U | W]`` is also one batched matmul, and the only sequential part is a loop over
the T/C chunks doing one [K, K] @ [K, V] product each. The entering states are then stacked and
``u`` and ``o`` follow from batched matmuls again.

Exactness under strong decay: every exponent formed is ``G_i - G_j`` with ``i >= j`` (masked to
``-inf`` before exp where i < j), ``G_i`` or ``G_C - G_j``, all <= 0 for ``g <= 0``; the
shortcut ``exp(G_i) exp(-G_j)`` would overflow at g = -10 per step and is never formed.

A ragged last chunk is padded with ``q = k = v = 0``, ``beta = 0``, ``g = 0``: padded steps write
nothing (``u = 0``) and do not decay, so the final state is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .._common import accumulation_dtype

CHUNK = 64


def solve_unit_lower(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(I + tril(A, -1))^{-1} rhs`` for A ``[..., C, C]``, rhs ``[..., C, D]``: one unit-lower-
    triangular solve per matrix. Only the strictly lower triangle of A is read
    (``linalg.solve_triangular(..., unitriangular=True)``)."""
    return torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)


def pass_states(
    R: torch.Tensor, KW: torch.Tensor, a: torch.Tensor | None, S: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk-to-chunk recurrence ``S_{n+1} = a_n S_n + R_n - KW_n S_n``.

    R ``[B, H, N, K, V]``, KW ``[B, H, N, K, K]``, a None or ``[B, H, N, 1, 1]``, S ``[B, H, K, V]``
    (the initial state). Returns the state entering every chunk ``[B, H, N, K, V]`` and the final
    state. A Python loop over the N chunks (``triton/state.py`` has it as a kernel, ``_state_fwd``).
    unbind, not R[:, :, n]: each indexing op's backward would allocate a zero tensor as large as R.
    """
    a_n = (None,) * R.shape[2] if a is None else a.unbind(2)
    entering = []
    for R_n, KW_n, decay in zip(R.unbind(2), KW.unbind(2), a_n):
        entering.append(S)
        S = (S if decay is None else decay * S) + (R_n - KW_n @ S)
    return torch.stack(entering, dim=2), S


def delta_rule_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
    scale: float, initial_state: torch.Tensor | None, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The WY/UT form of the module docstring on one batch of equal-length sequences (the op
    loops over packed ones; ``triton/`` has this computation as fused kernels): chunks of
    ``chunk_size`` steps (default ``CHUNK``), the end padded. Arguments as ``delta_rule``
    validated them (gates floored); o and the final state come back in the accumulation dtype
    (float32, or float64 for float64 inputs)."""
    dt = accumulation_dtype(q, k, v, beta, g, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    if T == 0:
        return q.new_zeros(B, 0, H, V, dtype=dt), S

    C = min(chunk_size or CHUNK, T)
    pad = (-T) % C
    q, k, v = (
        rearrange(F.pad(x.to(dt), (0, 0, 0, 0, 0, pad)), "b (n c) h d -> b h n c d", c=C)
        for x in (q, k, v)
    )  # (B, H, N, C, D)
    beta = rearrange(F.pad(beta.to(dt), (0, 0, 0, pad)), "b (n c) h -> b h n c 1", c=C)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    # The solve (linalg.solve_triangular(..., unitriangular=True)) reads only the strictly lower
    # triangle of its matrix, so (k*beta) k^T (decayed) can be passed as it is: the solve is with I + A.
    k_beta = k * beta
    kbk = k_beta @ k.transpose(-1, -2)  # (B, H, N, C, C): beta_i k_i . k_j
    qk = (q * scale) @ k.transpose(-1, -2)
    if g is None:
        A = kbk
        P = qk.masked_fill(~causal, 0.0)
        rhs_k, Kd, q_in, a = k_beta, k, q * scale, None
    else:
        G = rearrange(F.pad(g.to(dt), (0, 0, 0, pad)), "b (n c) h -> b h n c", c=C).cumsum(-1)
        # exp(G_i - G_j) for i >= j, 0 above the diagonal (masked before exp: never overflows)
        D = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()
        A = kbk * D
        P = qk * D
        eG = G.exp().unsqueeze(-1)  # (B, H, N, C, 1)
        G_last = G[..., -1:]
        rhs_k = k_beta * eG
        Kd = k * (G_last - G).exp().unsqueeze(-1)
        q_in = q * (eG * scale)
        a = G_last.exp().unsqueeze(-1)  # (B, H, N, 1, 1)

    # One unit-lower-triangular solve per chunk, all chunks at once: (I + A)^{-1} [beta*v | beta*e^G*k].
    UW = solve_unit_lower(A, torch.cat([v * beta, rhs_k], -1))
    U, W = UW.split([V, K], dim=-1)  # (B, H, N, C, V), (B, H, N, C, K)

    # Per chunk the state map is affine: S_{n+1} = exp(G_C) S_n + R_n - KW_n S_n with
    # R_n = Kd_n^T U_n and KW_n = Kd_n^T W_n, both from one matmul batched over all chunks.
    RKW = Kd.transpose(-1, -2) @ UW  # (B, H, N, K, V + K)
    R, KW = RKW.split([V, K], dim=-1)
    # The only sequential part: one [K, K] @ [K, V] per chunk.
    S_in, S = pass_states(R, KW, a, S)  # S_in: (B, H, N, K, V), entering each chunk
    u = U - W @ S_in  # (B, H, N, C, V): the values actually written, eq. (2)
    o = q_in @ S_in + P @ u
    o = rearrange(o, "b h n c d -> b (n c) h d")[:, :T]
    return o, S
