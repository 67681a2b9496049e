"""Turn the JSON of ``bench/gpu_bench.py`` into a Markdown report and a log-log plot.

    python bench/gla_report.py bench/out/gpu_bench.json [--out DIR]

writes ``DIR/gpu_bench.md`` (summary tables of median time per sequence length, then every
measurement with its quantiles, TFLOP/s, GB/s and failures) and ``DIR/gla_time_vs_T.png``
(time against T, log-log, one panel per head dim and mode). ``DIR`` defaults to the JSON's
folder. Needs only the standard library and matplotlib (no torch), so a report can be
rebuilt anywhere from a JSON copied off the GPU machine.

The JSON is ``{"meta": {...}, "rows": [...]}``. A row of op ``gla`` or ``attention`` has
``impl, gate, mode ("fwd" | "fwdbwd"), B, T, H, K, V, status ("ok" | "error" | "skipped"),
ms, ms_p20, ms_p80, tflops, gbps, pct_flops, pct_bw, note``; a row of op ``model`` has
``arch, size, B, T, status, ms, tflops, pct_flops, tokens_per_s, note``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from pathlib import Path

#: column order of the summary tables: ours first, then the peer, then the PyTorch path
IMPL_ORDER = ("triton", "fla", "chunk", "flash-attn", "sdpa-flash")
GATE_ORDER = ("none", "scalar", "key")
MODE_TITLE = {"fwd": "forward", "fwdbwd": "forward + backward"}
MD_NAME = "gpu_bench.md"
PLOT_NAME = "gla_time_vs_T.png"


def series_label(row: dict) -> str:
    """``"triton scalar"`` for a gla row (impl and gate), the impl alone for attention."""
    if row.get("op") == "gla":
        return f"{row['impl']} {row.get('gate') or 'none'}"
    return str(row["impl"])


def _series_key(label: str) -> tuple:
    impl, _, gate = label.partition(" ")
    i = IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)
    g = GATE_ORDER.index(gate) if gate in GATE_ORDER else -1  # attention (no gate) last
    return (g == -1, g, i, label)


def fmt_ms(x: float | None) -> str:
    """Three significant digits without exponents: 0.0123, 1.23, 12.3, 123."""
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_T(T: int) -> str:
    """512, 1K, 16K."""
    return f"{T // 1024}K" if T >= 1024 and T % 1024 == 0 else str(T)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("status") == "ok":
        return fmt_ms(row.get("ms"))
    return "skip" if row.get("status") == "skipped" else "err"


def _kernel_rows(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("op") in ("gla", "attention")]


def _panels(rows: list[dict]) -> list[tuple[int, str]]:
    """(head dim K, mode) pairs present, larger K first, forward before forward+backward."""
    pairs = {(int(r["K"]), r["mode"]) for r in rows}
    return sorted(pairs, key=lambda p: (-p[0], list(MODE_TITLE).index(p[1]) if p[1] in MODE_TITLE else 9))


def summary_table(rows: list[dict], K: int, mode: str) -> str:
    """Markdown table of median ms: one line per T, one column per series (impl + gate)."""
    sel = [r for r in _kernel_rows(rows) if int(r["K"]) == K and r["mode"] == mode]
    labels = sorted({series_label(r) for r in sel}, key=_series_key)
    Ts = sorted({int(r["T"]) for r in sel})
    by = {(int(r["T"]), series_label(r)): r for r in sel}
    lines = [
        "| T | B | " + " | ".join(labels) + " |",
        "|---:|---:|" + "---:|" * len(labels),
    ]
    for T in Ts:
        B = next(int(r["B"]) for r in sel if int(r["T"]) == T)
        cells = [_cell(by.get((T, label))) for label in labels]
        lines.append(f"| {T} | {B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
    """Every gla/attention measurement: quantiles, throughput, fraction of peak, notes."""
    lines = [
        "| series | mode | K | T | B | median ms | p20 ms | p80 ms | TFLOP/s | % peak | GB/s | % peak BW "
        "| first call s | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = sorted(
        _kernel_rows(rows),
        key=lambda r: (-int(r["K"]), r["mode"], _series_key(series_label(r)), int(r["T"])),
    )
    for r in order:
        ok = r.get("status") == "ok"
        note = r.get("note") or ("" if ok else r.get("status", ""))
        lines.append(
            f"| {series_label(r)} | {r['mode']} | {r['K']} | {r['T']} | {r['B']} | "
            f"{fmt_ms(r.get('ms')) if ok else r.get('status')} | "
            f"{fmt_ms(r.get('ms_p20')) if ok else '-'} | {fmt_ms(r.get('ms_p80')) if ok else '-'} | "
            f"{_fmt(r.get('tflops')) if ok else '-'} | {_fmt(r.get('pct_flops')) if ok else '-'} | "
            f"{_fmt(r.get('gbps'), 0) if ok else '-'} | {_fmt(r.get('pct_bw')) if ok else '-'} | "
            f"{_fmt(r.get('first_call_s'), 2) if ok else '-'} | {note.replace('|', '/')} |"
        )
    return "\n".join(lines)


def model_table(rows: list[dict]) -> str:
    models = [r for r in rows if r.get("op") == "model"]
    if not models:
        return ""
    lines = [
        "| model | B x T | median ms | tokens/s | TFLOP/s | % peak | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in models:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['arch']}-{r.get('size', '')} | {r['B']} x {r['T']} | "
            f"{fmt_ms(r.get('ms')) if ok else r.get('status')} | "
            f"{_fmt(r.get('tokens_per_s'), 0) if ok else '-'} | {_fmt(r.get('tflops')) if ok else '-'} | "
            f"{_fmt(r.get('pct_flops')) if ok else '-'} | {(r.get('note') or '').replace('|', '/')} |"
        )
    return "\n".join(lines)


def _where(row: dict) -> str:
    """The shape of a row, for the failure list."""
    return row.get("shape") or f"T={row.get('T')} K={row.get('K', '-')}"


def _ops_table(rows: list[dict]) -> str:
    """The table of bench/ops_bench.py's rows (loaded from the file: bench/ is not a package)."""
    if not any(r.get("op") not in ("gla", "attention", "model") for r in rows):
        return ""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ops_bench", Path(__file__).resolve().parent / "ops_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ops_table(rows)


def markdown(data: dict) -> str:
    """The whole report as Markdown."""
    meta, rows = data.get("meta", {}), data.get("rows", [])
    peak = meta.get("peak")
    peak_txt = (
        f"{peak['name']}: {peak['tflops']:g} TFLOP/s dense bf16, {peak['gbps']:g} GB/s"
        if peak else "unknown device: no peak, no percentages"
    )
    versions = ", ".join(
        f"{name} {meta[name]}" for name in ("torch", "cuda", "triton", "fla", "flash_attn") if meta.get(name)
    )
    out = [
        f"# gla benchmarks on {meta.get('device', 'unknown device')}",
        "",
        f"- versions: {versions or 'unknown'}",
        f"- peak: {peak_txt}",
        f"- shapes: B x T = {meta.get('tokens', '?')} tokens, H = {meta.get('heads', '?')}, "
        f"q/k/v {meta.get('dtype', '?')}, log gates {meta.get('gate_dtype', '?')}; attention: "
        f"{meta.get('attention', '?')}, causal, same H and head dim",
        f"- timing: {meta.get('timer', 'triton.testing.do_bench')}, warmup {meta.get('warmup_ms', '?')} ms, "
        f"rep {meta.get('rep_ms', '?')} ms; median (p20, p80) in ms; "
        f"wall time {_fmt(meta.get('wall_s'), 0)} s"
        + ("" if meta.get("complete", True) else " (**incomplete run**: rows after the last one are missing)"),
        "- TFLOP/s: chunk-form FLOPs with chunk 64 (arch/flops.py), the same count for every gla "
        "implementation; attention: causal QK^T and PV; forward + backward = 3 x forward.",
        "- first call s: the untimed call before timing (compilation and autotuning included).",
        "- GB/s: compulsory traffic only (inputs read and outputs written once, backward reads "
        "q, k, v, g, dO and writes their gradients); per-chunk state traffic is not counted.",
        "",
    ]
    kern = _kernel_rows(rows)
    for K, mode in _panels(kern):
        out += [f"## {MODE_TITLE.get(mode, mode)}, K = V = {K}: median ms", "", summary_table(kern, K, mode), ""]
    ops = _ops_table(rows)
    if ops:
        out += ["## Other ops (bench/ops_bench.py)", "", ops, ""]
    models = model_table(rows)
    if models:
        out += ["## Models (forward + backward, bf16 autocast)", "", models, ""]
    if kern:
        out += ["## All measurements", "", detail_table(kern), ""]
    failed = [r for r in rows if r.get("status") == "error"]
    if failed:
        out += ["## Failures", ""]
        out += [f"- {r.get('op')} {series_label(r) if r.get('op') != 'model' else r.get('arch')} "
                f"{r.get('mode', '')} {_where(r)}: {r.get('note', '')}" for r in failed]
        out.append("")
    return "\n".join(out)


def plot(data: dict, path: str | Path) -> bool:
    """Log-log time vs T, one panel per (K, mode), one line per series with its p20-p80 band.
    Returns False (and writes nothing) when there is no successful measurement."""
    kern = [r for r in _kernel_rows(data.get("rows", [])) if r.get("status") == "ok"]
    if not kern:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    panels = _panels(kern)
    Ks = sorted({K for K, _ in panels}, reverse=True)
    modes = [m for m in MODE_TITLE if any(p[1] == m for p in panels)]
    fig, axes = plt.subplots(len(modes), len(Ks), figsize=(5.5 * len(Ks), 4.2 * len(modes)), squeeze=False)
    labels = sorted({series_label(r) for r in kern}, key=_series_key)
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for i, mode in enumerate(modes):
        for j, K in enumerate(Ks):
            ax = axes[i][j]
            for label in labels:
                pts = sorted(
                    (int(r["T"]), r["ms"], r.get("ms_p20", r["ms"]), r.get("ms_p80", r["ms"]))
                    for r in kern
                    if series_label(r) == label and int(r["K"]) == K and r["mode"] == mode
                )
                if not pts:
                    continue
                T, ms, lo, hi = zip(*pts)
                style = ":" if " " not in label else ("--" if label.endswith("key") else "-")
                ax.plot(T, ms, style, marker="o", ms=3, color=colors[label], label=label)
                ax.fill_between(T, lo, hi, color=colors[label], alpha=0.2, lw=0)
            ax.set(xscale="log", yscale="log", xlabel="T (B x T fixed)", ylabel="ms",
                   title=f"{MODE_TITLE.get(mode, mode)}, K = V = {K}")
            Ts = sorted({int(r["T"]) for r in kern})
            ax.set_xticks(Ts, [fmt_T(T) for T in Ts])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no successful run", ha="center", va="center", transform=ax.transAxes)
    meta = data.get("meta", {})
    fig.suptitle(f"gla vs T on {meta.get('device', '?')} ({meta.get('tokens', '?')} tokens, H={meta.get('heads', '?')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(data: dict, out_dir: str | Path) -> list[Path]:
    """Write the Markdown report and (when anything succeeded) the plot; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / MD_NAME
    md.write_text(markdown(data))
    written = [md]
    png = out_dir / PLOT_NAME
    if plot(data, png):
        written.append(png)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="the JSON written by bench/gpu_bench.py")
    ap.add_argument("--out", help="output folder (default: the JSON's folder)")
    args = ap.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    for path in write_report(data, args.out or Path(args.json).parent):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
