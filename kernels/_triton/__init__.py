"""Shared Triton helpers: availability, interpreter detection, autotune configs, launch metadata.

Importable without Triton installed (``HAS_TRITON`` is then False and nothing else is defined
beyond the pure-Python helpers).
"""

from __future__ import annotations

import os

try:  # optional: Triton is a Linux/CUDA dependency, absent on e.g. macOS
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes")


def autotune_configs(variants: list[dict]) -> list:
    """``triton.Config`` objects for ``num_warps``/``num_stages`` variants; under the interpreter
    only the first (autotuning there would time nothing and may crash)."""
    import triton

    configs = [triton.Config({}, num_warps=v["num_warps"], num_stages=v.get("num_stages", 2)) for v in variants]
    return configs[:1] if interpreting() else configs


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
