"""Numbers for people, one place for every formatter the reports, plans and progress lines use:
``fmt`` (3 significant digits, scientific when big or small), ``fmt_sig`` (trailing zeros kept),
``fmt_fixed``, ``fmt_est`` (an estimate with its interval), ``fmt_flops``, ``fmt_tokens`` (K, M,
B), ``fmt_duration`` (s, m, h)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: 3 significant digits, scientific notation for big and small."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:.3g}" if abs(x) >= 1e6 else str(x)
    if isinstance(x, (float, np.floating)):
        if np.isnan(x):
            return "–"
        if np.isinf(x):
            return "∞" if x > 0 else "-∞"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_fixed(x: float, spec: str) -> str:
    return f"{x:{spec}}" if x is not None and math.isfinite(x) else "–"


def fmt_sig(x: float) -> str:
    """3 significant digits, trailing zeros kept (an interval's ends line up: 1.80, 2.07)."""
    if not math.isfinite(x) or x == 0 or not 1e-3 <= abs(x) < 1e5:
        return fmt(x)
    return f"{x:#.3g}".rstrip(".")


def fmt_est(e: Any, spec: str | None = None) -> str:
    """``estimate [low, high]`` of an ``analysis.Estimate`` (or None); ``spec`` a format spec (e.g. ``+.4f``), else 3 significant
    digits. The summary and the tables format an estimate with this one function."""
    if e is None:
        return "–"
    f = (lambda x: fmt_fixed(x, spec)) if spec else fmt_sig
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return f"{f(e.estimate)} [interval undefined: {e.n_ok} replicates defined]"
    return f"{f(e.estimate)} [{f(e.low)}, {f(e.high)}]"


def fmt_flops(c: float) -> str:
    return f"{c:.1e}" if math.isfinite(c) else "–"


def ceil_sig(x: float, sig: int = 2) -> float:
    """x rounded up to ``sig`` significant digits."""
    if not x > 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x)) - sig + 1
    return math.ceil(x / 10**e) * 10**e


def finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def fmt_tokens(n: float) -> str:
    """Token counts: 3 significant digits with K, M or B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def fmt_duration(s: float) -> str:
    """Seconds as 45s, 3m07s or 2h05m; "?" when unknown."""
    if not math.isfinite(s):
        return "?"
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
