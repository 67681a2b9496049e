"""delta_rule against independent computations of

    S' = exp(g_t) S_{t-1},   S_t = S' + beta_t k_t^T (v_t - k_t S'),   o_t = scale q_t S_t.

The independent truth written here is the Householder form of the same recurrence,
S_t = (I - beta_t k_t^T k_t) S' + beta_t k_t^T v_t, with explicit [K, K] matrices in float64;
FLA's own naive loop is a second, outside check where the `peers` extra is installed. The
package's reference loop must match the truth, and the chunked (WY) path must match both in
every case DESIGN.md lists: T around the chunk size, strong decays, packed sequences with empty
ones, decoding steps after a prefill, half precision, and gradients to every input.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import rel_err

from postformer.kernels import delta_rule
from postformer.kernels.delta_rule import delta_rule_chunk


def householder_form(q, k, v, beta, g, scale, h0):
    """The recurrence with explicit I - beta k^T k matrices, float64, [B, T, H, *] inputs."""
    q, k, v, beta = (x.double() for x in (q, k, v, beta))
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=torch.float64) if h0 is None else h0.double().clone()
    eye = torch.eye(K, dtype=torch.float64)
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]  # (B, H, K), (B, H, 1, 1)
        if g is not None:
            S = S * g[:, t].double().exp()[..., None, None]
        house = eye - bt * kt[..., :, None] * kt[..., None, :]  # (B, H, K, K)
        # products as broadcast-and-sum: tiny matmuls in a loop are slow on a busy machine
        S = (house[..., None] * S[..., None, :, :]).sum(-2) + bt * kt[..., None] * v[:, t, :, None, :]
        o[:, t] = scale * (q[:, t, :, :, None] * S).sum(-2)
    return o, S


def fla_naive():
    """FLA's ``fla/ops/gated_delta_rule/naive.py`` (torch + einops only), loaded from its file:
    importing ``fla.ops`` itself takes over ten seconds on CPU. Skips without the `peers` extra."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("install the `peers` extra (fla-core)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops" / "gated_delta_rule" / "naive.py"
    mod_spec = importlib.util.spec_from_file_location("_fla_gated_delta_rule_naive", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def make(B, T, H, K, V, gated=True, dtype=torch.float32, seed=0):
    """Realistic inputs: L2-normalised keys and sigmoid write strengths keep the rule stable."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2) if gated else None
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [x if x is None else x.to(dtype) for x in (q, k, v, beta, g)] + [h0]



@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 15, 63, 64, 65, 130])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_forward_matches_householder_form(gated, T, impl):
    q, k, v, beta, g, h0 = make(2, T, 2, 16, 12, gated)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl=impl)
    o_ref, S_ref = householder_form(q, k, v, beta, g, 16**-0.5, h0)
    assert o.shape == (2, T, 2, 12) and o.dtype == torch.float32
    assert S.shape == (2, 2, 16, 12) and S.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(S, S_ref) < 1e-5


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 15, 64, 65, 130])
def test_chunk_matches_reference_in_float64(gated, T):
    q, k, v, beta, g, h0 = make(1, T, 2, 16, 8, gated, dtype=torch.float64)
    h0 = h0.double()
    o_c, S_c = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    o_r, S_r = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="reference")
    assert o_c.dtype == S_c.dtype == torch.float64
    assert rel_err(o_c, o_r) < 1e-12 and rel_err(S_c, S_r) < 1e-12


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 32])
def test_chunk_sizes_and_ragged_last_chunk(chunk_size):
    # Many chunks with a padded last one: the padding must leave the final state untouched.
    q, k, v, beta, g, h0 = make(1, 30, 2, 8, 8, dtype=torch.float64)
    o, S = delta_rule_chunk(q, k, v, beta, g, 0.5, h0.double(), chunk_size=chunk_size)
    o_ref, S_ref = householder_form(q, k, v, beta, g, 0.5, h0)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_strong_decay_stays_exact():
    # g down to -10 per step: exp(-G) within a 64-step chunk would overflow to inf.
    q, k, v, beta, g, h0 = make(1, 200, 2, 16, 16)
    g = torch.full_like(g, -10.0)
    g[:, ::7] = -0.01  # some steps keep memory, so outputs depend on several positions
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    o_ref, S_ref = householder_form(q, k, v, beta, g, 16**-0.5, h0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5
    xs = [x.clone().requires_grad_() for x in (q, k, v, beta, g, h0)]
    o, S = delta_rule(*xs[:5], initial_state=xs[5], output_final_state=True, impl="chunk")
    (o.sum() + S.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)


def test_scale_and_no_initial_state():
    q, k, v, beta, g, _ = make(1, 40, 2, 8, 8)
    o, S = delta_rule(q, k, v, beta, g, scale=0.3, impl="chunk")
    assert S is None
    o_ref, _ = householder_form(q, k, v, beta, g, 0.3, None)
    assert rel_err(o, o_ref) < 1e-5


@pytest.mark.parametrize("gated", [False, True])
def test_decoding_steps_continue_a_prefill(gated):
    q, k, v, beta, g, _ = make(2, 20, 2, 16, 8, gated)
    full, S_full = delta_rule(q, k, v, beta, g, output_final_state=True, impl="chunk")
    sl = lambda x, a, b: None if x is None else x[:, a:b]  # noqa: E731
    o, S = delta_rule(*(sl(x, 0, 11) for x in (q, k, v, beta, g)), output_final_state=True)
    outs = [o]
    for t in range(11, 20):
        o, S = delta_rule(*(sl(x, t, t + 1) for x in (q, k, v, beta, g)), initial_state=S,
                          output_final_state=True)
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
    assert rel_err(S, S_full) < 1e-5


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("impl", ["reference", "chunk"])
def test_varlen_matches_separate_sequences(gated, impl):
    lens = [5, 0, 70, 1, 0, 33]
    T = sum(lens)
    q, k, v, beta, g, _ = make(1, T, 2, 16, 8, gated)
    h0 = torch.randn(len(lens), 2, 16, 8)
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)
    assert o.shape == (1, T, 2, 8) and S.shape == (len(lens), 2, 16, 8)
    for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        gi = None if g is None else g[:, bos:eos]
        o_ref, S_ref = householder_form(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], beta[:, bos:eos],
                                        gi, 16**-0.5, h0[i : i + 1])
        if eos > bos:
            assert rel_err(o[:, bos:eos], o_ref) < 1e-5
        assert rel_err(S[i : i + 1], S_ref) < 1e-5  # an empty sequence passes its state through


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    q, k, v, beta, g, h0 = make(1, 100, 2, 32, 32, dtype=dtype)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert o.dtype == dtype and S.dtype == torch.float32
    o_ref, S_ref = householder_form(q, k, v, beta, g, 32**-0.5, h0)  # same rounded inputs, float64
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding: 2^-8 and 2^-11
    assert rel_err(o, o_ref) < tol
    assert rel_err(S, S_ref) < 1e-5  # the state is accumulated and returned in float32


@pytest.mark.parametrize("gated", [False, True])
def test_gradients_match_reference(gated):
    inputs = make(2, 45, 2, 16, 8, gated, dtype=torch.float64)
    inputs[-1] = inputs[-1].double()
    grads = {}
    for impl in ("reference", "chunk"):
        xs = [x if x is None else x.clone().requires_grad_() for x in inputs]
        q, k, v, beta, g, h0 = xs
        o, S = delta_rule_chunk(q, k, v, beta, g, 0.25, h0, chunk_size=16) if impl == "chunk" else \
            delta_rule(q, k, v, beta, g, scale=0.25, initial_state=h0, output_final_state=True, impl=impl)
        w_o = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((o * w_o).sum() + (S * w_s).sum()).backward()
        grads[impl] = [None if x is None else x.grad for x in xs]
    for name, a, b in zip("q k v beta g h0".split(), grads["chunk"], grads["reference"]):
        if b is None:
            continue
        assert a is not None, f"no gradient reached {name}"
        assert rel_err(a, b) < 1e-10, name


def test_gradcheck_chunk_across_chunks():
    q, k, v, beta, g, h0 = (x.double().requires_grad_() for x in make(1, 9, 1, 4, 3))

    def f(q, k, v, beta, g, h0):
        return delta_rule_chunk(q, k, v, beta, g, 0.5, h0, chunk_size=4)  # 3 chunks, last ragged

    assert torch.autograd.gradcheck(f, (q, k, v, beta, g, h0))


def test_non_contiguous_inputs():
    q, k, v, beta, g, _ = make(2, 33, 3, 16, 8)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    bt, gt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (beta, g))
    assert not qt.is_contiguous() and not bt.is_contiguous()
    o1, _ = delta_rule(qt, kt, vt, bt, gt, impl="chunk")
    o2, _ = delta_rule(q, k, v, beta, g, impl="chunk")
    torch.testing.assert_close(o1, o2)


def test_env_override_and_auto(monkeypatch):
    q, k, v, beta, g, _ = make(1, 10, 1, 4, 4)
    monkeypatch.setenv("POSTFORMER_IMPL", "reference")
    o1, _ = delta_rule(q, k, v, beta, g)
    monkeypatch.delenv("POSTFORMER_IMPL")
    o2, _ = delta_rule(q, k, v, beta, g)
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("POSTFORMER_IMPL", "fast")
    with pytest.raises(ValueError, match="POSTFORMER_IMPL"):
        delta_rule(q, k, v, beta, g)


def _bad(**over):
    q, k, v, beta, g, _ = make(2, 10, 3, 8, 4)
    args = dict(q=q, k=k, v=v, beta=beta, g=g)
    opts = {key: over.pop(key) for key in list(over) if key in ("initial_state", "cu_seqlens", "impl")}
    args.update(over)
    return lambda: delta_rule(args["q"], args["k"], args["v"], args["beta"], args["g"], **opts)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(q=torch.randn(2, 10, 24)), r"q has shape \[2, 10, 24\], expected \[B, T, H, K\]"),
        (dict(k=torch.randn(2, 10, 3, 7)), r"k has shape \[2, 10, 3, 7\], expected \[B, T, H, K\]"),
        (dict(v=torch.randn(2, 9, 3, 4)), r"v has shape \[2, 9, 3, 4\], expected \[B, T, H, V\]"),
        (dict(beta=torch.randn(2, 10, 3, 1)), r"beta has shape \[2, 10, 3, 1\], expected \[B, T, H\]"),
        (dict(beta=torch.ones(2, 10, 3, dtype=torch.long)), r"beta must be a floating-point tensor"),
        (dict(g=torch.randn(2, 10, 3, 7)), r"g has shape \[2, 10, 3, 7\], expected None or \[B, T, H\]"),
        (dict(initial_state=torch.randn(2, 3, 4, 8)), r"initial_state has shape \[2, 3, 4, 8\], expected \[B, H, K, V\]"),
        (dict(cu_seqlens=torch.tensor([0, 10])), r"batch dimension must be 1"),
        (dict(impl="cuda"), r"impl='cuda' is not one of"),
        (dict(q=torch.randint(0, 3, (2, 10, 3, 8))), r"q must be a floating-point tensor"),
    ],
)
def test_bad_input_raises_value_error(over, match):
    with pytest.raises(ValueError, match=match):
        _bad(**over)()


def test_bad_cu_seqlens():
    q, k, v, beta, g, _ = make(1, 10, 2, 4, 4)
    with pytest.raises(ValueError, match="end at T=10"):
        delta_rule(q, k, v, beta, g, cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="int32/int64"):
        delta_rule(q, k, v, beta, g, cu_seqlens=torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match=r"\[N, H, K, V\]"):
        delta_rule(q, k, v, beta, g, cu_seqlens=torch.tensor([0, 4, 10]), initial_state=torch.zeros(1, 2, 4, 4))


def test_triton_refuses_float64():
    pytest.importorskip("triton")
    q, k, v, beta, g, _ = make(1, 4, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 inputs need impl='chunk'"):
        delta_rule(q, k, v, beta, g, impl="triton")


@pytest.mark.parametrize("gated", [False, True])
def test_matches_fla_naive_when_installed(gated):
    """A peer's implementation (argument order q, k, v, beta, g; no key normalisation inside)."""
    naive = fla_naive()
    q, k, v, beta, g, h0 = make(1, 100, 2, 16, 16, gated)
    g_fla = torch.zeros_like(beta) if g is None else g
    o_fla, S_fla = naive.naive_recurrent_gated_delta_rule(
        q, k, v, beta, g_fla, initial_state=h0.clone(), output_final_state=True
    )
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="chunk")
    assert rel_err(o, o_fla) < 1e-5 and rel_err(S, S_fla) < 1e-5
