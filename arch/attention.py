"""Transformer++ causal self-attention: bias-free projections, RoPE, optional GQA, KV cache.

The attention itself is not ours to write: ``attend`` calls flash-attn when it is installed
and the tensors are on CUDA in half precision, and PyTorch's
``scaled_dot_product_attention`` otherwise. Both see the same ``[B, T, H, D]`` tensors.

Option ``conv_size >= 2`` adds Primer's short convs (So et al. 2021, "Primer: Searching for
Efficient Transformers for Language Modeling", multi-dconv-head attention): each of q, k, v
gets its own depthwise causal conv of width ``conv_size`` over time, after its projection and
before RoPE, with no activation and no bias:

    q_t[c] = sum_{w=0}^{W-1} weight_q[c, w] * (x W_q)_{t-(W-1)+w}[c]        (k, v alike)

It exists as a control: Mamba-2 and Gated DeltaNet have a short conv and attention does not,
so attention with one (and those mixers without theirs) measures the conv's share of a gap.
The default ``conv_size=0`` is plain Transformer++ attention, the same module as before the
option existed (no conv parameters, same state_dict).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .layers import RMSNorm, Rotary, ShortConv
from .mixer import Mixer, carry_state, heads_of_at_least

#: the smallest head dim the width rule splits a narrow model into (two heads of 8 at d_model 16)
MIN_SPLIT_HEAD_DIM = 8

try:  # optional; never required
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # ImportError, or a broken CUDA build
    _flash_attn_func = None


def attention_backend(q: torch.Tensor) -> str:
    """``"flash"`` when flash-attn is importable and ``q`` is a CUDA fp16/bf16 tensor, else ``"sdpa"``."""
    if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Causal attention where the queries are the *last* ``Tq`` positions of the keys.

    Args:
        q: ``[B, Tq, H, D]``.
        k, v: ``[B, Tk, Hkv, D]`` with ``Tk >= Tq`` and ``H % Hkv == 0`` (GQA).
        backend: None picks with ``attention_backend``; ``"flash"`` or ``"sdpa"`` forces one.

    Returns:
        ``[B, Tq, H, D]``. Query ``i`` sits at position ``Tk - Tq + i`` and sees keys
        ``0 .. Tk - Tq + i`` (the causal mask aligned bottom-right, as in a KV-cache decode).
    """
    Tq, H = q.shape[1], q.shape[2]
    Tk, Hkv = k.shape[1], k.shape[2]
    backend = backend or attention_backend(q)
    if backend == "flash":
        # flash-attn aligns the causal mask bottom-right when Tq != Tk and handles GQA itself.
        return _flash_attn_func(q, k, v, causal=True)
    if Hkv != H:
        k = repeat(k, "b t h d -> b t (h r) d", r=H // Hkv)
        v = repeat(v, "b t h d -> b t (h r) d", r=H // Hkv)
    q, k, v = (rearrange(x, "b t h d -> b h t d") for x in (q, k, v))
    if Tq == Tk:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif Tq == 1:
        o = F.scaled_dot_product_attention(q, k, v)  # the newest query sees every key
    else:
        # SDPA's is_causal aligns top-left when Tq != Tk, so build the bottom-right mask.
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(o, "b h t d -> b t h d")


class KVCache:
    """Keys and values seen so far, ``[B, capacity, Hkv, D]`` buffers filled up to ``length``.

    Appending writes into a preallocated buffer; when it is full the capacity doubles, so a
    decoding step costs amortised O(1) copies instead of re-concatenating the whole cache.

    ``conv_states``: with attention's ``conv_size`` option, the q, k, v convs' last
    ``conv_size - 1`` inputs, ``[B, C, conv_size - 1]`` each (C the projection's width);
    None without convs. The mixer updates them in place.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        capacity: int = 0,
        conv_states: list[torch.Tensor] | None = None,
    ) -> None:
        self.k = torch.empty(batch_size, capacity, n_kv_heads, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0
        self.conv_states = conv_states

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: ``[B, T, Hkv, D]``. Returns all keys and values so far, ``[B, length, Hkv, D]``."""
        B, T = k.shape[:2]
        if B != self.k.shape[0]:
            raise ValueError(f"KVCache was made for batch size {self.k.shape[0]}, got {B}")
        new_len = self.length + T
        if new_len > self.k.shape[1]:
            cap = max(new_len, 2 * self.k.shape[1], 16)
            k_buf = self.k.new_empty(B, cap, *self.k.shape[2:], dtype=k.dtype)
            v_buf = self.v.new_empty(B, cap, *self.v.shape[2:], dtype=v.dtype)
            k_buf[:, : self.length] = self.k[:, : self.length]
            v_buf[:, : self.length] = self.v[:, : self.length]
            self.k, self.v = k_buf, v_buf
        self.k[:, self.length : new_len] = k
        self.v[:, self.length : new_len] = v
        self.length = new_len
        return self.k[:, :new_len], self.v[:, :new_len]


class Attention(Mixer):
    """Multi-head causal self-attention with RoPE, the Transformer++ recipe (LLaMA-style).

    ``[B, T, d_model] -> [B, T, d_model]``. q/k/v/o projections have no biases; with
    ``n_kv_heads < n_heads`` groups of query heads share one key/value head (GQA).
    """

    name = "attn"
    has_mlp = True

    @dataclasses.dataclass
    class Options:
        #: query heads; None: ``max(1, d_model // 64)`` (head dim 64)
        n_heads: int | None = None
        #: key/value heads (GQA); None: ``n_heads``
        n_kv_heads: int | None = None
        #: RoPE base
        rope_base: float = 10000.0
        #: width of Primer's depthwise causal convs on q, k, v (after the projections, before
        #: RoPE; no activation, no bias; PyTorch's default Conv1d init, uniform in
        #: +-1/sqrt(conv_size)); 0 (default): no convs, plain Transformer++. A control for
        #: measuring the short conv's effect (Mamba-2 and GDN have one); 1 is rejected
        conv_size: int = 0
        #: RMSNorm (learned scale) on each head's q and k before RoPE (QK-norm: OLMo-2, Qwen3,
        #: Gemma 3; Wortsman et al. 2023 find it removes the attention-logit growth behind
        #: small transformers' high-LR instability). False (default): plain Transformer++
        qk_norm: bool = False

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        n_heads = opts.n_heads if opts.n_heads is not None else max(1, d_model // 64)
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"mixer {cls.name!r}: d_model {d_model} is not divisible by n_heads {n_heads}"
            )
        n_kv = opts.n_kv_heads if opts.n_kv_heads is not None else n_heads
        if n_kv < 1 or n_heads % n_kv != 0:
            raise ValueError(
                f"mixer {cls.name!r}: n_heads {n_heads} is not divisible by n_kv_heads {n_kv}"
            )
        if opts.conv_size != 0 and opts.conv_size < 2:
            raise ValueError(
                f"mixer {cls.name!r}: conv_size must be 0 (no conv) or >= 2, got {opts.conv_size}"
            )
        if (d_model // n_heads) % 2 != 0:
            raise ValueError(
                f"mixer {cls.name!r}: head dim {d_model // n_heads} (d_model {d_model} / n_heads "
                f"{n_heads}) must be even for RoPE"
            )
        return dataclasses.replace(opts, n_heads=n_heads, n_kv_heads=n_kv)

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Heads of ``head_dim`` channels: the most heads whose head dim is at least ``head_dim``,
        divides ``d_model`` and is even (RoPE rotates channel pairs), i.e. the smallest such
        head dim; but never one head where two fit: a ``d_model`` that splits into two even
        heads of at least ``MIN_SPLIT_HEAD_DIM`` (8) channels (``d_model >= 16``, a multiple of
        4) gets two, whatever ``head_dim`` asks (a one-head transformer cannot attend to two
        places at once; the field's small models keep 2+ heads, head dims of 8 included). One
        head of all ``d_model`` channels otherwise (an odd ``d_model`` has no even head dim and
        ``_resolve`` rejects it). ``n_kv_heads`` stays ``n_heads`` (no GQA); ``d_state`` does
        not apply. Sliding-window and gated attention inherit this rule."""
        heads = heads_of_at_least(d_model, head_dim, even=True)
        if heads == 1 and d_model >= 2 * MIN_SPLIT_HEAD_DIM and d_model % 4 == 0:
            heads = 2
        return {"n_heads": heads}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.n_heads = options.n_heads
        self.n_kv_heads = options.n_kv_heads
        self.head_dim = d_model // self.n_heads
        self.q_proj = nn.Linear(d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, options.rope_base)
        self.conv_size = options.conv_size
        if self.conv_size > 0:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            self.q_conv = ShortConv(q_dim, self.conv_size)
            self.k_conv = ShortConv(kv_dim, self.conv_size)
            self.v_conv = ShortConv(kv_dim, self.conv_size)
        self.qk_norm = options.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, norm_eps)
            self.k_norm = RMSNorm(self.head_dim, norm_eps)

    def _new_conv_states(
        self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> list[torch.Tensor] | None:
        """Zero states ``[B, C, conv_size - 1]`` of the q, k, v convs; None without convs."""
        if self.conv_size == 0:
            return None
        return [conv.new_state(batch_size, device, dtype) for conv in (self.q_conv, self.k_conv, self.v_conv)]

    def _qkv(
        self, x: torch.Tensor, conv_states: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projections of x ``[B, T, d_model]``, before RoPE: q ``[B, T, H, D]``, k and v
        ``[B, T, Hkv, D]``. With ``conv_size``, each goes through its short conv, continuing
        ``conv_states`` (a cache's, updated in place) when given."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H*D), (B, T, Hkv*D) x 2
        if self.conv_size > 0:
            convs = (self.q_conv, self.k_conv, self.v_conv)
            # .contiguous(): the op's chunk path returns a transposed view (stride T along C);
            # SDPA's fused kernels want the head dim contiguous, else take the O(T^2) math path
            q, k, v = (carry_state(conv_states, i, conv, y).contiguous()
                       for i, (y, conv) in enumerate(zip((q, k, v), convs)))
        q, k, v = (rearrange(y, "b t (h d) -> b t h d", d=self.head_dim) for y in (q, k, v))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> KVCache:
        return KVCache(
            batch_size, self.n_kv_heads, self.head_dim,
            device=device, dtype=dtype, capacity=max_seq_len or 0,
            conv_states=self._new_conv_states(batch_size, device, dtype),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        offset = 0 if cache is None else cache.length
        q, k, v = self._qkv(x, None if cache is None else cache.conv_states)  # (B, T, H|Hkv, D)
        q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, offset + T, Hkv, D)
        o = attend(q, k, v)  # (B, T, H, D)
        return self._out(o, x)

    def _out(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output projection of the heads' outputs o ``[B, T, H, D]`` -> ``[B, T, d_model]``;
        x ``[B, T, d_model]`` (the mixer's input) is unused here, for subclasses that gate the
        output by it (``gated_attn``)."""
        return self.out_proj(rearrange(o, "b t h d -> b t (h d)"))

