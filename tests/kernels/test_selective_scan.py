"""selective_scan (Mamba-1) against independent computations of

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d]
    y_t[d]    = (sum_n C_t[n] h_t[d, n] + D[d] x_t[d]) * silu(z_t[d])

Truths: the package's loop (``impl="reference"``); written here in float64, the closed form
that materialises every state at once, h_t = sum_{s<=t} exp(L_t - L_s) u_s + exp(L_t) h_0
with L the cumulative log decay (masked before the exp), B/C groups gathered by index; and
``gla`` with one head per channel (q = C, k = B, v = delta*x, per-key gate delta*A). The
chunked path must match them for T around the chunk length, grouped B/C, D/z/dt_bias/softplus
present or absent, strong decay, half precision, and gradients to every input.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from kernel_testing import rel_err

from postformer.kernels import gla, selective_scan

ss_chunk = importlib.import_module("postformer.kernels.selective_scan.chunk")
CHUNK = 16  # the chunk length the public function picks for T <= 256


def naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, h0=None):
    """O(T^2 D N) closed form in float64: every state at once, no recurrence."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    batch, T, dim = x.shape
    delta = dt + (0.0 if dt_bias is None else dt_bias.double())
    if dt_softplus:
        delta = torch.log1p(torch.exp(delta))
    if B.dim() == 3:
        B, C = B.unsqueeze(2), C.unsqueeze(2)
    group = torch.arange(dim) // (dim // B.shape[2])  # channel d reads group d // (D/G)
    Bd, Cd = B[:, :, group], C[:, :, group]  # (B, T, D, N)
    L = (delta.unsqueeze(-1) * A).cumsum(1)  # (B, T, D, N)
    diff = L.unsqueeze(2) - L.unsqueeze(1)  # (B, t, s, D, N) = L_t - L_s
    causal = torch.ones(T, T, dtype=torch.bool).tril().view(1, T, T, 1, 1)
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()
    h = torch.einsum("btsdn,bsdn->btdn", decay, (delta * x).unsqueeze(-1) * Bd)
    if h0 is not None:
        h = h + L.exp() * h0.double().unsqueeze(1)
    y = torch.einsum("btdn,btdn->btd", h, Cd)
    if D is not None:
        y = y + D.double() * x
    if z is not None:
        z = z.double()
        y = y * z / (1 + torch.exp(-z))
    if T:
        S = h[:, -1]
    else:
        S = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64) if h0 is None else h0.double()
    return y, S


def make(batch, T, dim, N, G=None, dtype=torch.float32, seed=0):
    """Inputs in Mamba's ranges: softplus(dt + bias) in (0, ~3), A = -exp(.) in about [-10, -0.1]."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    bc = (batch, T, N) if G is None else (batch, T, G, N)
    return dict(
        x=r(batch, T, dim).to(dtype), dt=(r(batch, T, dim) - 1).to(dtype), A=-torch.exp(r(dim, N)),
        B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(dim), z=r(batch, T, dim).to(dtype),
        dt_bias=0.5 * r(dim), h0=r(batch, dim, N),
    )


def call(inp, impl, D=True, z=True, bias=True, softplus=True, h0=True, fn=None, **kw):
    args = (inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    opts = dict(D=inp["D"] if D else None, z=inp["z"] if z else None)
    b = inp["dt_bias"] if bias else None
    s0 = inp["h0"] if h0 else None
    if fn is not None:  # the chunk function itself, e.g. with a chunk length of its own
        return fn(*args, opts["D"], opts["z"], b, softplus, s0, **kw)
    return selective_scan(*args, **opts, dt_bias=b, dt_softplus=softplus, initial_state=s0,
                          output_final_state=True, impl=impl)


def truth(inp, D=True, z=True, bias=True, softplus=True, h0=True):
    return naive(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"] if D else None,
                 inp["z"] if z else None, inp["dt_bias"] if bias else None, softplus,
                 inp["h0"] if h0 else None)



@pytest.mark.parametrize("T", [1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_forward_matches_closed_form(T, impl):
    inp = make(2, T, 8, 4, G=2)
    y, S = call(inp, impl)
    y_ref, S_ref = truth(inp)
    assert y.shape == (2, T, 8) and y.dtype == torch.float32
    assert S.shape == (2, 8, 4) and S.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize(
    "G, D, z, bias, softplus, h0",
    [
        (None, False, False, False, False, False),  # the bare scan, dt used as given
        (None, True, False, True, False, True),  # bias without softplus
        (4, False, True, False, True, False),  # one group per 2 channels
        (8, True, True, True, True, True),  # one group per channel
    ],
)
def test_options_match_closed_form(G, D, z, bias, softplus, h0):
    inp = make(2, 2 * CHUNK + 3, 8, 3, G=G, seed=1)
    if not softplus:
        inp["dt"] = inp["dt"].abs()  # a positive step when used as given
    opts = dict(D=D, z=z, bias=bias, softplus=softplus, h0=h0)
    y_ref, S_ref = truth(inp, **opts)
    for impl in ("reference", "chunk"):
        y, S = call(inp, impl, **opts)
        assert rel_err(y, y_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5, impl


@pytest.mark.parametrize("chunk, block", [(1, None), (4, None), (5, None), (4, 8), (3, 7), (2, 2)])
@pytest.mark.parametrize("h0", [True, False])
def test_chunk_and_block_lengths(chunk, block, h0):
    # many chunks (C = 1, T not a multiple of C) and many time blocks (7 rounds down to 6),
    # through the chunk function itself
    inp = make(2, 23, 6, 4, G=3, seed=2)
    y, S = call(inp, "chunk", h0=h0, fn=ss_chunk.selective_scan_chunk, chunk_size=chunk, block_size=block)
    y_ref, S_ref = truth(inp, h0=h0)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


def test_without_gradients_keeps_no_states():
    # Without gradients the forward keeps no [B, T, D, N] states; the outputs are the same.
    inp = make(2, 40, 8, 4, G=2, seed=10)
    kw = dict(fn=ss_chunk.selective_scan_chunk, chunk_size=4, block_size=8)
    with torch.no_grad():
        y1, S1 = call(inp, "chunk", **kw)
    inp["x"].requires_grad_()
    y2, S2 = call(inp, "chunk", **kw)
    assert y2.requires_grad
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(S1, S2, rtol=0, atol=0)


def test_matches_gla_with_one_head_per_channel():
    """A second, independent truth: selective scan = per-key gla, H = D heads, K = N, V = 1."""
    inp = make(2, 40, 6, 4, G=None, dtype=torch.float64, seed=3)
    y, S = call(inp, "chunk", D=False, z=False)
    delta = torch.nn.functional.softplus(inp["dt"] + inp["dt_bias"])  # (B, T, D)
    q = inp["C"].unsqueeze(2).expand(-1, -1, 6, -1)  # (B, T, H=D, K=N)
    k = inp["B"].unsqueeze(2).expand(-1, -1, 6, -1)
    o, S_gla = gla(q, k, (delta * inp["x"]).unsqueeze(-1), delta.unsqueeze(-1) * inp["A"], scale=1.0,
                   initial_state=inp["h0"].unsqueeze(-1), output_final_state=True, impl="reference")
    assert rel_err(y, o.squeeze(-1)) < 1e-12 and rel_err(S, S_gla.squeeze(-1)) < 1e-12


def test_strong_decay_stays_exact():
    # delta*A = -20 per step: exp(+cumsum) would overflow float32 after 5 steps.
    inp = make(1, 100, 4, 4, seed=4)
    inp["A"] = torch.full((4, 4), -20.0)
    dt = torch.ones(1, 100, 4)
    dt[:, ::7] = 5e-4  # some steps keep memory, so outputs depend on several positions
    inp["dt"] = dt
    y, S = call(inp, "chunk", bias=False, softplus=False)
    y_ref, S_ref = truth(inp, bias=False, softplus=False)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()
    assert rel_err(y, y_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5
    for key in ("x", "dt", "A", "B", "C"):
        inp[key] = inp[key].clone().requires_grad_()
    y, S = call(inp, "chunk", bias=False, softplus=False)
    (y.sum() + S.sum()).backward()
    assert all(torch.isfinite(inp[key].grad).all() for key in ("x", "dt", "A", "B", "C"))


def test_empty_sequence_and_no_state():
    inp = make(2, 0, 8, 4)
    for impl in ("reference", "chunk"):
        y, S = call(inp, impl)
        assert y.shape == (2, 0, 8) and torch.equal(S, inp["h0"])
        y, S = selective_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], impl=impl)
        assert y.shape == (2, 0, 8) and S is None


def test_decoding_steps_continue_a_prefill():
    # The T=1 call with a state is the decoding step: stepping token by token after a prefill
    # must reproduce one call over the whole sequence.
    inp = make(2, 20, 8, 4, G=2, seed=5)
    full, S_full = call(inp, "chunk", h0=False)

    def part(sl, state):
        p = {k: (v[:, sl] if k in ("x", "dt", "B", "C", "z") else v) for k, v in inp.items()}
        p["h0"] = state
        return call(p, "auto", h0=state is not None)

    o, S = part(slice(0, 11), None)
    outs = [o]
    for t in range(11, 20):
        o, S = part(slice(t, t + 1), S)
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
    assert rel_err(S, S_full) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    inp = make(1, 50, 16, 8, G=2, dtype=dtype, seed=6)  # A, D, dt_bias, h0 stay float32
    y, S = call(inp, "chunk")
    assert y.dtype == dtype and S.dtype == torch.float32
    y_ref, S_ref = truth(inp)  # the same rounded inputs, float64
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    assert rel_err(y, y_ref) < tol
    assert rel_err(S, S_ref) < 1e-5  # the state is accumulated and returned in float32


GRAD_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")


@pytest.mark.parametrize("G, h0", [(None, True), (2, False)])
def test_gradients_match_reference(G, h0):
    base = make(2, 2 * CHUNK + 3, 4, 3, G=G, dtype=torch.float64, seed=7)
    base = {k: v.double() for k, v in base.items()}
    grads = {}
    for impl in ("reference", "chunk"):
        inp = {k: v.clone().requires_grad_() for k, v in base.items()}
        y, S = call(inp, impl, h0=h0)
        w_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((y * w_y).sum() + (S * w_s).sum()).backward()
        grads[impl] = {k: inp[k].grad for k in GRAD_INPUTS}
    for name in GRAD_INPUTS:
        if name == "h0" and not h0:
            assert grads["chunk"][name] is None
            continue
        assert grads["chunk"][name] is not None, f"no gradient reached {name}"
        assert rel_err(grads["chunk"][name], grads["reference"][name]) < 1e-10, name


@pytest.mark.parametrize("h0", [True, False])
def test_gradcheck_chunk(h0):
    inp = {k: v.double().requires_grad_() for k, v in make(1, 9, 4, 3, G=2, seed=8).items()}
    names = [k for k in GRAD_INPUTS if h0 or k != "h0"]

    def f(*tensors):
        p = dict(zip(names, tensors))
        # 5 chunks of 2 (T padded to 10) in 3 time blocks of 4, 4 and 2 steps
        return call(p, "chunk", h0=h0, fn=ss_chunk.selective_scan_chunk, chunk_size=2, block_size=4)

    assert torch.autograd.gradcheck(f, tuple(inp[k] for k in names))


@pytest.mark.parametrize("dims", [(0, 1), (1, -1)])
def test_non_contiguous_inputs(dims):
    # the same values laid out with two dims swapped (e.g. [B, D, T] viewed as [B, T, D])
    inp = {k: v.requires_grad_() for k, v in make(2, 33, 8, 4, G=2, seed=9).items()}
    strided = {k: (v.transpose(*dims).contiguous().transpose(*dims) if v.dim() >= 3 else v.t().contiguous().t()
                   if v.dim() == 2 else v) for k, v in inp.items()}
    assert not strided["x"].is_contiguous() and not strided["A"].is_contiguous()
    kw = dict(fn=ss_chunk.selective_scan_chunk, chunk_size=4, block_size=8)
    outs = [call(p, "chunk", **kw) for p in (strided, inp)]
    torch.testing.assert_close(outs[0], outs[1])
    grads = [torch.autograd.grad(y.sum() + S.sum(), list(inp.values())) for y, S in outs]
    torch.testing.assert_close(grads[0], grads[1])


def test_env_override_and_auto(monkeypatch):
    inp = make(1, 10, 4, 2)
    monkeypatch.setenv("POSTFORMER_IMPL", "reference")
    y1, _ = call(inp, "auto")
    monkeypatch.delenv("POSTFORMER_IMPL")
    y2, _ = call(inp, "auto")
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("POSTFORMER_IMPL", "fast")
    with pytest.raises(ValueError, match="POSTFORMER_IMPL"):
        call(inp, "auto")


def test_triton_limits_are_clear_errors():
    # the Triton kernels compute in float32: float64 under impl="triton" is a ValueError (auto keeps
    # float64 on the chunk path); without the triton package, impl="triton" says so
    inp = {k: v.double() for k, v in make(1, 4, 4, 2).items()}
    try:
        import triton  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the triton package"):
            call(inp, "triton")
        return
    with pytest.raises(ValueError, match="float64 inputs need impl='chunk'"):
        call(inp, "triton")


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("x", torch.randn(2, 10), r"x has shape \[2, 10\], expected \[B, T, D\]"),
        ("dt", torch.randn(2, 9, 8), r"dt has shape \[2, 9, 8\], expected \[B, T, D\] like x = \[2, 10, 8\]"),
        ("A", torch.randn(7, 4), r"A has shape \[7, 4\], expected \[D, N\] = \[8, N\]"),
        ("B", torch.randn(2, 10, 5), r"B has shape \[2, 10, 5\], expected \[B, T, N\] or \[B, T, G, N\]"),
        ("B", torch.randn(2, 10, 3, 4), r"B has shape \[2, 10, 3, 4\] with G=3 groups, but D=8"),
        ("C", torch.randn(2, 10, 2, 4), r"C has shape \[2, 10, 2, 4\], expected the shape of B = \[2, 10, 4\]"),
        ("D", torch.randn(7), r"D has shape \[7\], expected \[D\] = \[8\]"),
        ("z", torch.randn(2, 10, 7), r"z has shape \[2, 10, 7\], expected \[B, T, D\]"),
        ("dt_bias", torch.randn(8, 1), r"dt_bias has shape \[8, 1\], expected \[D\]"),
        ("h0", torch.randn(2, 4, 8), r"initial_state has shape \[2, 4, 8\], expected \[B, D, N\] = \[2, 8, 4\]"),
        ("x", torch.randint(0, 3, (2, 10, 8)), r"x must be a floating-point tensor"),
        ("A", torch.randn(8, 4, device="meta"), r"must share one device"),
    ],
)
def test_bad_input_raises_value_error(key, bad, match):
    inp = make(2, 10, 8, 4)
    inp[key] = bad
    with pytest.raises(ValueError, match=match):
        call(inp, "chunk")


def test_bad_impl():
    with pytest.raises(ValueError, match=r"impl='cuda' is not one of"):
        call(make(1, 4, 4, 2), "cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu_closed_form():
    inp = make(2, 300, 64, 16, G=2, dtype=torch.bfloat16)
    y_ref, S_ref = truth(inp)
    y, S = call({k: v.cuda() for k, v in inp.items()}, "auto")
    assert rel_err(y.cpu(), y_ref) < 1e-2 and rel_err(S.cpu(), S_ref) < 1e-4
