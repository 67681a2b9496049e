"""selective_scan's Triton kernels (forward and backward) against independent computations.

Without CUDA, tests/conftest.py sets ``TRITON_INTERPRET=1`` before postformer is imported, so the
kernels run on CPU tensors under Triton's interpreter; with CUDA they run compiled on the GPU.
Where Triton is not importable at all the module skips.

Truths: the package's loop over time (``impl="reference"``) fed float64 copies of the same
inputs (gradients included), and the float64 closed form ``naive`` of
tests/kernels/test_selective_scan.py (every state at once, no recurrence). The kernels run in
float32: outputs are held to ~1e-5 relative error, gradients to ~1e-4.

The kernels scan blocks of ``BT = min(16, CHK)`` steps in parallel and the backward recomputes
states from checkpoints every ``CHK`` steps; the tests shrink ``CHK`` to 4 (so ``BT`` = 4) so that
short sequences cross several blocks and end in a partial one, and some tests shrink ``BT`` below
``CHK`` (several scan blocks per checkpoint) or the register budgets (several channel tiles per
B/C group). The interpreter runs ``tl.associative_scan`` element by element in Python, so shapes
are tiny (T <= 70, D <= 16, N <= 16).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (e.g. macOS): no Triton kernels to test")

from test_selective_scan import GRAD_INPUTS, call, make, rel_err, truth  # noqa: E402

from postformer.kernels._triton import interpreting  # noqa: E402
from postformer.kernels.selective_scan import triton as ss_triton  # noqa: E402

INTERPRET = interpreting()
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
FWD_TOL, GRAD_TOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def _short_blocks(monkeypatch):
    monkeypatch.setattr(ss_triton, "CHK", 4)


def on_device(inp):
    return {k: v.to(DEVICE) for k, v in inp.items()}


def grads_of(inp, impl, dtype=None, **opts):
    """Outputs and the gradients of sum(y w_y) + sum(S w_s) wrt every input (None where unused)."""
    leaves = {k: (v if dtype is None else v.to(dtype)).detach().clone().requires_grad_() for k, v in inp.items()}
    y, S = call(leaves, impl, **opts)
    gen = torch.Generator().manual_seed(11)
    w_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    w_s = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.device, S.dtype)
    loss = (y * w_y).sum() + (S * w_s).sum()
    if loss.requires_grad:  # the reference builds no graph for empty inputs without a state
        loss.backward()
    return y, S, {k: leaves[k].grad for k in GRAD_INPUTS}


def assert_grads_match(inp, opts, tol=GRAD_TOL):
    y, S, g = grads_of(on_device(inp), "triton", **opts)
    y_ref, S_ref, g_ref = grads_of(inp, "reference", dtype=torch.float64, **opts)
    assert rel_err(y.cpu(), y_ref) < FWD_TOL and rel_err(S.cpu(), S_ref) < FWD_TOL
    for name in GRAD_INPUTS:
        if g_ref[name] is None:
            assert g[name] is None, name
            continue
        assert g[name] is not None, f"no gradient reached {name}"
        assert g[name].dtype == inp[name].dtype, name
        assert rel_err(g[name].cpu(), g_ref[name]) < tol, name


@pytest.mark.parametrize("T", [1, 3, 4, 5, 13])  # one step, within, at and across blocks of 4
def test_forward_matches_closed_form(T):
    inp = make(2, T, 8, 4, G=2)
    y, S = call(on_device(inp), "triton")
    y_ref, S_ref = truth(inp)
    assert y.shape == (2, T, 8) and y.dtype == torch.float32 and S.dtype == torch.float32
    assert rel_err(y.cpu(), y_ref) < FWD_TOL and rel_err(S.cpu(), S_ref) < FWD_TOL


@pytest.mark.parametrize(
    "dim, G, D, z, bias, softplus, h0",
    [
        (8, None, False, False, False, False, False),  # the bare scan, dt used as given
        (8, None, True, False, True, False, True),  # bias without softplus
        (8, 4, False, True, False, True, False),  # one group per 2 channels (2-channel tiles)
        (4, 4, True, True, True, True, True),  # one group per channel (1-channel tiles)
        (16, 2, True, True, True, True, True),  # 8-channel tiles, two groups
    ],
)
def test_options_forward_and_gradients(dim, G, D, z, bias, softplus, h0):
    inp = make(2, 10, dim, 3, G=G, seed=1)  # N = 3: a padded state (NP = 4)
    if not softplus:
        inp["dt"] = inp["dt"].abs()  # a positive step when used as given
    assert_grads_match(inp, dict(D=D, z=z, bias=bias, softplus=softplus, h0=h0))


def test_gradients_across_many_blocks():
    # 19 steps = 4 blocks of 4 and a partial one of 3
    assert_grads_match(make(2, 19, 4, 5, G=None, seed=7), {})


def test_full_block_length_and_wide_state(monkeypatch):
    # the real sizes: 70 steps = a full checkpoint block (4 scan blocks of 16) and a partial one
    monkeypatch.setattr(ss_triton, "CHK", 64)
    inp = make(1, 70, 4, 16, G=None, seed=12)
    y, S = call(on_device(inp), "triton")
    y_ref, S_ref = truth(inp)
    assert rel_err(y.cpu(), y_ref) < FWD_TOL and rel_err(S.cpu(), S_ref) < FWD_TOL


@pytest.mark.parametrize(
    "dim, G, opts, bwd_tile, bwd_meta",
    [
        (12, 3, {}, 64, (2, 4)),  # every option; 6 tiles of 2 channels, 2 tiles per group
        # no gate, no skip, dt used as given; the backward's budget halves its blocks to 2 steps
        # (1-channel tiles) while the forward keeps 4
        (6, None, dict(D=False, z=False, softplus=False), 16, (1, 2)),
    ],
)
def test_several_scan_blocks_per_checkpoint(monkeypatch, dim, G, opts, bwd_tile, bwd_meta):
    # blocks of BT = 4 steps, checkpoints every 8: 29 steps = 3 checkpoint blocks of 2 scan blocks,
    # then one of a full scan block and a 1-step one. N = 5 is padded to NP = 8; the small tile
    # budgets give 1- or 2-channel tiles, so D and each B/C group are covered by several programs.
    monkeypatch.setattr(ss_triton, "CHK", 8)
    monkeypatch.setattr(ss_triton, "BT", 4)
    monkeypatch.setattr(ss_triton, "FWD_TILE", 64)
    monkeypatch.setattr(ss_triton, "BWD_TILE", bwd_tile)
    inp = make(2, 29, dim, 5, G=G, seed=13)
    if not opts.get("softplus", True):
        inp["dt"] = inp["dt"].abs()
    Bg = inp["B"] if G else inp["B"].unsqueeze(2)
    assert ss_triton._meta(inp["x"], inp["A"], Bg, 64)[6:8] == (2, 4)  # (BD, BT) of the forward
    assert ss_triton._meta(inp["x"], inp["A"], Bg, bwd_tile)[6:8] == bwd_meta  # ... of the backward
    assert_grads_match(inp, opts)


def test_default_blocks_gradients(monkeypatch):
    # the real sizes: CHK = 64, BT = 16; 70 steps = 4 full scan blocks, then a partial one of 6 steps
    monkeypatch.setattr(ss_triton, "CHK", 64)
    assert ss_triton.BT == 16
    assert_grads_match(make(1, 70, 4, 5, G=None, seed=14), {})


def test_strong_decay_stays_exact():
    # delta*A = -20 per step (the decay underflows): nothing is divided by a decay
    inp = make(1, 12, 4, 4, seed=4)
    inp["A"] = torch.full((4, 4), -20.0)
    dt = torch.ones(1, 12, 4)
    dt[:, ::5] = 5e-4  # some steps keep memory
    inp["dt"] = dt
    opts = dict(bias=False, softplus=False)
    y, S, g = grads_of(on_device(inp), "triton", **opts)
    assert all(torch.isfinite(t).all() for t in (y, S, *[v for v in g.values() if v is not None]))
    assert_grads_match(inp, opts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    inp = make(1, 9, 8, 4, G=2, dtype=dtype, seed=6)  # A, D, dt_bias, h0 stay float32
    y, S, g = grads_of(on_device(inp), "triton")
    assert y.dtype == dtype and S.dtype == torch.float32
    y_ref, S_ref, g_ref = grads_of(inp, "reference", dtype=torch.float64)  # same rounded inputs
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    assert rel_err(y.cpu(), y_ref) < tol
    assert rel_err(S.cpu(), S_ref) < 1e-5  # the state is accumulated and returned in float32
    for name in GRAD_INPUTS:
        assert g[name].dtype == inp[name].dtype, name
        assert rel_err(g[name].cpu(), g_ref[name]) < (2e-2 if dtype == torch.bfloat16 else 4e-3), name


def test_decoding_steps_continue_a_prefill():
    inp = make(2, 9, 8, 4, G=2, seed=5)
    full, S_full = call(inp, "reference", h0=False)
    dev = on_device(inp)

    def part(sl, state):
        p = {k: (v[:, sl] if k in ("x", "dt", "B", "C", "z") else v) for k, v in dev.items()}
        p["h0"] = state
        return call(p, "triton", h0=state is not None)

    with torch.no_grad():  # the no-gradient path: no checkpoints kept
        o, S = part(slice(0, 5), None)
        outs = [o]
        for t in range(5, 9):
            o, S = part(slice(t, t + 1), S)
            outs.append(o)
    assert rel_err(torch.cat(outs, 1).cpu(), full) < FWD_TOL and rel_err(S.cpu(), S_full) < FWD_TOL


def test_empty_sequence():
    inp = on_device(make(2, 0, 8, 4))
    y, S = call(inp, "triton")
    assert y.shape == (2, 0, 8) and torch.equal(S, inp["h0"])


def test_non_contiguous_inputs():
    inp = make(1, 6, 4, 4, G=2, seed=9)
    strided = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() >= 3 else v.t().contiguous().t()
                   if v.dim() == 2 else v) for k, v in inp.items()}
    assert not strided["x"].is_contiguous() and not strided["A"].is_contiguous()
    y1, S1, g1 = grads_of(on_device(strided), "triton")
    y2, S2, g2 = grads_of(on_device(inp), "triton")
    torch.testing.assert_close((y1, S1), (y2, S2), rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_limits_are_clear_errors():
    inp = on_device(make(1, 3, 4, 2))
    inp["A"] = inp["A"].double()
    with pytest.raises(ValueError, match="float64 inputs need impl='chunk'"):
        call(inp, "triton")
    inp = on_device(make(1, 3, 4, 300))
    with pytest.raises(ValueError, match="N <= 256"):
        call(inp, "triton")


# Random shapes and options (hypothesis, derandomised so CI sees the same examples every run).

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    batch=st.integers(1, 2), T=st.integers(0, 13), dim=st.integers(1, 12), N=st.integers(1, 12),
    grouped=st.booleans(), g_pick=st.integers(0, 5), D=st.booleans(), z=st.booleans(), bias=st.booleans(),
    softplus=st.booleans(), h0=st.booleans(), chk8=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_options_match_reference(batch, T, dim, N, grouped, g_pick, D, z, bias, softplus, h0,
                                                   chk8, seed):
    """Any channel count and state size (padded to a power of two), B/C shared or in any number of
    groups dividing D, lengths within, at and across the blocks of 4 steps (empty and single steps
    included), every option (D, z, dt_bias, softplus, initial state) present or not, one or two
    scan blocks per checkpoint (CHK = 8, BT = 4), against the reference loop on float64 copies:
    outputs, final states and the gradients of every input."""
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    G = divisors[g_pick % len(divisors)] if grouped else None
    inp = make(batch, T, dim, N, G=G, seed=seed)
    if not softplus:
        inp["dt"] = inp["dt"].abs()  # a positive step when used as given
    opts = dict(D=D, z=z, bias=bias, softplus=softplus, h0=h0)
    with pytest.MonkeyPatch.context() as mp:  # (not the monkeypatch fixture: one per example)
        if chk8:
            mp.setattr(ss_triton, "CHK", 8)
            mp.setattr(ss_triton, "BT", 4)
        if T:
            assert_grads_match(inp, opts)
            return
        # nothing to scan: the state passes through; inputs the reference never touches get no
        # gradient (None) there and zeros from the kernels
        y, S, g = grads_of(on_device(inp), "triton", **opts)
    y_ref, S_ref, g_ref = grads_of(inp, "reference", dtype=torch.float64, **opts)
    assert y.shape == (batch, 0, dim) and torch.equal(S.cpu().double(), S_ref)
    for name in GRAD_INPUTS:
        if g_ref[name] is None:
            assert g[name] is None or not g[name].any(), name
        else:
            assert g[name] is not None and torch.equal(g[name].cpu().double(), g_ref[name]), name
