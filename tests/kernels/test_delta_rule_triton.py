"""delta_rule's Triton path (the chunk form with the state pass as a Triton kernel) against the
reference loop, under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1
without CUDA). Forward, final state and gradients of every input, with the final state in the loss."""

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
        if b is None:
            assert a is None, name
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


def test_half_precision_tracks_reference():
    inputs = make(1, 80, 2, 16, 16, True)
    o, S = delta_rule(*[x.bfloat16() for x in inputs[:4]], inputs[4], initial_state=inputs[5],
                      output_final_state=True, impl="triton")
    o_ref, S_ref = delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, impl="reference")
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert ((o.float() - o_ref).norm() / o_ref.norm()).item() < 2e-2
    assert ((S - S_ref).norm() / S_ref.norm()).item() < 2e-2


@pytest.mark.parametrize(("mode", "T"), [("chunk", 20), ("recurrent", 100)])
def test_both_modes_at_any_length(mode, T, monkeypatch):
    """impl='triton' takes the fused recurrent kernel up to RECURRENT_MAX_T steps and the chunk
    form with the Triton state pass beyond; each must also be right on the other side."""
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
