"""arch norms run through ``postformer.kernels.rms_norm`` without changing their semantics.

RMSNorm is ``x / rms(x) * weight``; GatedRMSNorm is Mamba-2's ``rmsnorm(x * silu(z)) * weight``
with the mean of squares per group of channels. Both are checked against the formula written
out here in float64, in float32 and bf16, with gradients reaching the learned scale.
"""

from __future__ import annotations

import pytest
import torch

from postformer.arch import GatedRMSNorm, RMSNorm


def gated_formula(x, z, weight, eps, group_size):
    """Float64: gate first, then each group of ``group_size`` channels over its own rms."""
    u = x.double() if z is None else x.double() * torch.sigmoid(z.double()) * z.double()
    D = u.shape[-1]
    out = torch.empty_like(u)
    for s in range(0, D, group_size):
        g = u[..., s : s + group_size]
        out[..., s : s + group_size] = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return out * weight.double()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_rmsnorm_matches_formula(dtype, tol):
    torch.manual_seed(0)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(24))
    x = (2 * torch.randn(3, 5, 24)).to(dtype)
    y = norm(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), gated_formula(x, None, norm.weight, 1e-5, 24), rtol=tol, atol=tol)
    y.float().sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("group_size", [None, 8])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_gated_rmsnorm_gates_before_the_norm_per_group(group_size, dtype, tol):
    torch.manual_seed(1)
    norm = GatedRMSNorm(32, eps=1e-5, group_size=group_size)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(32))
    x, z = (2 * torch.randn(2, 7, 32)).to(dtype), (2 * torch.randn(2, 7, 32)).to(dtype)
    truth = gated_formula(x, z, norm.weight, 1e-5, group_size or 32)
    torch.testing.assert_close(norm(x, z).double(), truth, rtol=tol, atol=tol)
    assert norm(x, z).dtype == dtype
    # no gate: a (grouped) plain RMSNorm
    torch.testing.assert_close(
        norm(x).double(), gated_formula(x, None, norm.weight, 1e-5, group_size or 32), rtol=tol, atol=tol
    )
    if group_size is not None:  # the groups really are separate: a whole-row norm differs
        whole = gated_formula(x, z, norm.weight, 1e-5, 32)
        assert (truth - whole).abs().max() > 1e-2


def test_gated_rmsnorm_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="not divisible by group_size"):
        GatedRMSNorm(30, group_size=8)
