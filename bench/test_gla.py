"""gla forward+backward on CPU, every gate kind (none, scalar, per-key) through every
implementation that runs on CPU: postformer's chunked path, its reference loop, and FLA's
pure-PyTorch code when fla-core is installed (the ``peers`` extra): ``naive_chunk_simple_gla``
for no gate (a zero log gate) and the scalar gate, ``naive_recurrent_gla`` (a loop over time;
FLA has no naive chunked per-key form) for per-key gates. The Triton interpreter is not timed
(it measures the interpreter, not the kernel). Shapes from the issue: B=1, T=4096, H=4, K=V=64.

    pytest bench/test_gla.py --benchmark-enable

``POSTFORMER_BENCH_T`` and ``POSTFORMER_BENCH_ROUNDS`` shrink the run (bench/gpu_check.sh
uses T=512, one round). The loops over time run one round without warm-up: at T=4096 one
forward+backward of them takes a minute or more on a laptop-class CPU.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from postformer.kernels import gla

B, H, D = 1, 4, 64
T = int(os.environ.get("POSTFORMER_BENCH_T", "4096"))
ROUNDS = int(os.environ.get("POSTFORMER_BENCH_ROUNDS", "5"))
GATES = ("none", "scalar", "key")


def inputs(gate: str):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen).requires_grad_() for _ in range(3))
    if gate == "none":
        return q, k, v, None
    shape = (B, T, H, D) if gate == "key" else (B, T, H)
    g = F.logsigmoid(torch.randn(shape, generator=gen)).requires_grad_()
    return q, k, v, g


def fwd_bwd(fn, q, k, v, g):
    for x in (q, k, v, g):
        if x is not None:
            x.grad = None
    o = fn(q, k, v, g)
    o.sum().backward()


def fla_naive(gate: str):
    """FLA's pure-PyTorch form for ``gate``, or a skip when fla-core is not installed."""
    if gate == "key":
        naive = pytest.importorskip("fla.ops.gla.naive", reason="install the `peers` extra")
        return lambda q, k, v, g: naive.naive_recurrent_gla(q, k, v, g)[0]
    naive = pytest.importorskip("fla.ops.simple_gla.naive", reason="install the `peers` extra")
    if gate == "none":  # a zero log gate is no decay
        return lambda q, k, v, g: naive.naive_chunk_simple_gla(q, k, v, q.new_zeros(q.shape[:3]))[0]
    return lambda q, k, v, g: naive.naive_chunk_simple_gla(q, k, v, g)[0]


def ours(impl: str):
    return lambda q, k, v, g: gla(q, k, v, g, impl=impl)[0]


@pytest.mark.parametrize("impl", ["chunk", "fla-naive", "reference"])
@pytest.mark.parametrize("gate", GATES)
def test_gla_fwd_bwd(benchmark, gate, impl):
    fn = fla_naive(gate) if impl == "fla-naive" else ours(impl)
    # loops over time: one round, no warm-up (nothing to warm, and each call is slow)
    loop = impl == "reference" or (impl == "fla-naive" and gate == "key")
    benchmark.group = f"gla {gate} gate fwd+bwd T={T}"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(fwd_bwd, args=(fn, *inputs(gate)), rounds=1 if loop else ROUNDS,
                       warmup_rounds=0 if loop else min(1, ROUNDS))
