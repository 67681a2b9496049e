"""Training throughput of the default study's architectures on this machine's CPU, against
width and window length: what the CPU default study (configs/study/default.yaml) was designed
from (issue 25: science per CPU-hour).

For each arch, width and T: one forward + backward + AdamW step of the study's model at that
width (its ladder's head and state rules, 4 layers), 2048 tokens a step (the study's step),
the median of ``--steps`` steps after one warm-up step. Reports tokens/s, the FLOP rate under
the causal count (the study's budgets) and under Chinchilla's full count, and attention's
share of the transformer's causal FLOPs.

    python bench/cpu_study_throughput.py                      # the table, about 2 minutes
    python bench/cpu_study_throughput.py --widths 16 32 --seq 256 --out docs/bench/x.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from postformer.arch import LanguageModel
from postformer.arch.flops import flops_breakdown, flops_per_token
from postformer.scaling.spec import study_from_dict

REPO = Path(__file__).resolve().parents[1]


def step_seconds(model: LanguageModel, batch: int, seq: int, steps: int) -> float:
    """Median seconds of one training step (after one warm-up step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.cfg.vocab_size, (batch, seq + 1))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(REPO / "configs" / "study" / "default.yaml"))
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per step")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    spec = yaml.safe_load(Path(args.study).read_text())
    spec["ladder"]["d_model"] = sorted(set(args.widths))
    spec.pop("tune", None)
    rows = ["| arch | d_model | T | N | tokens/s | GFLOP/s causal | GFLOP/s Chinchilla | attention share (causal) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for seq in args.seq:
        s = copy.deepcopy(spec)
        s["data"]["seq_len"] = seq
        s["budgets"] = {"tokens": [1]}  # the models only
        study = study_from_dict(s, source=args.study)
        for label, shapes in study.shapes.items():
            for shape in shapes:
                torch.manual_seed(0)
                model = LanguageModel(shape.config)
                sec = step_seconds(model, max(1, args.tokens // seq), seq, args.steps)
                tps = max(1, args.tokens // seq) * seq / sec
                parts = flops_breakdown(shape.config, seq, causal=True)
                share = parts["attention"] / sum(parts.values())
                line = (f"| {label} | {shape.config.d_model} | {seq} | {shape.N:,} | {tps:,.0f} | "
                        f"{tps * flops_per_token(shape.config, seq, causal=True) / 1e9:.1f} | "
                        f"{tps * flops_per_token(shape.config, seq) / 1e9:.1f} | {share:.0%} |")
                rows.append(line)
                print(line, flush=True)
    text = (f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{args.tokens} tokens a step, median of {args.steps} steps\n\n" + "\n".join(rows) + "\n")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
