"""Training step time, eager against ``--model.compile true`` (each block compiled in place with
``torch.compile``, as ``LMModule.compile_model`` does): one forward + backward + AdamW step of a
small LanguageModel per arch, the median of ``--steps`` steps after ``--warmup`` steps (the first
compiled step's compile time is reported on its own). On CPU by default, and on CUDA too when a
GPU is present (``--device``).

    python bench/compile_bench.py                           # gla, mamba, gdn, transformer on CPU
    python bench/compile_bench.py --archs gla --d-model 256 --seq 512 --device cuda
    python bench/compile_bench.py --backend aot_eager       # the trace without inductor's codegen

Both runs start from the same weights and data; the table also shows the largest difference of
the step losses, which should be float32 noise.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from postformer.arch import LanguageModel, ModelConfig

PATTERNS = {"gla": ["gla"], "mamba": ["mamba"], "gdn": ["gdn"], "transformer": ["attn"]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(model: torch.nn.Module, batches: list[torch.Tensor], device: str,
               warmup: int) -> tuple[list[float], list[float], float]:
    """Train ``model`` one step per batch; returns (seconds of each timed step, every step's
    loss, seconds of the first step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, losses, first = [], [], 0.0
    for i, batch in enumerate(batches):
        _sync(device)
        t0 = time.perf_counter()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i == 0:
            first = dt
        if i >= warmup:
            times.append(dt)
    return times, losses, first


def bench_arch(arch: str, args: argparse.Namespace, device: str) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers,
                      pattern=PATTERNS[arch])
    eager = LanguageModel(cfg).to(device)
    compiled = copy.deepcopy(eager)
    for block in compiled.blocks:
        block.compile(backend=args.backend)
    n = args.warmup + args.steps
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (args.batch, args.seq + 1), generator=g).to(device)
               for _ in range(n)]
    t_eager, l_eager, _ = time_steps(eager, batches, device, args.warmup)
    torch._dynamo.reset()
    t_comp, l_comp, first = time_steps(compiled, batches, device, args.warmup)
    me, mc = statistics.median(t_eager), statistics.median(t_comp)
    return {"arch": arch, "device": device, "eager_ms": 1e3 * me, "compiled_ms": 1e3 * mc,
            "speedup": me / mc, "first_compiled_s": first,
            "max_loss_diff": max(abs(a - b) for a, b in zip(l_eager, l_comp))}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="gla,mamba,gdn,transformer")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, and cuda if present)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ([args.device] if args.device != "auto"
               else ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    print(f"d_model={args.d_model} layers={args.layers} batch={args.batch} seq={args.seq} "
          f"backend={args.backend} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'arch':<12}{'device':<8}{'eager ms':>10}{'compiled ms':>13}{'speedup':>9}"
          f"{'1st step s':>12}{'max dloss':>11}")
    for device in devices:
        for arch in args.archs.split(","):
            r = bench_arch(arch, args, device)
            rows.append(r)
            print(f"{r['arch']:<12}{r['device']:<8}{r['eager_ms']:>10.1f}{r['compiled_ms']:>13.1f}"
                  f"{r['speedup']:>9.2f}{r['first_compiled_s']:>12.1f}{r['max_loss_diff']:>11.1e}",
                  flush=True)
    return rows


if __name__ == "__main__":
    main()
