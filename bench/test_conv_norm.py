"""causal_conv1d and rms_norm forward+backward on CPU: postformer's chunk path (grouped
``F.conv1d``; ``F.rms_norm``) against its reference (the loop over taps; the formula written out).

Shapes: causal_conv1d B=1, T=4096, D=1024, W=4 with bias and SiLU, as in a Mamba block;
rms_norm B=1, T=4096, D=1024 with the silu gate (Mamba-2's gated norm). The Triton kernels are
timed on a GPU by bench/ops_bench.py (through bench/gpu_check.sh), not here: under the CPU
interpreter their time means nothing.

    pytest bench/test_conv_norm.py --benchmark-enable
"""

from __future__ import annotations

import torch
from bench_util import run_fwd_bwd

from postformer.kernels import causal_conv1d, rms_norm

CONV = dict(B=1, T=4096, D=1024, W=4)
NORM = dict(B=1, T=4096, D=1024)
CONV_GROUP = "causal_conv1d fwd+bwd T={T} D={D} W={W}".format(**CONV)
NORM_GROUP = "rms_norm gated fwd+bwd T={T} D={D}".format(**NORM)


def _leaves(*shapes):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]



def _conv(impl):
    return lambda x, w, b: causal_conv1d(x, w, b, activation="silu", impl=impl)[0]


def _norm(impl):
    return lambda x, w, z: rms_norm(x, w, gate=z, impl=impl)


def _conv_inputs():
    B, T, D, W = CONV.values()
    return _leaves((B, T, D), (D, W), (D,))


def _norm_inputs():
    B, T, D = NORM.values()
    return _leaves((B, T, D), (D,), (B, T, D))


def test_causal_conv1d_chunk(benchmark):
    run_fwd_bwd(benchmark, CONV_GROUP, "chunk", _conv("chunk"), _conv_inputs())


def test_causal_conv1d_reference(benchmark):
    run_fwd_bwd(benchmark, CONV_GROUP, "reference", _conv("reference"), _conv_inputs(), rounds=2)


def test_rms_norm_chunk(benchmark):
    run_fwd_bwd(benchmark, NORM_GROUP, "chunk", _norm("chunk"), _norm_inputs())


def test_rms_norm_reference(benchmark):
    run_fwd_bwd(benchmark, NORM_GROUP, "reference", _norm("reference"), _norm_inputs())
