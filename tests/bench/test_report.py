"""The CPU-testable parts of the GPU benchmark (bench/gpu_bench.py) and its report
(bench/gla_report.py): FLOP and byte counts against hand counts and FlopCounterMode, the peak
table, the plan, per-row failure capture, and the Markdown table and plot from synthetic rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gb = _load("gpu_bench")
report = _load("gla_report")


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize(
    "name, label",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA GH200 480GB", None),
        ("Tesla V100-SXM2-16GB", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table(name, label):
    peak = gb.peak_for(name)
    assert (peak and peak["name"]) == label
    if label == "H100 SXM":
        assert peak["tflops"] == pytest.approx(989, rel=0.01) and peak["gbps"] == 3350
    if label == "H200":
        assert peak["gbps"] == 4800


@pytest.mark.parametrize("T", [128, 100])
def test_gla_flops_match_the_chunk_paths_matmuls(T):
    # FlopCounterMode counts the matmuls gla's chunk path really runs with chunk 64 (a ragged
    # last chunk is padded); the formula adds the state passing a S + U (K V MACs per chunk),
    # which is elementwise and not counted by FlopCounterMode.
    from postformer.kernels.gla import gla_chunk

    B, H, K, V = 2, 3, 16, 8
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v = torch.randn(B, T, H, V)
    with FlopCounterMode(display=False) as counter:
        gla_chunk(q, k, v, None, 0.25, None, chunk_size=64)
    n_chunks = 2
    state_passing = 2 * B * H * n_chunks * K * V
    assert gb.gla_flops(B, T, H, K, V, "fwd") == counter.get_total_flops() + state_passing
    assert gb.gla_flops(B, T, H, K, V, "fwdbwd") == 3 * gb.gla_flops(B, T, H, K, V, "fwd")


def test_attention_flops_count_the_causal_pairs():
    B, T, H, D = 2, 37, 3, 16
    pairs = sum(i + 1 for i in range(T))  # query i sees keys 0..i
    per_pair = 2 * D * 2  # QK^T and PV: D MACs each, 2 FLOPs per MAC
    assert gb.attention_flops(B, T, H, D, "fwd") == B * H * pairs * per_pair
    assert gb.attention_flops(B, T, H, D, "fwdbwd") == 3 * B * H * pairs * per_pair


def test_bytes_by_hand():
    # B=1, T=128, H=2, K=V=16 in bf16 (2 bytes), float32 gates: one [T, H, 16] bf16 tensor
    # is 8192 bytes, a scalar gate 1024, a per-key gate 16384.
    x, gs, gk = 8192, 1024, 16384
    assert gb.gla_bytes(1, 128, 2, 16, 16, "scalar", "fwd") == 4 * x + gs  # q k v g in, o out
    assert gb.gla_bytes(1, 128, 2, 16, 16, "key", "fwd") == 4 * x + gk
    assert gb.gla_bytes(1, 128, 2, 16, 16, None, "fwd") == 4 * x
    # backward: q k v g dO in, dq dk dv dg out
    assert gb.gla_bytes(1, 128, 2, 16, 16, "scalar", "fwdbwd") == (4 * x + gs) + (4 * x + gs) + (3 * x + gs)
    assert gb.gla_bytes(1, 128, 2, 16, 16, "key", "fwdbwd") == 11 * x + 3 * gk
    assert gb.attention_bytes(1, 128, 2, 16, "fwd") == 4 * x
    assert gb.attention_bytes(1, 128, 2, 16, "fwdbwd") == 4 * x + 8 * x  # + q k v o dO in, dq dk dv out


# --------------------------------------------------------------------------- the plan


def test_default_plan_covers_the_issue():
    args = gb.parse_args([])
    assert args.seqlens == (512, 1024, 2048, 4096, 8192, 16384) and args.dims == (128, 64)
    plan = gb.make_plan(args, "sdpa-flash", have_fla=True)
    # 2 dims x 6 T x 2 modes x (attention + 2 gates x 3 impls)
    assert len(plan) == 2 * 6 * 2 * 7
    assert all(c.B * c.T == 32768 and c.H == 16 and c.K == c.V for c in plan)
    assert plan[0].K == 128 and plan[-1].K == 64  # the headline dim first
    skipped = {(c.impl, c.T) for c in plan if c.skip}
    assert skipped == {("chunk", 16384)}
    no_fla = gb.make_plan(args, "sdpa-flash", have_fla=False)
    assert len(no_fla) == 2 * 6 * 2 * 5 and not any(c.impl == "fla" for c in no_fla)


def test_parse_args_overrides_and_errors():
    args = gb.parse_args(["--seqlens", "64,128", "--models", "none", "--impls", "chunk"])
    assert args.seqlens == (64, 128) and args.models == () and args.impls == ("chunk",)
    assert args.tokens == 32768  # untouched defaults stay
    smoke = gb.parse_args(["--smoke", "--device", "cpu"])
    assert smoke.tokens == gb.SMOKE["tokens"] and smoke.models == ("gla",)
    with pytest.raises(SystemExit):
        gb.parse_args(["--impls", "chunk,cudnn"])


# --------------------------------------------------------------------------- measuring


def test_measure_records_times_throughput_and_failures():
    attn = gb.attention_impl()
    case = gb.Case("gla", "chunk", "key", "fwdbwd", B=2, T=32, H=2, K=16, V=16)
    seen = {}

    def fake_timer(fn, leaves, warmup_ms, rep_ms):
        fn()
        # forward + backward must reach every input, the gate included
        seen["grads"] = [x.grad is not None and bool(x.grad.abs().sum() > 0) for x in leaves]
        return 2.0, 1.5, 2.5

    peak = {"name": "test", "tflops": 1e-3, "gbps": 1.0}
    row = gb.measure(case, device="cpu", timer=fake_timer, warmup_ms=1, rep_ms=1, fla=None,
                     attn=attn, peak=peak)
    assert row["status"] == "ok" and seen["grads"] == [True] * 4
    assert (row["ms"], row["ms_p20"], row["ms_p80"]) == (2.0, 1.5, 2.5)
    flop = gb.gla_flops(2, 32, 2, 16, 16, "fwdbwd")
    assert row["tflops"] == pytest.approx(flop / 2e-3 / 1e12)
    assert row["pct_flops"] == pytest.approx(100 * row["tflops"] / 1e-3)
    nbytes = gb.gla_bytes(2, 32, 2, 16, 16, "key", "fwdbwd")
    assert row["gbps"] == pytest.approx(nbytes / 2e-3 / 1e9)

    def oom_timer(fn, leaves, warmup_ms, rep_ms):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")

    row = gb.measure(case, device="cpu", timer=oom_timer, warmup_ms=1, rep_ms=1, fla=None,
                     attn=attn, peak=peak)
    assert row["status"] == "error" and row["note"] == "out of memory" and "ms" not in row
    missing = gb.measure(gb.Case("gla", "fla", "scalar", "fwd", 2, 32, 2, 16, 16), device="cpu",
                         timer=fake_timer, warmup_ms=1, rep_ms=1, fla=None, attn=attn, peak=None)
    assert missing["status"] == "error" and "fla-core" in missing["note"]
    late = gb.measure(case, device="cpu", timer=fake_timer, warmup_ms=1, rep_ms=1, fla=None,
                      attn=attn, peak=None, deadline=0.0)
    assert late["status"] == "skipped" and "budget" in late["note"]


def test_run_on_cpu_writes_json_markdown_and_plot(tmp_path, capsys):
    args = gb.parse_args(["--device", "cpu", "--smoke", "--impls", "chunk,attention", "--models", "none",
                          "--out", str(tmp_path), "--modes", "fwd", "--ops", "none"])
    calls = []

    def fake_timer(fn, leaves, warmup_ms, rep_ms):
        fn()
        calls.append(1)
        return 1.0 + len(calls), 1.0, 9.0

    data = gb.run(args, timer=fake_timer)
    saved = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert saved == json.loads(json.dumps(data)) and saved["meta"]["complete"]
    ok = [r for r in saved["rows"] if r["status"] == "ok"]
    # T=32: attention + chunk scalar + chunk key; T=64: attention (chunk skipped above 32)
    assert [(r["impl"], r["gate"], r["T"]) for r in ok] == [
        ("sdpa-flash", None, 32), ("chunk", "scalar", 32), ("chunk", "key", 32), ("sdpa-flash", None, 64)]
    assert [r["ms"] for r in ok] == [2.0, 3.0, 4.0, 5.0]
    assert (tmp_path / report.MD_NAME).exists() and (tmp_path / report.PLOT_NAME).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_main_without_cuda_says_skipped(tmp_path, capsys):
    assert gb.main(["--out", str(tmp_path)]) == 0
    assert "SKIPPED" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the report


def _row(impl, gate, mode, T, ms, K=128, status="ok", note=""):
    r = {"op": "gla" if gate else "attention", "impl": impl, "gate": gate, "mode": mode,
         "B": 32768 // T, "T": T, "H": 16, "K": K, "V": K, "status": status, "note": note}
    if status == "ok":
        r.update(ms=ms, ms_p20=0.9 * ms, ms_p80=1.1 * ms, tflops=123.45, pct_flops=12.48,
                 gbps=1500.0, pct_bw=44.8, first_call_s=3.14159)
    return r


SYNTHETIC = {
    "meta": {"device": "NVIDIA H100 80GB HBM3", "peak": {"name": "H100 SXM", "tflops": 989.0, "gbps": 3350.0},
             "torch": "2.6", "triton": "3.2", "fla": None, "tokens": 32768, "heads": 16,
             "dtype": "bfloat16", "gate_dtype": "float32", "attention": "sdpa-flash",
             "warmup_ms": 10, "rep_ms": 40, "wall_s": 95.0, "complete": False},
    "rows": [
        _row("triton", "scalar", "fwd", 512, 0.1234),
        _row("chunk", "scalar", "fwd", 512, 2.5),
        _row("sdpa-flash", None, "fwd", 512, 0.5),
        _row("triton", "key", "fwd", 512, 0.0, status="error", note="NotImplementedError: no kernel"),
        _row("triton", "scalar", "fwd", 1024, 0.25),
        _row("chunk", "scalar", "fwd", 1024, 0.0, status="skipped", note="time budget used up"),
        _row("sdpa-flash", None, "fwd", 1024, 1.75),
        _row("triton", "scalar", "fwdbwd", 512, 12.345),
        _row("triton", "scalar", "fwd", 512, 150.0, K=64),
        {"op": "model", "impl": "auto", "arch": "gla", "size": "125m", "mode": "fwdbwd", "B": 8,
         "T": 1024, "status": "ok", "ms": 80.0, "tokens_per_s": 102400.0, "tflops": 77.7, "pct_flops": 7.86},
    ],
}


def _table_after(md: str, heading: str) -> list[dict[str, str]]:
    """Parse the Markdown table under ``heading`` into {column: cell} dicts."""
    lines = md.splitlines()
    i = lines.index(heading) + 2
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_markdown_summary_tables():
    md = report.markdown(SYNTHETIC)
    fwd = _table_after(md, "## forward, K = V = 128: median ms")
    assert [r["T"] for r in fwd] == ["512", "1024"]
    assert list(fwd[0])[2:] == ["triton scalar", "chunk scalar", "triton key", "sdpa-flash"]
    assert fwd[0] == {"T": "512", "B": "64", "triton scalar": "0.123", "chunk scalar": "2.50",
                      "triton key": "err", "sdpa-flash": "0.5"}
    assert fwd[1] == {"T": "1024", "B": "32", "triton scalar": "0.25", "chunk scalar": "skip",
                      "triton key": "", "sdpa-flash": "1.75"}
    assert _table_after(md, "## forward + backward, K = V = 128: median ms")[0]["triton scalar"] == "12.3"
    assert _table_after(md, "## forward, K = V = 64: median ms")[0]["triton scalar"] == "150"
    # the headline K = 128 comes before K = 64, forward before forward + backward
    assert md.index("K = V = 128: median") < md.index("K = V = 64: median")
    assert md.index("## forward, K = V = 128") < md.index("## forward + backward, K = V = 128")


def test_markdown_details_models_failures_and_header():
    md = report.markdown(SYNTHETIC)
    assert "H100 SXM: 989 TFLOP/s" in md and "incomplete run" in md
    detail = _table_after(md, "## All measurements")
    first = next(r for r in detail if r["series"] == "triton scalar" and r["T"] == "512" and r["K"] == "128"
                 and r["mode"] == "fwd")
    assert (first["median ms"], first["p20 ms"], first["p80 ms"]) == ("0.123", "0.111", "0.136")
    assert (first["TFLOP/s"], first["% peak"], first["GB/s"], first["% peak BW"]) == ("123.5", "12.5", "1500", "44.8")
    assert first["first call s"] == "3.14"
    failed = next(r for r in detail if r["series"] == "triton key")
    assert failed["median ms"] == "error" and failed["note"] == "NotImplementedError: no kernel"
    models = _table_after(md, "## Models (forward + backward, bf16 autocast)")
    assert models == [{"model": "gla-125m", "B x T": "8 x 1024", "median ms": "80.0", "tokens/s": "102400",
                       "TFLOP/s": "77.7", "% peak": "7.9", "note": ""}]
    failures = md[md.index("## Failures"):]
    assert "triton key fwd T=512 K=128: NotImplementedError: no kernel" in failures


def test_report_cli_writes_markdown_and_png(tmp_path):
    path = tmp_path / "gpu_bench.json"
    path.write_text(json.dumps(SYNTHETIC))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / report.PLOT_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w = matplotlib.image.imread(png).shape[:2]
    assert w > 800 and h > 600  # two panels wide (K = 128, 64), two high (fwd, fwd+bwd)
    assert (tmp_path / "out" / report.MD_NAME).read_text() == report.markdown(SYNTHETIC)


def test_report_without_successful_rows_has_no_plot(tmp_path):
    data = {"meta": {}, "rows": [_row("triton", "scalar", "fwd", 512, 0.0, status="error", note="boom")]}
    written = report.write_report(data, tmp_path)
    assert written == [tmp_path / report.MD_NAME]
    assert "boom" in written[0].read_text()


def test_fmt_helpers():
    assert [report.fmt_ms(x) for x in (0.01234, 1.234, 12.34, 123.4, float("nan"))] == [
        "0.0123", "1.23", "12.3", "123", "-"]
    assert [report.fmt_T(T) for T in (512, 1024, 16384, 1000)] == ["512", "1K", "16K", "1000"]


def test_op_rows_time_every_op_and_record_failures():
    """bench/ops_bench.py on CPU: the chunk path of every op times and moves the bytes its docstring
    counts; an implementation that cannot run becomes an error row."""
    ob = _load("ops_bench")
    calls = []

    def fake_timer(fn, leaves, warmup_ms, rep_ms):
        fn()
        calls.append(1)
        return 2.0, 1.0, 3.0

    rows = ob.op_rows(device="cpu", timer=fake_timer, peak={"gbps": 1000.0}, warmup_ms=0, rep_ms=0, smoke=True,
                      impls=("chunk", "nope"))
    chunk = [r for r in rows if r["impl"] == "chunk"]
    assert {(r["op"], r["mode"]) for r in chunk} == {(op, m) for op in ob.SHAPES for m in ("fwd", "fwdbwd")}
    assert all(r["status"] == "ok" for r in chunk)
    conv = next(r for r in chunk if r["op"] == "causal_conv1d" and r["mode"] == "fwd")
    s = ob.SMOKE_SHAPES["causal_conv1d"]
    assert conv["gbyte"] * 1e9 == 2 * s["B"] * s["T"] * s["D"] * 4  # x read, y written, float32
    assert conv["gbps"] == pytest.approx(conv["gbyte"] / 2e-3) and conv["pct_bw"] == pytest.approx(conv["gbps"] / 10)
    assert all(r["status"] == "error" for r in rows if r["impl"] == "nope")
    assert "| causal_conv1d | chunk | fwd |" in ob.ops_table(rows)
