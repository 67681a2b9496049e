"""delta_rule (Gated DeltaNet form) forward+backward on CPU: postformer's chunked path against
its reference loop and against FLA's pure-PyTorch chunked form (``naive_chunk_gated_delta_rule``;
install the ``peers`` extra to include it). Shapes from the issue: B=1, T=4096, H=4, K=V=64,
L2-normalised keys, sigmoid write strengths and a log-sigmoid gate.

    pytest bench/test_delta_rule.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from postformer.kernels import delta_rule

B, T, H, D = 1, 4096, 4, 64


def inputs():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, D, generator=gen)
    k = F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1)
    v = torch.randn(B, T, H, D, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3)
    return tuple(x.requires_grad_() for x in (q, k, v, beta, g))


def fwd_bwd(fn, q, k, v, beta, g):
    for x in (q, k, v, beta, g):
        x.grad = None
    o = fn(q, k, v, beta, g)
    o.sum().backward()


def _run(benchmark, impl, fn, rounds=5):
    benchmark.group = f"delta_rule gated fwd+bwd T={T}"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(fwd_bwd, args=(fn, *inputs()), rounds=rounds, warmup_rounds=1)


def test_chunk(benchmark):
    _run(benchmark, "chunk", lambda q, k, v, beta, g: delta_rule(q, k, v, beta, g, impl="chunk")[0])


def test_fla_naive_chunk(benchmark):
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive", reason="install the `peers` extra")
    # FLA's argument order is (q, k, v, g, beta).
    _run(benchmark, "fla-naive",
         lambda q, k, v, beta, g: naive.naive_chunk_gated_delta_rule(q, k, v, g, beta)[0])


def test_reference(benchmark):
    _run(benchmark, "reference",
         lambda q, k, v, beta, g: delta_rule(q, k, v, beta, g, impl="reference")[0], rounds=1)
