"""CUDA timings of gla against FLA and FlashAttention, for the prepared check (bench/gpu_check.sh).

    python bench/gpu_bench.py [--out bench/out] [--budget-s 240] [...]

What is timed (``triton.testing.do_bench``, median and 20th/80th percentiles, L2 flushed
before every run), forward and forward + backward, for T in 512 .. 16K at B x T = 32K tokens,
H = 16, head dims K = V = 128 and 64, bf16 q/k/v with float32 log gates, scalar and per-key:

- ``triton``: ``postformer.kernels.gla(..., impl="triton")``;
- ``chunk``: ``gla(..., impl="chunk")``, the chunked PyTorch path (skipped above
  ``--chunk-max-t``, 8K by default: its Python loop over chunks makes it slow there);
- ``fla``: FLA's Triton ``chunk_simple_gla`` (scalar gate) / ``chunk_gla`` (per-key gate), both
  ``[B, T, H, K]`` like ours, when fla-core is importable;
- attention at the same width (H heads of head dim K, causal): FlashAttention-2
  (``flash_attn_func``) when flash-attn is importable, else SDPA restricted to its flash
  backend (``"sdpa-flash"``);
- a few preset models at 125m (``--models``), a training step under bf16 autocast.

Forward timings run under ``torch.no_grad()`` (inference); forward + backward calls
``o.backward(dO)`` with gradients reset between runs.

Each row also reports throughput (``arch/flops.py`` conventions: a MAC is 2 FLOPs, backward
= 2 x forward):

- gla FLOPs: the chunk form with chunk C = 64 (``_chunked_recurrence_macs``: per chunk
  ``C^2 (K + V) + 2 C K V + K V`` MACs), the same count for every implementation so that
  TFLOP/s ranks like time;
- attention FLOPs: ``QK^T`` and ``PV`` over the causal context, ``4 B H T (T+1)/2 K``;
- bytes: compulsory traffic, each input read and each output written once (forward: q, k,
  v, g in, o out; backward: q, k, v, g, dO in, dq, dk, dv, dg out; attention's backward also
  reads o). Per-chunk states are not counted: a kernel that stores one fp32 ``K x V`` state
  per chunk of 64 moves ``K V 4 / 64`` more bytes per token and head (for K = V = 128 as
  much again as q, k, v and o in bf16), so GB/s is a lower bound on the real traffic.

Percentages are against the GPU's dense bf16 peak and HBM bandwidth from ``PEAKS`` (by
device name; unknown devices get none). A failing row (out of memory, missing kernel,
compile error) is recorded with its error and the run goes on; rows past ``--budget-s``
are recorded as skipped. The JSON is rewritten after every row, so a run killed by a
timeout still leaves what it measured; the Markdown table and the plot come from
``bench/gla_report.py``. Without CUDA the script says so and exits 0 (``--device cpu
--smoke`` runs the same pipeline on tiny CPU shapes with a wall-clock timer).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
#: chunk length of the FLOP count (FLA's and our Triton kernels' chunk)
FLOP_CHUNK = 64

#: (name pattern, label, dense bf16 TFLOP/s, HBM GB/s); first match on the lower-cased
#: ``torch.cuda.get_device_name()`` wins. Vendor datasheet numbers (no sparsity).
PEAKS: tuple[tuple[str, str, float, float], ...] = (
    (r"(?<![a-z])h200", "H200", 989.0, 4800.0),
    (r"(?<![a-z])h100.*pcie", "H100 PCIe", 756.0, 2000.0),
    (r"(?<![a-z])h100.*nvl", "H100 NVL", 835.0, 3900.0),
    (r"(?<![a-z])h100", "H100 SXM", 989.0, 3350.0),
    (r"a100.*80gb.*pcie", "A100 80GB PCIe", 312.0, 1935.0),
    (r"a100.*80gb", "A100 80GB SXM", 312.0, 2039.0),
    (r"a100", "A100 40GB", 312.0, 1555.0),
)

GLA_IMPLS = ("triton", "fla", "chunk")
ALL_IMPLS = (*GLA_IMPLS, "attention")
DEFAULTS = dict(
    seqlens=(512, 1024, 2048, 4096, 8192, 16384), tokens=32768, heads=16, dims=(128, 64),
    gates=("scalar", "key"), modes=("fwd", "fwdbwd"), impls=ALL_IMPLS, chunk_max_t=8192,
    models=("transformer", "mamba2", "gla", "gdn"), model_size="125m", model_batch=8, model_t=1024,
    ops=("delta_rule", "delta_rule_ungated", "selective_scan", "linear_scan", "causal_conv1d", "rms_norm"),
    warmup_ms=10, rep_ms=40,
)
#: ``--smoke``: the same pipeline on shapes a CPU runs in seconds
SMOKE = dict(
    seqlens=(32, 64), tokens=128, heads=2, dims=(16,), chunk_max_t=32, models=("gla",),
    model_size="tiny", model_batch=2, model_t=32, warmup_ms=1, rep_ms=5,
)


def peak_for(device_name: str) -> dict | None:
    """``{"name", "tflops", "gbps"}`` of a known GPU, None for an unknown one."""
    name = device_name.lower()
    for pattern, label, tflops, gbps in PEAKS:
        if re.search(pattern, name):
            return {"name": label, "tflops": tflops, "gbps": gbps}
    return None


# --------------------------------------------------------------------------- counting


def gla_flops(B: int, T: int, H: int, K: int, V: int, mode: str) -> float:
    """FLOPs of gla's chunk form (chunk ``FLOP_CHUNK``), forward or forward + backward."""
    from postformer.arch.flops import _chunked_recurrence_macs

    fwd = 2.0 * B * T * H * _chunked_recurrence_macs(T, FLOP_CHUNK, K, V)
    return fwd if mode == "fwd" else 3.0 * fwd


def attention_flops(B: int, T: int, H: int, D: int, mode: str) -> float:
    """Causal attention: ``QK^T`` and ``PV``, 2 MACs per (query, visible key, channel)."""
    fwd = 2.0 * 2.0 * B * H * D * T * (T + 1) / 2
    return fwd if mode == "fwd" else 3.0 * fwd


def gla_bytes(B: int, T: int, H: int, K: int, V: int, gate: str | None, mode: str,
              elt: int = 2, gate_elt: int = 4) -> float:
    """Compulsory traffic: forward reads q, k, v, g and writes o; backward reads q, k, v, g,
    dO and writes dq, dk, dv, dg. ``elt``/``gate_elt``: bytes per element of q/k/v/o and g."""
    n = B * T * H
    g = 0 if gate in (None, "none") else n * (1 if gate == "scalar" else K) * gate_elt
    fwd = n * (2 * K + 2 * V) * elt + g
    if mode == "fwd":
        return float(fwd)
    bwd = n * (2 * K + 2 * V) * elt + g + n * (2 * K + V) * elt + g
    return float(fwd + bwd)


def attention_bytes(B: int, T: int, H: int, D: int, mode: str, elt: int = 2) -> float:
    """Forward reads q, k, v and writes o; backward reads q, k, v, o, dO and writes dq, dk, dv
    (the log-sum-exp is ignored)."""
    unit = B * T * H * D * elt
    return float(4 * unit if mode == "fwd" else 12 * unit)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Case:
    """One measurement: ``op`` "gla" or "attention"; K = V; ``skip`` non-empty to record
    the case as skipped with that reason."""

    op: str
    impl: str
    gate: str | None
    mode: str
    B: int
    T: int
    H: int
    K: int
    V: int
    skip: str = ""


def make_plan(args: argparse.Namespace, attention: str, have_fla: bool) -> list[Case]:
    """Every case in running order: K = 128 first (the headline), then shorter T first, so a
    run cut short by its budget still has the most useful rows."""
    cases = []
    for K in args.dims:
        for T in args.seqlens:
            B = max(1, args.tokens // T)
            for mode in args.modes:
                if "attention" in args.impls:
                    cases.append(Case("attention", attention, None, mode, B, T, args.heads, K, K))
                for gate in args.gates:
                    for impl in GLA_IMPLS:
                        if impl not in args.impls or (impl == "fla" and not have_fla):
                            continue
                        skip = ""
                        if impl == "chunk" and T > args.chunk_max_t:
                            skip = f"chunk path not timed above T={args.chunk_max_t} (time budget)"
                        cases.append(Case("gla", impl, gate, mode, B, T, args.heads, K, K, skip))
    return cases


# --------------------------------------------------------------------------- the callables


def fla_ops() -> dict[str, Callable] | None:
    """FLA's Triton chunk kernels by gate kind, or None when fla-core is not importable."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # fla-core is optional (and its import can fail in many ways)
        return None
    return {"scalar": chunk_simple_gla, "key": chunk_gla}


def attention_impl() -> tuple[str, Callable, str]:
    """``(name, fn(q, k, v) -> o, layout)``: flash-attn's ``[B, T, H, D]`` function when
    importable, else SDPA on ``[B, H, T, D]`` restricted to its flash backend."""
    try:
        from flash_attn import flash_attn_func

        return "flash-attn", lambda q, k, v: flash_attn_func(q, k, v, causal=True), "bthd"
    except Exception:
        pass
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa_flash(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return "sdpa-flash", sdpa_flash, "bhtd"


def gla_call(impl: str, gate: str, fla: dict | None) -> Callable:
    """``fn(q, k, v, g) -> o`` for one implementation."""
    if impl == "fla":
        if fla is None:
            raise RuntimeError("fla-core is not importable")
        op = fla[gate]
        return lambda q, k, v, g: op(q, k, v, g)[0]
    from postformer.kernels import gla

    return lambda q, k, v, g: gla(q, k, v, g, impl=impl)[0]


def build(case: Case, device: str, fla: dict | None, attn: tuple[str, Callable, str],
          dtype: torch.dtype = torch.bfloat16) -> tuple[Callable[[], None], list[torch.Tensor] | None]:
    """The timed closure of ``case`` and the leaves whose ``.grad`` is reset between runs."""
    B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
    if case.op == "gla":
        q, k = (torch.randn(B, T, H, K, device=device, dtype=dtype) for _ in range(2))
        v = torch.randn(B, T, H, V, device=device, dtype=dtype)
        gshape = (B, T, H) if case.gate == "scalar" else (B, T, H, K)
        g = None if case.gate in (None, "none") else F.logsigmoid(torch.randn(gshape, device=device))
        call, inputs = gla_call(case.impl, case.gate, fla), [q, k, v, g]
    else:
        _, call, layout = attn
        shape = (B, T, H, K) if layout == "bthd" else (B, H, T, K)
        inputs = [torch.randn(shape, device=device, dtype=dtype) for _ in range(3)]
    if case.mode == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                call(*inputs)

        return fwd, None
    leaves = [x.requires_grad_() for x in inputs if x is not None]
    # gla's o is shaped like v ([B, T, H, V]); attention's like v in its layout
    dout = torch.randn_like(inputs[2])

    def fwd_bwd() -> None:
        call(*inputs).backward(dout)

    return fwd_bwd, leaves


# --------------------------------------------------------------------------- timers


def cuda_timer(fn: Callable[[], None], grad_to_none: list | None, warmup_ms: float,
               rep_ms: float) -> tuple[float, float, float]:
    """(median, p20, p80) in ms from ``triton.testing.do_bench``."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                             quantiles=[0.5, 0.2, 0.8])
    return float(p50), float(p20), float(p80)


def wall_timer(fn: Callable[[], None], grad_to_none: list | None, warmup_ms: float,
               rep_ms: float) -> tuple[float, float, float]:
    """The CPU stand-in for ``cuda_timer`` (``--device cpu``): wall clock, at least 3 runs."""
    times = []
    end = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < end:
        for x in grad_to_none or ():
            x.grad = None
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    qs = statistics.quantiles(times, n=10, method="inclusive")  # deciles: qs[1] = p20, qs[7] = p80
    return statistics.median(times), qs[1], qs[7]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _error_note(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


# --------------------------------------------------------------------------- measuring


def _throughput(row: dict, flop: float, nbytes: float, peak: dict | None) -> None:
    s = row["ms"] / 1e3
    row["tflops"] = flop / s / 1e12
    row["gbps"] = nbytes / s / 1e9
    if peak:
        row["pct_flops"] = 100.0 * row["tflops"] / peak["tflops"]
        row["pct_bw"] = 100.0 * row["gbps"] / peak["gbps"]


def measure(case: Case, *, device: str, timer: Callable, warmup_ms: float, rep_ms: float,
            fla: dict | None, attn: tuple, peak: dict | None, deadline: float = math.inf) -> dict:
    """Time one case; never raises (failures become ``status: "error"`` rows)."""
    row = asdict(case)
    row.pop("skip")
    gate_elt = 4  # float32 log gates
    if case.op == "gla":
        row["gflop"] = gla_flops(case.B, case.T, case.H, case.K, case.V, case.mode) / 1e9
        nbytes = gla_bytes(case.B, case.T, case.H, case.K, case.V, case.gate, case.mode, 2, gate_elt)
    else:
        row["gflop"] = attention_flops(case.B, case.T, case.H, case.K, case.mode) / 1e9
        nbytes = attention_bytes(case.B, case.T, case.H, case.K, case.mode)
    row["gbyte"] = nbytes / 1e9
    if case.skip or time.monotonic() > deadline:
        row.update(status="skipped", note=case.skip or "time budget used up")
        return row
    fn = leaves = None
    try:
        fn, leaves = build(case, device, fla, attn)
        t = time.perf_counter()
        fn()  # first call: compilation and autotuning, reported apart
        _sync(device)
        row["first_call_s"] = time.perf_counter() - t
        row["ms"], row["ms_p20"], row["ms_p80"] = timer(fn, leaves, warmup_ms, rep_ms)
        row["status"] = "ok"
        _throughput(row, row["gflop"] * 1e9, nbytes, peak)
    except Exception as e:  # record and go on: one failure must not hide the other numbers
        row.update(status="error", note=_error_note(e))
    finally:
        del fn, leaves
        _free(device)
    return row


def model_rows(args: argparse.Namespace, *, device: str, timer: Callable, peak: dict | None,
               deadline: float = math.inf) -> list[dict]:
    """One forward + backward training step (bf16 autocast on CUDA) per preset model."""
    from postformer.arch import LanguageModel, ModelConfig
    from postformer.arch.flops import flops_per_token

    rows = []
    B, T = args.model_batch, args.model_t
    for arch in args.models:
        row = {"op": "model", "impl": "auto", "arch": arch, "size": args.model_size, "mode": "fwdbwd",
               "B": B, "T": T}
        if time.monotonic() > deadline:
            rows.append({**row, "status": "skipped", "note": "time budget used up"})
            continue
        model = None
        try:
            cfg = ModelConfig.from_preset(arch, args.model_size)
            model = LanguageModel(cfg).to(device)
            tokens = torch.randint(0, cfg.vocab_size, (B, T), device=device)

            def step(model=model, tokens=tokens) -> None:
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    logits = model(tokens)
                F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()

            t = time.perf_counter()
            step()
            _sync(device)
            row["first_call_s"] = time.perf_counter() - t
            row["ms"], row["ms_p20"], row["ms_p80"] = timer(step, list(model.parameters()),
                                                            args.warmup_ms, args.rep_ms)
            row["status"] = "ok"
            row["tokens_per_s"] = B * T / (row["ms"] / 1e3)
            row["tflops"] = flops_per_token(cfg, T, causal=True) * B * T / (row["ms"] / 1e3) / 1e12
            if peak:
                row["pct_flops"] = 100.0 * row["tflops"] / peak["tflops"]
        except Exception as e:
            row.update(status="error", note=_error_note(e))
        finally:
            del model
            _free(device)
        rows.append(row)
        _print_row(row)
    return rows


# --------------------------------------------------------------------------- driver


def _csv(cast: Callable) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
        return tuple(cast(x) for x in items)

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="CUDA timings of gla vs FLA and FlashAttention")
    ap.add_argument("--out", default="bench/out", help="folder for gpu_bench.json/.md and the plot")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: the same pipeline with a wall-clock timer (a smoke test, not a benchmark)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and one tiny model (for --device cpu)")
    ap.add_argument("--seqlens", type=_csv(int), help="comma-separated T (default 512..16384)")
    ap.add_argument("--tokens", type=int, help="B x T (default 32768)")
    ap.add_argument("--heads", type=int, help="H (default 16)")
    ap.add_argument("--dims", type=_csv(int), help="head dims K = V (default 128,64)")
    ap.add_argument("--gates", type=_csv(str), help="scalar,key")
    ap.add_argument("--modes", type=_csv(str), help="fwd,fwdbwd")
    ap.add_argument("--impls", type=_csv(str), help=f"subset of {','.join(ALL_IMPLS)}")
    ap.add_argument("--chunk-max-t", type=int, help="longest T the chunk path is timed at (default 8192)")
    ap.add_argument("--models", type=_csv(str), help="preset archs for model rows; 'none' for none")
    ap.add_argument("--ops", type=_csv(str),
                    help="other ops to time (bench/ops_bench.py); default all five; 'none' for none")
    ap.add_argument("--model-size")
    ap.add_argument("--model-batch", type=int)
    ap.add_argument("--model-t", type=int)
    ap.add_argument("--warmup-ms", type=float, help="do_bench warmup (default 10)")
    ap.add_argument("--rep-ms", type=float, help="do_bench repetition time (default 40)")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="after this many seconds the remaining rows are recorded as skipped")
    args = ap.parse_args(argv)
    defaults = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    bad = {"impls": set(args.impls) - set(ALL_IMPLS), "gates": set(args.gates) - {"scalar", "key"},
           "modes": set(args.modes) - {"fwd", "fwdbwd"}}
    for name, values in bad.items():
        if values:
            ap.error(f"--{name}: unknown {sorted(values)}")
    return args


def _versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name, module in (("triton", "triton"), ("fla", "fla"), ("flash_attn", "flash_attn")):
        try:
            out[name] = getattr(__import__(module), "__version__", "?")
        except Exception:
            out[name] = None
    return out


def _print_row(r: dict) -> None:
    what = f"{r['op']} {r.get('arch') or r['impl']} {r.get('gate') or ''} {r['mode']} K={r.get('K', '-')} T={r['T']} B={r['B']}"
    if r.get("status") == "ok":
        extra = f"{r['ms']:9.3f} ms  ({r['ms_p20']:.3f}-{r['ms_p80']:.3f})  {r.get('tflops', 0):6.1f} TFLOP/s"
        if "gbps" in r:
            extra += f"  {r['gbps']:7.0f} GB/s"
    else:
        extra = f"{r.get('status')}: {r.get('note', '')}"
    print(f"{what:<52} {extra}", flush=True)


def _write_json(data: dict, paths: list[Path]) -> None:
    for path in paths:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def _load_module(name: str):
    """A sibling module of bench/ (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_report():
    return _load_module("gla_report")


def _print_op_row(r: dict) -> None:
    what = f"{r['op']} {r['impl']} {r['mode']} {r['shape']}"
    if r.get("status") == "ok":
        extra = f"{r['ms']:9.3f} ms  ({r['ms_p20']:.3f}-{r['ms_p80']:.3f})  {r['gbps']:7.0f} GB/s"
    else:
        extra = f"{r.get('status')}: {r.get('note', '')}"
    print(f"{what:<60} {extra}", flush=True)


def run(args: argparse.Namespace, timer: Callable | None = None) -> dict:
    """Measure every case of the plan, then the models; write JSON (after every row), the
    Markdown report and the plot into ``args.out``; return the JSON's content."""
    start = time.monotonic()
    deadline = start + args.budget_s
    device = args.device
    timer = timer or (cuda_timer if device == "cuda" else wall_timer)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_for(name) if device == "cuda" else None
    fla = fla_ops() if "fla" in args.impls else None
    attn = attention_impl()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_paths = [out / "gpu_bench.json"] + ([Path(args.json)] if args.json else [])
    meta = {
        "device": name, "peak": peak, **_versions(), "attention": attn[0],
        "tokens": args.tokens, "heads": args.heads, "dtype": "bfloat16", "gate_dtype": "float32",
        "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "budget_s": args.budget_s,
        "timer": "triton.testing.do_bench" if timer is cuda_timer else getattr(timer, "__name__", "?"),
        "complete": False,
    }
    data = {"meta": meta, "rows": []}
    plan = make_plan(args, attn[0], fla is not None)
    print(f"{name}: {len(plan)} gla/attention cases, {len(args.models)} models; "
          f"fla {'found' if fla else 'not importable'}; attention via {attn[0]}", flush=True)
    # Order and shares of the budget: the other ops (bench/ops_bench.py) first, until 45% of it;
    # the gla sweep until 80%; the models with the rest. A phase that finishes early passes its
    # time on; a first call (compilation, a peer's autotuning) can overrun its phase's share.
    ops_deadline = start + 0.45 * args.budget_s
    gla_deadline = start + 0.8 * args.budget_s
    if args.ops:
        def on_row(row: dict) -> None:  # measured rows go into the JSON as they come
            _print_op_row(row)
            data["rows"].append(row)
            _write_json(data, json_paths)

        op_rows = _load_module("ops_bench").op_rows(
            device=device, timer=timer, peak=peak, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
            smoke=args.smoke, deadline=ops_deadline, ops=args.ops, on_row=on_row)
        data["rows"] += [r for r in op_rows if not any(r is seen for seen in data["rows"])]  # the skipped
    for case in plan:
        row = measure(case, device=device, timer=timer, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                      fla=fla, attn=attn, peak=peak, deadline=gla_deadline)
        data["rows"].append(row)
        _print_row(row)
        meta["wall_s"] = time.monotonic() - start
        _write_json(data, json_paths)
    if args.models:
        data["rows"] += model_rows(args, device=device, timer=timer, peak=peak, deadline=deadline)
    meta["wall_s"] = time.monotonic() - start
    meta["complete"] = True
    _write_json(data, json_paths)
    try:
        for path in _load_report().write_report(data, out):
            print(f"wrote {path}")
    except Exception as e:  # the JSON is what matters; gla_report.py can be rerun on it
        print(f"report failed ({_error_note(e)}); rerun bench/gla_report.py {json_paths[0]}")
    n_ok = sum(r.get("status") == "ok" for r in data["rows"])
    print(f"done in {meta['wall_s']:.0f} s: {n_ok}/{len(data['rows'])} rows ok; JSON in {json_paths[0]}")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the CUDA benchmarks are SKIPPED (use --device cpu --smoke to "
              "exercise the pipeline on CPU)", flush=True)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
