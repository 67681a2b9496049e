"""Where the time goes: each op's Triton path, forward + backward, kernel by kernel.

    python bench/gpu_profile.py [--ops delta_rule,selective_scan,...] [--smoke] [--device cpu]

For every op at the shapes of bench/ops_bench.py (bf16 inputs, ~32K tokens): one untimed call
(compilation), then one forward + backward under ``torch.profiler``, printing the total device
time, the wall time of the call, and the ten most expensive device kernels (name, calls, ms,
share). The total next to the wall time tells launch- or host-bound code (wall >> device) from
kernel-bound code; the kernel list tells which kernel to work on. ``gla`` rows use
the gla sweep's B x T = 32K, H = 16, K = V = 128 with a scalar and a per-key gate.

Without CUDA (``--device cpu --smoke``) the same runs on tiny CPU shapes through the chunk path,
which exercises the script. Nothing is asserted; it prints, and with ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
OPS = ("delta_rule", "selective_scan", "linear_scan", "causal_conv1d", "rms_norm", "gla_scalar", "gla_key")


def _ops_bench():
    spec = importlib.util.spec_from_file_location("ops_bench", HERE / "ops_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gla_case(gate: str, device: str, dtype: torch.dtype, smoke: bool):
    from postformer.kernels import gla

    B, T, H, K = (1, 64, 2, 16) if smoke else (4, 8192, 16, 128)
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(device, dt).requires_grad_()

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, K)
    shape = (B, T, H) if gate == "scalar" else (B, T, H, K)
    g = F.logsigmoid(torch.randn(*shape, generator=gen) + 3).to(device, torch.float32).requires_grad_()
    return [q, k, v, g], (lambda q, k, v, g: gla(q, k, v, g, impl=impl_for(device))[0]), f"B={B},T={T},H={H},K=V={K}"


def impl_for(device: str) -> str:
    return "triton" if device == "cuda" else "chunk"


def profile_op(op: str, device: str, smoke: bool, top: int = 10) -> dict:
    """One op's profile row: shape, wall ms, device ms, the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    ob = _ops_bench()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if op.startswith("gla_"):
        leaves, f, shape = _gla_case(op[4:], device, dtype, smoke)
    else:
        s = (ob.SMOKE_SHAPES if smoke else ob.SHAPES)[op]
        leaves, _ = ob._inputs(op, s, device, dtype)
        f = ob._call(op, impl_for(device), {})
        shape = ",".join(f"{k}={v}" for k, v in s.items())

    def step():
        for t in leaves:
            t.grad = None
        f(*leaves).float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # compilation and autotuning
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        step()
    wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    attr = "device_time_total" if device == "cuda" else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (device != "cuda" or e.device_type.name == "CUDA")]
    total_us = sum(getattr(e, attr) for e in kernels)
    kernels.sort(key=lambda e: -getattr(e, attr))
    rows = [{"kernel": e.key[:70], "calls": e.count, "ms": getattr(e, attr) / 1e3,
             "share": getattr(e, attr) / max(total_us, 1e-9)} for e in kernels[:top]]
    return {"op": op, "shape": shape, "wall_ms": wall_ms, "device_ms": total_us / 1e3, "kernels": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing profiled (use --device cpu --smoke to exercise the script)")
        return 0
    out = []
    for op in args.ops.split(","):
        if op not in OPS:
            ap.error(f"--ops: unknown op {op!r}; expected some of {', '.join(OPS)}")
        try:
            r = profile_op(op, args.device, args.smoke)
        except Exception as e:  # report and go on with the next op
            print(f"{op}: failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}", flush=True)
            out.append({"op": op, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        out.append(r)
        print(f"\n{op} {r['shape']}: fwd+bwd wall {r['wall_ms']:.2f} ms, device {r['device_ms']:.2f} ms", flush=True)
        for k in r["kernels"]:
            print(f"  {k['ms']:9.3f} ms {100 * k['share']:5.1f}%  x{k['calls']:<4} {k['kernel']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
