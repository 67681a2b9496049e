"""linear_scan against independent computations of h_t = exp(g_t) * h_{t-1} + x_t (elementwise).

Truths: the package's loop (``impl="reference"``); written here in float64, the closed form
h_t = sum_{s<=t} exp(G_t - G_s) x_s + exp(G_t) h_0 with G the cumulative log decay (masked
before the exp); and FLA's ``naive_recurrent_hgrn`` where the ``peers`` extra is installed.
The chunked path must match them for T around the chunk length, strong decay, packed
sequences with empty ones, half precision, and gradients to every input.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from kernel_testing import linear_scan_inputs as make
from kernel_testing import rel_err

from postformer.kernels import linear_scan

ls_chunk = importlib.import_module("postformer.kernels.linear_scan.chunk")
CHUNK = 16  # the chunk length the public function picks for T <= 256


def closed_form(x, g, h0=None):
    """O(T^2 D) in float64, one batch of equal-length sequences: every state at once."""
    x, g = x.double(), g.double()
    B, T, D = x.shape
    G = g.cumsum(1)
    diff = G.unsqueeze(2) - G.unsqueeze(1)  # (B, t, s, D) = G_t - G_s
    causal = torch.ones(T, T, dtype=torch.bool).tril().view(1, T, T, 1)
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()
    h = torch.einsum("btsd,bsd->btd", decay, x)
    if h0 is not None:
        h = h + G.exp() * h0.double().unsqueeze(1)
    if T:
        return h, h[:, -1]
    return h, (torch.zeros(B, D, dtype=torch.float64) if h0 is None else h0.double())



@pytest.mark.parametrize("T", [1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
@pytest.mark.parametrize("with_h0", [True, False])
def test_forward_matches_closed_form(T, impl, with_h0):
    x, g, h0 = make(2, T, 24)
    h0 = h0 if with_h0 else None
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl=impl)
    h_ref, S_ref = closed_form(x, g, h0)
    assert h.shape == (2, T, 24) and h.dtype == torch.float32
    assert S.shape == (2, 24) and S.dtype == torch.float32
    assert rel_err(h, h_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize("chunk, block", [(1, None), (3, None), (8, None), (3, 9), (4, 7), (2, 2)])
@pytest.mark.parametrize("with_h0", [True, False])
def test_chunk_and_block_lengths(chunk, block, with_h0):
    # many chunks (C = 1, T not a multiple of C) and many time blocks (7 rounds down to 4),
    # through the chunk function itself
    x, g, h0 = make(2, 29, 5, seed=1)
    h0 = h0 if with_h0 else None
    h, S = ls_chunk.linear_scan_chunk(x, g, h0, chunk_size=chunk, block_size=block)
    h_ref, S_ref = closed_form(x, g, h0)
    assert rel_err(h, h_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


def test_long_sequence_default_chunk():
    x, g, h0 = make(1, 300, 4, seed=2)  # the default chunk grows with T: several of them here
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk")
    h_ref, S_ref = linear_scan(x.double(), g.double(), initial_state=h0.double(), output_final_state=True,
                               impl="reference")
    assert rel_err(h, h_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


def test_strong_decay_stays_exact():
    x, g, h0 = make(1, 100, 8, seed=3)
    g = torch.full_like(g, -20.0)
    g[:, ::7] = -1e-3  # some steps keep memory, so outputs depend on several positions
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk")
    h_ref, S_ref = closed_form(x, g, h0)
    assert torch.isfinite(h).all() and torch.isfinite(S).all()
    assert rel_err(h, h_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5
    x, g, h0 = (t.clone().requires_grad_() for t in (x, g, h0))
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk")
    (h.sum() + S.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, g, h0))


def test_empty_sequence():
    x, g, h0 = make(2, 0, 4)
    for impl in ("reference", "chunk"):
        h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl=impl)
        assert h.shape == (2, 0, 4) and torch.equal(S, h0)
        h, S = linear_scan(x, g, impl=impl)
        assert S is None


def test_decoding_steps_continue_a_prefill():
    x, g, _ = make(2, 20, 16, seed=4)
    full, S_full = linear_scan(x, g, output_final_state=True, impl="chunk")
    h, S = linear_scan(x[:, :11], g[:, :11], output_final_state=True)
    outs = [h]
    for t in range(11, 20):
        h, S = linear_scan(x[:, t : t + 1], g[:, t : t + 1], initial_state=S, output_final_state=True)
        outs.append(h)
    assert rel_err(torch.cat(outs, 1), full) < 1e-6 and rel_err(S, S_full) < 1e-6


LENS = [5, 0, 40, 1, 0, 17]


@pytest.mark.parametrize("impl", ["reference", "chunk"])
@pytest.mark.parametrize("with_h0", [True, False])
def test_varlen_matches_separate_sequences(impl, with_h0):
    T = sum(LENS)
    x, g, h0 = make(1, T, 8, n_states=len(LENS), seed=5)
    h0 = h0 if with_h0 else None
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)
    assert h.shape == (1, T, 8) and S.shape == (len(LENS), 8)
    for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        hi = None if h0 is None else h0[i : i + 1]
        h_ref, S_ref = closed_form(x[:, bos:eos], g[:, bos:eos], hi)
        if eos > bos:
            assert rel_err(h[:, bos:eos], h_ref) < 1e-5
        if S_ref.abs().sum() > 0:
            assert rel_err(S[i : i + 1], S_ref) < 1e-5  # an empty sequence passes its state through
        else:
            assert torch.equal(S[i], torch.zeros(8))


def test_varlen_all_empty():
    x, g, h0 = make(1, 0, 4, n_states=2)
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk",
                       cu_seqlens=torch.tensor([0, 0, 0]))
    assert h.shape == (1, 0, 4) and torch.equal(S, h0)


def test_varlen_gradients_match_reference():
    T = sum(LENS)
    base = [t.double() for t in make(1, T, 3, n_states=len(LENS), seed=6)]
    cu = torch.tensor([0] + LENS).cumsum(0)
    grads = {}
    for impl in ("reference", "chunk"):
        x, g, h0 = (t.clone().requires_grad_() for t in base)
        h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)
        w_h = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((h * w_h).sum() + (S * w_s).sum()).backward()
        grads[impl] = (x.grad, g.grad, h0.grad)
    for name, a, b in zip(("x", "g", "initial_state"), grads["chunk"], grads["reference"]):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    x, g, h0 = make(2, 70, 32, dtype=dtype, seed=7)
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert h.dtype == dtype and S.dtype == torch.float32
    h_ref, S_ref = closed_form(x, g, h0)  # same rounded inputs, float64
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    assert rel_err(h, h_ref) < tol
    assert rel_err(S, S_ref) < 1e-5  # the state is accumulated and returned in float32


@pytest.mark.parametrize("with_h0", [True, False])
def test_gradients_match_reference(with_h0):
    base = [t.double() for t in make(2, 2 * CHUNK + 3, 6, seed=8)]
    grads = {}
    for impl in ("reference", "chunk"):
        x, g, h0 = (t.clone().requires_grad_() for t in base)
        h, S = linear_scan(x, g, initial_state=h0 if with_h0 else None, output_final_state=True, impl=impl)
        w_h = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((h * w_h).sum() + (S * w_s).sum()).backward()
        grads[impl] = (x.grad, g.grad, h0.grad)
    for name, a, b in zip(("x", "g", "initial_state"), grads["chunk"], grads["reference"]):
        if not with_h0 and name == "initial_state":
            assert a is None and b is None
            continue
        assert a is not None, f"no gradient reached {name}"
        assert rel_err(a, b) < 1e-10, name


def test_gradcheck_chunk():
    x, g, h0 = (t.double().requires_grad_() for t in make(1, 11, 3, seed=9))

    def f(x, g, h0):
        # 6 chunks of 2 (T padded to 12) in 3 time blocks of 4 steps
        return ls_chunk.linear_scan_chunk(x, g, h0, chunk_size=2, block_size=4)

    assert torch.autograd.gradcheck(f, (x, g, h0))
    cu = torch.tensor([0, 4, 4, 11])

    def f_varlen(x, g, h0):
        return linear_scan(x, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl="chunk")

    h0_n = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f_varlen, (x, g, h0_n))


@pytest.mark.parametrize("dims", [(0, 1), (1, 2)])
def test_non_contiguous_inputs(dims):
    # the same values laid out with two dims swapped (e.g. [B, D, T] viewed as [B, T, D])
    x, g, h0 = (t.requires_grad_() for t in make(2, 33, 8, seed=10))
    xt, gt = (t.transpose(*dims).contiguous().transpose(*dims) for t in (x, g))
    assert not xt.is_contiguous()
    outs = [ls_chunk.linear_scan_chunk(*args, chunk_size=4, block_size=8)
            for args in ((xt, gt, h0.t().contiguous().t()), (x, g, h0))]
    torch.testing.assert_close(outs[0], outs[1])
    grads = [torch.autograd.grad(h.sum() + S.sum(), (x, g, h0)) for h, S in outs]
    torch.testing.assert_close(grads[0], grads[1])


def _fla_hgrn_naive():
    """fla/ops/hgrn/naive.py loaded on its own: it needs only torch, while importing the
    ``fla`` package costs seconds (Triton set-up)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fla")  # locates the package without running its __init__
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / "ops" / "hgrn" / "naive.py"
    if path is None or not path.is_file():
        pytest.skip("install the `peers` extra (fla-core) to compare with FLA")
    module_spec = importlib.util.spec_from_file_location("_fla_hgrn_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_matches_fla_naive_when_installed():
    """A peer's implementation (HGRN's recurrence), where the `peers` extra is installed."""
    naive = _fla_hgrn_naive()
    x, g, h0 = make(2, 100, 16, seed=11)
    h_fla, S_fla = naive.naive_recurrent_hgrn(x, g, initial_state=h0.clone(), output_final_state=True)
    h, S = linear_scan(x, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert rel_err(h, h_fla) < 1e-5 and rel_err(S, S_fla) < 1e-5


def test_env_override_and_auto(monkeypatch):
    x, g, _ = make(1, 10, 4)
    monkeypatch.setenv("POSTFORMER_IMPL", "reference")
    h1, _ = linear_scan(x, g)
    monkeypatch.delenv("POSTFORMER_IMPL")
    h2, _ = linear_scan(x, g)
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("POSTFORMER_IMPL", "fast")
    with pytest.raises(ValueError, match="POSTFORMER_IMPL"):
        linear_scan(x, g)


def test_triton_impl_refuses_float64():
    # the kernels themselves are tested in test_linear_scan_triton.py; float64 is never theirs
    from postformer.kernels._triton import HAS_TRITON

    x, g, _ = make(1, 4, 4)
    match = "float64" if HAS_TRITON else "needs the triton package"
    with pytest.raises(ValueError, match=match):
        linear_scan(x.double(), g.double(), impl="triton")
    # under auto, float64 stays on the exact chunk path wherever it runs
    h, _ = linear_scan(x.double(), g.double())
    h_ref, _ = closed_form(x, g)
    assert h.dtype == torch.float64 and rel_err(h, h_ref) < 1e-12


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(x=torch.randn(2, 10)), r"x has shape \[2, 10\], expected \[B, T, D\]"),
        (dict(g=torch.randn(2, 10, 7)), r"g has shape \[2, 10, 7\], expected \[B, T, D\] like x = \[2, 10, 8\]"),
        (dict(initial_state=torch.randn(2, 7)), r"initial_state has shape \[2, 7\], expected \[B, D\] = \[2, 8\]"),
        (dict(cu_seqlens=torch.tensor([0, 10])), r"batch dimension must be 1"),
        (dict(impl="cuda"), r"impl='cuda' is not one of"),
        (dict(x=torch.randint(0, 3, (2, 10, 8))), r"x must be a floating-point tensor"),
        (dict(g=torch.randn(2, 10, 8, device="meta")), r"must share one device"),
    ],
)
def test_bad_input_raises_value_error(over, match):
    x, g, _ = make(2, 10, 8)
    args = dict(x=x, g=g)
    args.update({k: v for k, v in over.items() if k in ("x", "g")})
    opts = {k: v for k, v in over.items() if k not in ("x", "g")}
    with pytest.raises(ValueError, match=match):
        linear_scan(args["x"], args["g"], **opts)


def test_bad_cu_seqlens():
    x, g, _ = make(1, 10, 4)
    with pytest.raises(ValueError, match="end at T=10"):
        linear_scan(x, g, cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="int32/int64"):
        linear_scan(x, g, cu_seqlens=torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match=r"initial_state has shape \[1, 4\], expected \[N, D\]"):
        linear_scan(x, g, cu_seqlens=torch.tensor([0, 4, 10]), initial_state=torch.zeros(1, 4))


@pytest.mark.gpu
def test_cuda_matches_cpu_closed_form():
    x, g, h0 = make(2, 300, 64, dtype=torch.bfloat16)
    h_ref, S_ref = closed_form(x, g, h0)
    h, S = linear_scan(x.cuda(), g.cuda(), initial_state=h0.cuda(), output_final_state=True)
    assert rel_err(h.cpu(), h_ref) < 1e-2 and rel_err(S.cpu(), S_ref) < 1e-4
