"""Training step time, eager against ``--model.compile true`` (each block compiled in place with
``torch.compile``, as ``LMModule.compile_model`` does): one forward + backward + AdamW step of a
small LanguageModel per arch, the median of ``--steps`` steps after ``--warmup`` steps, the eager
and the compiled model stepping in turns (the first compiled step, which compiles, is reported on
its own). On CPU by default, and on CUDA too when a
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


class Trainer:
    """One model and its AdamW; ``step(batch)`` trains one step and returns (seconds, loss)."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model, self.device = model, device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(self, batch: torch.Tensor) -> tuple[float, float]:
        _sync(self.device)
        t0 = time.perf_counter()
        logits = self.model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t0, loss.item()


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
    torch._dynamo.reset()
    # the two runs step in turns, so a change of the machine's load hits both alike
    runs = {"eager": Trainer(eager, device), "compiled": Trainer(compiled, device)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, list[float]] = {k: [] for k in runs}
    first = 0.0
    for i, batch in enumerate(batches):
        for name, run in runs.items():
            dt, loss = run.step(batch)
            losses[name].append(loss)
            if i >= args.warmup:
                times[name].append(dt)
            elif i == 0 and name == "compiled":
                first = dt
    t_eager, t_comp, l_eager, l_comp = times["eager"], times["compiled"], losses["eager"], losses["compiled"]
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
