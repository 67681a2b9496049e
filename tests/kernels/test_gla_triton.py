"""gla's Triton kernels (forward and backward) against independent computations.

Without CUDA, tests/conftest.py sets ``TRITON_INTERPRET=1`` before postformer is imported, so
the kernels run on CPU tensors under Triton's interpreter; with CUDA they run compiled on the
GPU. Where Triton is not importable at all the module skips.

Truths: the package's loop over time (``impl="reference"``) fed float64 copies of the same
inputs, and, written here, the parallel form
``o_t = scale * sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s + scale * (q_t * exp(G_t)) S_0``
in float64 (``G`` the cumulative log decay). The kernels accumulate in float32, so float32
inputs are held to ~1e-5 relative error (outputs) and ~1e-4 (gradients); every case of
tests/kernels/test_gla.py is covered in both kernel modes: the chunked kernels (chunks of 64
with sub-chunks of 16, hence T in {1, 15, 16, 63, 64, 65, 130}) and the fused recurrent one
(a loop over time: T up to 65, one past ``RECURRENT_MAX_T``; its backward is the chunked one).

The interpreter is slow (the whole file: ~80 s on 2 CPU cores): shapes are tiny (B, H <= 2,
K, V <= 40 but for one K = V = 128 case), gradients mostly in the chunk mode.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (e.g. macOS): no Triton kernels to test")
tl = pytest.importorskip("triton.language")

from kernel_testing import rel_err  # noqa: E402

from postformer.kernels import gla  # noqa: E402
from postformer.kernels._triton import interpreting  # noqa: E402
from postformer.kernels.gla import gla_reference  # noqa: E402
from postformer.kernels.gla import triton as gla_triton_module  # noqa: E402
from postformer.kernels.gla.triton import RECURRENT_MAX_T, gla_triton  # noqa: E402

INTERPRET = interpreting()  # set by tests/conftest.py on machines without CUDA
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
# Under the interpreter tl.dot is an exact float32 product; compiled on a GPU, float32 dots may
# run in TF32 (10-bit mantissa), so the float32 tolerances widen there.
FWD_TOL = 1e-5 if INTERPRET else 2e-3
GRAD_TOL = 1e-4 if INTERPRET else 5e-3

MODES = ["chunk", "recurrent"]
GATES = ["none", "scalar", "key"]


# ---------------------------------------------------------------------------------------------
# independent truths and helpers


def parallel_form(q, k, v, g, scale, h0):
    """O(T^2) closed form, float64: o [B, T, H, V] and the final state [B, H, K, V]."""
    q, k, v = (x.detach().cpu().double() for x in (q, k, v))
    B, T, H, K = q.shape
    if g is None:
        G = q.new_zeros(B, T, H, K)
    else:
        g = g.detach().cpu().double()
        G = (g.unsqueeze(-1).expand(B, T, H, K) if g.dim() == 3 else g).cumsum(1)
    o = q.new_zeros(B, T, H, v.shape[-1])
    for t in range(T):  # row t of the decayed attention matrix, masked to s <= t
        w = torch.einsum("bhk,bshk->bsh", q[:, t], k[:, : t + 1] * (G[:, t : t + 1] - G[:, : t + 1]).exp())
        o[:, t] = scale * torch.einsum("bsh,bshv->bhv", w, v[:, : t + 1])
    G_T = G[:, -1] if T else q.new_zeros(B, H, K)
    S = torch.einsum("bshk,bshv->bhkv", k * (G_T.unsqueeze(1) - G).exp(), v)
    if h0 is not None:
        h0 = h0.detach().cpu().double()
        o = o + scale * torch.einsum("bthk,bhkv->bthv", q * G.exp(), h0)
        S = S + G_T.exp().unsqueeze(-1) * h0
    return o, S


def make(B, T, H, K, V, gate, dtype=torch.float32, strength=1.0, seed=0, n_states=None):
    """q, k, v, g (None, [B, T, H] or [B, T, H, K], log-sigmoid so g < 0) and h0 (float32)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    shape = {"none": None, "scalar": (B, T, H), "key": (B, T, H, K)}[gate]
    g = None if shape is None else strength * torch.nn.functional.logsigmoid(torch.randn(shape, generator=gen) + 2)
    h0 = torch.randn(n_states or B, H, K, V, generator=gen)
    xs = [None if x is None else x.to(dtype).to(DEVICE) for x in (q, k, v, g)]
    return xs + [h0.to(DEVICE)]



def reference64(q, k, v, g, scale, h0, cu_seqlens=None):
    """The package's loop over time on float64 copies (varlen through gla())."""
    dbl = [None if x is None else x.detach().cpu().double() for x in (q, k, v, g, h0)]
    cu = None if cu_seqlens is None else cu_seqlens.cpu()
    return gla(*dbl[:4], scale=scale, initial_state=dbl[4], output_final_state=True, cu_seqlens=cu,
               impl="reference")


def grads_of(fn, inputs, seed=1):
    """Gradients of sum(o * w_o) + sum(S * w_S) w.r.t. every input; ``fn(q, k, v, g, h0) -> (o, S)``.

    Random weights (rather than o.sum()) so that a gradient transposed or summed over the wrong
    axis cannot pass by symmetry; the final state gets a gradient of its own."""
    xs = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    o, S = fn(*xs)
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen).to(o.device)  # float32 weights, exact in float64
    w_s = torch.randn(S.shape, generator=gen).to(S.device)
    acc = torch.float64 if o.dtype == torch.float64 else torch.float32
    ((o.to(acc) * w_o).sum() + (S.to(acc) * w_s).sum()).backward()
    return (o, S), [None if x is None else x.grad for x in xs]


def reference_grads(inputs, scale, cu_seqlens=None, seed=1):
    dbl = [None if x is None else x.detach().cpu().double() for x in inputs]
    cu = None if cu_seqlens is None else cu_seqlens.cpu()

    def fn(q, k, v, g, h0):
        return gla(q, k, v, g, scale=scale, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                   impl="reference")

    return grads_of(fn, dbl, seed)


def assert_grads_close(got, want, tol, names="q k v g h0"):
    for name, a, b in zip(names.split(), got, want):
        if b is None:
            assert a is None or name == "g", name
            continue
        assert a is not None, f"no gradient reached {name}"
        assert a.shape == b.shape, f"d{name} has shape {list(a.shape)}, expected {list(b.shape)}"
        assert torch.isfinite(a).all(), f"d{name} is not finite"
        err = rel_err(a, b)
        assert err < tol, f"d{name}: relative error {err:.2e} >= {tol:.0e}"


# ---------------------------------------------------------------------------------------------
# the interpreter itself


@triton.jit
def _add_one_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the kernels run compiled, not interpreted")
def test_conftest_enables_the_interpreter():
    # conftest.py ran before this module (and postformer) was imported: kernels defined at import
    # time are interpreted, and run on CPU tensors.
    from triton.runtime.interpreter import InterpretedFunction

    assert INTERPRET, f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}"
    assert isinstance(_add_one_kernel, InterpretedFunction)
    x = torch.arange(5, dtype=torch.float32)
    _add_one_kernel[(1,)](x, 5, BLOCK=8)
    torch.testing.assert_close(x, torch.arange(1, 6, dtype=torch.float32))

    def jitted(obj, depth=0):  # unwrap autotune / heuristics wrappers down to the jitted function
        while depth < 8 and not isinstance(obj, (InterpretedFunction, triton.runtime.JITFunction)):
            obj = getattr(obj, "fn", None)
            depth += 1
        return obj

    # every module of the package (the kernels sit in one module per phase, the jit helpers in common.py)
    modules = [gla_triton_module] + [importlib.import_module(f"{gla_triton_module.__name__}.{m.name}")
                                     for m in pkgutil.iter_modules(gla_triton_module.__path__)]
    kernels = [jitted(obj) for mod in modules for obj in vars(mod).values()]
    kernels = [obj for obj in kernels if obj is not None]
    assert kernels, "postformer.kernels.gla.triton defines no Triton kernel"
    names = {obj.__name__ for obj in kernels}
    assert {"_state_fwd", "_output_fwd", "_state_bwd", "_recurrent_fwd", "_scores_fwd"} <= names, names
    compiled = [obj for obj in kernels if not isinstance(obj, InterpretedFunction)]
    assert not compiled, f"kernels defined before TRITON_INTERPRET was set: {compiled}"


# ---------------------------------------------------------------------------------------------
# forward

# The chunked kernels at every chunk / sub-chunk boundary; the fused recurrent kernel (a loop over
# time, no chunks) up to one step past RECURRENT_MAX_T, where mode="auto" stops using it.
FORWARD_CASES = [("chunk", T) for T in (1, 15, 16, 63, 64, 65, 130)] + [
    ("recurrent", T) for T in (1, 15, 16, 63, 64, 65)
]


@pytest.mark.parametrize("mode, T", FORWARD_CASES)
@pytest.mark.parametrize("gate", GATES)
def test_forward_matches_reference(gate, mode, T):
    q, k, v, g, h0 = make(1, T, 2, 16, 8, gate, seed=T)
    scale = 16**-0.5
    o, S = gla_triton(q, k, v, g, scale, h0, True, None, mode=mode)
    assert o.shape == (1, T, 2, 8) and o.dtype == torch.float32 and o.device.type == DEVICE.type
    assert S.shape == (1, 2, 16, 8) and S.dtype == torch.float32
    o_ref, S_ref = reference64(q, k, v, g, scale, h0)
    assert rel_err(o, o_ref) < FWD_TOL
    assert rel_err(S, S_ref) < FWD_TOL
    if T >= 65:  # the closed form written here agrees too (the loop is not trusted blindly)
        o_pf, S_pf = parallel_form(q, k, v, g, scale, h0)
        assert rel_err(o, o_pf) < FWD_TOL and rel_err(S, S_pf) < FWD_TOL


@pytest.mark.parametrize("T", [RECURRENT_MAX_T, RECURRENT_MAX_T + 1])
def test_public_op_with_auto_mode(T):
    # gla(impl="triton") validates, picks the kernel by T and turns scale=None into K ** -0.5
    q, k, v, g, h0 = make(1, T, 2, 16, 16, "key", seed=3)
    o, S = gla(q, k, v, g, initial_state=h0, output_final_state=True, impl="triton")
    o_pf, S_pf = parallel_form(q, k, v, g, 16**-0.5, h0)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert rel_err(o, o_pf) < FWD_TOL and rel_err(S, S_pf) < FWD_TOL


@pytest.mark.parametrize("mode", MODES)
def test_scale_and_no_initial_state(mode):
    q, k, v, g, _ = make(1, 20, 2, 8, 8, "scalar", seed=4)
    o, S = gla_triton(q, k, v, g, 0.3, None, False, None, mode=mode)
    assert S is None
    o_pf, S_pf = parallel_form(q, k, v, g, 0.3, None)
    assert rel_err(o, o_pf) < FWD_TOL
    o2, S2 = gla_triton(q, k, v, g, 0.3, None, True, None, mode=mode)  # the state from zeros
    assert rel_err(o2, o_pf) < FWD_TOL and rel_err(S2, S_pf) < FWD_TOL


@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_strong_decay_stays_exact(gate):
    # Mamba-2's dt*A reaches -10 per step: a naive exp(-G) within a chunk would overflow
    # (G reaches -650 within one chunk here).
    q, k, v, g, h0 = make(1, 80, 1, 16, 16, gate, seed=5)
    g = torch.full_like(g, -10.0)
    g[:, ::7] = -0.01  # some steps keep memory, so outputs depend on several positions
    scale = 16**-0.5
    o_pf, S_pf = parallel_form(q, k, v, g, scale, h0)
    for mode in MODES:
        o, S = gla_triton(q, k, v, g, scale, h0, True, None, mode=mode)
        assert torch.isfinite(o).all() and torch.isfinite(S).all(), mode
        assert rel_err(o, o_pf) < FWD_TOL and rel_err(S, S_pf) < FWD_TOL, mode
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode="chunk")  # noqa: E731
    _, got = grads_of(fn, (q, k, v, g, h0))
    _, want = reference_grads((q, k, v, g, h0), scale)
    assert_grads_close(got, want, GRAD_TOL)  # finite, and exact


@pytest.mark.parametrize("gate", GATES)
def test_decoding_steps_continue_a_prefill(gate):
    # a prefill, then T=1 calls with the state (the decoding step), all through gla(impl="triton")
    q, k, v, g, _ = make(2, 20, 2, 16, 8, gate, seed=6)
    sl = lambda x, a, b: None if x is None else x[:, a:b]  # noqa: E731
    o, S = gla(q[:, :11], k[:, :11], v[:, :11], sl(g, 0, 11), output_final_state=True, impl="triton")
    outs = [o]
    for t in range(11, 20):
        o, S = gla(sl(q, t, t + 1), sl(k, t, t + 1), sl(v, t, t + 1), sl(g, t, t + 1),
                   initial_state=S, output_final_state=True, impl="triton")
        assert o.shape == (2, 1, 2, 8) and S.dtype == torch.float32
        outs.append(o)
    o_ref, S_ref = reference64(q, k, v, g, 16**-0.5, None)
    assert rel_err(torch.cat(outs, 1), o_ref) < FWD_TOL
    assert rel_err(S, S_ref) < FWD_TOL


# empty sequences (first, middle, last), a length-1 one, one longer than a chunk
VARLEN = [0, 5, 0, 66, 1, 19, 0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gate", GATES)
def test_varlen_matches_separate_sequences(gate, mode):
    T = sum(VARLEN)
    q, k, v, g, h0 = make(1, T, 2, 16, 8, gate, seed=7, n_states=len(VARLEN))
    cu = torch.tensor([0] + VARLEN).cumsum(0).to(torch.int32).to(DEVICE)
    o, S = gla_triton(q, k, v, g, 16**-0.5, h0, True, cu, mode=mode)
    assert o.shape == (1, T, 2, 8) and S.shape == (len(VARLEN), 2, 16, 8)
    for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        gi = None if g is None else g[:, bos:eos]
        o_i, S_i = parallel_form(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], gi, 16**-0.5, h0[i : i + 1])
        if eos > bos:
            assert rel_err(o[:, bos:eos], o_i) < FWD_TOL, f"sequence {i}"
        assert rel_err(S[i : i + 1], S_i) < FWD_TOL, f"state {i}"  # empty: passed through


@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_varlen_public_op_and_gradients(gate):
    # gla(impl="triton", cu_seqlens as int64): no state may leak between sequences, forward or
    # backward (dg is a reverse cumulative sum that must restart at every sequence)
    T = sum(VARLEN)
    q, k, v, g, h0 = make(1, T, 1, 16, 8, gate, seed=8, n_states=len(VARLEN))
    cu = torch.tensor([0] + VARLEN).cumsum(0).to(DEVICE)

    def fn(q, k, v, g, h0):
        return gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl="triton")

    (o, S), got = grads_of(fn, (q, k, v, g, h0))
    (o_ref, S_ref), want = reference_grads((q, k, v, g, h0), None, cu)
    assert rel_err(o, o_ref) < FWD_TOL and rel_err(S, S_ref) < FWD_TOL
    assert_grads_close(got, want, GRAD_TOL)


def test_head_dims_not_powers_of_two():
    # K=24, V=40: masked tiles in both kernels (the recurrent one splits V into two tiles)
    q, k, v, g, h0 = make(1, 65, 1, 24, 40, "key", seed=9)
    scale = 0.2
    o_r, S_r = gla_triton(q, k, v, g, scale, h0, True, None, mode="recurrent")
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode="chunk")  # noqa: E731
    (o, S), got = grads_of(fn, (q, k, v, g, h0))
    (o_ref, S_ref), want = reference_grads((q, k, v, g, h0), scale)
    assert o.shape == (1, 65, 1, 40) and S.shape == (1, 1, 24, 40)
    assert rel_err(o, o_ref) < FWD_TOL and rel_err(S, S_ref) < FWD_TOL
    assert rel_err(o_r, o_ref) < FWD_TOL and rel_err(S_r, S_ref) < FWD_TOL
    assert_grads_close(got, want, GRAD_TOL)


def test_head_dims_128():
    # the widest head dims in use: several K and V tiles in the chunked kernels; T crosses a sub-chunk
    q, k, v, g, h0 = make(1, 20, 1, 128, 128, "key", seed=10)
    scale = 128**-0.5
    o_pf, S_pf = parallel_form(q, k, v, g, scale, h0)
    o_r, S_r = gla_triton(q, k, v, g, scale, h0, True, None, mode="recurrent")
    assert rel_err(o_r, o_pf) < FWD_TOL and rel_err(S_r, S_pf) < FWD_TOL
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode="chunk")  # noqa: E731
    (o, S), got = grads_of(fn, (q, k, v, g, h0))
    assert rel_err(o, o_pf) < FWD_TOL and rel_err(S, S_pf) < FWD_TOL
    _, want = reference_grads((q, k, v, g, h0), scale)
    assert_grads_close(got, want, GRAD_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision(dtype):
    q, k, v, g, h0 = make(1, 40, 1, 32, 32, "key", dtype=dtype, seed=11)
    scale = 32**-0.5
    o_pf, S_pf = parallel_form(q, k, v, g, scale, h0)  # the same rounded inputs, in float64
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    o_r, S_r = gla_triton(q, k, v, g, scale, h0, True, None, mode="recurrent")
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode="chunk")  # noqa: E731
    (o, S), got = grads_of(fn, (q, k, v, g, h0))
    for o_, S_ in ((o_r, S_r), (o, S)):
        assert o_.dtype == dtype and S_.dtype == torch.float32
        assert rel_err(o_, o_pf) < tol
        assert rel_err(S_, S_pf) < 1e-3  # accumulated and returned in float32
    _, want = reference_grads((q, k, v, g, h0), scale)
    for name, a, x in zip("q k v g h0".split(), got, (q, k, v, g, h0)):
        assert a.dtype == x.dtype, f"d{name} is {a.dtype}, its input {x.dtype}"
    assert_grads_close(got, want, 2 * tol)


def test_non_contiguous_inputs():
    q, k, v, g, h0 = make(1, 20, 2, 16, 8, "key", seed=12)
    # q, k, v, g laid out [B, H, T, D] and viewed as [B, T, H, D]; h0 laid out [B, H, V, K]
    qt, kt, vt, gt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, g))
    h0t = h0.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not (qt.is_contiguous() or h0t.is_contiguous())
    scale = 0.25
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode="chunk")  # noqa: E731
    (o, S), got = grads_of(fn, (qt, kt, vt, gt, h0t))
    (o_ref, S_ref), want = reference_grads((q, k, v, g, h0), scale)
    assert rel_err(o, o_ref) < FWD_TOL and rel_err(S, S_ref) < FWD_TOL
    assert_grads_close(got, want, GRAD_TOL)
    o_r, S_r = gla_triton(qt, kt, vt, gt, scale, h0t, True, None, mode="recurrent")
    assert rel_err(o_r, o_ref) < FWD_TOL and rel_err(S_r, S_ref) < FWD_TOL
    # slices of one fused projection: the last dim is contiguous, the others strided
    fused = torch.randn(1, 20, 2, 16 + 16 + 8 + 16, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    qs, ks, vs, gs = fused.split([16, 16, 8, 16], dim=-1)
    gs = torch.nn.functional.logsigmoid(gs + 2)
    o_pf, S_pf = parallel_form(qs, ks, vs, gs, scale, h0)
    for mode in MODES:
        o3, S3 = gla_triton(qs, ks, vs, gs, scale, h0, True, None, mode=mode)
        assert rel_err(o3, o_pf) < FWD_TOL and rel_err(S3, S_pf) < FWD_TOL, mode


# ---------------------------------------------------------------------------------------------
# backward: dq, dk, dv, dg (scalar and per-key) and d(initial_state), with the final state also
# in the loss. The recurrent mode's backward is the chunked one (from the recurrent forward's
# saved final state), so it gets one length per gate.

GRAD_CASES = [("chunk", 1, 2, T) for T in (1, 16, 65)] + [("chunk", 1, 1, 130), ("recurrent", 2, 1, 20)]


@pytest.mark.parametrize("mode, B, H, T", GRAD_CASES)
@pytest.mark.parametrize("gate", GATES)
def test_gradients_match_reference(gate, mode, B, H, T):
    inputs = make(B, T, H, 16, 8, gate, seed=20 + T)
    scale = 16**-0.5
    fn = lambda q, k, v, g, h0: gla_triton(q, k, v, g, scale, h0, True, None, mode=mode)  # noqa: E731
    _, got = grads_of(fn, inputs)
    _, want = reference_grads(inputs, scale)
    assert_grads_close(got, want, GRAD_TOL)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_without_state(mode):
    # no initial state, no final state asked for (the backward gets no dS) ...
    q, k, v, g, _ = make(1, 20, 2, 16, 8, "scalar", seed=30)
    xs = [x.clone().requires_grad_() for x in (q, k, v, g)]
    o, S = gla_triton(*xs, 0.25, None, False, None, mode=mode)
    assert S is None
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(31)).to(DEVICE)
    (o * w).sum().backward()
    ys = [x.detach().double().cpu().requires_grad_() for x in (q, k, v, g)]
    o_ref, _ = gla_reference(*ys, 0.25, None)
    (o_ref * w.cpu().double()).sum().backward()
    assert_grads_close([x.grad for x in xs], [y.grad for y in ys], GRAD_TOL, names="q k v g")
    # ... and a final state that is returned but stays out of the loss (its gradient is None)
    h0 = torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(32)).to(DEVICE).requires_grad_()
    o, S = gla_triton(q, k, v, g, 0.25, h0, True, None, mode=mode)
    (o * w).sum().backward()
    h0_ref = h0.detach().double().cpu().requires_grad_()
    o_ref, _ = gla_reference(*(y.detach() for y in ys), 0.25, h0_ref)
    (o_ref * w.cpu().double()).sum().backward()
    assert rel_err(h0.grad, h0_ref.grad) < GRAD_TOL


def test_bad_mode_raises():
    q, k, v, g, _ = make(1, 4, 1, 4, 4, "scalar")
    with pytest.raises(ValueError, match="mode='fast'"):
        gla_triton(q, k, v, g, 0.5, None, False, None, mode="fast")


def test_float64_inputs():
    # The kernels compute in float32: impl="triton" refuses float64 with a clear message (rather
    # than silently dropping precision); impl="auto" keeps float64 on the exact chunked path.
    q, k, v, g, h0 = (x.double() for x in make(1, 9, 1, 4, 4, "scalar", seed=40))
    with pytest.raises(ValueError, match="float64"):
        gla(q, k, v, g, initial_state=h0, output_final_state=True, impl="triton")
    o, S = gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o_pf, S_pf = parallel_form(q, k, v, g, 0.5, h0)
    assert o.dtype == torch.float64 and S.dtype == torch.float64
    assert rel_err(o, o_pf) < 1e-12 and rel_err(S, S_pf) < 1e-12


# ---------------------------------------------------------------------------------------------
# GPU only: a realistic size, compiled kernels against the CPU reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", GATES)
def test_cuda_realistic_size(gate, dtype):
    q, k, v, g, h0 = (None if x is None else x.cpu() for x in make(2, 300, 4, 64, 64, gate, dtype, seed=50))
    scale = 64**-0.5
    _, want = reference_grads((q, k, v, g, h0), scale)
    cuda = [None if x is None else x.cuda() for x in (q, k, v, g, h0)]
    fn = lambda q, k, v, g, h0: gla(q, k, v, g, initial_state=h0, output_final_state=True)  # noqa: E731
    (o, S), got = grads_of(fn, cuda)  # impl="auto": the Triton kernels for CUDA tensors
    o_pf, S_pf = parallel_form(q, k, v, g, scale, h0)
    tol = 5e-3 if dtype == torch.float32 else 2e-2
    assert o.dtype == dtype and rel_err(o, o_pf) < tol and rel_err(S, S_pf) < tol
    assert_grads_close(got, want, 2 * tol)
