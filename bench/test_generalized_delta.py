"""The per-key delta rule (Kimi Delta Attention: ``delta_rule`` with ``g [B, T, H, K]``) and the
generalized delta rule (``dplr_delta_rule``, RWKV-7's inputs) forward+backward on CPU:
postformer's chunked paths against their reference loops and FLA's pure-PyTorch chunked forms
(``naive_chunk_kda``, ``dplr_chunkwise``; install the ``peers`` extra to include them). The shape
of bench/test_delta_rule.py cut to T = 2048: B=1, H=4, K=V=64, L2-normalised keys,
log-sigmoid per-key decays.

    pytest bench/test_generalized_delta.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bench_util import run_fwd_bwd

from postformer.kernels import delta_rule, dplr_delta_rule

B, T, H, D = 1, 2048, 4, 64


def inputs():
    """q, k (unit), v, beta, g (per key), s (RWKV-7's in-context learning rate), all leaves."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, D, generator=gen)
    k = F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1)
    v = torch.randn(B, T, H, D, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    g = F.logsigmoid(torch.randn(B, T, H, D, generator=gen) + 3)
    s = torch.rand(B, T, H, D, generator=gen)
    return tuple(x.requires_grad_() for x in (q, k, v, beta, g, s))


def _run(benchmark, group, impl, fn, rounds=5):
    run_fwd_bwd(benchmark, f"{group} fwd+bwd T={T}", impl, fn, inputs(), rounds=rounds)


def kda(impl):
    return lambda q, k, v, beta, g, s: delta_rule(q, k, v, beta, g, impl=impl)[0]


def dplr(impl):
    # RWKV-7: a = -(s kk) writes what b = kk reads; the key written is k/2
    return lambda q, k, v, beta, g, s: dplr_delta_rule(q, k / 2, v, -(s * k), k, g, impl=impl)[0]


@pytest.mark.parametrize("impl", ["chunk", "reference"])
def test_kda(benchmark, impl):
    _run(benchmark, "delta_rule per-key", impl, kda(impl), rounds=5 if impl == "chunk" else 1)


def test_kda_fla_naive_chunk(benchmark):
    naive = pytest.importorskip("fla.ops.kda.naive", reason="install the `peers` extra")
    # FLA's argument order is (q, k, v, g, beta).
    _run(benchmark, "delta_rule per-key", "fla-naive",
         lambda q, k, v, beta, g, s: naive.naive_chunk_kda(q, k, v, g, beta)[0])


@pytest.mark.parametrize("impl", ["chunk", "reference"])
def test_dplr(benchmark, impl):
    _run(benchmark, "dplr_delta_rule", impl, dplr(impl), rounds=5 if impl == "chunk" else 1)


def test_dplr_fla_naive_chunk(benchmark):
    naive = pytest.importorskip("fla.ops.generalized_delta_rule.dplr.naive", reason="install the `peers` extra")
    # FLA's layout is [B, H, T, D]; its alpha reads the state (our b), its beta writes (our a).
    def fn(q, k, v, beta, g, s):
        args = [x.transpose(1, 2) for x in (q, k / 2, v, k, -(s * k), g)]
        return naive.dplr_chunkwise(*args, chunk_size=16)[0]
    _run(benchmark, "dplr_delta_rule", "fla-naive", fn)
