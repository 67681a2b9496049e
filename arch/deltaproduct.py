"""Gated DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs
via Householder Products").

DeltaNet takes one step of online gradient descent on ``|k S - v|^2 / 2`` per token; DeltaProduct
takes ``n_h`` of them (``n_householder``), each with its own key, value and step size, so the
state transition of one token is a product of ``n_h`` generalised Householder matrices (diagonal
plus rank ``n_h``). Gated DeltaProduct decays the state once per token first, with Gated
DeltaNet's scalar gate per head. Per head, in the op's row-vector layout (``S [K, V]``):

    S_{t,0} = alpha_t S_{t-1},        alpha_t = exp(g_t),  g_t = -exp(A_log) softplus(x_t W_a + dt_bias)
    S_{t,j} = S_{t,j-1} + beta_{t,j} k_{t,j}^T (v_{t,j} - k_{t,j} S_{t,j-1}),     j = 1 .. n_h
    S_t = S_{t,n_h},                  o_t = q_t S_t / sqrt(K)

that is ``S_t = A_t S_{t-1} + B_t`` with

    A_t = alpha_t (I - beta_{t,n_h} k_{t,n_h}^T k_{t,n_h}) ... (I - beta_{t,1} k_{t,1}^T k_{t,1})
    B_t = sum_j (I - beta_{t,n_h} k^T_{t,n_h} k_{t,n_h}) ... (I - beta_{t,j+1} k^T_{t,j+1} k_{t,j+1}) beta_{t,j} k_{t,j}^T v_{t,j}

It runs on ``delta_rule`` over the interleaved sequence of ``T * n_h`` sub-steps (token t's
sub-steps at ``t n_h .. t n_h + n_h - 1``): the gate ``g_t`` on the first sub-step of each token
and 0 on the others, the query ``q_t`` on the last sub-step and zeros on the others; the output
is read at the last sub-step. Decoding carries ``delta_rule``'s state ``[B, H, K, V]`` (unchanged
by the interleaving) and the short convs' states.

The block is Gated DeltaNet's (``gdn``, which this class extends; FLA's ``GatedDeltaProduct``
layer): q, k, v projections with SiLU short convs, q and k L2-normalised per head (every
sub-step's key), ``beta_{t,j} = sigmoid(x_t W_beta)_j``, times 2 with ``allow_neg_eigval`` so
that ``beta`` lies in ``(0, 2)`` and each Householder factor has eigenvalue ``1 - beta`` in
``(-1, 1)`` (the paper's ``[-1, 1]`` range, its language-modelling setting and FLA's default),
the output normalised per head and gated, ``out_proj(rmsnorm(o) * silu(x W_g))``. The k, v and
beta projections and the k, v convs are ``n_h`` times wider than Gated DeltaNet's, laid out
sub-step-major (``(n_h, H, K)``, as FLA), one short conv over all of them.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange

from postformer.kernels import delta_rule

from .deltanet_gdn import DeltaNetCache, GatedDeltaNet, l2_normalize
from .mixer import carry_state, state_dtype


class GatedDeltaProduct(GatedDeltaNet):
    """Gated DeltaProduct: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default. Its
    width rule is Gated DeltaNet's (``width_options`` inherited: key heads of at least 32
    channels over ``0.75 * d_model``; ``n_householder`` does not follow the width)."""

    name = "deltaproduct"
    has_mlp = True

    @dataclasses.dataclass
    class Options(GatedDeltaNet.Options):
        #: Householder steps (delta-rule sub-steps) per token, n_h >= 1; each has its own key,
        #: value and beta (1: Gated DeltaNet)
        n_householder: int = 2
        #: beta = 2 sigmoid(.) in (0, 2), so each Householder factor's eigenvalue 1 - beta lies in
        #: (-1, 1) (the paper's best setting); False: beta = sigmoid(.) in (0, 1)
        allow_neg_eigval: bool = True

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        n = opts.n_householder
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"mixer {cls.name!r}: n_householder must be an integer >= 1, got {n!r}")
        if not isinstance(opts.allow_neg_eigval, bool):
            raise ValueError(f"mixer {cls.name!r}: allow_neg_eigval must be true or false, got {opts.allow_neg_eigval!r}")
        return super()._resolve(d_model, opts)

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        # n_h keys, values and betas per token: Gated DeltaNet's projections and convs, n_h times
        # wider (the base class sizes them by _writes_per_token)
        super().__init__(d_model, options, norm_eps, **where)
        self.n_householder = self.options.n_householder
        self.beta_scale = 2.0 if self.options.allow_neg_eigval else 1.0

    def _writes_per_token(self) -> int:
        return self.options.n_householder

    def forward(self, x: torch.Tensor, cache: DeltaNetCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        n = self.n_householder
        q = self._conv(self.q_proj(x), "q", cache)  # (B, T, key_dim)
        k = self._conv(self.k_proj(x), "k", cache)  # (B, T, n * key_dim)
        v = self._conv(self.v_proj(x), "v", cache)  # (B, T, n * value_dim)
        q = l2_normalize(rearrange(q, "b t (h k) -> b t h k", k=self.head_k_dim))
        k = l2_normalize(rearrange(k, "b t (n h k) -> b (t n) h k", n=n, k=self.head_k_dim))
        v = rearrange(v, "b t (n h v) -> b (t n) h v", n=n, v=self.head_v_dim)
        beta = self.beta_scale * torch.sigmoid(self.b_proj(x).to(state_dtype(x.dtype)))  # (B, T, n * H)
        beta = rearrange(beta, "b t (n h) -> b (t n) h", n=n)
        g = self._decay(x)  # (B, T, H): once per token, on its first sub-step
        g = rearrange(torch.stack([g] + [torch.zeros_like(g)] * (n - 1), dim=2), "b t n h -> b (t n) h")
        q = rearrange(torch.stack([torch.zeros_like(q)] * (n - 1) + [q], dim=2), "b t n h k -> b (t n) h k")
        o = carry_state(cache, "state", delta_rule, q=q, k=k, v=v, beta=beta, g=g)  # (B, T n, H, V)
        o = o[:, n - 1 :: n]  # (B, T, H, V): the output after each token's last sub-step
        gate = rearrange(self.g_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        o = self.o_norm(o, gate)
        return self.out_proj(rearrange(o, "b t h v -> b t (h v)"))
