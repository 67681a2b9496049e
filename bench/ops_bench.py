"""Timings of the other ops (delta_rule gated and ungated, delta_rule with per-key gates (KDA),
dplr_delta_rule, selective_scan, linear_scan, causal_conv1d, rms_norm) for the prepared GPU
check: ours through ``impl="triton"`` and ``impl="chunk"``, and the peers when they are
importable (FLA's ``chunk_gated_delta_rule``, ``chunk_delta_rule``, ``chunk_kda`` and
``chunk_dplr_delta_rule``, ``chunk_hgrn`` and ``fused_recurrent_hgrn``; mamba_ssm's
``selective_scan_fn``; the ``causal_conv1d`` package's ``causal_conv1d_fn``).

Called by ``bench/gpu_bench.py`` after the gla sweep; every row carries ``op``, ``impl``,
``mode`` (fwd / fwdbwd), ``shape``, timings and the compulsory memory traffic (inputs read and
outputs written once; the backward also reads the output gradient and writes the input
gradients), so elementwise ops can be judged against the GPU's peak bandwidth. A failing row
(a kernel that does not exist yet, a peer missing, out of memory) is recorded, never raised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: (op, shape) at about 32K tokens, the sizes of a 1.3b model's layers
SHAPES: dict[str, dict] = {
    "delta_rule": dict(B=4, T=8192, H=16, K=128, V=128),
    "delta_rule_ungated": dict(B=4, T=8192, H=16, K=128, V=128),
    "kda": dict(B=4, T=8192, H=16, K=128, V=128),
    "dplr_delta_rule": dict(B=4, T=8192, H=16, K=128, V=128),
    "selective_scan": dict(B=4, T=2048, D=4096, N=16),
    "linear_scan": dict(B=4, T=8192, D=2048),
    "causal_conv1d": dict(B=4, T=8192, D=4096, W=4),
    "rms_norm": dict(B=4, T=8192, D=2048),
}
#: the same ops at toy sizes, for checking the bench itself on a CPU
SMOKE_DIMS = dict(B=1, T=64, H=2, K=16, V=16, D=32, N=4, W=4)
SMOKE_SHAPES: dict[str, dict] = {op: {k: SMOKE_DIMS[k] for k in shape} for op, shape in SHAPES.items()}


def _peers() -> dict[str, dict[str, Callable]]:
    """The peer implementations importable here: ``{op: {name: fn}}`` (a name is the row's impl)."""
    peers: dict[str, dict[str, Callable]] = {}
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        peers.setdefault("delta_rule", {})["fla-chunk"] = (
            lambda q, k, v, beta, g: chunk_gated_delta_rule(q, k, v, g, beta)[0])
    except Exception:
        pass
    try:
        from fla.ops.delta_rule import chunk_delta_rule

        peers.setdefault("delta_rule_ungated", {})["fla-chunk"] = (
            lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta)[0])
    except Exception:
        pass
    try:
        from fla.ops.kda import chunk_kda

        peers.setdefault("kda", {})["fla-chunk"] = (
            lambda q, k, v, beta, g: chunk_kda(q, k, v, g, beta)[0])
    except Exception:
        pass
    try:
        from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule

        # FLA's a reads the state and its b writes it: our b and a
        peers.setdefault("dplr_delta_rule", {})["fla-chunk"] = (
            lambda q, k, v, a, b, g: chunk_dplr_delta_rule(q, k, v, b, a, g, scale=q.shape[-1] ** -0.5)[0])
    except Exception:
        pass
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

        peers.setdefault("linear_scan", {}).update({
            "fla-chunk": lambda x, g: chunk_hgrn(x, g)[0],
            "fla-recurrent": lambda x, g: fused_recurrent_hgrn(x, g)[0],
        })
    except Exception:
        pass
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        # mamba_ssm's layout is [B, D, T]
        peers.setdefault("selective_scan", {})["mamba_ssm"] = lambda x, dt, A, Bm, Cm, D, z: selective_scan_fn(
            x.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), D,
            z.transpose(1, 2), delta_softplus=True)
    except Exception:
        pass
    try:
        from causal_conv1d import causal_conv1d_fn

        peers.setdefault("causal_conv1d", {})["causal_conv1d"] = (
            lambda x, w, b: causal_conv1d_fn(x.transpose(1, 2), w, b, activation="silu"))
    except Exception:
        pass
    return peers


def _inputs(op: str, s: dict, device: str, dtype: torch.dtype) -> tuple[list[torch.Tensor], float]:
    """The op's inputs (leaves that want gradients) and the bytes one forward reads and writes."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt).requires_grad_()

    e = torch.tensor([], dtype=dtype).element_size()
    if op in ("delta_rule", "delta_rule_ungated"):  # Gated DeltaNet; DeltaNet (g = None)
        B, T, H, K, V = s["B"], s["T"], s["H"], s["K"], s["V"]
        q, v = rnd(B, T, H, K), rnd(B, T, H, V)
        k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1).to(device, dtype).requires_grad_()
        beta = torch.rand(B, T, H, generator=gen).to(device, dtype).requires_grad_()
        nbytes = B * T * H * (2 * K + 2 * V + 1) * e
        if op == "delta_rule_ungated":
            return [q, k, v, beta], nbytes
        g = F.logsigmoid(torch.randn(B, T, H, generator=gen)).to(device, torch.float32).requires_grad_()
        return [q, k, v, beta, g], nbytes + B * T * H * 4
    if op in ("kda", "dplr_delta_rule"):  # per-key gates; dplr: RWKV-7's a = -(s kk), b = kk
        B, T, H, K, V = s["B"], s["T"], s["H"], s["K"], s["V"]
        q, v = rnd(B, T, H, K), rnd(B, T, H, V)
        kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
        g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen) + 3).to(device, torch.float32).requires_grad_()
        nbytes = B * T * H * (2 * K + 2 * V) * e + B * T * H * K * 4
        if op == "kda":
            beta = torch.rand(B, T, H, generator=gen).to(device, dtype).requires_grad_()
            return [q, kk.to(device, dtype).requires_grad_(), v, beta, g], nbytes + B * T * H * e
        k = rnd(B, T, H, K, scale=K ** -0.5)
        a = (-kk * torch.rand(B, T, H, K, generator=gen)).to(device, dtype).requires_grad_()
        b = kk.to(device, dtype).requires_grad_()
        return [q, k, v, a, b, g], nbytes + 2 * B * T * H * K * e
    if op == "selective_scan":
        B, T, D, N = s["B"], s["T"], s["D"], s["N"]
        x, dt, z = rnd(B, T, D), rnd(B, T, D, scale=0.5), rnd(B, T, D)
        A = (-torch.rand(D, N, generator=gen) - 0.5).to(device, torch.float32).requires_grad_()
        Bm, Cm = rnd(B, T, N), rnd(B, T, N)
        Dp = torch.ones(D).to(device, torch.float32).requires_grad_()
        return [x, dt, A, Bm, Cm, Dp, z], B * T * (4 * D + 2 * N) * e
    if op == "linear_scan":
        B, T, D = s["B"], s["T"], s["D"]
        x = rnd(B, T, D)
        g = F.logsigmoid(torch.randn(B, T, D, generator=gen)).to(device, dtype).requires_grad_()
        return [x, g], 3 * B * T * D * e
    if op == "causal_conv1d":
        B, T, D, W = s["B"], s["T"], s["D"], s["W"]
        return [rnd(B, T, D), rnd(D, W, scale=0.5), rnd(D)], 2 * B * T * D * e
    if op == "rms_norm":
        B, T, D = s["B"], s["T"], s["D"]
        x, gate = rnd(B, T, D), rnd(B, T, D)
        w = torch.ones(D).to(device, dtype).requires_grad_()
        return [x, w, gate], 3 * B * T * D * e
    raise ValueError(f"unknown op {op!r}")


def _call(op: str, impl: str, peers: dict[str, dict[str, Callable]]) -> Callable:
    from postformer import kernels

    if impl in peers.get(op, {}):
        return peers[op][impl]
    if op == "delta_rule":
        return lambda q, k, v, beta, g: kernels.delta_rule(q, k, v, beta, g, impl=impl)[0]
    if op == "delta_rule_ungated":
        return lambda q, k, v, beta: kernels.delta_rule(q, k, v, beta, impl=impl)[0]
    if op == "kda":
        return lambda q, k, v, beta, g: kernels.delta_rule(q, k, v, beta, g, impl=impl)[0]
    if op == "dplr_delta_rule":
        return lambda q, k, v, a, b, g: kernels.dplr_delta_rule(q, k, v, a, b, g, impl=impl)[0]
    if op == "selective_scan":
        return lambda x, dt, A, Bm, Cm, D, z: kernels.selective_scan(
            x, dt, A, Bm, Cm, D, z, dt_softplus=True, impl=impl)[0]
    if op == "linear_scan":
        return lambda x, g: kernels.linear_scan(x, g, impl=impl)[0]
    if op == "causal_conv1d":
        return lambda x, w, b: kernels.causal_conv1d(x, w, b, activation="silu", impl=impl)[0]
    return lambda x, w, gate: kernels.rms_norm(x, w, gate=gate, impl=impl)


def op_rows(*, device: str, timer: Callable, peak: dict | None, warmup_ms: float, rep_ms: float,
            smoke: bool = False, deadline: float = math.inf, ops: tuple[str, ...] | None = None,
            impls: tuple[str, ...] = ("triton", "chunk", "peer"), dtype: torch.dtype | None = None,
            on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Time every (op, impl, mode); return the rows (see the module docstring). ``"peer"`` in
    ``impls`` stands for every peer importable for the op (rows named after the peer)."""
    shapes = SMOKE_SHAPES if smoke else SHAPES
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    peers = _peers()
    rows = []
    for op in ops or tuple(shapes):
        names = [i for i in impls if i != "peer"] + (list(peers.get(op, {})) if "peer" in impls else [])
        for impl in names:
            for mode in ("fwd", "fwdbwd"):
                s = shapes[op]
                row = {"op": op, "impl": impl, "mode": mode, "shape": ",".join(f"{k}={v}" for k, v in s.items()),
                       "dtype": str(dtype).replace("torch.", "")}
                if time.monotonic() > deadline:
                    rows.append({**row, "status": "skipped", "note": "time budget used up"})
                    continue
                leaves = fn = None
                try:
                    leaves, nbytes = _inputs(op, s, device, dtype)
                    f = _call(op, impl, peers)
                    if mode == "fwd":
                        def fn(f=f, leaves=leaves):
                            with torch.no_grad():
                                f(*leaves)
                    else:
                        nbytes *= 3  # backward: reads the inputs and dY again, writes the gradients

                        def fn(f=f, leaves=leaves):
                            f(*leaves).float().sum().backward()
                    t = time.perf_counter()
                    fn()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row["first_call_s"] = time.perf_counter() - t
                    row["ms"], row["ms_p20"], row["ms_p80"] = timer(fn, leaves, warmup_ms, rep_ms)
                    row["status"] = "ok"
                    row["gbyte"] = nbytes / 1e9
                    row["gbps"] = nbytes / (row["ms"] / 1e3) / 1e9
                    if peak:
                        row["pct_bw"] = 100.0 * row["gbps"] / peak["gbps"]
                except Exception as e:  # record and go on
                    first = (str(e).strip().splitlines() or [""])[0]
                    row.update(status="error", note=f"{type(e).__name__}: {first[:160]}")
                finally:
                    del leaves, fn
                    if device == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def ops_table(rows: list[dict]) -> str:
    """A Markdown table of the op rows."""
    ops = [r for r in rows if r.get("op") in SHAPES]
    if not ops:
        return ""
    lines = ["| op | impl | mode | shape | median ms (p20, p80) | GB/s | % peak bw | note |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in ops:
        ok = r.get("status") == "ok"
        ms = f"{r['ms']:.3f} ({r['ms_p20']:.3f}, {r['ms_p80']:.3f})" if ok else r.get("status", "")
        bw = f"{r['gbps']:.0f}" if ok else "-"
        pct = f"{r['pct_bw']:.0f}" if ok and r.get("pct_bw") is not None else "-"
        note = (r.get("note") or "").replace("|", "/")
        lines.append(f"| {r['op']} | {r['impl']} | {r['mode']} | {r['shape']} | {ms} | {bw} | {pct} | {note} |")
    return "\n".join(lines)
