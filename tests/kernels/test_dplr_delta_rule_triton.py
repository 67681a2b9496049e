"""dplr_delta_rule's Triton path (the fused recurrent kernels) against a float64 loop written here,
and through the public op against ``impl="reference"``, under the Triton interpreter on CPU
(tests/conftest.py sets TRITON_INTERPRET=1 without CUDA). Forward, final state and the gradient of
every input, the final state in the loss; tiny shapes, the interpreter is slow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_testing import rel_err  # noqa: E402

from postformer.kernels import dplr_delta_rule  # noqa: E402
from postformer.kernels.dplr_delta_rule import triton as tri  # noqa: E402
from postformer.kernels.dplr_delta_rule.triton import dplr_delta_rule_triton  # noqa: E402

NAMES = "q k v a b g h0".split()


def make(B, T, H, K, V, seed=0, n_states=None, strong=False):
    """Inputs of a stable recurrence: ``a = -kk``, ``b = kk * sigmoid(.)`` (kk unit keys), g <= 0;
    ``strong``: half the key channels decay at about -60 (exp(g) ~ 1e-26)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen) / K ** 0.5
    v = torch.randn(B, T, H, V, generator=gen)
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    a = -kk
    b = kk * torch.sigmoid(torch.randn(B, T, H, K, generator=gen))
    g = -F.softplus(torch.randn(B, T, H, K, generator=gen))
    if strong:
        g[..., ::2] = -60 + torch.rand(B, T, H, (K + 1) // 2, generator=gen)
    h0 = torch.randn(n_states or B, H, K, V, generator=gen)
    return [q, k, v, a, b, g, h0]


def naive(q, k, v, a, b, g, h0, scale, cu_seqlens=None):
    """The recurrence step by step in float64, one (sequence, head) at a time, written with explicit
    outer products and matrix-vector products (independent of the op's reference)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    bounds = [(i * T, (i + 1) * T) for i in range(B)] if cu_seqlens is None else \
        list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()))
    flat = [x.double().reshape(B * T, H, -1) for x in (q, k, v, a, b, g)]
    outs = [None] * (B * T)
    finals = []
    for n, (bos, eos) in enumerate(bounds):
        S = h0[n].double() if h0 is not None else torch.zeros(H, K, V, dtype=torch.float64)
        for t in range(bos, eos):
            qt, kt, vt, at, bt, gt = (x[t] for x in flat)
            o_t = []
            S_next = []
            for h in range(H):
                Sh = S[h]
                transition = torch.diag(gt[h].exp()) + torch.outer(at[h], bt[h])
                Sh = transition @ Sh + torch.outer(kt[h], vt[h])
                S_next.append(Sh)
                o_t.append(scale * (qt[h] @ Sh))
            S = torch.stack(S_next)
            outs[t] = torch.stack(o_t)
        finals.append(S)
    o = torch.stack(outs).reshape(B, T, H, V) if outs else torch.zeros(B, T, H, V, dtype=torch.float64)
    return o, torch.stack(finals)


def weights(o_shape, s_shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(o_shape, generator=gen, dtype=torch.float64),
            torch.randn(s_shape, generator=gen, dtype=torch.float64))


def loss_and_grads(fn, inputs, w_o, w_s, dtype):
    """fn's outputs and the gradients of ``<o, w_o> + <S, w_s>`` for every input (``w_* = None``
    drops that term)."""
    leaves = [None if x is None else x.detach().to(dtype).requires_grad_() for x in inputs]
    o, S = fn(*leaves)
    loss = 0.0
    if w_o is not None:
        loss = loss + (o.double() * w_o).sum()
    if w_s is not None:
        loss = loss + (S.double() * w_s).sum()
    loss.backward()
    return o.detach(), S.detach(), [None if x is None else x.grad for x in leaves]


def check(inputs, scale=0.5, cu_seqlens=None, tol=1e-5, block_v=None, use_o=True, use_s=True):
    q, v = inputs[0], inputs[2]
    (B, T, H, K), V = q.shape, v.shape[-1]
    w_o, w_s = weights((B, T, H, V), (B if cu_seqlens is None else len(cu_seqlens) - 1, H, K, V))
    w_o, w_s = (w_o if use_o else None), (w_s if use_s else None)
    o, S, grads = loss_and_grads(
        lambda *x: dplr_delta_rule_triton(*x[:6], scale, x[6], cu_seqlens, block_v=block_v), inputs, w_o, w_s,
        torch.float32)
    o_ref, S_ref, grads_ref = loss_and_grads(lambda *x: naive(*x, scale, cu_seqlens), inputs, w_o, w_s,
                                             torch.float64)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert o.shape == o_ref.shape and S.shape == S_ref.shape
    for name, x, y in [("o", o, o_ref), ("S", S, S_ref)] + list(zip(NAMES, grads, grads_ref)):
        if y is None:  # no path to the loss (q when only the final state is in it): none or zeros
            assert x is None or not x.any(), name
            continue
        err = rel_err(x, y)
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(("B", "T", "K", "V", "block_v", "with_h0"), [
    (2, 37, 16, 12, 8, True),   # two checkpoint blocks (T not a multiple of 32), two V tiles, the last masked
    (1, 40, 12, 16, None, False),  # K not a power of two, no initial state
    (2, 1, 16, 16, None, True),  # T = 1, the decoding step
    (1, 32, 8, 8, None, True),  # exactly one checkpoint block
])
def test_matches_float64_loop(B, T, K, V, block_v, with_h0):
    inputs = make(B, T, 2, K, V, seed=T)
    if not with_h0:
        inputs[6] = None
    check(inputs, block_v=block_v)


def test_strong_decay():
    """g near GATE_FLOOR = -60 on half the key channels: those channels reset every step, nothing
    overflows, dg there is ~exp(-60) small and still matches."""
    check(make(1, 36, 1, 16, 16, seed=3, strong=True))


def test_packed_sequences_with_empty_and_single_step_ones():
    """cu_seqlens in the kernels: an empty sequence (its state passes through, its gradient too), a
    one-step one, and ones across a checkpoint boundary; each from its own initial state."""
    inputs = make(1, 40, 2, 8, 16, seed=5, n_states=4)
    check(inputs, cu_seqlens=torch.tensor([0, 0, 1, 35, 40]), block_v=8)


@pytest.mark.parametrize(("use_o", "use_s"), [(True, False), (False, True)])
def test_one_output_in_the_loss(use_o, use_s):
    """The backward with no final-state gradient, or with no output gradient."""
    check(make(1, 20, 1, 8, 8, seed=7), use_o=use_o, use_s=use_s)


def test_bf16_inputs():
    """bf16 in, fp32 inside: o and every gradient within bf16 rounding (0.4%) of the float64 loop
    on the same rounded inputs; o and the gradients come back in bf16, the state in fp32."""
    inputs = [x.bfloat16().float() for x in make(1, 24, 2, 16, 16, seed=9)]
    w_o, w_s = weights((1, 24, 2, 16), (1, 2, 16, 16))
    leaves = [x.bfloat16().requires_grad_() for x in inputs[:6]] + [inputs[6].clone().requires_grad_()]
    o, S = dplr_delta_rule_triton(*leaves[:6], 0.25, leaves[6], None)
    ((o.double() * w_o).sum() + (S.double() * w_s).sum()).backward()
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref, grads_ref = loss_and_grads(lambda *x: naive(*x, 0.25), inputs, w_o, w_s, torch.float64)
    assert rel_err(o, o_ref) < 1e-2 and rel_err(S, S_ref) < 1e-5
    for name, x, y in zip(NAMES, leaves, grads_ref):
        assert x.grad.dtype == x.dtype, name
        assert rel_err(x.grad, y) < 1e-2, f"{name}: relative error {rel_err(x.grad, y):.2e}"


def test_public_op_against_reference():
    """Through ``dplr_delta_rule(impl="triton")`` (validation, gate floor, dispatch) against
    ``impl="reference"``, packed, with a -inf gate (a full reset, floored to -60 for the kernels)."""
    inputs = make(1, 30, 1, 8, 8, seed=11, n_states=3)
    inputs[5][0, 4, 0, :3] = float("-inf")
    cu = torch.tensor([0, 12, 12, 30])
    w_o, w_s = weights((1, 30, 1, 8), (3, 1, 8, 8))

    def op(impl):
        return lambda q, k, v, a, b, g, h0: dplr_delta_rule(
            q, k, v, a, b, g, scale=0.3, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)

    o, S, grads = loss_and_grads(op("triton"), inputs, w_o, w_s, torch.float32)
    o_ref, S_ref, grads_ref = loss_and_grads(op("reference"), inputs, w_o, w_s, torch.float64)
    for name, x, y in [("o", o, o_ref), ("S", S, S_ref)] + list(zip(NAMES, grads, grads_ref)):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, y) < 1e-5, f"{name}: relative error {rel_err(x, y):.2e}"


def test_inference_stores_no_checkpoints(monkeypatch):
    """Without a gradient the forward kernel runs alone (no checkpoints) and gives the same
    outputs as the autograd path."""
    inputs = make(1, 9, 1, 8, 8, seed=13)
    calls = []
    forward = tri._forward
    monkeypatch.setattr(tri, "_forward", lambda *x, store_ckpt: calls.append(store_ckpt) or forward(
        *x, store_ckpt=store_ckpt))
    with torch.no_grad():
        o, S = dplr_delta_rule_triton(*inputs[:6], 0.5, inputs[6], None)
    o_ref, S_ref = naive(*inputs, 0.5)
    assert calls == [False]
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


def test_no_steps_passes_the_states_through():
    """T = 0 (or only empty packed sequences): no launch, the final states are the initial ones and
    their gradient flows straight back."""
    inputs = make(1, 0, 1, 8, 8, n_states=2)
    h0 = inputs[6].requires_grad_()
    o, S = dplr_delta_rule_triton(*inputs[:6], 0.5, h0, torch.tensor([0, 0, 0]))
    assert o.shape == (1, 0, 1, 8) and torch.equal(S, h0)
    (S * 3).sum().backward()
    assert torch.equal(h0.grad, torch.full_like(h0, 3.0))


def test_rejects_bad_block_v():
    with pytest.raises(ValueError, match="block_v"):
        dplr_delta_rule_triton(*make(1, 2, 1, 8, 8)[:6], 0.5, None, None, block_v=12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    """On the device: K = V = 64 (two V tiles), T = 200 (several checkpoint blocks), packed."""
    inputs = make(1, 200, 2, 64, 64, seed=17, n_states=3)
    cu = torch.tensor([0, 70, 71, 200], device="cuda")
    inputs = [x.cuda() for x in inputs]
    w_o, w_s = (w.cuda() for w in weights((1, 200, 2, 64), (3, 2, 64, 64)))
    rounded = [x.to(dtype).float() for x in inputs[:6]] + [inputs[6]]

    def op(impl):
        return lambda q, k, v, a, b, g, h0: dplr_delta_rule(
            q, k, v, a, b, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, impl=impl)

    leaves = [x.to(dtype).requires_grad_() for x in rounded[:6]] + [rounded[6].clone().requires_grad_()]
    o, S = op("triton")(*leaves)
    ((o.double() * w_o).sum() + (S.double() * w_s).sum()).backward()
    o_ref, S_ref, grads_ref = loss_and_grads(op("reference"), rounded, w_o, w_s, torch.float64)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert rel_err(o, o_ref) < tol and rel_err(S, S_ref) < 1e-4
    for name, x, y in zip(NAMES, leaves, grads_ref):
        assert rel_err(x.grad, y) < tol, f"{name}: relative error {rel_err(x.grad, y):.2e}"
