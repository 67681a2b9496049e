"""Every op's Triton kernels compiled for a real GPU (``-m gpu``; skipped without CUDA).

The interpreter tests (test_*_triton.py) run the same kernels on CPU; these catch what only a
compiled kernel gets wrong (layouts, ``tl.dot`` precision, masks the interpreter forgives,
autotuned configurations). Each case runs ``impl="triton"`` on CUDA and ``impl="reference"``
(the readable loop) on CPU in float64 on the same inputs, with the same random weighting of
every output and final state in the loss, and compares outputs, final states and the gradients
of every input. Tolerances are relative errors in the Frobenius norm: fp32 cases 2e-3 (``tl.dot``
may use TF32), bf16 cases 3e-2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_testing import rel_err  # noqa: E402

from postformer.kernels import causal_conv1d, delta_rule, gla, linear_scan, rms_norm, selective_scan  # noqa: E402

pytestmark = pytest.mark.gpu


DEVICE = "cuda"  # a test of this file's harness may point it at "cpu" under TRITON_INTERPRET=1


def compare(fn, args: dict, *, dtype=torch.float32, keep_fp32=(), tol=None, **kwargs):
    """Run ``fn(**args, **kwargs)`` with impl="triton" on CUDA (floating tensors cast to
    ``dtype``, those named in ``keep_fp32`` to float32) and impl="reference" on CPU in float64;
    compare every output and the gradient of every floating input."""
    tol = tol or (2e-3 if dtype == torch.float32 else 3e-2)
    gen = torch.Generator().manual_seed(123)

    def leaves(device, reference):
        """The inputs as the kernel gets them; the reference gets the same values in float64."""
        out = {}
        for name, t in args.items():
            if t is None or not t.is_floating_point():
                out[name] = None if t is None else t.to(device)
                continue
            t = t.to(torch.float32 if name in keep_fp32 else dtype)
            out[name] = t.to(device, torch.float64 if reference else t.dtype).detach().requires_grad_()
        return out

    def run(device, reference, impl):
        inp = leaves(device, reference)
        outs = fn(**inp, impl=impl, **kwargs)
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o is not None]
        return inp, outs

    inp_t, outs_t = run(DEVICE, False, "triton")
    inp_r, outs_r = run("cpu", True, "reference")
    assert len(outs_t) == len(outs_r)
    ws = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs_r]
    sum((o.double().cpu() * w).sum() for o, w in zip(outs_t, ws)).backward()
    sum((o * w).sum() for o, w in zip(outs_r, ws)).backward()
    for i, (a, b) in enumerate(zip(outs_t, outs_r)):
        assert rel_err(a, b) < tol, f"output {i}: relative error {rel_err(a, b):.2e}"
    for name, a in inp_t.items():
        if a is None or not a.is_floating_point():
            continue
        b = inp_r[name]
        assert a.grad is not None, f"no gradient for {name}"
        assert rel_err(a.grad, b.grad) < 2 * tol, f"d{name}: relative error {rel_err(a.grad, b.grad):.2e}"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
def test_delta_rule(gated, varlen, dtype):
    g_ = _gen(1)
    B, T, H, K, V = (1, 333, 3, 64, 64) if varlen else (2, 300, 3, 64, 64)
    N = 3 if varlen else B
    args = dict(
        q=torch.randn(B, T, H, K, generator=g_),
        k=F.normalize(torch.randn(B, T, H, K, generator=g_), dim=-1),
        v=torch.randn(B, T, H, V, generator=g_),
        beta=torch.sigmoid(torch.randn(B, T, H, generator=g_)),
        g=F.logsigmoid(torch.randn(B, T, H, generator=g_) + 3) if gated else None,
        initial_state=torch.randn(N, H, K, V, generator=g_),
        cu_seqlens=torch.tensor([0, 100, 101, T]) if varlen else None,
    )
    compare(delta_rule, args, dtype=dtype, output_final_state=True, keep_fp32=("initial_state", "g"))


def test_delta_rule_strong_decay_and_short_t():
    for T in (1, 40):
        g_ = _gen(T)
        B, H, K, V = 2, 2, 64, 32
        args = dict(
            q=torch.randn(B, T, H, K, generator=g_),
            k=F.normalize(torch.randn(B, T, H, K, generator=g_), dim=-1),
            v=torch.randn(B, T, H, V, generator=g_),
            beta=torch.sigmoid(torch.randn(B, T, H, generator=g_)),
            g=-10 * torch.rand(B, T, H, generator=g_),
            initial_state=torch.randn(B, H, K, V, generator=g_),
        )
        compare(delta_rule, args, output_final_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", ["none", "scalar", "key"])
def test_gla_varlen(gate, dtype):
    g_ = _gen(2)
    T, H, K, V = 333, 2, 64, 64
    args = dict(
        q=torch.randn(1, T, H, K, generator=g_),
        k=torch.randn(1, T, H, K, generator=g_),
        v=torch.randn(1, T, H, V, generator=g_),
        g=None if gate == "none" else F.logsigmoid(torch.randn(1, T, H, *((K,) if gate == "key" else ()), generator=g_) + 3),
        initial_state=torch.randn(3, H, K, V, generator=g_),
        cu_seqlens=torch.tensor([0, 70, 71, T]),
    )
    compare(gla, args, dtype=dtype, output_final_state=True, keep_fp32=("initial_state", "g"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("full", [False, True], ids=["bare", "D-z-bias-groups"])
def test_selective_scan(full, dtype):
    g_ = _gen(3)
    Bt, T, D, N, G = 2, 300, 64, 16, 2
    args = dict(
        x=torch.randn(Bt, T, D, generator=g_),
        dt=torch.randn(Bt, T, D, generator=g_) - 1 if full else torch.rand(Bt, T, D, generator=g_) * 0.1,
        A=-torch.rand(D, N, generator=g_) * 4,
        B=torch.randn(Bt, T, G, N, generator=g_) if full else torch.randn(Bt, T, N, generator=g_),
        C=torch.randn(Bt, T, G, N, generator=g_) if full else torch.randn(Bt, T, N, generator=g_),
        D=torch.randn(D, generator=g_) if full else None,
        z=torch.randn(Bt, T, D, generator=g_) if full else None,
        dt_bias=torch.randn(D, generator=g_) if full else None,
        initial_state=torch.randn(Bt, D, N, generator=g_),
    )
    compare(selective_scan, args, dtype=dtype, dt_softplus=full, output_final_state=True,
            keep_fp32=("A", "D", "dt_bias", "initial_state"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
def test_linear_scan(varlen, dtype):
    g_ = _gen(4)
    B, T, D = (1, 3000, 96) if varlen else (2, 3000, 96)
    args = dict(
        x=torch.randn(B, T, D, generator=g_),
        g=F.logsigmoid(torch.randn(B, T, D, generator=g_) + 1),
        initial_state=torch.randn(4 if varlen else B, D, generator=g_),
        cu_seqlens=torch.tensor([0, 1000, 1000, 2001, T]) if varlen else None,
    )
    compare(linear_scan, args, dtype=dtype, output_final_state=True, keep_fp32=("initial_state",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
@pytest.mark.parametrize("W", [2, 4])
def test_causal_conv1d(W, varlen, dtype):
    g_ = _gen(5)
    B, T, D = (1, 700, 192) if varlen else (2, 700, 192)
    args = dict(
        x=torch.randn(B, T, D, generator=g_),
        weight=torch.randn(D, W, generator=g_),
        bias=torch.randn(D, generator=g_),
        initial_state=torch.randn(3 if varlen else B, D, W - 1, generator=g_),
        cu_seqlens=torch.tensor([0, 2, 300, T]) if varlen else None,
    )
    compare(causal_conv1d, args, dtype=dtype, activation="silu", output_final_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("before", [True, False], ids=["norm-then-gate", "gate-then-norm"])
def test_rms_norm(before, dtype):
    g_ = _gen(6)
    args = dict(
        x=torch.randn(3, 100, 1536, generator=g_),
        weight=torch.randn(1536, generator=g_),
        gate=torch.randn(3, 100, 1536, generator=g_),
    )
    compare(rms_norm, args, dtype=dtype, norm_before_gate=before, group_size=768)
