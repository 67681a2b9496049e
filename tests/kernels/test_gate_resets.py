"""Full resets and very strong decays in the gated ops: ``g = -inf`` is legal (exp(-inf) = 0
wipes the state), and so is any finite ``g << 0``. The chunked forms difference cumulative
sums of g, where -inf gave NaN from the reset on and -1e8 swamped the float32 sums after it
(errors of order 1 against outputs of order 1). Every impl must match the loop there, values
and gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import rel_err

from postformer.kernels import delta_rule, gla

TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
IMPLS = ["chunk"] + (["triton"] if TRITON else [])


def inputs(op: str, T: int, reset: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = 1, 2, 16, 16
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    k = F.normalize(k, dim=-1)
    per_key = op == "gla-key"
    g = F.logsigmoid(torch.randn((B, T, H, K) if per_key else (B, T, H), generator=gen) + 1)
    g[:, T // 2] = reset  # one reset in the middle of a chunk
    g[:, T // 2 + 3, 0] = reset  # and one more in a single head
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return q, k, v, g, beta, h0


def run(op, impl, q, k, v, g, beta, h0):
    if op == "delta_rule":
        return delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl=impl)
    return gla(q, k, v, g, initial_state=h0, output_final_state=True, impl=impl)


@pytest.mark.parametrize("reset", [float("-inf"), -1e8, -1e4])
@pytest.mark.parametrize("op", ["gla-scalar", "gla-key", "delta_rule"])
@pytest.mark.parametrize("impl", IMPLS)
def test_reset_matches_the_loop(impl, op, reset):
    T = 150 if impl == "chunk" else 80  # past one chunk and past the Triton recurrent cut-off
    tensors = inputs(op, T, reset)
    leaves = [x.clone().requires_grad_() for x in (tensors[0], tensors[1], tensors[2], tensors[5])]
    q, k, v, h0 = leaves
    o, S = run(op, impl, q, k, v, tensors[3], tensors[4], h0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    o_ref, S_ref = run(op, "reference", ref_leaves[0], ref_leaves[1], ref_leaves[2], tensors[3], tensors[4],
                       ref_leaves[3])
    assert rel_err(o, o_ref) < 2e-5
    assert rel_err(S, S_ref) < 2e-5
    do = torch.randn_like(o_ref)
    (o * do).sum().add(S.sum()).backward()
    (o_ref * do).sum().add(S_ref.sum()).backward()
    for name, a, b in zip("qkvh", leaves, ref_leaves):
        assert torch.isfinite(a.grad).all(), name
        assert rel_err(a.grad, b.grad) < 2e-5, name
