"""causal_conv1d against an independent computation of the depthwise causal convolution.

The truth here is written differently from both package paths: prepend the state (or zeros),
cut every length-W window with ``Tensor.unfold`` and contract it with the filter, in float64.
Both paths (the tap loop ``reference`` and the grouped-conv ``chunk``) must match it for every
length around the window (T in 0, 1, 2, W-2, W-1, W, 17), with and without bias, activation and
state, and the final state must hold the last W-1 inputs even when fewer than W-1 were given.
Packed sequences must equal separate calls (empty and short ones included), a decode loop must
continue a prefill exactly, bf16 must stay bf16, and gradients must reach every input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import conv_inputs as make

from postformer.kernels import causal_conv1d

IMPLS = ["reference", "chunk"]


def naive(x, w, b=None, activation=None, h0=None):
    """Unfold formula, float64: x [B, T, D], w [D, W], h0 [B, D, W-1] -> (y, final_state)."""
    x, w = x.double(), w.double()
    B, T, D = x.shape
    W = w.shape[1]
    past = torch.zeros(B, W - 1, D, dtype=torch.float64) if h0 is None else h0.double().transpose(1, 2)
    xp = torch.cat([past, x], dim=1)  # (B, W-1+T, D)
    if T > 0:
        windows = xp.unfold(1, W, 1)  # (B, T, D, W): window t covers xp[t : t+W]
        y = torch.einsum("btdw,dw->btd", windows, w)
    else:
        y = torch.zeros(B, 0, D, dtype=torch.float64)
    if b is not None:
        y = y + b.double()
    if activation == "silu":
        y = y * torch.sigmoid(y)
    final = xp[:, xp.shape[1] - (W - 1) :].transpose(1, 2)  # (B, D, W-1)
    return y, final


W_VALUES = [4, 2, 1]
# the lengths around the window that the state handling must get right
T_OF_W = {"0": lambda W: 0, "1": lambda W: 1, "2": lambda W: 2, "W-2": lambda W: max(W - 2, 0),
          "W-1": lambda W: W - 1, "W": lambda W: W, "17": lambda W: 17}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("W", W_VALUES)
@pytest.mark.parametrize("T_kind", ["0", "1", "2", "W-2", "W-1", "W", "17"])
def test_matches_unfold_formula(impl, W, T_kind):
    T = T_OF_W[T_kind](W)
    x, w, b, h0 = make(2, T, 5, W)
    for use_bias in (False, True):
        for activation in (None, "silu"):
            for use_state in (False, True):
                bias = b if use_bias else None
                state = h0 if use_state else None
                y, s = causal_conv1d(
                    x, w, bias, activation=activation, initial_state=state,
                    output_final_state=True, impl=impl,
                )
                y_ref, s_ref = naive(x, w, bias, activation, state)
                assert y.shape == (2, T, 5) and y.dtype == torch.float32
                assert s.shape == (2, 5, W - 1) and s.dtype == torch.float32
                torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(s.double(), s_ref, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_nn_conv1d_weights(impl):
    # A module's nn.Conv1d(D, D, W, groups=D) weight [D, 1, W], squeezed, with left padding W-1
    # and the outputs past T cut: the convention the mixers rely on (tap W-1 = current step).
    torch.manual_seed(8)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6)
    y, _ = causal_conv1d(x, conv.weight[:, 0], conv.bias, impl=impl)
    y_ref = conv(x.transpose(1, 2))[..., :9].transpose(1, 2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_final_state_shorter_than_window(impl):
    # W=4 keeps 3 inputs; after T=1 they are the 2 newest state inputs, then x_0.
    x, w, b, h0 = make(2, 1, 3, 4)
    _, s = causal_conv1d(x, w, b, initial_state=h0, output_final_state=True, impl=impl)
    expected = torch.stack([h0[..., 1], h0[..., 2], x[:, 0]], dim=-1)
    assert torch.equal(s, expected)
    _, s0 = causal_conv1d(x[:, :0], w, b, initial_state=h0, output_final_state=True, impl=impl)
    assert torch.equal(s0, h0)
    _, s_zero = causal_conv1d(x, w, b, output_final_state=True, impl=impl)
    assert torch.equal(s_zero[..., :2], torch.zeros(2, 3, 2)) and torch.equal(s_zero[..., 2], x[:, 0])
    y, s_none = causal_conv1d(x, w, b, initial_state=h0, impl=impl)
    assert s_none is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("W", [4, 1])
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_separate_calls(impl, W, with_state):
    lengths = [5, 0, 1, 2, 9, 0]  # empty sequences (also last), shorter than W-1, longer than W
    N, T = len(lengths), sum(lengths)
    x, w, b, h0 = make(1, T, 6, W, n_states=N, seed=3)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    y, s = causal_conv1d(
        x, w, b, activation="silu", initial_state=h0 if with_state else None,
        output_final_state=True, cu_seqlens=cu, impl=impl,
    )
    assert y.shape == (1, T, 6) and s.shape == (N, 6, W - 1)
    bounds = cu.tolist()
    for i in range(N):
        bos, eos = bounds[i], bounds[i + 1]
        y_ref, s_ref = naive(x[:, bos:eos], w, b, "silu", h0[i : i + 1] if with_state else None)
        torch.testing.assert_close(y[:, bos:eos].double(), y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[i : i + 1].double(), s_ref, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_decoding_continues_prefill(impl):
    x, w, b, h0 = make(2, 11, 6, 4, seed=4)
    y_full, s_full = causal_conv1d(x, w, b, activation="silu", initial_state=h0, output_final_state=True)
    y_pre, s = causal_conv1d(
        x[:, :5], w, b, activation="silu", initial_state=h0, output_final_state=True, impl=impl
    )
    steps = [y_pre]
    for t in range(5, 11):
        y_t, s = causal_conv1d(
            x[:, t : t + 1], w, b, activation="silu", initial_state=s, output_final_state=True, impl=impl
        )
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y_full, rtol=1e-6, atol=1e-6)
    assert torch.equal(s, s_full)
    y_ref, _ = naive(x, w, b, "silu", h0)
    torch.testing.assert_close(y_full.double(), y_ref, rtol=1e-5, atol=1e-5)


def test_decoding_step_skips_the_conv(monkeypatch):
    x, w, b, h0 = make(3, 1, 6, 4, seed=5)

    def no_conv(*args, **kwargs):
        raise AssertionError("a T=1 step with a state must not set up a convolution")

    monkeypatch.setattr(F, "conv1d", no_conv)
    y, s = causal_conv1d(x, w, b, initial_state=h0, output_final_state=True, impl="chunk")
    y_ref, s_ref = naive(x, w, b, None, h0)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(s.double(), s_ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("varlen", [False, True])
def test_bf16_outputs_and_state_stay_bf16(impl, varlen):
    x, w, b, h0 = make(1, 33, 16, 4, dtype=torch.bfloat16, seed=6, n_states=2 if varlen else 1)
    cu = torch.tensor([0, 20, 33]) if varlen else None
    y, s = causal_conv1d(
        x, w, b, activation="silu", initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl
    )
    assert y.dtype == torch.bfloat16 and s.dtype == torch.bfloat16
    if varlen:
        parts = [naive(x[:, :20], w, b, "silu", h0[:1]), naive(x[:, 20:], w, b, "silu", h0[1:])]
        y_ref = torch.cat([p[0] for p in parts], dim=1)
        s_ref = torch.cat([p[1] for p in parts], dim=0)
    else:
        y_ref, s_ref = naive(x, w, b, "silu", h0)
    # computed in float32: only the final rounding to bf16 (rel 2^-8) separates it from float64
    torch.testing.assert_close(y.double(), y_ref, rtol=8e-3, atol=8e-3)
    assert torch.equal(s.double(), s_ref)  # the state is inputs: copied exactly


def test_state_in_another_dtype_comes_back_in_x_dtype():
    x, w, b, h0 = make(2, 2, 4, 4)
    y, s = causal_conv1d(x.bfloat16(), w, b, initial_state=h0, output_final_state=True)
    assert s.dtype == torch.bfloat16
    assert torch.equal(s[..., 0], h0[..., 2].bfloat16()) and torch.equal(s[..., 1:], x.bfloat16().transpose(1, 2))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["batch", "step", "varlen"])
def test_gradients_reach_every_input(impl, case):
    T, n_states, cu = {"batch": (6, 2, None), "step": (1, 2, None), "varlen": (7, 3, torch.tensor([0, 2, 2, 7]))}[case]
    B = 1 if cu is not None else 2
    x, w, b, h0 = (t.requires_grad_() for t in make(B, T, 3, 4, dtype=torch.float64, n_states=n_states, seed=7))

    def f(x, w, b, h0):
        y, s = causal_conv1d(
            x, w, b, activation="silu", initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl
        )
        return y, s

    assert torch.autograd.gradcheck(f, (x, w, b, h0), fast_mode=True)


def test_impl_dispatch():
    # impl="triton" runs the kernels (tests/kernels/test_causal_conv1d_triton.py covers them; on
    # CPU tensors under TRITON_INTERPRET=1, which tests/conftest.py sets without CUDA), or says
    # why it cannot: float64 inputs, or no Triton installed
    from postformer.kernels._triton import HAS_TRITON

    x, w, b, h0 = make(1, 3, 2, 4)
    if HAS_TRITON:
        y, s = causal_conv1d(x, w, b, initial_state=h0, output_final_state=True, impl="triton")
        y_ref, s_ref = naive(x, w, b, None, h0)
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(s.double(), s_ref)
        with pytest.raises(ValueError, match="float64"):
            causal_conv1d(x.double(), w.double(), impl="triton")
    else:
        with pytest.raises(ValueError, match="triton"):
            causal_conv1d(x, w, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        causal_conv1d(x, w, impl="fast")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.randn(3, 4)}, r"x has shape \[3, 4\], expected \[B, T, D\]"),
        ({"x": torch.ones(2, 3, 4, dtype=torch.int64)}, "x must be a floating-point"),
        ({"weight": torch.randn(5, 4)}, r"weight has shape \[5, 4\], expected \[D, W\] = \[4, W\]"),
        ({"weight": torch.randn(4)}, r"weight has shape \[4\]"),
        ({"bias": torch.randn(5)}, r"bias has shape \[5\], expected \[D\] = \[4\]"),
        ({"initial_state": torch.randn(2, 4, 3)}, r"initial_state has shape \[2, 4, 3\], expected \[B, D, W-1\] = \[2, 4, 2\]"),
        ({"activation": "relu"}, "activation='relu'"),
        ({"cu_seqlens": torch.tensor([0, 3])}, "batch dimension must be 1"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"x": torch.randn(2, 3, 4), "weight": torch.randn(4, 3), "bias": None}
    args.update({k: v for k, v in kwargs.items() if k in args})
    rest = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        causal_conv1d(args["x"], args["weight"], args["bias"], **rest)


def test_varlen_state_shape_and_offsets_checked():
    x, w = torch.randn(1, 5, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"initial_state has shape \[1, 4, 2\], expected \[N, D, W-1\]"):
        causal_conv1d(x, w, initial_state=torch.randn(1, 4, 2), cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        causal_conv1d(x, w, cu_seqlens=torch.tensor([0, 2, 4]))
