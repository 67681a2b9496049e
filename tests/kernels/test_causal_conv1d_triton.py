"""causal_conv1d's Triton kernels (forward and backward) against independent computations.

Without CUDA, tests/conftest.py sets ``TRITON_INTERPRET=1`` before postformer is imported, so
the kernels run on CPU tensors under Triton's interpreter; with CUDA they run compiled on the
GPU. Where Triton is not importable at all the module skips.

Truths: the package's loop over time and taps (``impl="reference"``) on float64 copies of the
same inputs, gradients by autograd through it, and for the forward also the unfold formula of
tests/kernels/test_causal_conv1d.py. Every case of that file is covered: T in {0, 1, 2, W-2,
W-1, W, 17} for W in {4, 2, 1} (plus W = 8, the widest, and T = 130, which crosses the
kernels' 64-row time blocks), with and without bias, SiLU and state; packed sequences (empty,
shorter than W-1, longer than a block); decoding after a prefill; bf16; non-contiguous inputs.
Gradients are of ``sum(y * r) + sum(final_state * r')`` with random r, r', so the final state
sends gradient to x and to the initial state too.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (e.g. macOS): no Triton kernels to test")

from kernel_testing import conv_inputs

from postformer.kernels import causal_conv1d  # noqa: E402
from postformer.kernels._triton import interpreting  # noqa: E402
from postformer.kernels.causal_conv1d.triton import BT, causal_conv1d_triton  # noqa: E402

INTERPRET = interpreting()
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
TOL = 1e-5  # fp32 sums of at most W products (and a SiLU): far below what a wrong tap would give

T_OF_W = {"0": lambda W: 0, "1": lambda W: 1, "2": lambda W: 2, "W-2": lambda W: max(W - 2, 0),
          "W-1": lambda W: W - 1, "W": lambda W: W, "17": lambda W: 17}


def make(B, T, D, W, dtype=torch.float32, seed=0, n_states=None):
    return conv_inputs(B, T, D, W, dtype, seed, n_states, device=DEVICE)


def unfold_formula(x, w, b, activation, h0):
    """Independent of the package: prepend the state, cut W-wide windows, contract; float64."""
    x, w = x.detach().cpu().double(), w.detach().cpu().double()
    B, T, D = x.shape
    W = w.shape[1]
    past = torch.zeros(B, W - 1, D, dtype=torch.float64) if h0 is None else h0.detach().cpu().double().transpose(1, 2)
    xp = torch.cat([past, x], dim=1)
    y = torch.einsum("btdw,dw->btd", xp.unfold(1, W, 1), w) if T else torch.zeros(B, 0, D, dtype=torch.float64)
    if b is not None:
        y = y + b.detach().cpu().double()
    if activation == "silu":
        y = y * torch.sigmoid(y)
    return y, xp[:, xp.shape[1] - (W - 1) :].transpose(1, 2)


def close(a, b, tol=TOL):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert a.shape == b.shape, f"shape {list(a.shape)}, expected {list(b.shape)}"
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def run_with_grads(impl, x, w, b, h0, activation, cu=None, seed=1, double=False):
    """(y, final state, [dx, dw, db, dh0]) of sum(y * r) + sum(state * r'); float64 copies when
    ``double``."""
    conv = (lambda t: t.detach().cpu().double()) if double else (lambda t: t.detach().clone())
    xs = [None if t is None else conv(t).requires_grad_() for t in (x, w, b, h0)]
    y, s = causal_conv1d(*xs[:3], activation=activation, initial_state=xs[3], output_final_state=True,
                         cu_seqlens=None if cu is None else (cu.cpu() if double else cu), impl=impl)
    gen = torch.Generator().manual_seed(seed)
    r_y = torch.randn(y.shape, generator=gen).to(y.device)
    r_s = torch.randn(s.shape, generator=gen).to(s.device)
    acc = torch.float64 if double else torch.float32
    loss = (y.to(acc) * r_y).sum() + (s.to(acc) * r_s).sum()
    if loss.requires_grad:  # the reference builds no graph for an empty input without a state
        loss.backward()
    return y, s, [None if t is None else t.grad for t in xs]


def assert_grads_match(x, w, b, h0, activation, cu=None, tol=1e-4):
    y, s, got = run_with_grads("triton", x, w, b, h0, activation, cu)
    y_ref, s_ref, want = run_with_grads("reference", x, w, b, h0, activation, cu, double=True)
    close(y, y_ref)
    assert torch.equal(s.cpu().double(), s_ref)
    for name, g, g_ref in zip(["x", "weight", "bias", "initial_state"], got, want):
        if g_ref is None:
            continue
        assert g is not None, f"no gradient reached {name}"
        assert g.dtype == {"x": x, "weight": w, "bias": b, "initial_state": h0}[name].dtype, name
        torch.testing.assert_close(g.cpu().double(), g_ref, rtol=tol, atol=tol, msg=lambda m, name=name: f"d{name}: {m}")


# ---------------------------------------------------------------------------------------------
# forward

COMBOS = [(False, None, False), (True, "silu", True), (True, None, False), (False, "silu", True)]


@pytest.mark.parametrize("W", [4, 2, 1, 8])
@pytest.mark.parametrize("T_kind", list(T_OF_W))
def test_forward_matches_reference(W, T_kind):
    T = T_OF_W[T_kind](W)
    x, w, b, h0 = make(2, T, 5, W, seed=W * 10 + T)
    for use_bias, activation, use_state in COMBOS:
        bias, state = (b if use_bias else None), (h0 if use_state else None)
        y, s = causal_conv1d(x, w, bias, activation=activation, initial_state=state, output_final_state=True,
                             impl="triton")
        assert y.dtype == torch.float32 and s.dtype == torch.float32 and y.device.type == DEVICE.type
        y_ref, s_ref = causal_conv1d(*(None if t is None else t.cpu().double() for t in (x, w, bias)),
                                     activation=activation, output_final_state=True, impl="reference",
                                     initial_state=None if state is None else state.cpu().double())
        close(y, y_ref)
        close(y, unfold_formula(x, w, bias, activation, state)[0])
        assert torch.equal(s.cpu().double(), s_ref)  # the state holds inputs: copied exactly


def test_forward_across_time_blocks_and_wide_channels():
    # T crosses two 64-row blocks; D = 70 needs two channel tiles, the second one masked
    x, w, b, h0 = make(2, 2 * BT + 2, 70, 4, seed=3)
    y, s = causal_conv1d_triton(x, w, b, "silu", h0, True, None)
    y_ref, s_ref = unfold_formula(x, w, b, "silu", h0)
    close(y, y_ref)
    assert torch.equal(s.cpu().double(), s_ref)


def test_matches_nn_conv1d_weights():
    torch.manual_seed(8)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6)
    y_ref = conv(x.transpose(1, 2))[..., :9].transpose(1, 2)
    y, _ = causal_conv1d(x.to(DEVICE), conv.weight[:, 0].detach().to(DEVICE), conv.bias.detach().to(DEVICE),
                         impl="triton")
    close(y, y_ref)


@pytest.mark.parametrize("W", [4, 1])
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_forward_and_gradients(W, with_state):
    # empty sequences (also first and last), shorter than W-1, longer than a time block
    lengths = [0, 5, 0, 1, 2, BT + 6, 0]
    N, T = len(lengths), sum(lengths)
    x, w, b, h0 = make(1, T, 6, W, n_states=N, seed=4)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32).to(DEVICE)
    state = h0 if with_state else None
    y, s = causal_conv1d(x, w, b, activation="silu", initial_state=state, output_final_state=True, cu_seqlens=cu,
                         impl="triton")
    assert y.shape == (1, T, 6) and s.shape == (N, 6, W - 1)
    bounds = cu.tolist()
    for i in range(N):  # each sequence on its own, by the unfold formula
        bos, eos = bounds[i], bounds[i + 1]
        y_i, s_i = unfold_formula(x[:, bos:eos], w, b, "silu", None if state is None else state[i : i + 1])
        close(y[:, bos:eos], y_i)
        assert torch.equal(s[i : i + 1].cpu().double(), s_i), f"state {i}"
    assert_grads_match(x, w, b, state, "silu", cu=cu.long())


# ---------------------------------------------------------------------------------------------
# backward


@pytest.mark.parametrize(
    "W, T, activation, use_bias, use_state",
    [(4, 17, "silu", True, True), (4, 2, "silu", True, True), (4, 1, None, True, True), (4, 0, "silu", True, True),
     (4, BT + 3, None, False, True), (4, 17, "silu", True, False), (2, 17, "silu", False, True),
     (1, 17, "silu", True, False), (8, 20, "silu", True, True), (8, 5, None, True, True)],
)
def test_gradients_match_reference(W, T, activation, use_bias, use_state):
    x, w, b, h0 = make(2, T, 5, W, seed=20 + T + W)
    assert_grads_match(x, w, b if use_bias else None, h0 if use_state else None, activation)


def test_gradients_without_final_state():
    # no final state asked for: the backward gets no d(final_state); dh0 comes from the outputs only
    x, w, b, h0 = make(2, 9, 5, 4, seed=30)
    xs = [t.clone().requires_grad_() for t in (x, w, b, h0)]
    y, s = causal_conv1d(*xs[:3], activation="silu", initial_state=xs[3], impl="triton")
    assert s is None
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(31)).to(DEVICE)
    (y * r).sum().backward()
    ys = [t.detach().cpu().double().requires_grad_() for t in (x, w, b, h0)]
    y_ref, _ = causal_conv1d(*ys[:3], activation="silu", initial_state=ys[3], impl="reference")
    (y_ref * r.cpu().double()).sum().backward()
    for a, c in zip(xs, ys):
        torch.testing.assert_close(a.grad.cpu().double(), c.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# decoding, dtypes, layouts, dispatch


def test_decoding_continues_prefill():
    x, w, b, h0 = make(2, 11, 6, 4, seed=5)
    y_pre, s = causal_conv1d(x[:, :5], w, b, activation="silu", initial_state=h0, output_final_state=True,
                             impl="triton")
    steps = [y_pre]
    for t in range(5, 11):
        y_t, s = causal_conv1d(x[:, t : t + 1], w, b, activation="silu", initial_state=s, output_final_state=True,
                               impl="triton")
        steps.append(y_t)
    y_ref, s_ref = unfold_formula(x, w, b, "silu", h0)
    close(torch.cat(steps, dim=1), y_ref)
    assert torch.equal(s.cpu().double(), s_ref)


@pytest.mark.parametrize("varlen", [False, True])
def test_bf16_outputs_state_and_gradients(varlen):
    x, w, b, h0 = make(1, 33, 16, 4, dtype=torch.bfloat16, seed=6, n_states=2 if varlen else 1)
    w32 = w.float()  # a float32 filter with bf16 activations (mixed dtypes as under autocast)
    cu = torch.tensor([0, 20, 33]).to(DEVICE) if varlen else None
    y, s, got = run_with_grads("triton", x, w32, b, h0, "silu", cu)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.bfloat16
    assert [g.dtype for g in got] == [torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]
    y_ref, s_ref, want = run_with_grads("reference", x, w32, b, h0, "silu", cu, double=True)
    close(y, y_ref, tol=8e-3)  # float32 sums; only the final rounding to bf16 (2^-8) differs
    assert torch.equal(s.cpu().double(), s_ref)
    for g, g_ref in zip(got, want):
        rel = (g.cpu().double() - g_ref).norm() / g_ref.norm()
        assert rel < 1e-2, rel


def test_non_contiguous_inputs():
    # x a slice of a fused projection (rows strided), the state laid out [B, W-1, D], the filter
    # [W, D] transposed; the gradients reach the underlying leaves
    gen = torch.Generator().manual_seed(7)
    fused = torch.randn(2, 19, 5 + 3, generator=gen).to(DEVICE).requires_grad_()
    h0t = torch.randn(2, 3, 5, generator=gen).to(DEVICE).requires_grad_()
    wt = torch.randn(4, 5, generator=gen).to(DEVICE).requires_grad_()
    b = torch.randn(5, generator=gen).to(DEVICE)
    x, h0, w = fused[..., :5], h0t.transpose(1, 2), wt.t()
    assert not (x.is_contiguous() or h0.is_contiguous() or w.is_contiguous())
    y, s = causal_conv1d(x, w, b, activation="silu", initial_state=h0, output_final_state=True, impl="triton")
    r = torch.randn(y.shape, generator=gen).to(DEVICE)
    r_s = torch.randn(s.shape, generator=gen).to(DEVICE)
    ((y * r).sum() + (s * r_s).sum()).backward()
    xs = [t.detach().cpu().double().requires_grad_() for t in (x, w, h0)]
    y2, s2 = causal_conv1d(xs[0], xs[1], b.cpu().double(), activation="silu", initial_state=xs[2],
                           output_final_state=True, impl="reference")
    ((y2 * r.cpu().double()).sum() + (s2 * r_s.cpu().double()).sum()).backward()
    close(y, y2)
    assert torch.equal(s.detach().cpu().double(), s2.detach())
    assert torch.equal(fused.grad[..., 5:], torch.zeros_like(fused.grad[..., 5:]))
    pairs = ((fused.grad[..., :5], xs[0].grad), (wt.grad.t(), xs[1].grad), (h0t.grad.transpose(1, 2), xs[2].grad))
    for got, ref in pairs:
        torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-4, atol=1e-4)


def test_triton_impl_rejects_what_it_cannot_run():
    x, w, b, h0 = make(1, 3, 4, 4)
    with pytest.raises(ValueError, match="float64"):
        causal_conv1d(x.double(), w.double(), impl="triton")
    with pytest.raises(ValueError, match="W <= 8"):
        causal_conv1d(x, torch.randn(4, 9, device=DEVICE), impl="triton")
    # auto never picks the kernels for float64 or too wide a filter (on CUDA it would for the rest)
    y, _ = causal_conv1d(x.double(), w.double(), b.double())
    close(y, unfold_formula(x, w, b, None, None)[0])


# ---------------------------------------------------------------------------------------------
# random shapes and packings (hypothesis, derandomised so CI sees the same examples every run)

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True)
@hypothesis.given(
    D=st.integers(1, 70), W=st.integers(1, 8),
    lengths=st.lists(st.one_of(st.integers(0, 10), st.integers(BT - 3, BT + 8)), min_size=1, max_size=4),
    packed=st.booleans(), use_bias=st.booleans(), activation=st.sampled_from([None, "silu"]),
    with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_packings_match_reference(D, W, lengths, packed, use_bias, activation, with_state, seed):
    """Any channel count (masked tiles, two 64-wide tiles past 64), any filter width the kernels
    take, lengths shorter than W-1, within and across the 64-row time blocks (empty and single
    steps included), a batch of equal lengths or a packing of sequences (empty ones included),
    with or without bias, SiLU and initial states, against the reference loop on float64 copies:
    outputs, final states (exactly) and every gradient."""
    if packed:  # N sequences packed along T of one row
        B, T, cu = 1, sum(lengths), torch.tensor([0, *lengths]).cumsum(0).to(DEVICE)
    else:  # a batch of up to 2 sequences of the first length
        B, T, cu = min(len(lengths), 2), lengths[0], None
    x, w, b, h0 = make(B, T, D, W, seed=seed, n_states=len(lengths) if packed else None)
    assert_grads_match(x, w, b if use_bias else None, h0 if with_state else None, activation, cu=cu)
