"""Parameters and training FLOPs per token of a ``ModelConfig``, counted from its shape.

Conventions (those of Kaplan et al. 2020 and Hoffmann et al. 2022, "Chinchilla", App. F):

- A multiply-accumulate (MAC) is 2 FLOPs. Only matmul-like work is counted: linear layers,
  attention scores and their reduction, the chunked recurrence, depthwise convs. Norms,
  activations, RoPE, softmax, gates and residual adds are elementwise and left out (a few
  FLOPs per channel, under 1% at the sizes that matter).
- Training = forward + backward = 3 x forward (the backward computes gradients with respect
  to both inputs and weights, two matmuls for every forward one).
- Embedding lookups are free; the LM head is a ``d_model x vocab`` matmul and counts, tied
  to the embedding or not. Biases are adds and are not counted.

Forward FLOPs per token, per component (``T`` = sequence length, ``d`` = d_model):

- linear: ``2 * (weights of every nn.Linear in the blocks)``: attention q/k/v/o, the SwiGLU
  MLP (``3 d d_ff``), Mamba-2's in/out projections, GLA's q/k/v/gate/low-rank/out.
- lm_head: ``2 d vocab``.
- attention: ``QK^T`` and ``softmax(.) V`` each ``2 * n_heads * head_dim * T_ctx`` per layer.
  ``T_ctx = T`` by default, the Chinchilla convention (the full ``T x T`` score matrix, what
  a dense kernel computes). ``causal=True`` counts the average causal context
  ``T_ctx = (T + 1) / 2`` instead, what a kernel that skips masked blocks (flash-attn)
  performs; Kaplan's ``2 n_layers T d_attn`` forward term is this causal count (the
  conventions at the end of this docstring). Training:
  ``12 n_layers T d_attn`` (full) or about ``6 n_layers T d_attn`` (causal).
- recurrence (Mamba-2, Mamba-3, mLSTM and GLA through ``kernels.gla``'s chunk form, per head
  with key dim ``K``, value dim ``V``, chunk ``C``; also RetNet with a scalar gate and HGRN2
  with per-key gates): per chunk the scores ``q k^T`` (``n_le K`` MACs over ``n_le``
  pairs ``(i, j)`` of the ``C x C`` block), their product with ``v`` (``n_le V``), the chunk's state
  contribution ``k^T v`` (``C K V``), the readout of the entering state ``q S`` (``C K V``),
  and the state passing ``a S + U`` (``K V``, one multiply-add per state element). The chunk
  is what the chunk path uses: 64 for a scalar gate (Mamba-2), 16 for per-key gates (GLA),
  and ``min(chunk, T)``; a ragged last chunk is padded and paid for in full. Per token:
  ``2 * ceil(T/C) * (n_le (K + V) + 2 C K V + K V) / T`` per head. Both intra-chunk products
  are masked to ``i >= j``: the full count takes ``n_le = C^2`` (the PyTorch chunk path computes
  the whole block and masks it after the fact), the causal count ``n_le = C (C + 1) / 2``. GLA's
  per-key decayed scores are counted as the ``n_le K`` MACs they amount to (the exponentials
  are elementwise).
- recurrence (``delta_rule``, DeltaNet and Gated DeltaNet, chunk ``C = 64``, per head): per chunk
  the scores ``q k^T`` (``n_le K``, masked to ``i >= j``) and ``(beta k) k^T`` (``n_lt K``: of it
  the solve reads only ``i > j``), the unit-triangular solve against ``[beta v | beta k]``
  (``n_solve (K + V)``), the products ``Kd^T [U | W]`` (``C K (K + V)``), the sequential state step
  ``S + R - (Kd^T W) S`` (``K^2 V + K V``), the pseudo-value correction ``W S`` and the readout
  ``q S`` (``2 C K V``) and the intra-chunk output ``P u`` (``n_le V``, ``i >= j``). Full count:
  ``n_le = n_lt = C^2``, ``n_solve = C^2 / 2``; causal: ``n_le = C (C + 1) / 2``,
  ``n_lt = n_solve = C (C - 1) / 2``. The solve is triangular in both: forward substitution against a
  unit lower-triangular matrix takes ``C (C - 1) / 2`` multiply-adds per right-hand-side
  column whatever the kernel, and the full count's ``C^2 / 2`` is that number rounded up by
  the ``C / 2`` of a diagonal it never multiplies (kept so the full numbers do not move).
  With per-key gates (Kimi Delta Attention, chunk ``C = 16``) the same terms, the two score
  products decayed per key (``n_le K`` and ``n_lt K``, as GLA's). DeltaProduct runs the delta
  rule over ``n`` sub-steps per token, its chunks and triangles over sub-steps.
- recurrence (``dplr_delta_rule``, RWKV-7, chunk ``C = 16``, per head): per chunk the decayed
  pairwise products ``L = b a^T``, ``M = b k^T`` (``2 n_lt K``, strictly lower: ``l < j``) and the
  scores ``q a^T``, ``q k^T`` (``2 n_le K``, ``i >= j``), ``M v`` (``n_lt V``), the unit-triangular
  solve against ``[b | M v]`` (``n_solve (K + V)``), the chunk's transition ``a^T P`` (``C K^2``) and
  input ``a^T R + k^T v`` (``2 C K V``), the sequential step ``T S + U`` (``K^2 V + K V``), the
  reads ``P S`` and the readout ``q S`` (``2 C K V``), and ``A u + Q v`` (``2 n_le V``, ``i >= j``);
  ``n_le``, ``n_lt`` and ``n_solve`` as for the delta rule.
- recurrence (``selective_scan``, Mamba-1, and ``linear_scan``, RG-LRU): elementwise scans, no
  matmul. Counted as the multiply-adds the two-level chunk path performs per state element and
  token: selective scan ``5 D N`` (the input ``dt x B``, the chunk-local scan, the cumulative
  decay, the cross-chunk fix-up, the readout ``C h``), linear scan ``3 D`` (scan, cumulative
  decay, fix-up).
- sliding-window attention: as attention with the context capped at the window,
  ``T_ctx = min(T, window)`` (``causal=True``: the mean of ``min(t, window)`` over positions).
- conv: depthwise causal conv, ``2 * channels * width``: Mamba-2's over xBC (``conv_size``),
  DeltaNet's and Gated DeltaNet's on q, k, v (``conv_size``), Mamba-1's and RG-LRU's, and
  attention's optional Primer convs on q, k, v (``conv_size``, ``attn`` and ``swa``). A width
  of 0 (the no-conv controls, attention's default) counts nothing.

Two conventions, chosen by ``causal`` and applied to every mixer alike:

- full (``causal=False``, the default; Chinchilla's App. F): every product over its whole
  block, the full ``T x T`` scores of attention and the full ``C x C`` intra-chunk blocks of
  the chunked recurrences, as a dense kernel computes them before masking (the PyTorch chunk
  paths do: FlopCounterMode sees exactly these matmuls, tests/arch/test_flops.py).
- causal (``causal=True``): what a kernel that skips masked work computes. Attention's mean
  context ``(T + 1) / 2`` (``i >= j``, the diagonal included; Kaplan's count), and in every
  chunk form each product masked to a lower triangle over that triangle only:
  ``C (C + 1) / 2`` pairs where the mask keeps the diagonal, ``C (C - 1) / 2`` where it keeps
  only ``i > j``. State terms (``k^T v``, ``q S``, the state passing, the sequential step),
  linear layers, the head, convs and the elementwise scans are the same under both.

The scaling studies take the causal count as their headline compute and report the full
(Chinchilla) count and ``6 N D`` beside it (``flops_per_token_by_convention``).

The full count of a dense transformer is thus ``6 N_matmul + 12 n_layers T d`` with
``N_matmul`` its matmul weights (head included); for short sequences it tends to
``6 N_matmul``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from postformer.kernels.delta_rule import chunk as delta_rule_chunk_module
from postformer.kernels.dplr_delta_rule import chunk as dplr_chunk_module
from postformer.kernels.gla import chunk as gla_chunk_module

from .config import ModelConfig
from .mamba2 import Mamba2
from .mamba3 import Mamba3
from .model import Block

#: the chunk lengths the counts assume: those of the kernels' chunk paths
SCALAR_GATE_CHUNK = gla_chunk_module.SCALAR_CHUNK
PER_KEY_GATE_CHUNK = gla_chunk_module.PER_KEY_CHUNK
DELTA_RULE_CHUNK = delta_rule_chunk_module.CHUNK
DELTA_RULE_PER_KEY_CHUNK = delta_rule_chunk_module.PER_KEY_CHUNK
DPLR_CHUNK = dplr_chunk_module.CHUNK

COMPONENTS = ("linear", "lm_head", "attention", "recurrence", "conv")


def _pairs(C: int, causal: bool, *, diagonal: bool = True) -> float:
    """(i, j) pairs of a chunk's ``C x C`` block that a product computes: all ``C^2`` under the
    full count (what a dense kernel computes before masking), under ``causal`` only the lower
    triangle the mask keeps: ``C (C + 1) / 2`` with the diagonal (``i >= j``: scores against the
    token itself, as attention's ``(T + 1) / 2``), ``C (C - 1) / 2`` without it (``i > j``)."""
    if not causal:
        return C * C
    return C * (C + 1) / 2 if diagonal else C * (C - 1) / 2


def _chunked_recurrence_macs(T: int, C: int, K: int, V: int, causal: bool = False) -> float:
    """MACs per token per head of the chunk form of ``S_t = a_t S_{t-1} + k_t^T v_t``; ``causal``:
    the scores ``q k^T`` and their product with ``v`` over the lower triangle ``i >= j`` only."""
    C = max(1, min(C, T))
    n_chunks = math.ceil(T / C)
    per_chunk = _pairs(C, causal) * (K + V) + 2 * C * K * V + K * V
    return n_chunks * per_chunk / T


def _attn_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d = cfg.d_model
    head_dim = d // o.n_heads
    q_dim, kv_dim = o.n_heads * head_dim, o.n_kv_heads * head_dim
    ctx = (T + 1) / 2 if causal else T
    return {
        "linear": d * q_dim + 2 * d * kv_dim + q_dim * d,
        "attention": 2 * o.n_heads * head_dim * ctx,  # QK^T and AV
        "conv": (q_dim + 2 * kv_dim) * o.conv_size,  # Primer's convs on q, k, v; 0: none
    }


def _mamba2_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d = cfg.d_model
    d_inner, nheads = Mamba2.dims(d, o)
    conv_dim = d_inner + 2 * o.ngroups * o.d_state
    return {
        "linear": d * (d_inner + conv_dim + nheads) + d_inner * d,  # in_proj, out_proj
        "conv": conv_dim * o.conv_size,  # conv_size = 0: no conv
        # state [N, P] per head: K = d_state, V = head_dim
        "recurrence": nheads * _chunked_recurrence_macs(T, SCALAR_GATE_CHUNK, o.d_state, o.head_dim, causal),
    }


def _gla_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d = cfg.d_model
    key_dim, value_dim = int(d * o.expand_k), int(d * o.expand_v)
    r = o.gate_low_rank_dim
    return {
        # q, k, v, output gate, low-rank key gate (two matrices), out
        "linear": 2 * d * key_dim + 2 * d * value_dim + d * r + r * key_dim + value_dim * d,
        "recurrence": o.n_heads * _chunked_recurrence_macs(
            T, PER_KEY_GATE_CHUNK, key_dim // o.n_heads, value_dim // o.n_heads, causal
        ),
    }


def _delta_rule_macs(T: int, C: int, K: int, V: int, causal: bool = False) -> float:
    """MACs per token per head of ``kernels.delta_rule``'s chunk form (WY/UT representation);
    ``causal``: the masked intra-chunk products over the triangle they keep (module docstring)."""
    C = max(1, min(C, T))
    n_chunks = math.ceil(T / C)
    incl, strict = _pairs(C, causal), _pairs(C, causal, diagonal=False)
    # the unit-triangular solve is triangular under both counts: C^2 / 2 per right-hand-side
    # column in the full count, exactly C (C - 1) / 2 (forward substitution, the unit diagonal
    # costs nothing) in the causal one
    solve = C * (C - 1) / 2 if causal else C * C / 2
    per_chunk = (
        incl * K + strict * K  # q k^T (i >= j) and (beta k) k^T (i > j: the solve reads below the diagonal)
        + solve * (K + V)  # unit-triangular solve against [beta v | beta k]
        + C * K * (K + V)  # Kd^T [U | W]
        + K * K * V + K * V  # S + R - (Kd^T W) S, the sequential step
        + 2 * C * K * V  # W S and q S
        + incl * V  # P u (i >= j)
    )
    return n_chunks * per_chunk / T


def _dplr_macs(T: int, C: int, K: int, V: int, causal: bool = False) -> float:
    """MACs per token per head of ``kernels.dplr_delta_rule``'s chunk form (see the docstring);
    ``causal``: the masked intra-chunk products over the triangle they keep."""
    C = max(1, min(C, T))
    n_chunks = math.ceil(T / C)
    incl, strict = _pairs(C, causal), _pairs(C, causal, diagonal=False)
    solve = C * (C - 1) / 2 if causal else C * C / 2  # triangular in both counts (_delta_rule_macs)
    per_chunk = (
        2 * strict * K  # b a^T, b k^T (L, M: l < j), decayed per key
        + 2 * incl * K  # q a^T, q k^T (A, Q: i >= j), decayed per key
        + strict * V  # M v
        + solve * (K + V)  # unit-triangular solve against [b exp(G) | M v]
        + C * K * K + 2 * C * K * V  # a^T P (the chunk's transition), a^T R + k^T v
        + K * K * V + K * V  # T S + U, the sequential step
        + 2 * C * K * V  # the reads P S and the readout q S
        + 2 * incl * V  # A u + Q v (i >= j)
    )
    return n_chunks * per_chunk / T


def _swa_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    macs = _attn_macs(cfg, o, T, causal)
    W = o.window
    # mean over positions t = 1..T of min(t, W) (causal), or min(T, W)
    ctx = (min(T, W) * (min(T, W) + 1) / 2 + max(0, T - W) * W) / T if causal else min(T, W)
    head_dim = cfg.d_model // o.n_heads
    macs["attention"] = 2 * o.n_heads * head_dim * ctx
    return macs


def _mamba_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d = cfg.d_model
    di, R, N = o.expand * d, o.dt_rank, o.d_state
    return {
        "linear": d * 2 * di + di * (R + 2 * N) + R * di + di * d,  # in, x, dt, out projections
        "conv": di * o.conv_size,
        "recurrence": 5 * di * N,
    }


def _rglru_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, dr = cfg.d_model, o.d_rnn
    return {
        # gate and recurrent branches, out; the block-diagonal gates W_a, W_i (2 dr^2 / n_heads)
        "linear": 3 * d * dr + 2 * dr * (dr // o.n_heads),
        "conv": dr * o.conv_size,
        "recurrence": 3 * dr,
    }


def _deltanet_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, H = cfg.d_model, o.n_heads
    K, V = o.head_dim, int(o.expand_v * o.head_dim)
    key_dim, value_dim = H * K, H * V
    gated = hasattr(o, "A_init_max")  # Gated DeltaNet: one more projection, the decay's dt
    return {
        # q, k, v, output gate, beta (and dt for gdn), out
        "linear": 2 * d * key_dim + 2 * d * value_dim + d * H * (2 if gated else 1) + value_dim * d,
        "conv": (2 * key_dim + value_dim) * o.conv_size,  # conv_size = 0: no convs
        "recurrence": H * _delta_rule_macs(T, DELTA_RULE_CHUNK, K, V, causal),
    }


def _gated_attn_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    macs = _attn_macs(cfg, o, T, causal)
    head_dim = cfg.d_model // o.n_heads
    macs["linear"] += cfg.d_model * (o.n_heads * head_dim if o.gate == "elementwise" else o.n_heads)  # W_g
    return macs


def _mlstm_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, H = cfg.d_model, o.n_heads
    key_dim, value_dim = int(d * o.expand_k), int(d * o.expand_v)
    return {
        # q, k, v, output gate, input and forget gates (one per head each), out
        "linear": 2 * d * key_dim + 2 * d * value_dim + 2 * d * H + value_dim * d,
        # gla with a scalar gate; the values carry the normaliser column (V + 1)
        "recurrence": H * _chunked_recurrence_macs(T, SCALAR_GATE_CHUNK, key_dim // H, value_dim // H + 1, causal),
    }


def _deltaproduct_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, H, n = cfg.d_model, o.n_heads, o.n_householder
    K, V = o.head_dim, int(o.expand_v * o.head_dim)
    key_dim, value_dim = H * K, H * V
    return {
        # q; n keys, values and betas per token; the decay's dt; output gate; out
        "linear": d * key_dim + n * d * (key_dim + value_dim + H) + d * H + d * value_dim + value_dim * d,
        "conv": (key_dim + n * (key_dim + value_dim)) * o.conv_size,
        # delta_rule over T n sub-steps: n of them per token
        "recurrence": H * n * _delta_rule_macs(T * n, DELTA_RULE_CHUNK, K, V, causal),
    }


def _kda_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, H = cfg.d_model, o.n_heads
    K, V = o.head_dim, int(o.expand_v * o.head_dim)
    key_dim, value_dim, r = H * K, H * V, o.gate_low_rank_dim
    return {
        # q, k, v, beta, low-rank forget gate (d -> r -> H K), low-rank output gate (d -> r -> H V), out
        "linear": 2 * d * key_dim + d * value_dim + d * H + r * (2 * d + key_dim + value_dim) + value_dim * d,
        "conv": (2 * key_dim + value_dim) * o.conv_size,
        # the scalar gate's terms at the per-key chunk; its two score products decayed per key
        # are the same C^2 K MACs each
        "recurrence": H * _delta_rule_macs(T, DELTA_RULE_PER_KEY_CHUNK, K, V, causal),
    }


def _mamba3_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d = cfg.d_model
    d_inner, H, R = Mamba3.dims(d, o)
    G, N = o.ngroups, o.d_state
    return {
        # in_proj to z, x, B, C, dt, A, lambda, theta; out_proj
        "linear": d * (2 * d_inner + 2 * G * N + 3 * H + R) + d_inner * d,
        # gla with a scalar gate per head, state [N, P]
        "recurrence": H * _chunked_recurrence_macs(T, SCALAR_GATE_CHUNK, N, o.head_dim, causal),
    }


def _rwkv7_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, N = cfg.d_model, o.head_dim
    return {
        # r, k, v, out; the decay's, in-context learning rate's and output gate's LoRAs (d -> r -> d)
        "linear": 4 * d * d + 2 * d * (o.decay_rank + o.a_rank + o.gate_rank),
        "recurrence": (d // N) * _dplr_macs(T, DPLR_CHUNK, N, N, causal),
    }


def _retnet_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, H = cfg.d_model, o.n_heads
    key_dim, value_dim = int(d * o.expand_k), int(d * o.expand_v)
    return {
        "linear": 2 * d * key_dim + 2 * d * value_dim + value_dim * d,  # q, k, v, gate, out
        "recurrence": H * _chunked_recurrence_macs(T, SCALAR_GATE_CHUNK, key_dim // H, value_dim // H, causal),
    }


def _hgrn2_macs(cfg: ModelConfig, o: Any, T: int, causal: bool) -> dict[str, float]:
    d, E = cfg.d_model, o.expand_ratio
    return {
        "linear": 4 * d * d,  # q (output gate), forget gate, input, out
        "recurrence": (d // E) * _chunked_recurrence_macs(T, PER_KEY_GATE_CHUNK, E, E, causal),
    }


#: mixer name -> forward MACs per token of one layer, by component. A new mixer adds its entry.
MIXER_MACS: dict[str, Callable[[ModelConfig, Any, int, bool], dict[str, float]]] = {
    "attn": _attn_macs,
    "mamba2": _mamba2_macs,
    "gla": _gla_macs,
    "swa": _swa_macs,
    "mamba": _mamba_macs,
    "rglru": _rglru_macs,
    "deltanet": _deltanet_macs,
    "gdn": _deltanet_macs,
    "retnet": _retnet_macs,
    "hgrn2": _hgrn2_macs,
    "gated_attn": _gated_attn_macs,
    "mlstm": _mlstm_macs,
    "deltaproduct": _deltaproduct_macs,
    "kda": _kda_macs,
    "rwkv7": _rwkv7_macs,
    "mamba3": _mamba3_macs,
}

#: MLP kind -> matmul weights per ``d_model * d_ff``: SwiGLU's three matrices, RWKV-7's two
MLP_MATRICES = {"swiglu": 3, "rwkv7": 2}


def forward_flops_breakdown(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> dict[str, float]:
    """Forward FLOPs per token by component (keys ``COMPONENTS``), at sequence length ``seq_len``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    macs = dict.fromkeys(COMPONENTS, 0.0)
    for name in cfg.layer_mixers:
        if name not in MIXER_MACS:
            raise ValueError(
                f"arch.flops has no FLOP count for mixer {name!r} (known: {sorted(MIXER_MACS)}); "
                "add one to MIXER_MACS in arch/flops.py"
            )
        for key, value in MIXER_MACS[name](cfg, cfg.mixer_options(name), seq_len, causal).items():
            macs[key] += value
        if cfg.block_has_mlp(name):
            # SwiGLU: in_proj (2 d_ff) + out_proj; RWKV-7's channel mix: in_proj + out_proj
            macs["linear"] += MLP_MATRICES[cfg.mlp_kind] * cfg.d_model * cfg.ff_dim
    macs["lm_head"] = cfg.d_model * cfg.vocab_size
    return {key: 2.0 * value for key, value in macs.items()}


def flops_breakdown(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> dict[str, float]:
    """Training FLOPs per token by component: 3 x ``forward_flops_breakdown``."""
    return {k: 3.0 * v for k, v in forward_flops_breakdown(cfg, seq_len, causal=causal).items()}


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> float:
    """Forward FLOPs per token of a sequence of ``seq_len`` tokens (see the module docstring)."""
    return sum(forward_flops_breakdown(cfg, seq_len, causal=causal).values())


def flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len``."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, causal=causal)


def flops_per_token_by_convention(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token at ``seq_len`` under the three conventions the scaling studies
    report: ``"causal"`` (the headline: what a kernel that skips masked work computes, every
    mixer alike), ``"chinchilla"`` (the full ``T x T`` scores and ``C x C`` blocks) and
    ``"6ND"`` (``6 N`` per token, ``N = param_counts(cfg)[0]``: every parameter, embeddings
    included, the N the studies fit)."""
    return {
        "causal": flops_per_token(cfg, seq_len, causal=True),
        "chinchilla": flops_per_token(cfg, seq_len, causal=False),
        "6ND": 6.0 * param_counts(cfg)[0],
    }


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: every linear layer, the LM head included
    (counted even when tied to the embedding, since the head's matmul happens regardless)."""
    parts = forward_flops_breakdown(cfg, 1)
    return round((parts["linear"] + parts["lm_head"]) / 2)


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """``(N, N_non_embedding)`` of ``LanguageModel(cfg)``, with ``LanguageModel.num_params``'s
    conventions, without building the model: the embedding (and an untied head) and the final
    norm by formula, and each distinct block (its mixer, options, MLP) built once on the meta
    device and counted, times the layers that have it (a block's parameters do not depend on
    its depth; ``tests/arch/test_presets.py`` checks the count against the built model of every
    preset). About 1 ms a block where building a whole model takes 0.1 s."""
    d, vocab = cfg.d_model, cfg.vocab_size
    embeddings = vocab * d * (1 if cfg.tie_embeddings else 2)  # the head is untied: its own matrix
    blocks = sum(_block_params(cfg, name) for name in cfg.layer_mixers)
    non_embedding = blocks + d  # + the final RMSNorm
    return embeddings + non_embedding, non_embedding


#: parameters of one block by what shapes it: (mixer, width, resolved options, MLP kind and width)
_BLOCK_PARAMS: dict[tuple[Any, ...], int] = {}


def _block_params(cfg: ModelConfig, name: str) -> int:
    """Parameters of a block of mixer ``name`` in ``cfg`` (its norms, mixer and MLP)."""
    mlp = cfg.block_has_mlp(name)
    key = (name, cfg.d_model, repr(cfg.mixer_options(name)), mlp, cfg.mlp_kind if mlp else None,
           cfg.ff_dim if mlp else None)
    if key not in _BLOCK_PARAMS:
        with torch.device("meta"):
            block = Block(cfg, name, layer_idx=0)
        _BLOCK_PARAMS[key] = sum(p.numel() for p in block.parameters())
    return _BLOCK_PARAMS[key]
