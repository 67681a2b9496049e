"""The ops as torch.library custom ops (kernels/_library.py): ``torch.library.opcheck`` on the
chunk path (CPU), optional inputs present and absent, and a compiled call (``fullgraph=True``:
no graph break at the op) equal to the eager call, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from postformer.kernels import (
    _library,
    causal_conv1d,
    delta_rule,
    gla,
    linear_scan,
    rms_norm,
    selective_scan,
)

B, T, H, K, V, D, N, W = 2, 11, 2, 8, 4, 6, 4, 4


def _r(*shape, scale=1.0, req=True):
    return (torch.randn(*shape) * scale).requires_grad_(req)


def _gates(*shape):
    return (-F.softplus(torch.randn(*shape))).requires_grad_(True)


def _cases():
    """(name, public function, kwargs) of small CPU calls, optional inputs present and absent."""
    torch.manual_seed(0)
    k_n = lambda: F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_(True)  # noqa: E731
    beta = lambda: torch.rand(B, T, H).requires_grad_(True)  # noqa: E731
    return [
        ("gla_plain", gla, dict(q=_r(B, T, H, K), k=_r(B, T, H, K), v=_r(B, T, H, V))),
        ("gla_gated_state", gla, dict(q=_r(B, T, H, K), k=_r(B, T, H, K), v=_r(B, T, H, V),
                                      g=_gates(B, T, H, K), scale=0.3,
                                      initial_state=_r(B, H, K, V), output_final_state=True)),
        ("gla_head_gate", gla, dict(q=_r(B, T, H, K), k=_r(B, T, H, K), v=_r(B, T, H, V),
                                    g=_gates(B, T, H), output_final_state=True)),
        ("delta_rule", delta_rule, dict(q=_r(B, T, H, K), k=k_n(), v=_r(B, T, H, V), beta=beta())),
        ("delta_rule_gated_state", delta_rule, dict(
            q=_r(B, T, H, K), k=k_n(), v=_r(B, T, H, V), beta=beta(), g=_gates(B, T, H),
            initial_state=_r(B, H, K, V), output_final_state=True)),
        ("causal_conv1d", causal_conv1d, dict(x=_r(B, T, D), weight=_r(D, W))),
        ("causal_conv1d_full", causal_conv1d, dict(
            x=_r(B, T, D), weight=_r(D, W), bias=_r(D), activation="silu",
            initial_state=_r(B, D, W - 1), output_final_state=True)),
        ("rms_norm", rms_norm, dict(x=_r(B, T, D), weight=_r(D))),
        ("rms_norm_gated", rms_norm, dict(x=_r(B, T, D), weight=None, gate=_r(B, T, D),
                                          norm_before_gate=False, group_size=3, eps=1e-5)),
        ("selective_scan", selective_scan, dict(
            x=_r(B, T, D), dt=torch.rand(B, T, D).requires_grad_(True), A=_gates(D, N),
            B=_r(B, T, N), C=_r(B, T, N))),
        ("selective_scan_full", selective_scan, dict(
            x=_r(B, T, D), dt=_r(B, T, D), A=_gates(D, N), B=_r(B, T, 2, N), C=_r(B, T, 2, N),
            D=_r(D), z=_r(B, T, D), dt_bias=_r(D), dt_softplus=True,
            initial_state=_r(B, D, N), output_final_state=True)),
        ("linear_scan", linear_scan, dict(x=_r(B, T, D), g=_gates(B, T, D))),
        ("linear_scan_state", linear_scan, dict(x=_r(B, T, D), g=_gates(B, T, D),
                                                initial_state=_r(B, D), output_final_state=True)),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _op_of(fn):
    return _library.OPS[fn.__name__]


def _args(op, kwargs):
    """The custom op's positional arguments for a public call's kwargs (defaults filled)."""
    defaults = {"g": None, "scale": None, "initial_state": None, "output_final_state": False,
                "impl": "chunk", "bias": None, "activation": None, "gate": None, "eps": 1e-6,
                "norm_before_gate": True, "group_size": None, "D": None, "z": None,
                "dt_bias": None, "dt_softplus": False}
    full = {**defaults, **kwargs, "impl": "chunk"}
    return tuple(full[n] for n in op.names)


def test_every_op_is_registered():
    assert set(_library.OPS) == {"gla", "delta_rule", "dplr_delta_rule", "causal_conv1d", "rms_norm",
                                 "selective_scan", "linear_scan"}


@pytest.mark.parametrize("name,fn,kwargs", CASES, ids=IDS)
def test_opcheck(name, fn, kwargs):
    op = _op_of(fn)
    torch.library.opcheck(op.fwd, _args(op, kwargs))


def _outputs(out):
    return [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]


def _grads(fn, kwargs):
    leaves = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    for v in leaves.values():
        v.grad = None
    outs = _outputs(fn(**kwargs))
    sum(o.float().pow(2).sum() * (i + 1) for i, o in enumerate(outs)).backward()
    return outs, {k: v.grad.clone() for k, v in leaves.items()}


@pytest.mark.parametrize("name,fn,kwargs", CASES, ids=IDS)
def test_compiled_equals_eager(name, fn, kwargs):
    """A compiled call (fullgraph: it raises on a graph break) matches the eager one; None
    outputs stay None. aot_eager: the graph as inductor would get it, without its C++ build."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: fn(**kw), backend="aot_eager", fullgraph=True)
    eager_out = fn(**kwargs)
    comp_out = compiled(**kwargs)
    if isinstance(eager_out, tuple):
        assert [o is None for o in eager_out] == [o is None for o in comp_out]
    outs_e, grads_e = _grads(fn, kwargs)
    outs_c, grads_c = _grads(compiled, kwargs)
    for a, b in zip(outs_e, outs_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-5, atol=1e-5, msg=k)


def test_packed_call_falls_back_to_eager():
    """With cu_seqlens the call runs eagerly under compile (a graph break), same result."""
    torch._dynamo.reset()
    x, g = torch.randn(1, T, D), -F.softplus(torch.randn(1, T, D))
    cu = torch.tensor([0, 4, T])
    compiled = torch.compile(lambda x, g: linear_scan(x, g, cu_seqlens=cu, output_final_state=True),
                             backend="aot_eager")
    for a, b in zip(linear_scan(x, g, cu_seqlens=cu, output_final_state=True), compiled(x, g)):
        torch.testing.assert_close(b, a)


def test_eager_calls_do_not_route():
    """Outside Dynamo the public functions run the family code directly (no custom op)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(B, T, D)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rms_norm(x, torch.ones(D))
    assert not any("postformer::" in e.name for e in prof.events())
