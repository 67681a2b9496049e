"""dplr_delta_rule against independent computations of

    S_t = Diag(exp g_t) S_{t-1} + a_t^T (b_t S_{t-1}) + k_t^T v_t,    o_t = scale q_t S_t.

The truth written here is the transposed (column) form of the same recurrence with explicit
float64 ``[K, K]`` transition matrices: ``M_t = S_t^T`` ``[V, K]``,
``M_t = M_{t-1} (Diag(exp g_t) + b_t^T a_t) + v_t^T k_t``, ``o_t = scale M_t q_t^T``. A second
truth, the per-key gated delta rule (KDA) ``S_t = (I - beta k^T k) Diag(exp g) S_{t-1} + beta k^T v``
with its own matrices, checks the mapping ``a = -beta k, b = k exp(g), k' = beta k``.
The reference loop must match the truth; the chunked path must match both, values, final states
and every gradient, in the cases docs/design.md lists: T around the chunk size, T = 1 with a
state, strong decays and full resets, packed sequences with empty and length-1 ones, half
precision.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import fla_naive, rel_err

from postformer.kernels import _library, dplr_delta_rule
from postformer.kernels.dplr_delta_rule import dplr_delta_rule_chunk, dplr_delta_rule_reference

NAMES = ("q", "k", "v", "a", "b", "g", "initial_state")


def column_form(q, k, v, a, b, g, scale, h0):
    """The recurrence on the transposed state ``M = S^T`` ``[V, K]`` with explicit transition
    matrices, float64; ``[B, T, H, *]`` inputs, returns (o ``[B, T, H, V]``, S ``[B, H, K, V]``)."""
    q, k, v, a, b, g = (x.double() for x in (q, k, v, a, b, g))
    B, T, H, K = q.shape
    V = v.shape[-1]
    M = torch.zeros(B, H, V, K, dtype=torch.float64) if h0 is None else h0.double().transpose(-1, -2)
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        # (Diag(exp g) + a^T b)^T = Diag(exp g) + b^T a, explicit [K, K]
        trans = torch.diag_embed(g[:, t].exp()) + b[:, t, :, :, None] * a[:, t, :, None, :]
        M = (M[..., :, :, None] * trans[..., None, :, :]).sum(-2) + v[:, t, :, :, None] * k[:, t, :, None, :]
        o[:, t] = scale * (M * q[:, t, :, None, :]).sum(-1)
    return o, M.transpose(-1, -2)


def kda_form(q, k, v, beta, g, scale, h0):
    """KDA: ``S_t = (I - beta_t k_t^T k_t) Diag(exp g_t) S_{t-1} + beta_t k_t^T v_t``, float64,
    explicit matrices; beta ``[B, T, H]``."""
    q, k, v, beta, g = (x.double() for x in (q, k, v, beta, g))
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=torch.float64) if h0 is None else h0.double().clone()
    eye = torch.eye(K, dtype=torch.float64)
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        house = eye - bt * kt[..., :, None] * kt[..., None, :]
        trans = house * g[:, t].exp()[..., None, :]  # (I - beta k^T k) Diag(exp g)
        S = (trans[..., None] * S[..., None, :, :]).sum(-2) + bt * kt[..., None] * v[:, t, :, None, :]
        o[:, t] = scale * (q[:, t, :, :, None] * S).sum(-2)
    return o, S


def make(B, T, H, K, V, dtype=torch.float32, seed=0, n_states=None, decay=2.0):
    """Inputs shaped like RWKV-7's with the low-rank pair the other way round (RWKV-7 writes
    ``a = -(s kk)`` and reads ``b = kk``; here ``a = -kk``, ``b = kk * s``, ``s`` in (0, 1) per
    channel): the transition ``Diag(exp g) - kk^T (kk s)`` is a contraction too; log decays
    ``logsigmoid(x + decay)``. Returns [q, k, v, a, b, g, h0] (h0 float32 or float64)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen) * K**-0.5
    v = torch.randn(B, T, H, V, generator=gen)
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    s = torch.rand(B, T, H, K, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen) + decay)
    h0 = torch.randn(n_states or B, H, K, V, generator=gen)
    return [x.to(dtype) for x in (q, k, v, -kk, kk * s, g)] + [
        h0.double() if dtype == torch.float64 else h0]


def call(inputs, impl, scale=None, **kw):
    q, k, v, a, b, g, h0 = inputs
    return dplr_delta_rule(q, k, v, a, b, g, scale=scale, initial_state=h0, output_final_state=True,
                           impl=impl, **kw)


# ---- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 15, 33])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_matches_column_form_fp32(impl, T):
    inputs = make(2, T, 2, 16, 12)
    o, S = call(inputs, impl)
    o_ref, S_ref = column_form(*inputs[:6], 16**-0.5, inputs[6])
    assert o.shape == (2, T, 2, 12) and o.dtype == torch.float32
    assert S.shape == (2, 2, 16, 12) and S.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize("T", [1, 16, 17, 45])
def test_matches_column_form_float64(T):
    inputs = make(1, T, 2, 8, 6, dtype=torch.float64, decay=0.0)
    o_ref, S_ref = column_form(*inputs[:6], 0.3, inputs[6])
    for impl in ("reference", "chunk"):
        o, S = call(inputs, impl, scale=0.3)
        assert o.dtype == S.dtype == torch.float64
        assert rel_err(o, o_ref) < 1e-10 and rel_err(S, S_ref) < 1e-10, impl


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 16, 32])
def test_chunk_sizes_and_ragged_last_chunk(chunk_size):
    # T = 30 is not a multiple of any of them but 1: the zero padding must leave the state alone
    q, k, v, a, b, g, h0 = make(1, 30, 2, 8, 8, dtype=torch.float64)
    o, S = dplr_delta_rule_chunk(q, k, v, a, b, g, 0.5, h0, chunk_size=chunk_size)
    o_ref, S_ref = column_form(q, k, v, a, b, g, 0.5, h0)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_one_step_with_a_state_on_every_path():
    # T = 1 through the op (the decoding call) and straight through the chunked form
    inputs = make(2, 1, 2, 16, 8)
    o_ref, S_ref = column_form(*inputs[:6], 16**-0.5, inputs[6])
    o, S = call(inputs, "chunk")
    o_c, S_c = dplr_delta_rule_chunk(*inputs[:6], 16**-0.5, inputs[6])
    for x, ref in ((o, o_ref), (S, S_ref), (o_c, o_ref), (S_c, S_ref)):
        assert rel_err(x, ref) < 1e-6


def test_decoding_steps_continue_a_prefill():
    q, k, v, a, b, g, _ = make(2, 20, 2, 16, 8)
    full, S_full = dplr_delta_rule(q, k, v, a, b, g, output_final_state=True, impl="chunk")
    o, S = dplr_delta_rule(*(x[:, :11] for x in (q, k, v, a, b, g)), output_final_state=True)
    outs = [o]
    for t in range(11, 20):
        o, S = dplr_delta_rule(*(x[:, t : t + 1] for x in (q, k, v, a, b, g)), initial_state=S,
                               output_final_state=True)
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), full) < 1e-5 and rel_err(S, S_full) < 1e-5


def test_scale_default_and_no_initial_state():
    q, k, v, a, b, g, _ = make(1, 40, 2, 8, 8)
    o, S = dplr_delta_rule(q, k, v, a, b, g, impl="chunk")
    assert S is None
    o_ref, _ = column_form(q, k, v, a, b, g, 8**-0.5, None)
    assert rel_err(o, o_ref) < 1e-5


@pytest.mark.parametrize("T", [19, 40])
def test_strong_decay_and_full_resets(T):
    # log gates down to -60 per step (a chunk's cumulative gate reaches -960: exp(-G) would be
    # inf), -1e4 (floored in the chunked form) and -inf (a full reset of some channels)
    inputs = make(1, T, 2, 16, 8)
    g = inputs[5]
    g.uniform_(-60.0, 0.0, generator=torch.Generator().manual_seed(3))
    g[:, ::3] = -0.05  # some steps keep memory, so outputs depend on several positions
    g[:, 5, :, :4] = float("-inf")
    g[:, 11, 1] = -1e4
    g[:, -1, 0, 8:] = float("-inf")
    o_ref, S_ref = column_form(*inputs[:6], 16**-0.5, inputs[6])
    grads = {}
    for impl in ("reference", "chunk"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, S = call(leaves, impl)
        assert torch.isfinite(o).all() and torch.isfinite(S).all()
        assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5, impl
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
        ((o * w).sum() + S.square().sum()).backward()
        grads[impl] = [x.grad for x in leaves]
    for name, c, r in zip(NAMES, grads["chunk"], grads["reference"]):
        assert torch.isfinite(c).all(), name
        assert rel_err(c, r) < 1e-5, name


@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_packed_sequences_match_separate_ones(impl):
    lens = [5, 0, 40, 1, 0, 17]
    T = sum(lens)
    inputs = make(1, T, 2, 8, 6, n_states=len(lens))
    h0 = inputs[6]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    o, S = call(inputs, impl, cu_seqlens=cu)
    assert o.shape == (1, T, 2, 6) and S.shape == (len(lens), 2, 8, 6)
    for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, S_ref = column_form(*(x[:, bos:eos] for x in inputs[:6]), 8**-0.5, h0[i : i + 1])
        if eos > bos:
            assert rel_err(o[:, bos:eos], o_ref) < 1e-5
        assert rel_err(S[i : i + 1], S_ref) < 1e-5  # an empty sequence passes its state through


def test_packed_gradients_match_reference():
    lens = [3, 0, 20, 1, 9]
    inputs = make(1, sum(lens), 2, 8, 4, dtype=torch.float64, n_states=len(lens))
    cu = torch.tensor([0] + lens).cumsum(0)
    grads = {}
    for impl in ("reference", "chunk"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, S = call(leaves, impl, cu_seqlens=cu)
        w_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((o * w_o).sum() + (S * w_s).sum()).backward()
        grads[impl] = [x.grad for x in leaves]
    for name, c, r in zip(NAMES, grads["chunk"], grads["reference"]):
        assert rel_err(c, r) < 1e-10, name
    assert grads["chunk"][6][1].abs().sum() > 0  # the empty sequence's state still gets its gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    inputs = make(1, 50, 2, 16, 16, dtype=dtype)
    o, S = call(inputs, "chunk")
    assert o.dtype == dtype and S.dtype == torch.float32
    o_ref, S_ref = column_form(*inputs[:6], 16**-0.5, inputs[6])  # the same rounded inputs
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    assert rel_err(o, o_ref) < tol
    assert rel_err(S, S_ref) < 1e-5  # accumulated and returned in float32


def test_kda_is_dplr():
    # a per-key gated delta rule: a = -beta k, b = k exp(g), k' = beta k
    gen = torch.Generator().manual_seed(5)
    B, T, H, K, V = 1, 37, 2, 8, 8
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) + 1)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    o_ref, S_ref = kda_form(q, k, v, beta, g, 0.4, h0)
    bk = beta[..., None] * k
    for impl in ("reference", "chunk"):
        o, S = dplr_delta_rule(q, bk, v, -bk, k * g.exp(), g, scale=0.4, initial_state=h0,
                               output_final_state=True, impl=impl)
        assert rel_err(o, o_ref) < 1e-10 and rel_err(S, S_ref) < 1e-10, impl


# ---- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 29])
def test_gradients_match_reference(T):
    inputs = make(2, T, 2, 8, 6, dtype=torch.float64, decay=0.0)
    grads = {}
    for impl in ("reference", "chunk"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        q, k, v, a, b, g, h0 = leaves
        if impl == "chunk":  # the chunked form itself, also at T = 1 (the op takes the loop there)
            o, S = dplr_delta_rule_chunk(q, k, v, a, b, g, 0.25, h0, chunk_size=8)
        else:
            o, S = dplr_delta_rule_reference(q, k, v, a, b, g, 0.25, h0)
        w_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((o * w_o).sum() + (S * w_s).sum()).backward()
        grads[impl] = [x.grad for x in leaves]
    for name, c, r in zip(NAMES, grads["chunk"], grads["reference"]):
        assert c is not None, f"no gradient reached {name}"
        assert rel_err(c, r) < 1e-10, name


def test_gradcheck_chunk_across_chunks():
    inputs = [x.double().requires_grad_() for x in make(1, 9, 1, 3, 2, decay=0.0)]

    def f(q, k, v, a, b, g, h0):
        return dplr_delta_rule_chunk(q, k, v, a, b, g, 0.5, h0, chunk_size=4)  # 3 chunks, ragged

    assert torch.autograd.gradcheck(f, inputs)


# ---- the op's contract -------------------------------------------------------------------


def test_auto_and_env_override(monkeypatch):
    inputs = make(1, 10, 1, 4, 4)
    o_chunk, _ = call(inputs, "chunk")
    monkeypatch.delenv("POSTFORMER_IMPL", raising=False)
    o_auto, _ = call(inputs, "auto")
    assert torch.equal(o_auto, o_chunk)  # auto is chunk on CPU
    monkeypatch.setenv("POSTFORMER_IMPL", "reference")
    o_env, _ = call(inputs, "auto")
    assert rel_err(o_env, o_chunk) < 1e-5
    monkeypatch.setenv("POSTFORMER_IMPL", "fast")
    with pytest.raises(ValueError, match="POSTFORMER_IMPL"):
        call(inputs, "auto")


def test_non_contiguous_inputs():
    q, k, v, a, b, g, _ = make(2, 21, 3, 8, 4)
    flip = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, a, b, g)]
    assert not flip[0].is_contiguous()
    torch.testing.assert_close(dplr_delta_rule(*flip, impl="chunk")[0],
                               dplr_delta_rule(q, k, v, a, b, g, impl="chunk")[0])


def test_custom_op_opcheck():
    leaves = [x.requires_grad_() for x in make(1, 6, 2, 4, 3)]
    op = _library.OPS["dplr_delta_rule"]
    kw = dict(zip(NAMES, leaves), scale=None, output_final_state=True, impl="chunk")
    torch.library.opcheck(op.fwd, tuple(kw[n] for n in op.names))


def _bad(**over):
    q, k, v, a, b, g, _ = make(2, 10, 3, 8, 4)
    args = dict(q=q, k=k, v=v, a=a, b=b, g=g)
    opts = {key: over.pop(key) for key in list(over) if key in ("initial_state", "cu_seqlens", "impl")}
    args.update(over)
    return lambda: dplr_delta_rule(*args.values(), **opts)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(q=torch.randn(2, 10, 24)), r"^q has shape \[2, 10, 24\], expected \[B, T, H, K\]"),
        (dict(k=torch.randn(2, 10, 3, 7)), r"^k has shape \[2, 10, 3, 7\], expected \[B, T, H, K\]"),
        (dict(v=torch.randn(2, 9, 3, 4)), r"^v has shape \[2, 9, 3, 4\], expected \[B, T, H, V\]"),
        (dict(a=torch.randn(2, 10, 3)), r"^a has shape \[2, 10, 3\], expected \[B, T, H, K\] like q"),
        (dict(b=torch.randn(2, 10, 3, 4)), r"^b has shape \[2, 10, 3, 4\], expected \[B, T, H, K\]"),
        (dict(g=torch.randn(2, 10, 3)), r"^g has shape \[2, 10, 3\], expected \[B, T, H, K\] \(one log"),
        (dict(a=torch.ones(2, 10, 3, 8, dtype=torch.long)), r"^a must be a floating-point tensor"),
        (dict(g=None), r"^g must be a torch.Tensor"),
        (dict(initial_state=torch.randn(2, 3, 4, 8)),
         r"^initial_state has shape \[2, 3, 4, 8\], expected \[B, H, K, V\]"),
        (dict(cu_seqlens=torch.tensor([0, 10])), r"batch dimension must be 1"),
        (dict(impl="cuda"), r"^impl='cuda' is not one of"),
    ],
)
def test_bad_input_raises_one_line_value_error(over, match):
    with pytest.raises(ValueError, match=match) as info:
        _bad(**over)()
    assert "\n" not in str(info.value)


def test_bad_cu_seqlens_and_packed_states():
    q, k, v, a, b, g, _ = make(1, 10, 2, 4, 4)
    with pytest.raises(ValueError, match="end at T=10"):
        dplr_delta_rule(q, k, v, a, b, g, cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match=r"\[N, H, K, V\]"):
        dplr_delta_rule(q, k, v, a, b, g, cu_seqlens=torch.tensor([0, 4, 10]),
                        initial_state=torch.zeros(1, 2, 4, 4))


def test_compiled_call_equals_eager():
    """Under torch.compile (fullgraph: no graph break at the op) the custom op gives the eager
    values and gradients."""
    torch._dynamo.reset()
    inputs = make(1, 11, 2, 4, 3)
    compiled = torch.compile(lambda *xs: call(xs, "chunk"), backend="aot_eager", fullgraph=True)
    results = []
    for fn in (lambda *xs: call(xs, "chunk"), compiled):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, S = fn(*leaves)
        (o.square().sum() + 2 * S.square().sum()).backward()
        results.append([o, S] + [x.grad for x in leaves])
    for name, e, c in zip(("o", "S") + NAMES, *results):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("strict", [False, True])
def test_decayed_scores_against_a_loop_and_gradcheck(strict):
    """The shared chunk piece (kernels/_common.DecayedScores): each score written as a sum over
    keys with its own decay exp(Gr_i - Gc_j), for i >= j (i > j when strict); float64 gradcheck."""
    from postformer.kernels._common import DecayedScores

    gen = torch.Generator().manual_seed(3)
    C, K = 5, 3
    rows, a, k = (torch.randn(2, C, K, generator=gen, dtype=torch.float64) for _ in range(3))
    G_cols = -torch.rand(2, C, K, generator=gen, dtype=torch.float64).cumsum(-2) * 4
    G_rows = G_cols - torch.rand(2, C, K, generator=gen, dtype=torch.float64)
    S = DecayedScores.apply(rows, G_rows, G_cols, strict, a, k)
    for c_idx, c in enumerate((a, k)):
        for n in range(2):
            for i in range(C):
                for j in range(C):
                    inside = i > j if strict else i >= j
                    want = float((rows[n, i] * c[n, j] * (G_rows[n, i] - G_cols[n, j]).exp()).sum()) if inside else 0.0
                    assert abs(float(S[c_idx, n, i, j]) - want) < 1e-12
    leaves = [x.clone().requires_grad_() for x in (rows, G_rows, G_cols, a, k)]
    assert torch.autograd.gradcheck(lambda r, gr, gc, a_, k_: DecayedScores.apply(r, gr, gc, strict, a_, k_),
                                    leaves)


def test_matches_fla_naive_when_installed():
    """A peer's loop (FLA's ``dplr_recurrence``: ``[B, H, T, D]`` layout, its ``alpha`` reads the
    state and its ``beta`` writes, so it takes our b and a), on RWKV-7-like inputs with a state.
    Skips without the `peers` extra."""
    module = fla_naive("ops/generalized_delta_rule/dplr/naive.py")
    q, k, v, a, b, g, h0 = make(1, 40, 2, 16, 8)
    heads_first = [x.transpose(1, 2) for x in (q, k, v, b, a, g)]
    o_fla, S_fla = module.dplr_recurrence(*heads_first, initial_state=h0.clone(), output_final_state=True)
    for impl in ("reference", "chunk"):
        o, S = dplr_delta_rule(q, k, v, a, b, g, initial_state=h0, output_final_state=True, impl=impl)
        assert rel_err(o, o_fla.transpose(1, 2)) < 1e-5 and rel_err(S, S_fla) < 1e-5
