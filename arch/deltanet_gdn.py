"""DeltaNet and Gated DeltaNet mixers.

DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length") replaces linear attention's additive write with the delta rule: per head,
the matrix state ``S [K, V]`` first reads what it stores for the key ``k_t``, then overwrites
that with ``v_t`` at the learning rate ``beta_t``:

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),       o_t = q_t S_t / sqrt(K)

(the paper's eq. ``S_t = S_{t-1}(I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` in the transposed,
column-vector convention). Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025, "Gated Delta
Networks: Improving Mamba2 with Delta Rule", eq. 10) first decays the state by a data-dependent
scalar per head, Mamba-2 style:

    S' = alpha_t S_{t-1},  alpha_t = exp(g_t),  g_t = -exp(A_log) * softplus(W_a x_t + dt_bias)
    S_t = S' + beta_t k_t^T (v_t - k_t S')

Both run through ``postformer.kernels.delta_rule``. The block (both papers, section
"architecture"): q, k, v linear projections; a depthwise causal conv of width 4 on each,
followed by SiLU; q and k L2-normalised per head (this keeps the delta rule's transition
``I - beta k^T k`` a contraction); ``beta_t = sigmoid(W_beta x_t)`` per head; the output is
normalised per head and gated, ``out_proj(rmsnorm(o) * silu(W_g x))``. With ``conv_size=0``
the convs are left out and the SiLU applies to the projections directly (a control for
measuring what the short convs contribute).

Widths: DeltaNet's key dim is ``d_model`` (by default in heads of about 128 channels, as in
FLA's 1.3B configuration: 16 heads of 128 at d_model 2048) and its value dim equals the key
dim. Gated DeltaNet follows FLA's GDN configuration: a key dim of about ``0.75 * d_model`` in
heads of about 256 channels (6 heads of 256 at d_model 2048) and values twice as wide
(``expand_v = 2``).

Deliberate deviation: the DeltaNet paper's block normalises the output without a gate (the
gate is an ablation there); here DeltaNet gets the same output gate as Gated DeltaNet, so the
two differ only by the decay. Init: Gated DeltaNet's ``A = exp(A_log)`` is uniform in
``[A_init_min, A_init_max] = [0, 16]`` (floored at 1e-4 so ``log`` stays finite) and
``dt = softplus(dt_bias)`` log-uniform in ``[dt_min, dt_max] = [0.001, 0.1]``, both outside
the model's Linear init and free of weight decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from postformer.kernels import delta_rule

from .layers import GatedRMSNorm, ShortConv, init_dt_bias
from .mixer import DecayRateOptions, Mixer, carry_state, state_dtype, zero_state


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, computed in float32 (float64 stays)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dt)
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@dataclasses.dataclass
class DeltaNetCache:
    """Decoding state of one DeltaNet / Gated DeltaNet layer.

    q_conv_state, k_conv_state: ``[B, key_dim, conv_size-1]``; v_conv_state:
    ``[B, value_dim, conv_size-1]`` (the last conv inputs, in the model's dtype); all three
    None with ``conv_size=0`` (no convs).
    state: ``[B, H, K, V]`` float32 (float64 for float64 models).
    """

    q_conv_state: torch.Tensor | None
    k_conv_state: torch.Tensor | None
    v_conv_state: torch.Tensor | None
    state: torch.Tensor


class _DeltaRuleMixer(Mixer):
    """Shared DeltaNet / Gated DeltaNet block; subclasses set the default widths and the decay."""

    #: heads hold about this many key channels when the head count is not given
    _max_head_dim: ClassVar[int] = 128
    #: default key dim = round(_key_ratio * d_model)
    _key_ratio: ClassVar[float] = 1.0

    @dataclasses.dataclass
    class Options:
        #: heads; None: round(key dim / head_dim), head_dim defaulting to 128 (DeltaNet) or
        #: 256 (Gated DeltaNet); at least 1
        n_heads: int | None = None
        #: key channels per head; None: round(key dim / n_heads), where the key dim is d_model
        #: (DeltaNet) or 0.75 * d_model (Gated DeltaNet)
        head_dim: int | None = None
        #: value channels per head = expand_v * head_dim
        expand_v: float = 1.0
        #: width of the short causal convs on q, k, v (each followed by SiLU); 0: no convs (no
        #: conv parameters, no conv state; SiLU on the projections directly), a control for
        #: measuring the convs' effect; 1 is rejected
        conv_size: int = 4

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        name = cls.name
        n_heads, head_dim = opts.n_heads, opts.head_dim
        key_target = cls._key_ratio * d_model
        if n_heads is not None and n_heads < 1:
            raise ValueError(f"mixer {name!r}: n_heads must be >= 1, got {n_heads}")
        if head_dim is not None and head_dim < 1:
            raise ValueError(f"mixer {name!r}: head_dim must be >= 1, got {head_dim}")
        if n_heads is None:
            # as many heads of about _max_head_dim channels as cover the key dim
            n_heads = max(1, round(key_target / (head_dim or cls._max_head_dim)))
        if head_dim is None:
            head_dim = max(1, round(key_target / n_heads))
        head_v = opts.expand_v * head_dim
        if opts.expand_v <= 0 or head_v != int(head_v):
            raise ValueError(
                f"mixer {name!r}: expand_v {opts.expand_v} * head_dim {head_dim} must be a "
                f"positive whole number (the value channels per head)"
            )
        if opts.conv_size != 0 and opts.conv_size < 2:
            raise ValueError(f"mixer {name!r}: conv_size must be 0 (no conv) or >= 2, got {opts.conv_size}")
        return dataclasses.replace(opts, n_heads=n_heads, head_dim=head_dim)

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)  # resolves the options; where: layer_idx, n_layers
        options = self.options
        self.n_heads = options.n_heads
        self.head_k_dim = options.head_dim
        self.head_v_dim = int(options.expand_v * options.head_dim)
        self.key_dim = self.n_heads * self.head_k_dim
        self.value_dim = self.n_heads * self.head_v_dim
        self.conv_size = options.conv_size

        n = self._writes_per_token()  # keys, values and betas per token (DeltaProduct: n_h)
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n * self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n * self.value_dim, bias=False)
        if self.conv_size > 0:
            self.q_conv = ShortConv(self.key_dim, self.conv_size, activation="silu")
            self.k_conv = ShortConv(n * self.key_dim, self.conv_size, activation="silu")
            self.v_conv = ShortConv(n * self.value_dim, self.conv_size, activation="silu")
        self.b_proj = nn.Linear(d_model, n * self.n_heads, bias=False)  # beta logits
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # output gate
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _new_cache(self, batch_size: int, device, dtype: torch.dtype, max_seq_len: int | None) -> DeltaNetCache:
        convs = [getattr(self, f"{n}_conv", None) for n in "qkv"]
        q, k, v = (None if c is None else c.new_state(batch_size, device, dtype) for c in convs)
        return DeltaNetCache(q, k, v, zero_state(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim,
                                                 device=device, dtype=dtype))

    def _writes_per_token(self) -> int:
        """Delta-rule writes (key, value, beta) per token: 1; Gated DeltaProduct's n_h."""
        return 1

    def _decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """Log-space decay ``g [B, T, H]`` (<= 0), or None for no decay (DeltaNet)."""
        return None

    def _conv(self, x: torch.Tensor, name: str, cache: DeltaNetCache | None) -> torch.Tensor:
        """SiLU(depthwise causal conv(x)) for x ``[B, T, C]`` through the conv ``{name}_conv``,
        continuing the cache's ``{name}_conv_state``; only SiLU(x) with ``conv_size=0``."""
        if self.conv_size == 0:
            return F.silu(x)  # the no-conv control
        return carry_state(cache, f"{name}_conv_state", getattr(self, f"{name}_conv"), x)

    def forward(self, x: torch.Tensor, cache: DeltaNetCache | None = None) -> torch.Tensor:
        """x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; with a cache, x continues it."""
        q = self._conv(self.q_proj(x), "q", cache)  # (B, T, key_dim)
        k = self._conv(self.k_proj(x), "k", cache)  # (B, T, key_dim)
        v = self._conv(self.v_proj(x), "v", cache)  # (B, T, value_dim)
        q = l2_normalize(rearrange(q, "b t (h k) -> b t h k", k=self.head_k_dim))
        k = l2_normalize(rearrange(k, "b t (h k) -> b t h k", k=self.head_k_dim))
        v = rearrange(v, "b t (h v) -> b t h v", v=self.head_v_dim)
        beta = torch.sigmoid(self.b_proj(x).to(state_dtype(x.dtype)))  # (B, T, H)
        o = carry_state(cache, "state", delta_rule, q=q, k=k, v=v, beta=beta,
                        g=self._decay(x))  # (B, T, H, V); state (B, H, K, V)
        gate = rearrange(self.g_proj(x), "b t (h v) -> b t h v", v=self.head_v_dim)
        o = self.o_norm(o, gate)
        return self.out_proj(rearrange(o, "b t h v -> b t (h v)"))


class DeltaNet(_DeltaRuleMixer):
    """DeltaNet (delta rule, no decay): ``[B, T, d_model] -> [B, T, d_model]``. Has an MLP."""

    name = "deltanet"
    has_mlp = True
    _max_head_dim = 128
    _key_ratio = 1.0

    @dataclasses.dataclass
    class Options(_DeltaRuleMixer.Options):
        pass

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Key heads of at least 32 channels: ``n_heads = d_model // 32`` (at least 1) and
        ``head_dim = d_model // n_heads``, so each head holds 32 to 63 key (and as many value)
        channels, or one head of all ``d_model`` channels below 32. The key dim is then
        ``n_heads * head_dim``, ``d_model`` less a remainder under ``n_heads`` channels where the
        heads do not divide it (the delta rule needs no divisibility). The default, heads of
        about 128 channels, would leave widths under 192 one head. The ladder's ``head_dim``
        and ``d_state`` do not apply."""
        n_heads = max(1, d_model // 32)
        return {"n_heads": n_heads, "head_dim": d_model // n_heads}


class GatedDeltaNet(_DeltaRuleMixer):
    """Gated DeltaNet (delta rule + Mamba-2 decay): ``[B, T, d_model] -> [B, T, d_model]``.

    Has an MLP by default (the GDN paper's blocks alternate mixer and SwiGLU MLP).
    """

    name = "gdn"
    has_mlp = True
    _max_head_dim = 256
    _key_ratio = 0.75

    @dataclasses.dataclass
    class Options(_DeltaRuleMixer.Options, DecayRateOptions):
        #: value channels per head = expand_v * head_dim (2 in the GDN paper / FLA)
        expand_v: float = 2.0
        #: A = exp(A_log) starts uniform in [A_init_min, A_init_max] (floored at 1e-4); (inherited)
        #: dt = softplus(dt_bias) starts log-uniform in [dt_min, dt_max], floored at dt_init_floor
        A_init_min: float = 0.0

    @classmethod
    def _resolve(cls, d_model: int, opts: Options) -> Options:
        opts = super()._resolve(d_model, opts)
        opts.check_decay_rate(cls.name)
        return opts

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """Key heads of at least 32 channels over the default key dim ``K = round(0.75 *
        d_model)``: ``n_heads = K // 32`` (at least 1) and ``head_dim = K // n_heads``, so each
        head holds 32 to 63 key channels (values twice as many, the default expand_v 2), or one
        head of all K channels when K is under 32. The key dim is then ``n_heads * head_dim``,
        K less a remainder under ``n_heads`` channels. The default, heads of about 256 key
        channels, would leave widths under 512 one head. The ladder's ``head_dim`` and
        ``d_state`` do not apply. DeltaProduct inherits this rule."""
        key_dim = round(cls._key_ratio * d_model)
        n_heads = max(1, key_dim // 32)
        return {"n_heads": n_heads, "head_dim": max(1, key_dim // n_heads)}

    def __init__(self, d_model: int, options: Options | None = None, norm_eps: float = 1e-5, **where: int) -> None:
        super().__init__(d_model, options, norm_eps, **where)
        o, H = self.options, self.n_heads
        self.a_proj = nn.Linear(d_model, H, bias=False)  # dt logits, one per head
        A = torch.empty(H).uniform_(o.A_init_min, o.A_init_max).clamp(min=1e-4)
        self.A_log = nn.Parameter(torch.log(A))  # (H,)
        self.dt_bias = nn.Parameter(init_dt_bias(H, o.dt_min, o.dt_max, o.dt_init_floor))  # (H,), Mamba-2's init
        for p in (self.A_log, self.dt_bias):
            p._no_weight_decay = True

    def _decay(self, x: torch.Tensor) -> torch.Tensor:
        sdt = state_dtype(x.dtype)
        dt = F.softplus(self.a_proj(x).to(sdt) + self.dt_bias.to(sdt))  # (B, T, H)
        return -torch.exp(self.A_log.to(sdt)) * dt  # (B, T, H), <= 0
