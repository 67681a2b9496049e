"""Time estimates for ``postformer study --plan``: a short measured throughput probe.

Per arch, the smallest and the largest model of the plan train a few optimizer steps
(forward, backward, AdamW) on random tokens at the study's batch size and sequence length,
on this machine's accelerator; their FLOP rates (the arch's own FLOPs per token,
``arch.flops``) are interpolated in ln N for the sizes between (held constant outside).
An evaluation costs a third of a training step per token (the forward alone). A GPU study
planned on a machine without a GPU uses an assumed rate instead: 20% of an H100/H200's
dense bf16 peak (989 TFLOP/s) per device, and says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from postformer.arch import LanguageModel

from ..numbers import fmt_duration
from ..spec import Study
from .plan import plan, plan_tune

#: dense bf16 peak of an H100/H200 SXM (FLOP/s) and the utilisation assumed without a probe
#: (models of a few million to a billion parameters with these kernels: well below the
#: 40-50% large dense transformers reach)
GPU_PEAK = 989e12
ASSUMED_MFU = 0.2
#: an assumed CPU rate when the probe is skipped (FLOP/s; tiny models on 2 cores)
ASSUMED_CPU = 3e10
#: fixed cost per run: process-local setup, checkpoints, the logger (seconds)
RUN_OVERHEAD_S = 0.5


@dataclass
class Speed:
    """FLOP rates per arch: ``points[arch]`` = [(N, FLOP/s), ...] sorted by N."""

    unit: str  # "CPU" | "GPU"
    measured: bool
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    default: float = ASSUMED_CPU
    device_name: str = ""

    def rate(self, arch: str, N: float) -> float:
        pts = self.points.get(arch)
        if not pts:
            return self.default
        if len(pts) == 1 or N <= pts[0][0]:
            return pts[0][1]
        if N >= pts[-1][0]:
            return pts[-1][1]
        for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
            if n0 <= N <= n1:
                t = math.log(N / n0) / math.log(n1 / n0)
                return math.exp(math.log(r0) + t * math.log(r1 / r0))
        return pts[-1][1]

    def describe(self) -> str:
        if not self.measured:
            if self.unit == "GPU":
                return (f"assumed {ASSUMED_MFU:.0%} of {GPU_PEAK / 1e12:.0f} TFLOP/s per GPU "
                        "(no GPU here; run --plan on the GPU for a measurement)")
            return f"assumed {self.default / 1e9:.0f} GFLOP/s (no probe)"
        parts = [f"{a} {min(r for _, r in p) / 1e9:.3g}-{max(r for _, r in p) / 1e9:.3g}"
                 for a, p in self.points.items()]
        return f"measured on {self.device_name}, GFLOP/s: " + ", ".join(parts)


def _wants_gpu(study: Any) -> bool:
    acc = str(study.trainer.get("accelerator", "auto"))
    return acc in ("gpu", "cuda") or study.n_devices > 1


def _probe_one(cfg: Any, batch: int, seq_len: int, device: str, bf16: bool, steps: int = 3
               ) -> float:
    """Seconds per optimizer step (median of ``steps`` after one warm-up step)."""
    torch.manual_seed(0)
    model = LanguageModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def rates(study: Any, points: list, probe: bool = True) -> Speed:
    """The FLOP rates to plan with (see the module docstring)."""
    gpu_here = torch.cuda.is_available()
    if _wants_gpu(study) and not gpu_here:
        return Speed("GPU", False, default=ASSUMED_MFU * GPU_PEAK)
    if not probe:
        return Speed("GPU" if gpu_here else "CPU", False,
                     default=ASSUMED_MFU * GPU_PEAK if gpu_here else ASSUMED_CPU)
    device = "cuda" if gpu_here and str(study.trainer.get("accelerator", "auto")) != "cpu" else "cpu"
    bf16 = device == "cuda" and "bf16" in str(study.trainer.get("precision", ""))
    batch = int(study.data_value("batch_size"))
    speed = Speed("GPU" if device == "cuda" else "CPU", True,
                  device_name=(torch.cuda.get_device_name() if device == "cuda"
                               else f"CPU, {torch.get_num_threads()} threads"))
    for arch in dict.fromkeys(p.arch for p in points):
        mine = sorted({p.N: p for p in points if p.arch == arch}.items())
        picks = [mine[0][1]] if len(mine) == 1 else [mine[0][1], mine[-1][1]]
        pts = []
        for p in picks:
            sec = _probe_one(p.config, batch, study.seq_len, device, bf16)
            pts.append((float(p.N), p.flops_per_token * batch * study.seq_len / sec))
        speed.points[arch] = pts
    return speed


def estimate_seconds(study: Any, point: Any, run: Any, speed: Speed) -> float:
    """Training plus evaluation seconds of one run at ``speed``."""
    rate = speed.rate(point.arch, point.N)  # per device
    devices = study.n_devices if speed.unit == "GPU" else 1
    train = (run.steps - run.start_step) * study.tokens_per_step * point.flops_per_token
    val_tokens = study.eval["tokens"] or 262144
    curve = min(study.eval.get("curve_tokens") or val_tokens, val_tokens)
    evals = (val_tokens + (len(run.eval_at) - 1) * curve) * point.flops_per_token / 3
    return (train / devices + evals) / rate + RUN_OVERHEAD_S


def print_plan(study: Study, probe: bool = True) -> dict[str, float]:
    """``--plan``: every run with its N, D, C and estimated time; returns the totals
    (seconds per stage). The LRs of a tuned main grid are unknown before tuning and do not
    change N, D or C."""
    tune = plan_tune(study, None)
    main = plan(study, {a: _Unknown() for a in study.archs})
    points = tune + main
    speed = rates(study, points, probe=probe)
    print(f"study {study.name}: {len(tune)} tuning runs, {len(main)} main trajectories; "
          f"{study.tokens_per_step} tokens per step; throughput: {speed.describe()}")
    head = f"{'stage':5s} {'run':44s} {'N':>9s} {'D':>9s} {'C':>9s} {'budget':>9s} {'time':>8s}"
    print(head)
    totals: dict[str, float] = {"tune": 0.0, "main": 0.0, "lrcheck": 0.0}
    total_C = 0.0
    for p in points:
        for r in p.runs:
            secs = estimate_seconds(study, p, r, speed)
            totals[p.stage] += secs
            C = p.flops_per_token * r.tokens
            total_C += p.flops_per_token * (r.steps - r.start_step) * study.tokens_per_step
            name = p.name if r.kind != "cooldown" else f"{p.name}/{Path(r.run_dir).name}"
            budget = f"{r.budget_flops:.3g}" if r.budget_flops else "-"
            print(f"{p.stage[:5]:5s} {name[:44]:44s} {p.N:9.3g} {r.tokens:9.3g} {C:9.3g} {budget:>9s} "
                  f"{fmt_duration(secs):>8s}")
    totals["main"] += totals.pop("lrcheck")  # trains with the main grid
    all_s = totals["tune"] + totals["main"]
    unit = speed.unit
    print(f"total: {total_C:.3g} FLOPs trained; estimated {fmt_duration(totals['tune'])} tuning + "
          f"{fmt_duration(totals['main'])} main = {fmt_duration(all_s)}"
          + (f" ({all_s * study.n_devices / 3600:.3g} {unit}-hours on {study.n_devices} "
             f"device{'s' if study.n_devices > 1 else ''})" if unit != "CPU" else ""))
    return totals


class _Unknown:
    """A stand-in LR sweep for planning before tuning: any LR (it does not change N, D, C)."""

    def lr_for(self, N: float) -> float:
        return float("nan")
