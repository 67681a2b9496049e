"""selective_scan and linear_scan forward+backward on CPU: postformer's chunked path against
its reference loop. (FLA's pure-PyTorch HGRN loop, ``naive_recurrent_hgrn``, is left out: it
writes ``o[:, i] = h`` per step, whose backward is quadratic in T; it took 3 minutes here.)

Shapes: selective_scan B=1, T=2048, D=512, N=16 (softplus(dt + dt_bias), grouped-free B/C, D
skip and z gate, as in a Mamba-1 block); linear_scan B=1, T=4096, D=1024.

    pytest bench/test_scans.py --benchmark-enable
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_util import run_fwd_bwd

from postformer.kernels import linear_scan, selective_scan

SS = dict(B=1, T=2048, D=512, N=16)
LS = dict(B=1, T=4096, D=1024)


def ss_inputs():
    gen = torch.Generator().manual_seed(0)
    B, T, D, N = SS["B"], SS["T"], SS["D"], SS["N"]

    def r(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    x, dt, z = r(B, T, D), r(B, T, D), r(B, T, D)
    A = (-torch.exp(torch.randn(D, N, generator=gen))).requires_grad_()
    return x, dt, A, r(B, T, N), r(B, T, N), r(D), z, r(D)


def ls_inputs():
    gen = torch.Generator().manual_seed(0)
    shape = (LS["B"], LS["T"], LS["D"])
    x = torch.randn(shape, generator=gen).requires_grad_()
    g = F.logsigmoid(torch.randn(shape, generator=gen) + 2).requires_grad_()
    return x, g



SS_GROUP = "selective_scan fwd+bwd T={T} D={D} N={N}".format(**SS)
LS_GROUP = "linear_scan fwd+bwd T={T} D={D}".format(**LS)


def _ss(impl):
    def fn(x, dt, A, B, C, D, z, dt_bias):
        return selective_scan(x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True, impl=impl)[0]

    return fn


def test_selective_scan_chunk(benchmark):
    run_fwd_bwd(benchmark, SS_GROUP, "chunk", _ss("chunk"), ss_inputs())


def test_selective_scan_reference(benchmark):
    run_fwd_bwd(benchmark, SS_GROUP, "reference", _ss("reference"), ss_inputs(), rounds=1)


def test_linear_scan_chunk(benchmark):
    run_fwd_bwd(benchmark, LS_GROUP, "chunk", lambda x, g: linear_scan(x, g, impl="chunk")[0], ls_inputs())


def test_linear_scan_reference(benchmark):
    run_fwd_bwd(benchmark, LS_GROUP, "reference", lambda x, g: linear_scan(x, g, impl="reference")[0], ls_inputs(),
         rounds=1)

