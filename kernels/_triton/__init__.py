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


def autotune_enabled() -> bool:
    """False under the interpreter (autotuning there would time nothing and may crash) and when
    ``POSTFORMER_AUTOTUNE=0`` (correctness runs on a GPU: one compilation per kernel instead of
    one per configuration)."""
    return not interpreting() and os.environ.get("POSTFORMER_AUTOTUNE", "1").lower() not in ("0", "false", "no")


def autotune_configs(variants: list[dict]) -> list:
    """``triton.Config`` objects for ``num_warps``/``num_stages`` variants; only the first when
    autotuning is off (:func:`autotune_enabled`). Read when a kernel module is imported."""
    import triton

    configs = [triton.Config({}, num_warps=v["num_warps"], num_stages=v.get("num_stages", 2)) for v in variants]
    return configs if autotune_enabled() else configs[:1]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def check_triton_inputs(**tensors) -> None:
    """The preconditions of ``impl="triton"``, checked before any kernel launches: Triton is
    importable, every given tensor (None skipped) is float32/bfloat16/float16, and the first one
    lives on CUDA unless ``TRITON_INTERPRET=1`` (then CPU tensors run on the interpreter)."""
    import torch

    if not HAS_TRITON:
        raise ValueError("impl='triton' needs the triton package, which is not importable here")
    for name, t in tensors.items():
        if t is not None and t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"impl='triton' computes in float32 and takes float32, bfloat16 or float16 tensors; got "
                f"{name} of dtype {t.dtype} (float64 inputs need impl='chunk')"
            )
    first = next(t for t in tensors.values() if t is not None)
    if not (first.is_cuda or interpreting()):
        raise ValueError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
