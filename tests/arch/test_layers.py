"""arch norms run through ``postformer.kernels.rms_norm`` without changing their semantics.

RMSNorm is ``x / rms(x) * weight``; GatedRMSNorm is Mamba-2's ``rmsnorm(x * silu(z)) * weight``
with the mean of squares per group of channels. Both are checked against the formula written
out here in float64, in float32 and bf16, with gradients reaching the learned scale; both orders
of norm and gate (``norm_before_gate``). ShortConv equals ``F.conv1d`` and carries its state;
``carry_state`` hands the state to the cache.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from postformer.arch import GatedRMSNorm, RMSNorm
from postformer.arch.layers import ShortConv
from postformer.arch.mixer import carry_state


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


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [2, 4])
def test_short_conv_matches_conv1d_and_carries_its_state(width, activation):
    """ShortConv against F.conv1d (left padding W - 1, groups = C), its state the last W - 1
    inputs; a sequence split in two with the state carried, or stepped token by token, equals
    one pass."""
    torch.manual_seed(2)
    B, T, C = 2, 11, 6
    conv = ShortConv(C, width, bias=True, activation=activation)
    x = torch.randn(B, T, C)
    y, state = conv(x, output_final_state=True)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), conv.weight, conv.bias, groups=C).transpose(1, 2)
    torch.testing.assert_close(y, F.silu(ref) if activation == "silu" else ref)
    torch.testing.assert_close(state, x[:, T - (width - 1) :].transpose(1, 2))  # [B, C, W - 1]
    assert conv(x)[1] is None
    for split in (1, 5):
        y1, s1 = conv(x[:, :split], output_final_state=True)
        y2, s2 = conv(x[:, split:], initial_state=s1, output_final_state=True)
        torch.testing.assert_close(torch.cat([y1, y2], dim=1), y)
        torch.testing.assert_close(s2, state)
    s, ys = conv.new_state(B), []
    for t in range(T):
        yt, s = conv(x[:, t : t + 1], initial_state=s, output_final_state=True)
        ys.append(yt)
    torch.testing.assert_close(torch.cat(ys, dim=1), y)
    torch.testing.assert_close(s, state)


@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_gated_rmsnorm_norm_before_gate(norm_before_gate):
    """True (GLA, RetNet, DeltaNet): x / rms(x) * w * silu(z); False (Mamba-2): rmsnorm(x * silu(z)) * w."""
    torch.manual_seed(3)
    eps = 1e-5
    norm = GatedRMSNorm(16, eps=eps, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(16))
    x, z = 2 * torch.randn(2, 5, 16), 2 * torch.randn(2, 5, 16)
    xd, zd, w = x.double(), z.double(), norm.weight.double()

    def rmsnorm(u):
        return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + eps)

    before = rmsnorm(xd) * w * F.silu(zd)
    after = rmsnorm(xd * F.silu(zd)) * w
    truth, other = (before, after) if norm_before_gate else (after, before)
    torch.testing.assert_close(norm(x, z).double(), truth, rtol=1e-5, atol=1e-5)
    assert (truth - other).abs().max() > 1e-1  # the order matters


def test_carry_state_stores_the_new_state_in_the_cache():
    """The op gets the cached state and asks for its final one, which replaces the cached one
    (an attribute, or an index into a list of states); without a cache: no state either way."""
    calls = []

    def op(x, *, initial_state, output_final_state, scale):
        calls.append((initial_state, output_final_state))
        return x * scale, ("new", initial_state)

    cache = SimpleNamespace(state="old")
    assert carry_state(cache, "state", op, 2, scale=3) == 6
    assert cache.state == ("new", "old") and calls[-1] == ("old", True)
    states = ["s0", "s1"]
    assert carry_state(states, 1, op, 2, scale=1) == 2
    assert states == ["s0", ("new", "s1")] and calls[-1] == ("s1", True)
    assert carry_state(None, "state", op, 5, scale=1) == 5
    assert calls[-1] == (None, False)
