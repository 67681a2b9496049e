"""Pieces every op family shares: argument validation and implementation dispatch.

Kept free of Triton and of anything in ``arch``/``train`` (``kernels`` imports nothing of ours).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IMPLS = ("auto", "reference", "chunk", "triton")

# Log gates at or below this are a full reset in float32: exp(-60) ~ 9e-27 vanishes against
# any term it is summed with. The chunked paths (PyTorch and Triton) floor gates here because
# they difference cumulative sums of g: -inf (exp(-inf) = 0, a legal reset) would give
# -inf - -inf = NaN, and a gate of -1e8 would swamp the float32 sums that follow it.
GATE_FLOOR = -60.0


def resolve_impl(impl: str, *tensors: torch.Tensor | None, has_triton: bool,
                 triton_ok: bool = True) -> str:
    """Turn ``impl`` into the implementation that runs for a call on ``tensors`` (the op's inputs,
    None skipped; the first one's device decides).

    ``auto`` picks ``triton`` for CUDA tensors when the family has Triton kernels, ``chunk``
    otherwise, and also ``chunk`` when the computation is in float64 (any of ``tensors`` float64,
    see :func:`accumulation_dtype`: the kernels compute in fp32, so gradchecks stay exact on the
    chunk path) or the op says its kernels do not cover the call (``triton_ok=False``, e.g. a
    conv wider than the kernels unroll). The environment variable ``POSTFORMER_IMPL`` overrides
    ``auto`` (and only ``auto``), e.g. ``POSTFORMER_IMPL=reference`` to debug a whole model
    against the loops; the float64 and ``triton_ok`` fallbacks still apply to it. An explicit
    ``triton`` without the triton package is a ValueError.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    automatic = impl == "auto"
    if automatic:
        env = os.environ.get("POSTFORMER_IMPL", "").strip()
        if env:
            if env not in IMPLS:
                raise ValueError(f"POSTFORMER_IMPL={env!r} is not one of {IMPLS}")
            impl = env
    if impl == "auto":
        impl = "triton" if (tensors[0].device.type == "cuda" and has_triton) else "chunk"
    float64 = accumulation_dtype(*tensors) == torch.float64
    if automatic and impl == "triton" and (float64 or not triton_ok):
        impl = "chunk"
    if impl == "triton" and not has_triton:
        raise ValueError("impl='triton' needs the triton package, which is not importable here")
    return impl


def floor_gate(g: torch.Tensor | None) -> torch.Tensor | None:
    """``g`` clamped below at :data:`GATE_FLOOR` (None passes); gradients are 0 where it clamps,
    as they are (to float32 precision) in the recurrence itself."""
    return None if g is None else g.clamp(min=GATE_FLOOR)


def fmt_shape(x: torch.Tensor | None) -> str:
    return "None" if x is None else str(list(x.shape))


def check_float(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int], layout: str) -> None:
    """Raise a ValueError naming ``name``, its shape and the expected ``layout`` on mismatch."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{name} has shape {fmt_shape(x)}, expected {layout} = {list(expected)}"
        )


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, total: int) -> int:
    """Validate packed-sequence offsets; return the number of sequences N.

    ``cu_seqlens`` is ``[N+1]`` int32/int64, starts at 0, never decreases and ends at the
    packed length ``total``; the batch dimension must be 1.
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cu_seqlens must be an int32/int64 tensor [N+1], got "
            f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens has shape {fmt_shape(cu_seqlens)}, expected [N+1] with N >= 1")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch dimension must be 1 (packed sequences), got B={batch}")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != total or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(
            f"cu_seqlens must start at 0, never decrease and end at T={total}; got {offsets}"
        )
    return len(offsets) - 1


def accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (for gradcheck), float32 otherwise."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_btd(x: torch.Tensor) -> tuple[int, int, int]:
    """Validate the input ``x`` ``[B, T, D]`` of the channel ops (linear_scan, causal_conv1d,
    selective_scan); return ``(B, T, D)``."""
    check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x has shape {fmt_shape(x)}, expected [B, T, D] (3 dims)")
    B, T, D = x.shape
    return B, T, D


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate attention-like inputs q, k ``[B, T, H, K]`` and v ``[B, T, H, V]``; return
    ``(B, T, H, K, V)``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x)
    if q.dim() != 4:
        raise ValueError(f"q has shape {fmt_shape(q)}, expected [B, T, H, K] (4 dims)")
    B, T, H, K = q.shape
    check_shape("k", k, (B, T, H, K), "[B, T, H, K] like q")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v has shape {fmt_shape(v)}, expected [B, T, H, V] = [{B}, {T}, {H}, V]")
    return B, T, H, K, v.shape[-1]


def check_initial_state(
    initial_state: torch.Tensor | None, n_states: int, dims: Sequence[int], dims_layout: str, packed: bool
) -> None:
    """``initial_state`` must be None or ``[n_states, *dims]``: one state per batch row, or per
    packed sequence when ``packed`` (``cu_seqlens`` given). ``dims_layout`` names the dims, e.g.
    ``"H, K, V"``."""
    if initial_state is None:
        return
    check_float("initial_state", initial_state)
    layout = f"[N, {dims_layout}] (one per sequence in cu_seqlens)" if packed else f"[B, {dims_layout}]"
    check_shape("initial_state", initial_state, (n_states, *dims), layout)


def check_states(
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, B: int, T: int, dims: Sequence[int],
    dims_layout: str,
) -> int:
    """Validate ``cu_seqlens`` (when given) and ``initial_state`` against it: one state ``[*dims]``
    per batch row, or per packed sequence. Returns the number of states (B, or N sequences)."""
    n_states = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_initial_state(initial_state, n_states, dims, dims_layout, packed=cu_seqlens is not None)
    return n_states


def resolve_gated(impl: str, q: torch.Tensor, g: torch.Tensor | None, scale: float | None, *,
                  has_triton: bool, triton_ok: bool = True) -> tuple[str, torch.Tensor | None, float]:
    """The dispatch of the attention-like families (gla, delta_rule, dplr_delta_rule): the
    implementation (:func:`resolve_impl`, ``triton_ok`` passed on), the gates floored
    (:func:`floor_gate`) on every path but the reference loop (the chunked forms difference
    cumulative sums of g), and ``scale`` (None: ``K ** -0.5``)."""
    impl = resolve_impl(impl, q, has_triton=has_triton, triton_ok=triton_ok)
    if impl != "reference":
        g = floor_gate(g)
    return impl, g, q.shape[-1] ** -0.5 if scale is None else scale


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Every given tensor (None skipped) must live on one device; the error names them all."""
    devices = {x.device for x in tensors.values() if x is not None}
    if len(devices) > 1:
        names = ", ".join(tensors)
        raise ValueError(f"{names} must share one device, got {sorted(map(str, devices))}")


def run_packed(
    fn,
    cu_seqlens: torch.Tensor | None,
    per_token: Sequence[torch.Tensor | None],
    initial_state: torch.Tensor | None,
    *args,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``fn(*sliced per_token, *args, h0) -> (out, state)`` on each packed sequence.

    ``per_token`` tensors (None passes through) are sliced along T (dim 1) by ``cu_seqlens``;
    each sequence starts from its own row of ``initial_state`` (or zeros). Empty sequences pass
    their state through. Returns the outputs concatenated along T and the states stacked along
    dim 0 (``[N, ...]``). Without ``cu_seqlens``, one call on the whole batch.
    """
    if cu_seqlens is None:
        return fn(*per_token, *args, initial_state)
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for i, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        sliced = [None if x is None else x[:, bos:eos] for x in per_token]
        o_i, S_i = fn(*sliced, *args, h0)
        outs.append(o_i)
        states.append(S_i)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


# The chunked PyTorch forms (``<family>/chunk.py``): the chunk layout and the first phase.


def to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """``[B, T, H, *D]`` -> the chunk layout ``[B, H, N, C, *D]`` (N = ceil(T / C)), the end
    padded with zeros (a zero log gate, key and value leave the state untouched)."""
    pad = (-x.shape[1]) % C
    x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    return x.unflatten(1, (-1, C)).movedim(3, 1)


def chunk_gates(g: torch.Tensor, C: int) -> torch.Tensor:
    """Phase 1: the chunk-local cumulative log gates ``G_i = g_1 + .. + g_i`` (from each chunk's
    first step). g ``[B, T, H]`` (scalar) or ``[B, T, H, K]`` (per key) -> G ``[B, H, N, C]`` or
    ``[B, H, N, C, K]``, in g's dtype; padded steps add 0 (they repeat the chunk's last G)."""
    return to_chunks(g, C).cumsum(3)


def pair_decay(G_rows: torch.Tensor, G_cols: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """``exp(G_rows_i - G_cols_j)`` ``[..., C(i), C(j), K]`` for ``i >= j`` (``i > j`` when
    ``strict``), 0 elsewhere: the per-key decays between the steps of a chunk, masked to -inf
    before the exp so that no positive exponent is ever formed. G_rows, G_cols ``[..., C, K]``."""
    C = G_rows.shape[-2]
    above = torch.ones(C, C, dtype=torch.bool, device=G_rows.device).triu(0 if strict else 1).unsqueeze(-1)
    E = G_rows.unsqueeze(-2) - G_cols.unsqueeze(-3)  # (..., C, C, K)
    return E.masked_fill_(above, float("-inf")).exp_()


class DecayedScores(torch.autograd.Function):
    """Per-key decayed scores of one row tensor against several column tensors sharing one decay:
    ``S^c_ij = sum_k r_ik c_jk exp(Gr_ik - Gc_jk)`` for ``i >= j`` (``i > j`` with ``strict``), 0
    elsewhere.

    ``apply(rows, G_rows, G_cols, strict, *cols)``: rows, G_rows, G_cols and each col
    ``[..., C, K]`` -> ``[n_cols, ..., C, C]``. The decay tensor ``[..., C, C, K]`` (the one large
    intermediate) is built once per call in the forward and once in the backward, not kept.
    Gradients: with ``W^c_ijk = dS^c_ij exp(Gr_ik - Gc_jk)``, ``dr_ik = sum_c sum_j W^c_ijk c_jk``,
    ``dc_jk = sum_i W^c_ijk r_ik``, ``dGr = r * dr`` and ``dGc = -sum_c c * dc``.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, G_rows: torch.Tensor, G_cols: torch.Tensor, strict: bool,
                *cols: torch.Tensor) -> torch.Tensor:
        ctx.strict = strict
        ctx.save_for_backward(rows, G_rows, G_cols, *cols)
        W = pair_decay(G_rows, G_cols, strict).mul_(rows.unsqueeze(-2))  # (..., C, C, K)
        return torch.stack([(W * c.unsqueeze(-3)).sum(-1) for c in cols])

    @staticmethod
    @once_differentiable
    def backward(ctx, dS: torch.Tensor):
        rows, G_rows, G_cols, *cols = ctx.saved_tensors
        E = pair_decay(G_rows, G_cols, ctx.strict)  # (..., C, C, K)
        d_rows, dG_cols, d_cols = torch.zeros_like(rows), torch.zeros_like(G_cols), []
        for c, dS_c in zip(cols, dS.unbind(0)):
            W = E * dS_c.unsqueeze(-1)
            d_rows += (W * c.unsqueeze(-3)).sum(-2)
            dc = W.mul_(rows.unsqueeze(-2)).sum(-3)
            dG_cols -= c * dc
            d_cols.append(dc)
        return d_rows, rows * d_rows, dG_cols, None, *d_cols
