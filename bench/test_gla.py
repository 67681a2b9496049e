"""gla forward+backward on CPU: postformer's chunked path against its reference loop and
against FLA's pure-PyTorch chunked form (``naive_chunk_simple_gla``; install the ``peers``
extra to include it). Shapes from the issue: B=1, T=4096, H=4, K=V=64.

    pytest bench/test_gla.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from postformer.kernels import gla

B, T, H, D = 1, 4096, 4, 64


def inputs(per_key: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen).requires_grad_() for _ in range(3))
    shape = (B, T, H, D) if per_key else (B, T, H)
    g = F.logsigmoid(torch.randn(shape, generator=gen)).requires_grad_()
    return q, k, v, g


def fwd_bwd(fn, q, k, v, g):
    for x in (q, k, v, g):
        x.grad = None
    o = fn(q, k, v, g)
    o.sum().backward()


def _run(benchmark, group, impl, fn, per_key=False, rounds=5):
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    args = inputs(per_key)
    benchmark.pedantic(fwd_bwd, args=(fn, *args), rounds=rounds, warmup_rounds=1)


GROUP = f"gla scalar gate fwd+bwd T={T}"


def test_chunk(benchmark):
    _run(benchmark, GROUP, "chunk", lambda q, k, v, g: gla(q, k, v, g, impl="chunk")[0])


def test_fla_naive_chunk(benchmark):
    naive = pytest.importorskip("fla.ops.simple_gla.naive", reason="install the `peers` extra")
    _run(benchmark, GROUP, "fla-naive", lambda q, k, v, g: naive.naive_chunk_simple_gla(q, k, v, g)[0])


def test_reference(benchmark):
    _run(benchmark, GROUP, "reference", lambda q, k, v, g: gla(q, k, v, g, impl="reference")[0], rounds=1)


def test_chunk_per_key(benchmark):
    _run(benchmark, f"gla per-key gate fwd+bwd T={T}", "chunk",
         lambda q, k, v, g: gla(q, k, v, g, impl="chunk")[0], per_key=True)
