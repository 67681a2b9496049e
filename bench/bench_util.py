"""Helpers the CPU benchmark files share (imported as ``bench_util``: pytest puts bench/ on the
path, since bench/ has no __init__.py)."""

from __future__ import annotations


def fwd_bwd(fn, *args):
    """One forward + backward of ``fn(*args).sum()``, gradients reset first."""
    for t in args:
        t.grad = None
    fn(*args).sum().backward()


def run_fwd_bwd(benchmark, group, impl, fn, args, rounds=5):
    """Time ``fwd_bwd(fn, *args)`` as one entry of ``group`` (``impl`` names it in the summary)."""
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(fwd_bwd, args=(fn, *args), rounds=rounds, warmup_rounds=1)
