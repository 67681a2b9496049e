"""Benchmarks measure, they do not assert. After a run, print each benchmark's time relative to
the group's ``chunk`` entry, so "chunk vs FLA" reads as one number.

Run: ``pytest bench --benchmark-enable`` (add ``--benchmark-json out.json`` to keep results).
"""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.stats is None:
            continue
        groups.setdefault(bench.group or "", []).append(bench)
    lines = []
    for group, benches in sorted(groups.items()):
        base = next((b for b in benches if b.extra_info.get("impl") == "chunk"), None)
        if base is None:
            continue
        for b in benches:
            ratio = b.stats.median / base.stats.median
            lines.append(
                f"{group:<36} {b.extra_info.get('impl', b.name):<12} "
                f"median {b.stats.median * 1e3:9.2f} ms   {ratio:6.2f}x chunk's time"
            )
    if lines:
        terminalreporter.section("time relative to postformer's chunk path (median)")
        for line in lines:
            terminalreporter.write_line(line)
