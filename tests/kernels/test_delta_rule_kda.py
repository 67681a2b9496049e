"""delta_rule with a per-key gate g ``[B, T, H, K]`` (Kimi Delta Attention) against an independent
computation of

    S_t = (I - beta_t k_t^T k_t) Diag(exp g_t) S_{t-1} + beta_t k_t^T v_t,   o_t = scale q_t S_t

(row vectors, S ``[K, V]``). The truth written here is the paper's column form (Kimi Linear,
arXiv 2510.26692): the transposed state ``M = S^T`` ``[V, K]`` with explicit ``[K, K]``
transition matrices, ``M_t = M_{t-1} Diag(exp g_t) (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``,
``o_t = scale M_t q_t``, in float64. FLA's ``naive_recurrent_kda`` is a second, outside check
where the `peers` extra is installed. The reference loop must equal the truth; the chunked path
must equal both in every case the op contract lists: T around the per-key chunk (16), T = 1,
strong decay (gates of -20 to -60 per step, -inf full resets of a whole row or of single key
channels), packed sequences with empty and length-1 ones, decoding steps after a prefill, bf16
inputs, and gradients to q, k, v, beta, g and the initial state.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import fla_naive, rel_err

from postformer.kernels import delta_rule
from postformer.kernels.delta_rule import delta_rule_chunk
from postformer.kernels.delta_rule.chunk import PER_KEY_CHUNK

F64 = torch.float64
DPLR_TRITON = "postformer.kernels.dplr_delta_rule.triton"


def column_form(q, k, v, beta, g, scale, h0):
    """The paper's recurrence on the transposed state M = S^T ``[V, K]``, float64, explicit
    ``Diag(exp g) (I - beta k k^T)`` matrices. Inputs ``[B, T, H, *]``, h0 ``[B, H, K, V]`` or
    None; returns o ``[B, T, H, V]`` and the final state in the op's layout ``[B, H, K, V]``."""
    q, k, v, beta, g = (x.to(F64) for x in (q, k, v, beta, g))
    B, T, H, K = q.shape
    V = v.shape[-1]
    M = torch.zeros(B, H, V, K, dtype=F64) if h0 is None else h0.to(F64).transpose(-1, -2).clone()
    eye = torch.eye(K, dtype=F64)
    o = torch.zeros(B, T, H, V, dtype=F64)
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]  # (B, H, K), (B, H, 1, 1)
        decay = torch.diag_embed(g[:, t].exp())  # (B, H, K, K)
        transition = decay @ (eye - bt * kt[..., :, None] * kt[..., None, :])
        M = M @ transition + bt * v[:, t, :, :, None] * kt[..., None, :]
        o[:, t] = scale * (M @ q[:, t, :, :, None])[..., 0]
    return o, M.transpose(-1, -2)


def make(B, T, H, K, V, dtype=torch.float32, seed=0, n_states=None):
    """L2-normalised keys, sigmoid write strengths, per-key log gates mostly in (-1, 0) with a
    spread over channels, an initial state per batch row (or per packed sequence)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    g = F.logsigmoid(2 * torch.randn(B, T, H, K, generator=gen) + 2)
    h0 = torch.randn(n_states or B, H, K, V, generator=gen)
    return [x.to(dtype) for x in (q, k, v, beta, g)] + [h0.to(F64 if dtype == F64 else torch.float32)]


def strong(g, seed=3):
    """Gates of -20 to -60 at some steps (every key), single key channels at -inf, a whole row
    reset (-inf) and one step at -60 on every channel: chunk-local cumulative gates reach -900."""
    gen = torch.Generator().manual_seed(seed)
    g = g.clone()
    T = g.shape[1]
    g[:, ::3] = -20.0 - 40.0 * torch.rand(g[:, ::3].shape, generator=gen, dtype=torch.float64).to(g.dtype)
    g[:, 1::5, :, 0] = float("-inf")
    g[:, T // 2] = float("-inf")
    g[:, T // 3] = -60.0
    return g


def grads(fn, inputs, seed=1):
    """Gradients of a random projection of (o, final state) for every input."""
    xs = [x.clone().requires_grad_() for x in inputs]
    o, S = fn(*xs)
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype)  # the same weights for every dtype
    w_s = torch.randn(S.shape, generator=gen, dtype=F64).to(S.dtype)
    ((o * w_o).sum() + (S * w_s).sum()).backward()
    return [x.grad for x in xs]


def run(impl, **kw):
    def fn(q, k, v, beta, g, h0):
        return delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl=impl, **kw)

    return fn


# --------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("T", [1, 9, 16, 17, 40])
def test_reference_matches_column_form(T):
    q, k, v, beta, g, h0 = make(2, T, 2, 8, 6, dtype=F64)
    o, S = delta_rule(q, k, v, beta, g, scale=0.4, initial_state=h0, output_final_state=True, impl="reference")
    o_ref, S_ref = column_form(q, k, v, beta, g, 0.4, h0)
    assert o.dtype == S.dtype == F64
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


@pytest.mark.parametrize("T", [1, 15, 16, 17, 33, 50])
def test_chunk_matches_column_form_in_float64(T):
    q, k, v, beta, g, h0 = make(2, T, 2, 8, 6, dtype=F64)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    o_ref, S_ref = column_form(q, k, v, beta, g, 8**-0.5, h0)
    assert o.shape == (2, T, 2, 6) and S.shape == (2, 2, 8, 6)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


@pytest.mark.parametrize("T", [1, 17, 70])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_float32(T, impl):
    q, k, v, beta, g, h0 = make(2, T, 2, 16, 12)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl=impl)
    assert o.dtype == S.dtype == torch.float32
    o_ref, S_ref = column_form(q, k, v, beta, g, 16**-0.5, h0)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 32])
def test_chunk_sizes_and_ragged_last_chunk(chunk_size):
    q, k, v, beta, g, h0 = make(1, 37, 2, 8, 4, dtype=F64)
    o, S = delta_rule_chunk(q, k, v, beta, g, 0.5, h0, chunk_size=chunk_size)
    o_ref, S_ref = column_form(q, k, v, beta, g, 0.5, h0)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_per_key_gate_is_not_a_scalar_gate():
    """Guards the tests above: the per-key path differs from the scalar gate of the channels'
    mean, and equals it when every channel carries the same gate."""
    q, k, v, beta, g, h0 = make(1, 20, 2, 8, 4, dtype=F64)
    o_key, _ = delta_rule(q, k, v, beta, g, initial_state=h0, impl="chunk")
    o_mean, _ = delta_rule(q, k, v, beta, g.mean(-1), initial_state=h0, impl="chunk")
    assert rel_err(o_key, o_mean) > 1e-2
    same = g[..., :1].expand_as(g).contiguous()
    o_same, _ = delta_rule(q, k, v, beta, same, initial_state=h0, impl="chunk")
    o_scalar, _ = delta_rule(q, k, v, beta, g[..., 0], initial_state=h0, impl="chunk")
    assert rel_err(o_same, o_scalar) < 1e-12


# ---------------------------------------------------------------------------- strong decay


@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_strong_decay_float64(impl):
    q, k, v, beta, g, h0 = make(2, 50, 2, 8, 6, dtype=F64)
    g = strong(g)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl=impl)
    o_ref, S_ref = column_form(q, k, v, beta, g, 8**-0.5, h0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, o_ref) < 1e-10 and rel_err(S, S_ref) < 1e-10


def test_strong_decay_float32():
    q, k, v, beta, g, h0 = make(2, 70, 2, 16, 8)
    g = strong(g)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    o_ref, S_ref = column_form(q, k, v, beta, g, 16**-0.5, h0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize("strong_decay", [False, True], ids=["mild", "strong"])
def test_gradients_match_reference(strong_decay):
    inputs = make(2, 45, 2, 8, 6, dtype=F64)
    if strong_decay:
        inputs[4] = strong(inputs[4])
    got = grads(run("chunk"), inputs)
    want = grads(run("reference"), inputs)
    for name, a, b in zip("q k v beta g h0".split(), got, want):
        assert a is not None, f"no gradient reached {name}"
        assert torch.isfinite(a).all(), name
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-10, name


def test_gradients_float32_strong_decay_are_finite_and_close():
    inputs = make(1, 40, 2, 16, 8)
    inputs[4] = strong(inputs[4])
    got = grads(run("chunk"), inputs)
    want = grads(run("reference"), [x.double() for x in inputs])
    for name, a, b in zip("q k v beta g h0".split(), got, want):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 1e-4, name


def test_gradcheck_chunk_across_chunks():
    q, k, v, beta, g, h0 = (x.double().requires_grad_() for x in make(1, 9, 1, 4, 3))

    def f(q, k, v, beta, g, h0):
        return delta_rule_chunk(q, k, v, beta, g, 0.5, h0, chunk_size=4)  # 3 chunks, last ragged

    assert torch.autograd.gradcheck(f, (q, k, v, beta, g, h0))


# ---------------------------------------------------------- packed sequences, decoding, bf16


LENS = [5, 0, 33, 1, 0, 17]


@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_varlen_matches_separate_sequences(impl):
    T = sum(LENS)
    q, k, v, beta, g, h0 = make(1, T, 2, 8, 6, n_states=len(LENS))
    g = strong(g, seed=5)
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)
    assert o.shape == (1, T, 2, 6) and S.shape == (len(LENS), 2, 8, 6)
    for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = [x[:, bos:eos] for x in (q, k, v, beta, g)]
        o_ref, S_ref = column_form(*sl, 8**-0.5, h0[i : i + 1])
        if eos > bos:
            assert rel_err(o[:, bos:eos], o_ref) < 1e-5
        assert rel_err(S[i : i + 1], S_ref) < 1e-5  # an empty sequence passes its state through


def test_varlen_gradients_match_reference():
    T = sum(LENS)
    inputs = make(1, T, 2, 4, 3, dtype=F64, n_states=len(LENS))
    inputs[4] = strong(inputs[4], seed=7)
    cu = torch.tensor([0] + LENS).cumsum(0)
    got = grads(run("chunk", cu_seqlens=cu), inputs)
    want = grads(run("reference", cu_seqlens=cu), inputs)
    for name, a, b in zip("q k v beta g h0".split(), got, want):
        assert rel_err(a, b) < 1e-10, name


def test_decoding_steps_continue_a_prefill():
    q, k, v, beta, g, _ = make(2, 30, 2, 8, 6)
    full, S_full = delta_rule(q, k, v, beta, g, output_final_state=True, impl="chunk")
    o, S = delta_rule(*(x[:, :19] for x in (q, k, v, beta, g)), output_final_state=True)
    outs = [o]
    for t in range(19, 30):  # T = 1: the reference step
        o, S = delta_rule(*(x[:, t : t + 1] for x in (q, k, v, beta, g)), initial_state=S,
                          output_final_state=True)
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
    assert rel_err(S, S_full) < 1e-5


def test_bf16():
    q, k, v, beta, g, h0 = make(1, 70, 2, 16, 16, dtype=torch.bfloat16)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref = column_form(q, k, v, beta, g, 16**-0.5, h0)  # the same rounded inputs, float64
    assert rel_err(o, o_ref) < 1e-2  # output rounding: 2^-8
    assert rel_err(S, S_ref) < 1e-5  # the state is accumulated and returned in float32


def test_matches_fla_naive_when_installed():
    """A peer's loop (FLA's ``fla/ops/kda/naive.py``, argument order q, k, v, g, beta), loaded
    from its file (importing ``fla.ops`` takes seconds). Skips without the `peers` extra."""
    module = fla_naive("ops/kda/naive.py")
    q, k, v, beta, g, h0 = make(1, 50, 2, 16, 8)
    o_fla, S_fla = module.naive_recurrent_kda(q, k, v, g, beta, initial_state=h0.clone(), output_final_state=True)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert rel_err(o, o_fla) < 1e-5 and rel_err(S, S_fla) < 1e-5


# ------------------------------------------------------------------------ errors, dispatch


@pytest.mark.parametrize("shape", [(2, 10, 3, 9), (2, 10), (2, 10, 3, 8, 1), (2, 10, 4)])
def test_bad_g_shape(shape):
    q, k, v, beta, _, _ = make(2, 10, 3, 8, 4)
    with pytest.raises(ValueError, match=r"g has shape \[" + r", ".join(map(str, shape)) + r"\], expected None or "
                       r"\[B, T, H\] = \[2, 10, 3\] .* or \[B, T, H, K\] = \[2, 10, 3, 8\]"):
        delta_rule(q, k, v, beta, torch.zeros(shape))


def test_per_key_chunk_length():
    assert PER_KEY_CHUNK in (16, 32)  # the [C, C, K] pairwise decays bound it (module docstring)


def _without_dplr_triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setitem(sys.modules, DPLR_TRITON, None)  # an import of it raises ImportError


def test_triton_without_dplr_kernels_is_a_value_error(monkeypatch):
    _without_dplr_triton(monkeypatch)
    q, k, v, beta, g, _ = make(1, 6, 1, 4, 4)
    with pytest.raises(ValueError, match=r"impl='triton' with a per-key g \[B, T, H, K\] needs "
                                         r"kernels/dplr_delta_rule/triton.py"):
        delta_rule(q, k, v, beta, g, impl="triton")


def test_auto_never_routes_per_key_gates_to_triton(monkeypatch):
    """``POSTFORMER_IMPL=triton`` stands for ``auto`` resolving to triton (as on CUDA): a per-key
    gate still runs the chunk path (no per-key kernels of our own), so it works without them."""
    _without_dplr_triton(monkeypatch)
    monkeypatch.setenv("POSTFORMER_IMPL", "triton")
    q, k, v, beta, g, h0 = make(1, 20, 2, 8, 4)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
    o_ref, S_ref = column_form(q, k, v, beta, g, 8**-0.5, h0)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


def _dplr_triton_or_skip():
    pytest.importorskip("triton")
    try:
        importlib.import_module(DPLR_TRITON)
    except ImportError as err:
        pytest.skip(f"kernels/dplr_delta_rule/triton.py does not import yet ({err}): "
                    "impl='triton' with a per-key g maps onto it")


@pytest.mark.parametrize("varlen", [False, True])
def test_triton_via_dplr(varlen):
    """impl='triton' with a per-key g: the KDA -> dplr mapping on the interpreter, forward, final
    state and every gradient against the column form (tiny shapes: the interpreter is slow)."""
    _dplr_triton_or_skip()
    lens = [3, 0, 1, 9] if varlen else None
    B, T = (1, sum(lens)) if varlen else (2, 11)
    inputs = make(B, T, 1, 8, 4, n_states=len(lens) if varlen else None)
    inputs[4] = strong(inputs[4], seed=9)
    cu = None if lens is None else torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    got_o, got_S = run("triton", cu_seqlens=cu)(*inputs)
    got = grads(run("triton", cu_seqlens=cu), inputs)
    want_o, want_S = run("reference", cu_seqlens=cu)(*(x.double() for x in inputs))
    want = grads(run("reference", cu_seqlens=cu), [x.double() for x in inputs])
    assert got_o.dtype == torch.float32
    assert rel_err(got_o, want_o) < 1e-5 and rel_err(got_S, want_S) < 1e-5
    for name, a, b in zip("q k v beta g h0".split(), got, want):
        assert a is not None and rel_err(a, b) < 1e-4, name


def test_custom_op_with_per_key_gates():
    """Under torch.compile the op is the ``postformer::delta_rule`` custom op (kernels/_library.py):
    its schema and fake take a per-key g, and a compiled call (fullgraph, aot_eager) equals the
    eager one, gradients included."""
    from postformer.kernels import _library

    q, k, v, beta, g, h0 = make(1, 20, 2, 8, 4)
    op = _library.OPS["delta_rule"]
    kw = dict(q=q, k=k, v=v, beta=beta, g=g, scale=None, initial_state=h0, output_final_state=True, impl="chunk")
    torch.library.opcheck(op.fwd, tuple(kw[n] for n in op.names))
    torch._dynamo.reset()
    fn = lambda *xs: delta_rule(*xs[:5], initial_state=xs[5], output_final_state=True, impl="chunk")  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    inputs = [q, k, v, beta, g, h0]
    for a, b in zip(fn(*inputs), compiled(*inputs)):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    for name, a, b in zip("q k v beta g h0".split(), grads(fn, inputs), grads(compiled, inputs)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
