"""Sliding-window (local) causal self-attention: the local attention of Griffin (De et al. 2024,
"Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models",
section 2.2 "local MQA") and of Samba (Ren et al. 2024).

Exactly ``attn`` (Transformer++: bias-free q/k/v/o projections, RoPE, optional GQA/MQA) except
that the query at position ``t`` sees only the keys at positions ``t - window + 1 .. t`` (itself
included):

    o_t = sum_{s = max(0, t-W+1)}^{t} softmax_s(q_t k_s^T / sqrt(D)) v_s

So the decoding cache is bounded: it keeps only the last ``window - 1`` keys and values (RoPE
is applied before caching, at absolute positions, so the cache also records the position of
the next token). Deviation from Griffin: its local attention is MQA (one key/value head); here
``n_kv_heads`` is an option like in ``attn`` (set it to 1 for MQA), and so is ``conv_size``
(Primer's short convs on q, k, v; 0, the default: none).

Backends: flash-attn (``window_size=(window-1, 0)``) on CUDA half precision when installed;
otherwise PyTorch SDPA with a banded mask, computed in query blocks when the sequence is long
so that the work is ``O(T * window)`` rather than ``O(T^2)``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from . import attention as _attention
from .attention import Attention, attend, attention_backend

#: queries per block of the blocked SDPA path (at least this many, and at least ``window``)
_MIN_QUERY_BLOCK = 64


def sliding_window_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, backend: str | None = None
) -> torch.Tensor:
    """Causal attention over the last ``window`` positions; queries are the *last* ``Tq`` keys.

    Args:
        q: ``[B, Tq, H, D]``.
        k, v: ``[B, Tk, Hkv, D]`` with ``Tk >= Tq`` and ``H % Hkv == 0`` (GQA).
        window: ``W >= 1``; query ``i`` sits at position ``p = Tk - Tq + i`` and sees keys
            ``max(0, p - W + 1) .. p``.
        backend: None picks with ``attention_backend``; ``"flash"`` or ``"sdpa"`` forces one.

    Returns:
        ``[B, Tq, H, D]`` in q's dtype.
    """
    if window < 1:
        raise ValueError(f"sliding_window_attend: window must be >= 1, got {window}")
    Tq, H = q.shape[1], q.shape[2]
    Tk, Hkv = k.shape[1], k.shape[2]
    if Tk < Tq:
        raise ValueError(f"sliding_window_attend: k has {Tk} positions, fewer than q's {Tq}")
    if Tk <= window:  # no key is out of any query's window: plain causal attention
        return attend(q, k, v, backend)
    backend = backend or attention_backend(q)
    if backend == "flash":
        # window_size=(left, right): keys p-left .. p+right, bottom-right aligned like causal.
        return _attention._flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0))
    if Hkv != H:
        k = repeat(k, "b t h d -> b t (h r) d", r=H // Hkv)
        v = repeat(v, "b t h d -> b t (h r) d", r=H // Hkv)
    past = Tk - Tq
    block = max(window, _MIN_QUERY_BLOCK)
    if Tq <= 2 * block:
        # One banded mask over all keys: query i (position past + i) sees key j iff
        # 0 <= past + i - j <= W - 1.
        rel = past + torch.arange(Tq, device=q.device)[:, None] - torch.arange(Tk, device=q.device)[None, :]
        mask = (rel >= 0) & (rel < window)  # (Tq, Tk)
        qh, kh, vh = (rearrange(x, "b t h d -> b h t d") for x in (q, k, v))
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        return rearrange(o, "b h t d -> b t h d")
    return _blocked_sliding_attend(q, k, v, window, block)


def _blocked_sliding_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, block: int
) -> torch.Tensor:
    """SDPA over query blocks of ``block`` rows, each against its ``block + window - 1`` keys.

    q: ``[B, Tq, H, D]``; k, v: ``[B, Tk, H, D]`` (heads already repeated for GQA). The keys
    are padded in front to ``W - 1`` slots before the first query, so that block ``n`` reads
    padded keys ``n*Q .. n*Q + Q + W - 2``; its mask is the band ``0 <= j - i <= W - 1``
    minus, in the first block, the front padding. The blocks are folded into SDPA's batch
    dimension (4-D inputs keep PyTorch's fused CPU kernel; 5-D ones fall back to the math path).
    """
    B, Tq = q.shape[:2]
    Tk = k.shape[1]
    past, W, Q = Tk - Tq, window, block
    nb = math.ceil(Tq / Q)
    span = Q + W - 1
    # Padded key index m holds key position past - (W - 1) + m (negative: padding); only the
    # last W - 1 past keys can be seen by any query.
    lead = min(past, W - 1)  # real past keys any query can still see
    pad_front = W - 1 - lead
    pad_back = nb * Q - Tq
    kv = torch.stack([k[:, past - lead :], v[:, past - lead :]])  # (2, B, lead + Tq, H, D)
    kv = F.pad(kv, (0, 0, 0, 0, pad_front, pad_back))  # (2, B, W - 1 + nb*Q, H, D)
    kv = kv.unfold(2, span, Q)  # (2, B, nb, H, D, span)
    kb, vb = rearrange(kv, "two b n h d s -> two (b n) h s d").unbind(0)  # (B*nb, H, span, D) each
    qb = rearrange(F.pad(q, (0, 0, 0, 0, 0, pad_back)), "b (n i) h d -> (b n) h i d", i=Q)

    i = torch.arange(Q, device=q.device)[:, None]
    j = torch.arange(span, device=q.device)[None, :]
    band = (j >= i) & (j <= i + W - 1)  # (Q, span)
    start = torch.arange(nb, device=q.device)[:, None, None] * Q  # first padded index of each block
    mask = band & ((start + j) >= pad_front)  # (nb, Q, span): in the band and not front padding
    mask = rearrange(mask.expand(B, nb, Q, span), "b n i s -> (b n) 1 i s")
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)  # (B*nb, H, Q, D)
    return rearrange(o, "(b n) h i d -> b (n i) h d", b=B)[:, :Tq]


@dataclasses.dataclass
class SWACache:
    """Decoding state of one sliding-window attention layer.

    k, v: ``[B, L, Hkv, D]`` with ``L <= window - 1``, the newest keys (RoPE applied) and values.
    position: how many tokens the layer has seen (the RoPE position of the next one).
    conv_states: with ``conv_size``, the q, k, v convs' last inputs ``[B, C, conv_size - 1]``
        each, updated in place; None without convs.
    """

    k: torch.Tensor
    v: torch.Tensor
    position: int = 0
    conv_states: list[torch.Tensor] | None = None


class SlidingWindowAttention(Attention):
    """Local causal self-attention: ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP by default.
    Its width rule is attention's (``width_options`` inherited: heads of ``head_dim`` channels;
    the window does not follow the width)."""

    name = "swa"
    has_mlp = True

    @dataclasses.dataclass
    class Options(Attention.Options):
        #: each query sees the last ``window`` positions, itself included
        window: int = 1024

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        if opts.window < 1:
            raise ValueError(f"mixer 'swa': window must be >= 1, got {opts.window}")
        return super()._resolve(d_model, opts)  # its messages name cls.name

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)
        self.window = self.options.window

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> SWACache:
        """An empty cache; it never holds more than ``window - 1`` positions (``max_seq_len`` unused)."""
        k = torch.empty(batch_size, 0, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return SWACache(
            k=k, v=torch.empty_like(k), position=0,
            conv_states=self._new_conv_states(batch_size, device, dtype),
        )

    def forward(self, x: torch.Tensor, cache: SWACache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        offset = 0 if cache is None else cache.position
        if cache is not None and cache.k.shape[0] != x.shape[0]:
            raise ValueError(f"SWACache was made for batch size {cache.k.shape[0]}, got {x.shape[0]}")
        q, k, v = self._qkv(x, None if cache is None else cache.conv_states)  # (B, T, H|Hkv, D)
        q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k = torch.cat([cache.k.to(k.dtype), k], dim=1)  # (B, L + T, Hkv, D)
            v = torch.cat([cache.v.to(v.dtype), v], dim=1)
            keep = min(self.window - 1, k.shape[1])
            # clone: a slice would keep a long prefill's whole buffer alive
            cache.k = k[:, k.shape[1] - keep :].clone()
            cache.v = v[:, v.shape[1] - keep :].clone()
            cache.position += x.shape[1]
        o = sliding_window_attend(q, k, v, self.window)  # (B, T, H, D)
        return self.out_proj(rearrange(o, "b t h d -> b t (h d)"))
