"""linear_scan's Triton kernels (forward and backward) against independent computations.

Without CUDA, tests/conftest.py sets ``TRITON_INTERPRET=1`` before postformer is imported, so
the kernels run on CPU tensors under Triton's interpreter; with CUDA they run compiled on the
GPU. Where Triton is not importable at all the module skips.

Truths: the package's loop over time (``impl="reference"``) fed float64 copies of the same
inputs (outputs, final states and gradients to x, g and the initial state, with the final
state in the loss), and, written here in float64, the closed form
``h_t = sum_{s<=t} exp(G_t - G_s) x_s + exp(G_t) h_0``. The kernels work in float32: float32
inputs are held to ~1e-5 relative error.

The interpreter's ``tl.associative_scan`` is slow (~1 s per 64-step block and program), so most
tests run the kernels with a time block of ``BT = 16`` (the constant is read at launch; the
kernels are the same code) and T in {1, 7, BT-1, BT, BT+1, 3*BT+5}; one test runs the
production ``BT = 64`` across a block boundary.
"""

from __future__ import annotations

import importlib

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (e.g. macOS): no Triton kernels to test")

from kernel_testing import linear_scan_inputs as make  # noqa: E402
from kernel_testing import rel_err  # noqa: E402

from postformer.kernels import linear_scan  # noqa: E402
from postformer.kernels._triton import interpreting  # noqa: E402

ls_triton = importlib.import_module("postformer.kernels.linear_scan.triton")

INTERPRET = interpreting()
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
TOL = 1e-5
SMALL_BT = 16
PRODUCTION_BT = ls_triton.BT


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Time blocks of 16 steps under the interpreter (compiled on a GPU, the real ones)."""
    if INTERPRET:
        monkeypatch.setattr(ls_triton, "BT", SMALL_BT)



def closed_form(x, g, h0):
    """O(T^2 D) float64: every state of one batch of equal-length sequences, and the last."""
    x, g = x.double(), g.double()
    T = x.shape[1]
    G = g.cumsum(1)
    diff = G.unsqueeze(2) - G.unsqueeze(1)  # (B, t, s, D) = G_t - G_s
    causal = torch.ones(T, T, dtype=torch.bool).tril().view(1, T, T, 1)
    h = torch.einsum("btsd,bsd->btd", torch.where(causal, diff, float("-inf")).exp(), x)
    if h0 is not None:
        h = h + G.exp() * h0.double().unsqueeze(1)
    return h, h[:, -1]


def run_both(x, g, h0, cu=None, seed=1):
    """Triton (on DEVICE) and float64 reference: outputs, final states and the gradients of
    ``sum(h * w_h) + sum(S * w_s)`` to x, g and h0."""
    results = {}
    for impl in ("triton", "reference"):
        cast = (lambda t: t.to(DEVICE)) if impl == "triton" else (lambda t: t.double())
        ins = [None if t is None else cast(t).detach().requires_grad_() for t in (x, g, h0)]
        h, S = linear_scan(ins[0], ins[1], initial_state=ins[2], output_final_state=True, cu_seqlens=cu,
                           impl=impl)
        gen = torch.Generator().manual_seed(seed)
        w_h = torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
        w_s = torch.randn(S.shape, generator=gen).to(S.device, S.dtype)
        loss = (h * w_h).sum() + (S * w_s).sum()
        if loss.requires_grad:  # the reference builds no graph for empty inputs without a state
            loss.backward()
        # an empty x or g that the reference left without a gradient: its (empty) zero gradient
        results[impl] = (h, S, *(None if t is None else torch.zeros_like(t) if t.grad is None and not t.numel()
                                 else t.grad for t in ins))
    return results["triton"], results["reference"]


def assert_close_all(tri, ref, tol=TOL, grad_tol=TOL):
    names = ("h", "final_state", "dx", "dg", "d_initial_state")
    for name, a, b in zip(names, tri, ref):
        if b is None:
            assert a is None, name
            continue
        assert a is not None, f"no {name}"
        assert torch.isfinite(a).all(), name
        err = rel_err(a, b)
        assert err < (tol if name in ("h", "final_state") else grad_tol), f"{name}: rel err {err:.2e}"


@pytest.mark.parametrize("T", [1, 7, SMALL_BT - 1, SMALL_BT, SMALL_BT + 1, 3 * SMALL_BT + 5])
def test_matches_reference(T):
    B = 2 if T <= SMALL_BT + 1 else 1  # (the interpreter runs programs one after another)
    x, g, h0 = make(B, T, 20, seed=T)  # D = 20: not a power of two (one 32-wide tile, masked)
    tri, ref = run_both(x, g, h0)
    assert tri[0].shape == (B, T, 20) and tri[0].dtype == torch.float32
    assert tri[1].shape == (B, 20) and tri[1].dtype == torch.float32
    assert_close_all(tri, ref)
    h_cf, S_cf = closed_form(x, g, h0)  # a second, independent truth for the forward
    assert rel_err(tri[0], h_cf) < TOL and rel_err(tri[1], S_cf) < TOL


def test_without_initial_state():
    x, g, _ = make(2, SMALL_BT + 3, 12, seed=20)
    tri, ref = run_both(x, g, None)
    assert tri[4] is None
    assert_close_all(tri, ref)


def test_production_block_length(monkeypatch):
    monkeypatch.setattr(ls_triton, "BT", PRODUCTION_BT)
    assert PRODUCTION_BT == 64
    x, g, h0 = make(1, 64 + 1, 20, seed=21)  # across one boundary of the real 64-step blocks
    tri, ref = run_both(x, g, h0)
    assert_close_all(tri, ref)


def test_several_channel_tiles():
    x, g, h0 = make(1, SMALL_BT - 3, 70, seed=22)  # D = 70: two 64-wide tiles, the second masked
    tri, ref = run_both(x, g, h0)
    assert_close_all(tri, ref)


LENS = [5, 0, 40, 1, 0, 17]


@pytest.mark.parametrize("with_h0", [True, False])
def test_varlen_matches_reference(with_h0):
    T = sum(LENS)
    x, g, h0 = make(1, T, 8, n_states=len(LENS), seed=23)
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    tri, ref = run_both(x, g, h0 if with_h0 else None, cu=cu.to(DEVICE))
    assert tri[1].shape == (len(LENS), 8)
    assert_close_all(tri, ref)
    if with_h0:  # empty sequences pass their state through, and its gradient back
        for i in (1, 4):
            assert torch.equal(tri[1][i].cpu(), h0[i])


def test_strong_decay():
    x, g, h0 = make(1, 2 * SMALL_BT + 5, 8, seed=24)
    g = torch.full_like(g, -20.0)
    g[:, ::5] = -1e-3  # some steps keep memory, so states depend on several positions
    tri, ref = run_both(x, g, h0)
    assert_close_all(tri, ref)


def test_bfloat16():
    x, g, h0 = make(1, SMALL_BT + 9, 24, dtype=torch.bfloat16, seed=25)
    tri, ref = run_both(x, g, h0)  # the reference gets float64 copies of the same rounded inputs
    h, S, dx, dg, dh0 = tri
    assert h.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16 and dg.dtype == torch.bfloat16
    assert S.dtype == torch.float32 and dh0.dtype == torch.float32
    assert rel_err(h, ref[0]) < 1e-2  # output rounding, 2^-8
    assert rel_err(S, ref[1]) < 1e-5  # the state is accumulated and returned in float32
    # gradients: the incoming bf16 gradient of h is rounded before the kernel, outputs rounded after
    assert rel_err(dx, ref[2]) < 2e-2 and rel_err(dg, ref[3]) < 2e-2 and rel_err(dh0, ref[4]) < 2e-2


def test_empty_batch_and_decoding():
    x, g, h0 = make(2, 0, 4)
    h, S = linear_scan(x.to(DEVICE), g.to(DEVICE), initial_state=h0.to(DEVICE), output_final_state=True,
                       impl="triton")
    assert h.shape == (2, 0, 4) and torch.equal(S.cpu(), h0)
    # a prefill then single decoding steps, continuing from the returned state
    x, g, _ = make(2, 12, 16, seed=26)
    x, g = x.to(DEVICE), g.to(DEVICE)
    h, S = linear_scan(x[:, :9], g[:, :9], output_final_state=True, impl="triton")
    outs = [h]
    for t in range(9, 12):
        h, S = linear_scan(x[:, t : t + 1], g[:, t : t + 1], initial_state=S, output_final_state=True,
                           impl="triton")
        outs.append(h)
    h_ref, S_ref = closed_form(x.cpu(), g.cpu(), None)
    assert rel_err(torch.cat(outs, 1), h_ref) < TOL and rel_err(S, S_ref) < TOL


def test_non_contiguous_and_final_state_only():
    x, g, h0 = make(2, 11, 8, seed=27)
    xt, gt = (t.transpose(1, 2).contiguous().transpose(1, 2).to(DEVICE) for t in (x, g))
    assert not xt.is_contiguous()
    h, S = linear_scan(xt, gt, initial_state=h0.to(DEVICE), output_final_state=True, impl="triton")
    h_ref, S_ref = closed_form(x, g, h0)
    assert rel_err(h, h_ref) < TOL and rel_err(S, S_ref) < TOL
    # the loss sees only the final state: h's gradient is zero
    ins = [t.to(DEVICE).requires_grad_() for t in (x, g, h0)]
    _, S = linear_scan(*ins[:2], initial_state=ins[2], output_final_state=True, impl="triton")
    S.sum().backward()
    ref = [t.detach().double().requires_grad_() for t in (x, g, h0)]
    _, S_r = linear_scan(*ref[:2], initial_state=ref[2], output_final_state=True, impl="reference")
    S_r.sum().backward()
    for a, b in zip(ins, ref):
        assert rel_err(a.grad, b.grad) < TOL


def test_float64_is_refused():
    x, g, _ = make(1, 4, 4)
    with pytest.raises(ValueError, match="float64"):
        linear_scan(x.double().to(DEVICE), g.double().to(DEVICE), impl="triton")


# Random shapes and packings (hypothesis, derandomised so CI sees the same examples every run).

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    D=st.integers(1, 70), lengths=st.lists(st.integers(0, 3 * SMALL_BT + 5), min_size=1, max_size=4),
    packed=st.booleans(), with_h0=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_packings_match_reference(D, lengths, packed, with_h0, seed):
    """Any channel count (masked tiles, two 64-wide tiles past 64), lengths within, at and across
    the time blocks (empty and single steps included), a batch of equal lengths or a packing of
    sequences (empty ones included), with or without initial states, against the reference loop:
    outputs, final states and every gradient."""
    if packed:  # N sequences packed along T of one row
        B, T, cu = 1, sum(lengths), torch.tensor([0, *lengths]).cumsum(0).to(DEVICE)
    else:  # a batch of up to 2 sequences of the first length
        B, T, cu = min(len(lengths), 2), lengths[0], None
    x, g, h0 = make(B, T, D, n_states=len(lengths) if packed else None, seed=seed)
    tri, ref = run_both(x, g, h0 if with_h0 else None, cu=cu, seed=seed + 1)
    assert tri[0].shape == (B, T, D) and tri[1].shape == ((len(lengths) if packed else B), D)
    assert_close_all(tri, ref)
