"""Helpers shared by the tests/arch test files (imported by name: tests/arch is on pytest's
``pythonpath``, see pyproject.toml).

- the naive-equation tests of one mixer each (test_deltanet_gdn.py, test_mamba.py, ...) build their
  mixer in float64 at width ``D_MODEL`` (``make`` by registry name, ``make_cls`` by class) and
  share ``inputs``, ``rmsnorm`` and the tap-by-tap ``conv_naive``;
- the contract every mixer meets (test_mixers.py) and Mamba-2's naive loop (test_mamba2.py)
  build theirs with ``make_mixer`` at width ``CONTRACT_D_MODEL``;
- ``not_matmul_flops``: the FLOPs FlopCounterMode cannot see (test_flops.py,
  test_conv_controls.py).
"""

from __future__ import annotations

import math

import torch

from postformer.arch import MIXERS, ModelConfig

D_MODEL = 32
F64 = torch.float64


def make(name: str, opts: dict, *, layer_idx: int = 0, n_layers: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    cls = MIXERS[name]
    m = cls(D_MODEL, cls.resolve_options(D_MODEL, opts), layer_idx=layer_idx, n_layers=n_layers).to(F64)
    with torch.no_grad():  # norm weights start at 1: spread them so a mix-up shows
        for pname, p in m.named_parameters():
            if pname.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def make_cls(cls, opts: dict, seed: int = 0, d_model: int = D_MODEL):
    torch.manual_seed(seed)
    return cls(d_model, cls.resolve_options(d_model, opts)).to(F64).eval()


def inputs(B: int = 2, T: int = 20, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(B, T, D_MODEL, dtype=F64)


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def conv_naive(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal conv written per time step: x [B, T, C], weight [C, 1, W]."""
    W = weight.shape[-1]
    out = []
    for t in range(x.shape[1]):
        acc = torch.zeros_like(x[:, 0]) if bias is None else bias.expand_as(x[:, 0]).clone()
        for j in range(W):
            s = t - (W - 1) + j
            if s >= 0:
                acc = acc + weight[:, 0, j] * x[:, s]
        out.append(acc)
    return torch.stack(out, dim=1)


# ------------------------------------------------------------- the contract (test_mixers.py)

CONTRACT_D_MODEL = 64


def make_mixer(name: str, opts: dict, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    cls = MIXERS[name]
    mixer = cls(CONTRACT_D_MODEL, cls.resolve_options(CONTRACT_D_MODEL, opts)).to(dtype)
    # Spread the parameters that start at constants, so a mix-up of D, norms, biases shows.
    with torch.no_grad():
        for pname, p in mixer.named_parameters():
            if pname.endswith(("D", "norm.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    return mixer.eval()


# ---------------------------------------------------------------------------------- FLOPs


def not_matmul_flops(cfg: ModelConfig, T: int) -> float:
    """Forward FLOPs per token our formulas count that the chunk paths do without a matmul (so
    FlopCounterMode cannot see them): the per-chunk state decay ``a * S`` (K V per chunk and head),
    GLA-style per-key decayed scores (C^2 K, elementwise with C = 16), and the delta rule's
    unit-triangular solve (C^2 (K + V) / 2, C = 64)."""
    total = 0.0
    for name in cfg.layer_mixers:
        o = cfg.mixer_options(name)
        if name in ("gla", "hgrn2", "retnet", "mamba2"):
            if name == "gla":
                H, K, V = o.n_heads, int(cfg.d_model * o.expand_k) // o.n_heads, int(cfg.d_model * o.expand_v) // o.n_heads
            elif name == "hgrn2":
                H, K, V = cfg.d_model // o.expand_ratio, o.expand_ratio, o.expand_ratio
            elif name == "retnet":
                H = o.n_heads
                K, V = int(cfg.d_model * o.expand_k) // H, int(cfg.d_model * o.expand_v) // H
            else:
                H, K, V = o.expand * cfg.d_model // o.head_dim, o.d_state, o.head_dim
            C = min(16 if name in ("gla", "hgrn2") else 64, T)
            per_chunk = K * V + (C * C * K if name in ("gla", "hgrn2") else 0)
        elif name == "mamba3":  # gla, scalar gate, state [N, P] per head
            H = o.expand * cfg.d_model // o.head_dim
            K, V, C = o.d_state, o.head_dim, min(64, T)
            per_chunk = K * V
        elif name == "mlstm":  # gla, scalar gate, values with the normaliser column
            H = o.n_heads
            K, V = int(cfg.d_model * o.expand_k) // H, int(cfg.d_model * o.expand_v) // H + 1
            C = min(64, T)
            per_chunk = K * V
        elif name == "kda":  # per-key delta rule, chunks of 16: two decayed score products, the solve
            H, K = o.n_heads, o.head_dim
            V = int(o.expand_v * K)
            C = min(16, T)
            per_chunk = 2 * C * C * K + C * C * (K + V) / 2 + K * V
        elif name == "rwkv7":  # dplr, chunks of 16: the four decayed pairwise products
            # (kernels/_common.DecayedScores, elementwise), the solve, the state step
            H, K = cfg.d_model // o.head_dim, o.head_dim
            V, C = K, min(16, T)
            per_chunk = 4 * C * C * K + C * C * (K + V) / 2 + K * V
        elif name in ("deltanet", "gdn", "deltaproduct"):
            H, K = o.n_heads, o.head_dim
            V = int(o.expand_v * K)
            steps = T * getattr(o, "n_householder", 1)  # deltaproduct: n sub-steps per token
            C = min(64, steps)
            per_chunk = C * C * (K + V) / 2 + K * V
            total += 2 * H * math.ceil(steps / C) * per_chunk / T
            continue
        else:
            continue
        total += 2 * H * math.ceil(T / C) * per_chunk / T
    return total


def through_cache(mixer, x: torch.Tensor, ends) -> torch.Tensor:
    """The mixer's output on x ``[B, T, D]`` fed through one cache in pieces ending at ``ends``
    (increasing, the last ``T``): ``[5, 70, 71, 72]`` is a prefill of 5, a continuation of 65,
    then two single steps."""
    cache = mixer.new_cache(x.shape[0], dtype=x.dtype)
    starts = [0, *ends[:-1]]
    return torch.cat([mixer(x[:, a:b], cache) for a, b in zip(starts, ends)], dim=1)


def step_by_step(mixer, x: torch.Tensor, split: int) -> torch.Tensor:
    """Prefill x[:, :split] (skipped when split == 0), then one step per remaining token."""
    return through_cache(mixer, x, [split] * (split > 0) + list(range(split + 1, x.shape[1] + 1)))


def assert_every_parameter_has_gradient(module: torch.nn.Module) -> None:
    """After a backward: every parameter of ``module`` got a gradient, finite and not all zero
    (the message names the parameter)."""
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def assert_cached_equals_full(model, vocab: int, seed: int = 2) -> torch.Tensor:
    """A model's logits over 17 tokens in one call equal a 6-token prefill then 11 single-token
    steps through its cache; returns the tokens (``[2, 17]``)."""
    torch.manual_seed(seed)
    tokens = torch.randint(0, vocab, (2, 17))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        parts = [model(tokens[:, :6], cache)] + [model(tokens[:, t : t + 1], cache) for t in range(6, 17)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    return tokens
