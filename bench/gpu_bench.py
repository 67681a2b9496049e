"""GPU timings for the prepared check (bench/gpu_check.sh): gla's paths and the tiny models.

Times forward+backward with triton.testing.do_bench (median ms) and prints one line per
measurement; with ``--json PATH`` also writes them as JSON. Compares against FLA's Triton
``chunk_simple_gla`` and ``chunk_gla`` when fla-core is importable.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def do_bench(fn) -> float:
    from triton.testing import do_bench as triton_bench

    return float(triton_bench(fn, warmup=5, rep=50))


def gla_rows():
    from postformer.kernels import gla

    rows = []
    B, H, D = 4, 8, 64
    peers = {}
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla

        peers = {"scalar": chunk_simple_gla, "key": chunk_gla}
    except Exception:  # fla-core is optional
        pass
    for T in (1024, 4096):
        for gate in ("scalar", "key"):
            q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            shape = (B, T, H) if gate == "scalar" else (B, T, H, D)
            g = F.logsigmoid(torch.randn(shape, device="cuda")).requires_grad_()
            args = (q, k, v, g)
            impls = {"postformer-auto": lambda a=args: gla(*a)[0]}
            if gate in peers:
                impls["fla-triton"] = lambda a=args, f=peers[gate]: f(*a)[0]
            for name, f in impls.items():
                ms = do_bench(lambda f=f: f().float().sum().backward())
                rows.append({"what": f"gla {gate} fwd+bwd B={B} T={T} H={H} D={D}", "impl": name, "ms": ms})
    return rows


def model_rows():
    from postformer.arch import PRESETS, LanguageModel, ModelConfig

    rows = []
    for arch in PRESETS:  # every named architecture at 125m (the ops without Triton run their chunk path)
        model = LanguageModel(ModelConfig.from_preset(arch, "125m")).cuda()
        tokens = torch.randint(0, 256, (8, 1024), device="cuda")

        def step(model=model, tokens=tokens):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(tokens)
            F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()

        rows.append({"what": f"{arch}-125m fwd+bwd B=8 T=1024 bf16", "impl": "auto", "ms": do_bench(step)})
        print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for part in (gla_rows, model_rows):
        try:
            rows += part()
        except Exception as e:  # report and go on: one failure must not hide the other numbers
            rows.append({"what": part.__name__, "impl": "error", "ms": float("nan"), "error": repr(e)})
    for r in rows:
        print(f"{r['what']:<48} {r['impl']:<16} {r['ms']:9.3f} ms {r.get('error', '')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
