"""delta_rule's Triton path (the fused chunk kernels and the fused recurrent kernel) against the
reference loop, under the Triton interpreter on CPU (tests/conftest.py sets
TRITON_INTERPRET=1 without CUDA). Forward, final state and gradients of every input, with the final
state in the loss; and the first chunk kernel (A, its blocked inverse, U, W) on its own against
float64 PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from postformer.kernels import delta_rule  # noqa: E402


def make(B, T, H, K, V, gated, seed=0, strong=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    g = None
    if gated:
        g = -10 * torch.rand(B, T, H, generator=gen) if strong else F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return q, k, v, beta, g, h0


def run(impl, inputs, w_o, w_s, cu_seqlens=None, dtype=torch.float32):
    leaves = [None if x is None else x.detach().to(dtype).requires_grad_() for x in inputs]
    q, k, v, beta, g, h0 = leaves
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens,
                      impl=impl)
    ((o.double() * w_o).sum() + (S.double() * w_s).sum()).backward()
    return o, S, [None if x is None else x.grad for x in leaves]


def check(inputs, cu_seqlens=None, tol=1e-4):
    q, v, h0 = inputs[0], inputs[2], inputs[5]
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(*q.shape[:3], v.shape[-1], generator=gen, dtype=torch.float64)
    w_s = torch.randn(h0.shape, generator=gen, dtype=torch.float64)
    o, S, grads = run("triton", inputs, w_o, w_s, cu_seqlens)
    o_ref, S_ref, grads_ref = run("reference", inputs, w_o, w_s, cu_seqlens, dtype=torch.float64)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    for name, a, b in [("o", o, o_ref), ("S", S, S_ref)] + list(zip("q k v beta g h0".split(), grads, grads_ref)):
        if b is None:  # no path from the input to the loss (e.g. q with T = 0): no gradient or zeros
            assert a is None or not a.any(), name
            continue
        err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
def test_matches_reference(gated, T):
    check(make(1, T, 2, 16, 8, gated))


def test_strong_decay_and_non_power_of_two_dims():
    check(make(2, 70, 1, 24, 40, True, strong=True))


def test_packed_sequences_with_empty_ones():
    q, k, v, beta, g, _ = make(1, 100, 1, 16, 16, True)
    h0 = torch.randn(4, 1, 16, 16)
    check((q, k, v, beta, g, h0), cu_seqlens=torch.tensor([0, 0, 30, 31, 100]))


@pytest.mark.parametrize("gated", [False, True])
def test_packed_sequences_across_chunks(gated):
    """cu_seqlens in the chunk kernels (one launch for all sequences): lengths that end mid-chunk,
    span several chunks, are empty or a single step; each starts from its own state."""
    q, k, v, beta, g, _ = make(1, 203, 2, 16, 24, gated, seed=4)
    h0 = torch.randn(5, 2, 16, 24, generator=torch.Generator().manual_seed(6))
    check((q, k, v, beta, g, h0), cu_seqlens=torch.tensor([0, 70, 70, 199, 200, 203]))


def test_half_precision_tracks_reference():
    inputs = make(1, 80, 2, 16, 16, True)
    o, S = delta_rule(*[x.bfloat16() for x in inputs[:4]], inputs[4], initial_state=inputs[5],
                      output_final_state=True, impl="triton")
    o_ref, S_ref = delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, impl="reference")
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert ((o.float() - o_ref).norm() / o_ref.norm()).item() < 2e-2
    assert ((S - S_ref).norm() / S_ref.norm()).item() < 2e-2


@pytest.mark.parametrize("gated", [False, True])
def test_bf16_gradients_track_float64(gated, monkeypatch):
    """bf16 inputs take bf16 operands and bf16 intermediates in the chunk kernels (emulated under
    the interpreter by rounding the operands, towards zero there); forward and every gradient
    stay within 2.5% of the float64 reference on the same rounded inputs (about 1% measured; the
    bf16 rounding of o and of the gradients alone is 0.4%)."""
    from postformer.kernels.delta_rule import triton as tri

    monkeypatch.setattr(tri, "RECURRENT_MAX_T", 0)
    inputs = make(1, 150, 2, 32, 48, gated, seed=8)
    rounded = [x.bfloat16().float() for x in inputs[:4]] + list(inputs[4:])
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(1, 150, 2, 48, generator=gen, dtype=torch.float64)
    w_s = torch.randn(1, 2, 32, 48, generator=gen, dtype=torch.float64)
    o_ref, S_ref, grads_ref = run("reference", rounded, w_o, w_s, dtype=torch.float64)
    leaves = [x.bfloat16().requires_grad_() for x in rounded[:4]]
    leaves += [None if x is None else x.clone().requires_grad_() for x in rounded[4:]]
    o, S = delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True, impl="triton")
    ((o.double() * w_o).sum() + (S.double() * w_s).sum()).backward()
    assert o.dtype == torch.bfloat16 and leaves[0].grad.dtype == torch.bfloat16
    for name, a, b in [("o", o, o_ref), ("S", S, S_ref)] + [
            (n, None if x is None else x.grad, r) for n, x, r in zip("q k v beta g h0".split(), leaves, grads_ref)]:
        if b is None:
            continue
        err = ((a.detach().double() - b).norm() / b.norm()).item()
        assert err < 2.5e-2, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(("mode", "T"), [("chunk", 20), ("recurrent", 100)])
def test_both_modes_at_any_length(mode, T, monkeypatch):
    """impl='triton' takes the fused recurrent kernel up to RECURRENT_MAX_T steps and the chunk
    kernels beyond; each must also be right on the other side."""
    from postformer.kernels.delta_rule import triton as tri

    monkeypatch.setattr(tri, "RECURRENT_MAX_T", 1000 if mode == "recurrent" else 0)
    check(make(1, T, 2, 16, 8, True))
    check(make(1, T, 1, 16, 8, False))


def test_decoding_steps_continue_a_prefill():
    q, k, v, beta, g, h0 = make(2, 40, 2, 16, 16, True)
    o_full, S_full = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, impl="reference")
    o, S = delta_rule(q[:, :30], k[:, :30], v[:, :30], beta[:, :30], g[:, :30], initial_state=h0,
                      output_final_state=True, impl="triton")
    outs = [o]
    for t in range(30, 40):
        sl = slice(t, t + 1)
        o_t, S = delta_rule(q[:, sl], k[:, sl], v[:, sl], beta[:, sl], g[:, sl], initial_state=S,
                            output_final_state=True, impl="triton")
        outs.append(o_t)
    torch.testing.assert_close(torch.cat(outs, 1), o_full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(S, S_full, atol=1e-5, rtol=1e-4)


# The first chunk kernel on its own: A, the blocked inverse Tm = (I + A)^{-1}, U and W.


def chunk_inputs(corrs, K, g_scale=None, ragged=0, seed=0):
    """Packed rows for one head, one chunk of 64 per entry of ``corrs``: unit keys pulled towards a
    direction shared within the chunk by ``corr`` (so |A_ij| approaches 1 and the inverse grows),
    beta in (0, 1), and with ``g_scale`` log gates uniform in (-g_scale, 0); the last ``ragged``
    rows are cut off (a padded last chunk)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.cat([F.normalize(c * torch.randn(1, K, generator=gen) + torch.randn(64, K, generator=gen), dim=-1)
                   for c in corrs])
    rows = k.shape[0] - ragged
    beta = torch.sigmoid(torch.randn(rows, 1, generator=gen) + 1)
    v = torch.randn(rows, 1, 24, generator=gen)
    g = None if g_scale is None else -g_scale * torch.rand(rows, 1, generator=gen)
    return k[:rows, None].contiguous(), v, beta, g


def prepare(k, v, beta, g):
    """``_wy_fwd`` through the kernels' own wrapper: (Tm [N, 1, 64, 64], U, W)."""
    from postformer.kernels._triton.plan import chunk_plan
    from postformer.kernels.delta_rule import triton as tri

    plan = chunk_plan((0, k.shape[0]), k.device, tri.CHUNK)
    return tri._wy_prepare(k, v, beta, tri._chunk_gates(g, plan), plan, tri._dot_mode(k))


def prepare64(k, v, beta, g):
    """The same in float64 PyTorch from the same fp32 G: A, Tm = inv(I + A), U and W per chunk
    (padded rows zero)."""
    rows, N = k.shape[0], -(-k.shape[0] // 64)
    pad = N * 64 - rows

    def chunks(x):
        return F.pad(x.double(), (0, 0) * (x.dim() - 1) + (0, pad)).view(N, 64, *x.shape[1:])

    kc, vc, bc = chunks(k[:, 0]), chunks(v[:, 0]), chunks(beta)
    # G as the kernels get it: the fp32 cumulative sum (its rounding, ~1e-5 relative in exp(G_i - G_j)
    # at |G| ~ 300, belongs to the gates' input, not to the kernel under test)
    G = torch.zeros(N, 64, 1, dtype=torch.float64) if g is None else chunks(g).float().cumsum(1).double()
    low = torch.ones(64, 64, dtype=torch.bool).tril(-1)
    A = (bc * kc) @ kc.transpose(-1, -2) * (G - G.transpose(-1, -2)).masked_fill(~low, float("-inf")).exp()
    Tm = torch.linalg.inv(torch.eye(64, dtype=torch.float64) + A)
    U, W = Tm @ (bc * vc), Tm @ (bc * G.exp() * kc)
    return A, Tm, U.reshape(N * 64, -1)[:rows], W.reshape(N * 64, -1)[:rows]


def test_inverse_and_pseudo_values_match_float64():
    """Keys from independent to nearly parallel and a ragged last chunk: Tm per chunk to 2e-6
    (each chunk on its own, so a well-conditioned one is not hidden by the rest), exact zeros
    above the diagonal and ones on it, U and W to 1e-5."""
    k, v, beta, g = chunk_inputs((0.0, 1.0, 10.0, 3.0), 16, ragged=13, seed=3)
    Tm, U, W = prepare(k, v, beta, g)
    _, Tm64, U64, W64 = prepare64(k, v, beta, g)
    Tm = Tm[:, 0]
    assert torch.equal(Tm.triu(1), torch.zeros_like(Tm)) and torch.equal(Tm.diagonal(0, -2, -1), torch.ones(4, 64))
    for n in range(4):
        err = ((Tm[n].double() - Tm64[n]).norm() / Tm64[n].norm()).item()
        assert err < 2e-6, f"chunk {n}: relative error {err:.2e}"
    torch.testing.assert_close(Tm[-1, -13:].double(), torch.eye(64, dtype=torch.float64)[-13:], atol=0, rtol=0)
    for name, x, ref in (("U", U[:, 0], U64), ("W", W[:, 0], W64)):
        err = ((x.double() - ref).norm() / ref.norm()).item()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_inverse_under_strong_decay_stays_finite_and_exact():
    """g down to -10 per step: A's subdiagonals fall like exp(-10 d) and underflow; the inverse must
    stay finite, entries above 1e-6 must keep their relative accuracy, and every entry fp32 can
    represent must meet the componentwise forward-substitution bound
    ``|Tm - ref| <= c (|ref| |I + A| |ref|)``. c: 1e-6 (about 16 fp32 roundings) plus the
    rounding of ``G_i - G_j`` formed in fp32 inside the kernel, ``4 max|G| u`` (|G| reaches ~300
    in a chunk here, so about 7e-5; measured 1.4e-6, and 1.4e-5 relative on the large entries)."""
    k, v, beta, g = chunk_inputs((3.0,) * 4, 16, g_scale=10.0)
    Tm = prepare(k, v, beta, g)[0][:, 0].double()
    A, ref, _, _ = prepare64(k, v, beta, g)
    c_G = 4 * g.view(4, 64).cumsum(1).abs().max().item() * 2.0**-24
    assert torch.isfinite(Tm).all()
    big = ref.abs() > 1e-6
    assert ((Tm - ref).abs()[big] <= (1e-5 + c_G) * ref.abs()[big]).all()
    bound = ref.abs() @ (torch.eye(64, dtype=torch.float64) + A).abs() @ ref.abs()
    normal = bound > 1e-30
    assert ((Tm - ref).abs()[normal] <= (1e-6 + c_G) * bound[normal]).all()


def test_chunk_kernels_run_beyond_the_recurrent_length(monkeypatch):
    """impl='triton' beyond RECURRENT_MAX_T runs the fused chunk kernels (_ChunkFn), forward and
    backward; impl='chunk' does not."""
    from postformer.kernels.delta_rule import triton as tri

    calls, apply = [], tri._ChunkFn.apply
    monkeypatch.setattr(tri._ChunkFn, "apply", lambda *a: calls.append(a[0].shape) or apply(*a))
    inputs = make(1, 70, 1, 16, 8, True)
    delta_rule(*inputs[:5], initial_state=inputs[5], impl="chunk")
    assert calls == []
    delta_rule(*inputs[:5], initial_state=inputs[5], impl="triton")
    assert calls == [(70, 1, 16)]  # packed: [rows, H, K]


@pytest.mark.parametrize(("K", "V"), [(80, 72), (128, 16), (16, 130)], ids=["two-tiles", "K128", "V130"])
def test_several_key_and_value_tiles(K, V, monkeypatch):
    """Head sizes that split into several K tiles (64 wide) and V tiles in the chunk kernels."""
    from postformer.kernels.delta_rule import triton as tri

    monkeypatch.setattr(tri, "RECURRENT_MAX_T", 0)
    check(make(1, 129, 1, K, V, True, seed=3))


@pytest.mark.parametrize("used", ["o", "S"])
def test_gradient_through_one_output_only(used, monkeypatch):
    """The backward with no gradient for the final state (dS_T None) or none for o."""
    from postformer.kernels.delta_rule import triton as tri

    monkeypatch.setattr(tri, "RECURRENT_MAX_T", 0)
    inputs = make(2, 100, 2, 16, 16, True, seed=5)
    grads = {}
    for impl in ("triton", "reference"):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        o, S = delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True, impl=impl)
        (o if used == "o" else S).square().sum().backward()
        grads[impl] = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]  # q: no path to S
    for name, a, b in zip("q k v beta g h0".split(), grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


# GPU only: compiled kernels at a realistic size against the CPU float64 references.


@pytest.mark.gpu
def test_cuda_inverse_and_pseudo_values_match_float64():
    """``_wy_fwd`` compiled, fp32 and strongly gated, at K = 64."""
    k, v, beta, g = chunk_inputs((1.0, 3.0, 0.0, 10.0) * 4, 64, g_scale=10.0, seed=9)
    Tm, U, W = (x.cpu() for x in prepare(k.cuda(), v.cuda(), beta.cuda(), g.cuda()))
    _, Tm64, U64, W64 = prepare64(k, v, beta, g)
    for name, x, ref in (("Tm", Tm[:, 0], Tm64), ("U", U[:, 0], U64), ("W", W[:, 0], W64)):
        err = ((x.double() - ref).norm() / ref.norm()).item()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_realistic_size(dtype, strong):
    """impl='auto' on CUDA tensors (the Triton path) against the float64 reference on the CPU:
    forward, final state and every gradient."""
    inputs = make(2, 300, 4, 64, 64, True, seed=11, strong=strong)
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(2, 300, 4, 64, generator=gen, dtype=torch.float64)
    w_s = torch.randn(2, 4, 64, 64, generator=gen, dtype=torch.float64)
    inputs = [x.to(dtype) for x in inputs[:5]] + [inputs[5]]  # the reference sees the same rounded inputs
    o_ref, S_ref, grads_ref = run("reference", inputs, w_o, w_s, dtype=torch.float64)
    leaves = [x.to(dtype).cuda().requires_grad_() for x in inputs[:5]] + [inputs[5].cuda().requires_grad_()]
    o, S = delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True)
    ((o.double() * w_o.cuda()).sum() + (S.double() * w_s.cuda()).sum()).backward()
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    for name, a, b in [("o", o, o_ref), ("S", S, S_ref)] + [
            (n, x.grad, gr) for n, x, gr in zip("q k v beta g h0".split(), leaves, grads_ref)]:
        err = ((a.detach().cpu().double() - b).norm() / b.norm()).item()
        assert err < tol, f"{name}: relative error {err:.2e}"


# Random shapes and packings (hypothesis, derandomised so CI sees the same examples every run).

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(
    K=st.integers(1, 40), V=st.integers(1, 40), gated=st.booleans(),
    lengths=st.lists(st.integers(0, 140), min_size=1, max_size=3), strong=st.booleans())
def test_random_shapes_and_packings_match_reference(K, V, gated, lengths, strong):
    """The chunk kernels at any head sizes (not multiples of 16) and any packing of sequences
    (empty ones, single steps, several chunks), against the reference loop: forward, final
    states and every gradient."""
    T = sum(lengths)
    q, k, v, beta, g, _ = make(1, T, 2, K, V, gated, seed=T + K, strong=strong)
    h0 = torch.randn(len(lengths), 2, K, V, generator=torch.Generator().manual_seed(V))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    check((q, k, v, beta, g, h0), cu_seqlens=cu)
