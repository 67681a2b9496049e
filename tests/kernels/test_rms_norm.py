"""rms_norm against the formula computed independently in float64, and against FLA's reference.

The truth here normalises each group with ``torch.linalg.vector_norm`` (rms = |u| / sqrt(n)),
not the mean of squares both package paths use. Covered: weight or no weight, a gate applied
after (default) or before the norm, several groups, eps that matters, leading dims of any
rank, bf16 computed in float32, gradients to x, weight and gate, and bad arguments.
"""

from __future__ import annotations

import math

import pytest
import torch

from postformer.kernels import rms_norm

IMPLS = ["reference", "chunk"]


def formula(x, weight, eps, gate=None, norm_before_gate=True, group_size=None):
    """Float64, one group at a time: u / sqrt(|u|^2 / n + eps) * weight, gated by silu."""
    x = x.double()
    D = x.shape[-1]
    n = group_size or D
    silu = None if gate is None else gate.double() * torch.sigmoid(gate.double())
    u = x * silu if (silu is not None and not norm_before_gate) else x
    parts = []
    for start in range(0, D, n):
        g = u[..., start : start + n]
        rms = torch.sqrt(torch.linalg.vector_norm(g, dim=-1, keepdim=True) ** 2 / n + eps)
        parts.append(g / rms)
    y = torch.cat(parts, dim=-1)
    if weight is not None:
        y = y * weight.double()
    if silu is not None and norm_before_gate:
        y = y * silu
    return y


def make(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=gen)
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen)
    gate = 2 * torch.randn(shape, generator=gen)
    return x.to(dtype), weight.to(dtype), gate.to(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gated", ["none", "after", "before"])
@pytest.mark.parametrize("group_size", [None, 8, 4])
def test_matches_formula(impl, gated, group_size):
    x, weight, gate = make((2, 5, 16))
    g = None if gated == "none" else gate
    nbg = gated != "before"
    for w in (weight, None):
        y = rms_norm(x, w, eps=1e-6, gate=g, norm_before_gate=nbg, group_size=group_size, impl=impl)
        assert y.shape == x.shape and y.dtype == torch.float32
        torch.testing.assert_close(y.double(), formula(x, w, 1e-6, g, nbg, group_size), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gate_order_differs(impl):
    # Gating before the norm rescales the rms; after, it does not: the two must not coincide.
    x, weight, gate = make((3, 8))
    after = rms_norm(x, weight, gate=gate, norm_before_gate=True, impl=impl)
    before = rms_norm(x, weight, gate=gate, norm_before_gate=False, impl=impl)
    assert (after - before).abs().max() > 0.1


@pytest.mark.parametrize("impl", IMPLS)
def test_eps_and_any_leading_shape(impl):
    # tiny inputs: eps dominates the mean of squares, so a misplaced eps shows
    x, weight, gate = make((2, 3, 4, 6), seed=1)
    x = 1e-3 * x
    y = rms_norm(x, weight, eps=1e-5, impl=impl)
    torch.testing.assert_close(y.double(), formula(x, weight, 1e-5), rtol=1e-5, atol=1e-7)
    y1 = rms_norm(x[0, 0, 0], weight, eps=1e-5, impl=impl)  # a single vector [D]
    torch.testing.assert_close(y1.double(), formula(x[0, 0, 0], weight, 1e-5), rtol=1e-5, atol=1e-7)
    empty = rms_norm(x[:, :0], weight, impl=impl)
    assert empty.shape == (2, 0, 4, 6)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_fla_reference(impl):
    pytest.importorskip("fla")
    from fla.modules.norm.layernorm_gated import rms_norm_ref

    x, weight, gate = make((4, 7, 32), seed=2)
    for nbg in (True, False):
        for group_size in (None, 8):
            y = rms_norm(x, weight, eps=1e-5, gate=gate, norm_before_gate=nbg, group_size=group_size, impl=impl)
            y_fla = rms_norm_ref(x, weight, None, z=gate, eps=1e-5, group_size=group_size, norm_before_gate=nbg)
            torch.testing.assert_close(y, y_fla, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_computes_in_float32(impl):
    x, weight, gate = make((4, 64, 256), dtype=torch.bfloat16, seed=3)
    y = rms_norm(x, weight, gate=gate, norm_before_gate=False, group_size=128, impl=impl)
    assert y.dtype == torch.bfloat16
    truth = formula(x, weight, 1e-6, gate, False, 128)
    # float32 inside: within one bf16 rounding (2^-8 relative) of the float64 truth everywhere
    err = ((y.double() - truth).abs() / truth.abs().clamp_min(1e-2)).max().item()
    assert err <= 2**-8 + 1e-3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gated", ["none", "after", "before"])
def test_gradients(impl, gated):
    x, weight, gate = (t.double().requires_grad_() for t in make((2, 3, 8), seed=4))
    nbg = gated != "before"
    if gated == "none":
        assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, group_size=4, impl=impl), (x, weight))
    else:
        assert torch.autograd.gradcheck(
            lambda x, w, g: rms_norm(x, w, gate=g, norm_before_gate=nbg, group_size=4, impl=impl),
            (x, weight, gate),
        )


def test_gradient_of_unit_weight_norm_is_orthogonal_to_x():
    # d/dx of x / rms(x) (eps=0) kills the radial direction: (dy/dx)^T v . x = 0 for every v.
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 12, dtype=torch.float64)
    (g,) = torch.autograd.grad((rms_norm(x, None, eps=0.0) * v).sum(), x)
    assert (g * x).sum(-1).abs().max() < 1e-10
    assert g.abs().max() > 1e-3
    torch.testing.assert_close(rms_norm(x, None, eps=0.0).pow(2).mean(-1), torch.ones(5, dtype=torch.float64))
    assert math.isfinite(g.sum().item())


def test_impl_dispatch():
    # impl="triton" runs the kernels (tested in test_rms_norm_triton.py) where Triton can run
    # them (CUDA, or CPU tensors under TRITON_INTERPRET=1, which tests/conftest.py sets without
    # CUDA); elsewhere it is a ValueError saying why. float64 is always refused by the kernels.
    from postformer.kernels._triton import HAS_TRITON, interpreting

    x, weight, gate = make((2, 4))
    if not HAS_TRITON:
        with pytest.raises(ValueError, match="triton"):
            rms_norm(x, weight, impl="triton")
    elif interpreting():
        y = rms_norm(x, weight, gate=gate, impl="triton")
        torch.testing.assert_close(y.double(), formula(x, weight, 1e-6, gate), rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="float64"):
            rms_norm(x.double(), weight, impl="triton")
    else:
        with pytest.raises(ValueError, match="CUDA"):
            rms_norm(x, weight, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        rms_norm(x, weight, impl="fast")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": torch.randn(5)}, r"weight has shape \[5\], expected \[D\] = \[8\]"),
        ({"gate": torch.randn(2, 3, 4)}, r"gate has shape \[2, 3, 4\], expected \[..., D\] like x = \[2, 3, 8\]"),
        ({"group_size": 3}, r"group_size=3 must be a positive divisor of D=8"),
        ({"group_size": 0}, r"group_size=0"),
        ({"eps": -1.0}, "eps must be >= 0"),
        ({"x": torch.ones(2, 3, 8, dtype=torch.int32)}, "x must be a floating-point"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    x = kwargs.pop("x", torch.randn(2, 3, 8))
    weight = kwargs.pop("weight", torch.ones(8))
    with pytest.raises(ValueError, match=match):
        rms_norm(x, weight, **kwargs)
