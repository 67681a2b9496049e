"""Compile every Triton kernel of ``postformer.kernels`` for sm_90 (Hopper) offline and report resources.

Why: most sessions have no GPU, but Triton compiles for any target without one, and the
``cuobjdump`` bundled with Triton (``<triton>/backends/nvidia/bin``) prints the registers, the stack
(spill) bytes and the SASS of the cubin. That is enough to catch the worst performance bugs before
a GPU run: e.g. a [128, 128] x [128, 32] fp32 ``tl.dot`` with ``input_precision="ieee"`` lowered to
scalar FFMAs with ~8.7 KB of spills per thread (33 ms for a T=8K delta-rule forward on an H200).

How: the ops' own Python wrappers run on small CPU tensors with every kernel launch intercepted
(``kernel[grid](...)`` records its arguments and launches nothing), so signatures, pointer dtypes,
integer tables, constexprs and block sizes are exactly the ones the code chooses at the benchmark
shapes (``bench/ops_bench.py`` SHAPES; gla: B, T of delta_rule with H=16, K=V=128). Every distinct
(kernel, constexprs, signature) is then compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", ARCH, 32))`` for every num_warps of the kernel's autotune configs (read
from the Autotuner's ``.configs``, ``POSTFORMER_AUTOTUNE=1``) or the num_warps of the launch when
it does not autotune. The compiles run in worker processes (one per CPU core).

Run::

    python scripts/sm90_check.py                       # all ops, warps from the autotune configs
    python scripts/sm90_check.py --ops gla,delta_rule --warps 4,8 --arch 90
    python scripts/sm90_check.py --json report.json    # also write the rows as JSON

Columns: kernel, variant (the constexprs that differ between the recorded launches of that
kernel; "-" when there is one), w (num_warps), s (num_stages), regs (registers per thread), stack
(stack bytes per thread: > 0 means register spills, marked SPILL), smem (static + dynamic shared
memory bytes Triton allocates), and SASS instruction counts: FFMA (fp32 fused multiply-add), HMMA
(mma.sync tensor-core ops), HGMMA (Hopper wgmma tensor-core ops), LDL/STL (local-memory loads and
stores: spill traffic). FMA-DOT? marks a kernel whose source (or a JIT helper it calls) has a
``tl.dot`` but whose SASS has no HMMA/HGMMA and >= FMA_DOT_MIN FFMAs: the dot probably became
scalar FMAs (``input_precision="ieee"`` on fp32 operands does that). The summary lists the kernels
that failed to compile (exit status 1 if any) and, per kernel, the best warps setting by (no
spills, fewest registers) over its variants.

Limits: resources only, no timing (the fastest config on a GPU may still be another one); the
code is compiled with the local Triton version, which need not be the GPU machine's; the CPU
recording uses a shorter sequence (``--T``, default 1024; recurrent-mode calls use T=64) since T
only sets grids and runtime integer arguments (the wrappers pick blocks from H/K/V/D; rms_norm's
rows per tile saturate long before), though Triton specialises integer arguments equal to 1 and
multiples of 16, which another T may change; constexpr variants are those the recorded calls
reach (bench inputs, plus initial/final states and recurrent mode where an op has them): kernels
no recorded call launches are listed as "never launched" and not compiled. Pointer alignment is
assumed 16 bytes (true of torch allocations, not of every view a caller may pass).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, never the interpreter
os.environ["POSTFORMER_AUTOTUNE"] = "1"  # autotune_configs() keeps every config
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

OPS = ("gla", "delta_rule", "dplr_delta_rule", "selective_scan", "linear_scan", "causal_conv1d", "rms_norm")
OPNAMES = ("FFMA", "HMMA", "HGMMA", "LDL", "STL")
FMA_DOT_MIN = 512
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def bench_shapes() -> dict[str, dict]:
    try:
        from bench.ops_bench import SHAPES
        shapes = {k: dict(v) for k, v in SHAPES.items()}
    except Exception:  # bench's imports unavailable: the values of bench/ops_bench.py SHAPES
        shapes = {"delta_rule": dict(B=4, T=8192, H=16, K=128, V=128),
                  "selective_scan": dict(B=4, T=2048, D=4096, N=16),
                  "linear_scan": dict(B=4, T=8192, D=2048),
                  "causal_conv1d": dict(B=4, T=8192, D=4096, W=4),
                  "rms_norm": dict(B=4, T=8192, D=2048)}
    shapes.setdefault("dplr_delta_rule", dict(shapes["delta_rule"]))
    shapes.setdefault("gla", dict(B=shapes["delta_rule"]["B"], T=shapes["delta_rule"]["T"], H=16, K=128, V=128))
    return shapes


# ----------------------------------------------------------------------------------------------
# recording: run the wrappers on CPU tensors with every launch intercepted
# ----------------------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a kernel in its module: ``rec[grid](*args, **kw)`` stores the launch."""

    def __init__(self, module: str, name: str, orig, sink: list) -> None:
        self.module, self.name, self.orig, self.sink = module, name, orig, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append((self.module, self.name, self.orig, args, kwargs))
        return launch


def _raw(f):
    import triton

    while not isinstance(f, triton.runtime.jit.JITFunction):
        f = f.fn
    return f


def _calls(op: str, s: dict, T: int):
    """(label, thunk) pairs: the calls of ``op`` whose launches are recorded (forward + backward)."""
    import torch

    from postformer import kernels

    bf, f32 = torch.bfloat16, torch.float32
    B = s.get("B", 1)

    def t(*shape, dt=bf):
        return torch.rand(*shape, dtype=f32).mul_(0.1).to(dt).requires_grad_()

    def run(f):
        def thunk():
            out = f()
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(o)]
            sum(o.float().sum() for o in outs if o.requires_grad).backward()
        return thunk

    if op == "gla":
        H, K, V = s["H"], s["K"], s["V"]
        yield "scalar gate", run(lambda: kernels.gla(t(B, T, H, K), t(B, T, H, K), t(B, T, H, V),
                                                     t(B, T, H, dt=f32), impl="triton"))
        yield "per-key gate, h0, ht", run(lambda: kernels.gla(
            t(B, T, H, K), t(B, T, H, K), t(B, T, H, V), t(B, T, H, K, dt=f32),
            initial_state=t(B, H, K, V, dt=f32), output_final_state=True, impl="triton"))
        yield "recurrent (T=64)", run(lambda: kernels.gla(
            t(B, 64, H, K), t(B, 64, H, K), t(B, 64, H, V), t(B, 64, H, K, dt=f32),
            initial_state=t(B, H, K, V, dt=f32), output_final_state=True, impl="triton"))
    elif op == "delta_rule":
        H, K, V = s["H"], s["K"], s["V"]

        def dr(T_, **kw):
            return lambda: kernels.delta_rule(t(B, T_, H, K), t(B, T_, H, K), t(B, T_, H, V), t(B, T_, H),
                                              t(B, T_, H, dt=f32), impl="triton", **kw)
        yield "bench", run(dr(T))
        yield "recurrent (T=64), h0, ht", run(dr(64, initial_state=t(B, H, K, V, dt=f32), output_final_state=True))
        yield "no gate, fp32 (tf32x3)", run(lambda: kernels.delta_rule(
            t(B, T, H, K, dt=f32), t(B, T, H, K, dt=f32), t(B, T, H, V, dt=f32), t(B, T, H, dt=f32), None,
            impl="triton"))
    elif op == "dplr_delta_rule":  # fused recurrent kernels; KDA (per-key delta rule) runs on them too
        H, K, V = s["H"], s["K"], s["V"]
        yield "bench", run(lambda: kernels.dplr_delta_rule(
            t(B, T, H, K), t(B, T, H, K), t(B, T, H, V), -t(B, T, H, K), t(B, T, H, K), -t(B, T, H, K, dt=f32),
            impl="triton"))
        yield "h0, ht", run(lambda: kernels.dplr_delta_rule(
            t(B, 64, H, K), t(B, 64, H, K), t(B, 64, H, V), -t(B, 64, H, K), t(B, 64, H, K),
            -t(B, 64, H, K, dt=f32), initial_state=t(B, H, K, V, dt=f32), output_final_state=True, impl="triton"))
        yield "kda (delta_rule, per-key g)", run(lambda: kernels.delta_rule(
            t(B, T, H, K), t(B, T, H, K), t(B, T, H, V), t(B, T, H), -t(B, T, H, K, dt=f32), impl="triton"))
    elif op == "selective_scan":
        D, N = s["D"], s["N"]
        yield "bench", run(lambda: kernels.selective_scan(
            t(B, T, D), t(B, T, D), -t(D, N, dt=f32) - 0.5, t(B, T, N), t(B, T, N), t(D, dt=f32), t(B, T, D),
            dt_softplus=True, impl="triton"))
        yield "h0, ht", run(lambda: kernels.selective_scan(
            t(B, T, D), t(B, T, D), -t(D, N, dt=f32) - 0.5, t(B, T, N), t(B, T, N), t(D, dt=f32), t(B, T, D),
            dt_softplus=True, initial_state=t(B, D, N, dt=f32), output_final_state=True, impl="triton"))
    elif op == "linear_scan":
        D = s["D"]
        yield "bench", run(lambda: kernels.linear_scan(t(B, T, D), t(B, T, D), impl="triton"))
        yield "h0, ht", run(lambda: kernels.linear_scan(t(B, T, D), t(B, T, D), initial_state=t(B, D, dt=f32),
                                                        output_final_state=True, impl="triton"))
    elif op == "causal_conv1d":
        D, W = s["D"], s["W"]
        yield "bench", run(lambda: kernels.causal_conv1d(t(B, T, D), t(D, W), t(D), activation="silu",
                                                         impl="triton"))
        yield "h0, ht", run(lambda: kernels.causal_conv1d(t(B, T, D), t(D, W), t(D), activation="silu",
                                                          initial_state=t(B, D, W - 1), output_final_state=True,
                                                          impl="triton"))
    elif op == "rms_norm":
        D = s["D"]
        yield "bench", run(lambda: kernels.rms_norm(t(B, T, D), t(D), gate=t(B, T, D), impl="triton"))


def _sig(fn, args, kwargs):
    """(signature, constexprs, attrs, launch options) the JIT would build for this launch."""
    import torch

    bound = dict(zip(fn.arg_names, args))
    opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    consts = {p.name for p in fn.params if p.is_constexpr}
    sig, cx, attrs = {}, {}, {}
    for i, a in enumerate(fn.arg_names):
        v = bound.get(a)
        if a in consts or v is None or isinstance(v, str) or (type(v) is int and v == 1):
            sig[a], cx[a] = "constexpr", v  # ints equal to 1 are specialised like the JIT does
        elif torch.is_tensor(v):
            sig[a] = "*" + _DTYPES[str(v.dtype).replace("torch.", "")]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(v, bool):
            sig[a] = "i1"
        elif isinstance(v, int):
            sig[a] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[a] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {a} of type {type(v).__name__}")
    return sig, cx, attrs, opts


def record(ops, T: int) -> tuple[list[dict], list[str]]:
    """The distinct launches of every op's kernels, and the kernels no recorded call launched.

    Kernels are replaced by recorders where the launchers look them up: the attributes of
    ``postformer.kernels.<op>.triton``, a module, or a package whose ``__init__.py`` holds the
    launchers and imports the kernels from its phase modules (gla, delta_rule)."""
    import importlib

    import triton
    from triton.runtime.autotuner import Autotuner

    shapes = bench_shapes()
    jobs, seen, never = [], set(), []
    for op in ops:
        mod = importlib.import_module(f"postformer.kernels.{op}.triton")
        sink: list = []
        saved = {}
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, (Autotuner, triton.runtime.jit.JITFunction)) and _is_kernel(obj, mod):
                saved[name] = obj
                setattr(mod, name, _Recorder(mod.__name__, name, obj, sink))
        saved_check = mod.check_triton_inputs
        mod.check_triton_inputs = lambda **kw: None
        try:
            for label, thunk in _calls(op, shapes[op], T):
                try:
                    thunk()
                except Exception as e:  # a wrapper that cannot run on CPU: report, go on
                    jobs.append(dict(op=op, kernel=f"<{label}>", error=f"recording failed: {type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:200] if str(e) else ''}"))
        finally:
            for name, obj in saved.items():
                setattr(mod, name, obj)
            mod.check_triton_inputs = saved_check
        launched = set()
        for module, name, orig, args, kwargs in sink:
            launched.add(name)
            fn = _raw(orig)
            sig, cx, attrs, opts = _sig(fn, args, kwargs)
            key = (module, name, repr(sorted(sig.items())), repr(sorted(cx.items())), repr(opts))
            if key in seen:
                continue
            seen.add(key)
            tuned = isinstance(orig, Autotuner)
            configs = [(c.num_warps, c.num_stages) for c in orig.configs] if tuned else \
                [(opts.get("num_warps", 4), opts.get("num_stages", 3))]
            jobs.append(dict(op=op, module=module, kernel=name, sig=sig, cx=cx, attrs=attrs, configs=configs,
                             tuned=tuned, has_dot=_has_dot(fn)))
        never += [f"{op}.{n}" for n in saved if n not in launched]
    return jobs, never


def _is_kernel(obj, mod) -> bool:
    """A launchable kernel (autotuned, or a JIT function launched with a grid somewhere in the
    module: the launchers' module) rather than a ``@triton.jit`` helper called from kernels."""
    from triton.runtime.autotuner import Autotuner

    if isinstance(obj, Autotuner):
        return True
    import inspect

    name = obj.__name__
    return re.search(rf"\b{re.escape(name)}\s*\[", inspect.getsource(mod)) is not None


def _has_dot(fn, depth: int = 3) -> bool:
    """Whether ``fn`` or a JIT helper it calls has a ``tl.dot``. Helpers are looked up where the
    JIT looks them up: the globals of the function's own module (a family's phase module, which
    imports its helpers from e.g. ``common.py`` or ``kernels/_triton/jit.py``)."""
    import triton

    src = fn.src
    if "tl.dot(" in src:
        return True
    if depth == 0:
        return False
    for name, obj in fn.fn.__globals__.items():
        if isinstance(obj, triton.runtime.jit.JITFunction) and obj is not fn and re.search(rf"\b{name}\(", src):
            if _has_dot(obj, depth - 1):
                return True
    return False


# ----------------------------------------------------------------------------------------------
# compiling (worker processes)
# ----------------------------------------------------------------------------------------------

def _bin(tool: str) -> str:
    import triton

    return osp.join(osp.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def tools_available() -> bool:
    try:
        return all(osp.exists(_bin(t)) for t in ("cuobjdump", "ptxas"))
    except Exception:
        return False


def resources(cubin: bytes) -> dict:
    """Registers, stack bytes and SASS op counts of a cubin (through Triton's cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        res = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "--dump-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", res)
    out = {"regs": int(m.group(1)) if m else -1, "stack": int(m.group(2)) if m else -1}
    ops = dict.fromkeys(OPNAMES, 0)
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m and m.group(1) in ops:
            ops[m.group(1)] += 1
    out.update(ops)
    return out


def compile_one(job: dict, warps: int, stages: int, arch: int) -> dict:
    import importlib

    os.environ.pop("TRITON_INTERPRET", None)
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = dict(op=job["op"], kernel=job["kernel"], warps=warps, stages=stages)
    try:
        mod = importlib.import_module(job["module"])
        obj = getattr(mod, job["kernel"])
        fn = _raw(obj.orig if isinstance(obj, _Recorder) else obj)
        src = ASTSource(fn=fn, signature=job["sig"], constexprs=job["cx"], attrs=job["attrs"])
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
        row.update(resources(k.asm["cubin"]))
        row["smem"] = int(getattr(k.metadata, "shared", 0) or 0)
    except Exception as e:
        msg = str(e).strip().splitlines()
        row["error"] = f"{type(e).__name__}: {msg[0][:240] if msg else ''}"
    return row


def check_op(op: str, kernels=None, warps=None, arch: int = 90, T: int = 1024) -> list[dict]:
    """In-process (no worker pool): the resource rows of ``op``'s kernels (all, or those named in
    ``kernels``) for ``warps`` (default: the autotune configs' warps). Call it in a process where
    ``TRITON_INTERPRET`` is unset (e.g. a subprocess, as tests/kernels/test_sm90_check.py does)."""
    jobs, _ = record([op], T)
    rows = []
    for j in jobs:
        if "error" in j:
            rows.append(dict(op=op, kernel=j["kernel"], error=j["error"]))
            continue
        if kernels is not None and j["kernel"] not in kernels:
            continue
        cfg = {w: s for w, s in reversed(j["configs"])}
        for w in warps or list(dict.fromkeys(w for w, _ in j["configs"])):
            r = compile_one({k: v for k, v in j.items() if k != "has_dot"}, w, cfg.get(w, j["configs"][0][1]), arch)
            if "error" not in r:
                r["flags"] = flags(r, j["has_dot"])
            rows.append(r)
    return rows


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def _variant_labels(jobs: list[dict]) -> None:
    """Label each job by the constexprs that differ between the launches of its kernel."""
    by_kernel: dict = {}
    for j in jobs:
        if "error" not in j:
            by_kernel.setdefault((j["op"], j["kernel"]), []).append(j)
    for js in by_kernel.values():
        keys = sorted({k for j in js for k in j["cx"]})
        vary = [k for k in keys if len({repr(j["cx"].get(k)) for j in js}) > 1]
        sigs = len({repr(sorted(j["sig"].items())) for j in js}) > 1
        for j in js:
            parts = [f"{k}={_short(j['cx'].get(k))}" for k in vary]
            if sigs and not parts:
                parts.append(f"sig#{js.index(j)}")
            j["variant"] = " ".join(parts) or "-"


def _short(v):
    return int(v) if isinstance(v, bool) else v


def flags(r: dict, has_dot: bool) -> str:
    f = []
    if r.get("stack", 0) > 0:
        f.append("SPILL")
    if has_dot and r.get("FFMA", 0) >= FMA_DOT_MIN and not (r.get("HMMA") or r.get("HGMMA")):
        f.append("FMA-DOT?")
    return " ".join(f)


def _compile_all(tasks, n_proc: int, arch: int):
    """Yield (job, warps, stages, row) in task order; row None where the worker process died."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/triton state
    with cf.ProcessPoolExecutor(max_workers=max(1, min(n_proc, len(tasks))), mp_context=ctx) as ex:
        futs = [ex.submit(compile_one, {k: v for k, v in j.items() if k != "has_dot"}, w, s, arch)
                for j, w, s in tasks]
        for (j, w, s), fut in zip(tasks, futs):
            try:
                r = fut.result()
            except cf.process.BrokenProcessPool:
                r = None
            except Exception as e:
                r = dict(op=j["op"], kernel=j["kernel"], warps=w, stages=s, error=f"{type(e).__name__}: {e}")
            yield j, w, s, r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability to compile for (90 = H100/H200)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    ap.add_argument("--warps", default="from-autotune",
                    help="'from-autotune' (each num_warps of the kernel's configs) or a list like 4,8")
    ap.add_argument("--T", type=int, default=1024, help="sequence length of the recording calls")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        ap.error(f"unknown ops {bad}; choose from {OPS}")
    if not tools_available():
        print("triton's ptxas/cuobjdump not found (is triton installed with its NVIDIA backend?)", file=sys.stderr)
        return 2
    t0 = time.time()
    jobs, never = record(ops, a.T)
    _variant_labels(jobs)
    tasks = []
    for j in jobs:
        if "error" in j:
            continue
        if a.warps == "from-autotune":
            # one stages value per num_warps: the first config with those warps
            cfg = dict(reversed(j["configs"]))
            cfg = {w: cfg[w] for w in dict.fromkeys(w for w, _ in j["configs"])}
        else:
            stages = j["configs"][0][1]
            cfg = {int(w): stages for w in a.warps.split(",")}
        tasks += [(j, w, s) for w, s in cfg.items()]
    print(f"# recorded {len(jobs)} kernel variants in {time.time() - t0:.1f} s; compiling {len(tasks)} "
          f"for sm_{a.arch} with {a.jobs} processes", flush=True)
    hdr = f"{'kernel':<28}{'variant':<28}{'w':>2}{'s':>2}{'regs':>5}{'stack':>6}{'smem':>7}" + \
        "".join(f"{o:>7}" for o in OPNAMES) + "  flags"
    print(hdr, flush=True)
    rows = []
    def show(j, w, s, r):
        r["variant"] = j["variant"]
        name = f"{j['op']}.{j['kernel']}"
        if "error" in r:
            print(f"{name:<28}{j['variant']:<28}{w:>2}{s:>2}  FAIL {r['error']}", flush=True)
        else:
            r["flags"] = flags(r, j["has_dot"])
            print(f"{name:<28}{j['variant']:<28}{w:>2}{s:>2}{r['regs']:>5}{r['stack']:>6}{r['smem']:>7}"
                  + "".join(f"{r[o]:>7}" for o in OPNAMES) + f"  {r['flags']}", flush=True)
        rows.append(r)

    retry = []
    for j, w, s, r in _compile_all(tasks, a.jobs, a.arch):
        if r is None:  # a worker died (ptxas/LLVM abort): this or a concurrent task; retried alone below
            retry.append((j, w, s))
        else:
            show(j, w, s, r)
    for j, w, s in retry:
        (_, _, _, r), = _compile_all([(j, w, s)], 1, a.arch)
        show(j, w, s, r or dict(op=j["op"], kernel=j["kernel"], warps=w, stages=s,
                                error="the compiling process died (native crash in Triton/LLVM/ptxas)"))
    rows += [dict(op=j["op"], kernel=j["kernel"], error=j["error"]) for j in jobs if "error" in j]
    failed = [r for r in rows if "error" in r]
    print(f"\n# summary ({time.time() - t0:.0f} s)")
    if failed:
        print(f"FAILED ({len(failed)}):")
        for r in failed:
            print(f"  {r['op']}.{r['kernel']} {r.get('variant', '')} w={r.get('warps', '-')}: {r['error']}")
    else:
        print("all compiled")
    if never:
        print("never launched by the recorded calls (not compiled): " + ", ".join(never))
    print("best warps per kernel (no spills in any variant first, then fewest max registers):")
    by: dict = {}
    for r in rows:
        if "error" not in r:
            by.setdefault(f"{r['op']}.{r['kernel']}", {}).setdefault(r["warps"], []).append(r)
    for name, ws in by.items():
        def score(w, ws=ws):
            return (max(r["stack"] for r in ws[w]), max(r["regs"] for r in ws[w]))
        best = min(ws, key=score)
        st, rg = score(best)
        spill = ", ".join(f"w{w}: {score(w)[0]} B" for w in sorted(ws) if score(w)[0] > 0)
        print(f"  {name:<28} warps={best} (regs {rg}, stack {st})" + (f"   spills at {spill}" if spill else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
