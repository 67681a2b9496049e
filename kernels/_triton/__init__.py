"""Shared Triton helpers: availability, interpreter detection, autotune configs, launch metadata,
and the host-side choices every chunked family makes the same way (head-size limit, tile sizes,
``tl.dot`` precision).

Importable without Triton installed (``HAS_TRITON`` is then False and nothing else is defined
beyond the pure-Python helpers). ``jit.py`` holds ``@triton.jit`` helpers the families' kernels
share (import it only where ``HAS_TRITON``); ``plan.py`` the chunk tables of packed sequences.
"""

from __future__ import annotations

import os

#: the largest head size (K and V) the chunked families' kernels take (gla, delta_rule): their
#: sequential and recurrent kernels keep a [K, BV] state tile with all of K in registers.
MAX_HEAD_DIM = 256
#: the K and V tiles of the chunk-parallel kernels: powers of two from 16 (``tl.dot`` needs >= 16
#: per side) to 64
MIN_TILE, MAX_TILE = 16, 64

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


def tile(n: int, hi: int = MAX_TILE) -> int:
    """A tile covering ``n`` (a head size): the next power of two, at least ``MIN_TILE`` and at
    most ``hi``."""
    return max(MIN_TILE, min(hi, next_pow2(n)))


def chunk_tiles(K: int, V: int) -> tuple[int, int]:
    """The chunk-parallel kernels' K and V tiles ``(BK, BV)``, each 16 to 64 wide."""
    return tile(K), tile(V)


def state_tile(K: int, V: int) -> tuple[int, int]:
    """The [BK, BV] state tile of a sequential or recurrent kernel, held in registers through a
    whole sequence: all of K (up to :data:`MAX_HEAD_DIM`) by a V tile of 16 or 32."""
    return tile(K, hi=MAX_HEAD_DIM), tile(V, hi=32)


def check_head_dims(K: int, V: int) -> None:
    """``impl="triton"`` of a chunked family takes head sizes up to :data:`MAX_HEAD_DIM`."""
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports K, V <= {MAX_HEAD_DIM}, got K={K}, V={V}")


def dot_precision(dtype) -> str:
    """The ``tl.dot`` input precision of the large products of the chunked kernels, whose operands
    are fp32 tiles (loaded inputs, decayed or accumulated intermediates): ``"tf32x3"`` (three
    TF32 tensor-core products, about fp32 accuracy) for fp32 inputs; one TF32 product
    (``"tf32"``) for bf16/fp16 inputs, whose values TF32 holds exactly (products with the fp32
    intermediates round to TF32's 10-bit mantissa, finer than the inputs), at a third of the
    tensor-core work and without tf32x3's split operands in registers. Never ``"ieee"`` for large
    tiles: on sm_90 it lowers [64, 64] and larger tiles to scalar FMAs with kilobytes of register
    spills per thread (``scripts/sm90_check.py``; ``docs/bench/2026-11-27-h200.md`` has what
    that cost on a GPU). The interpreter computes all of them in fp32."""
    import torch

    return "tf32x3" if dtype == torch.float32 else "tf32"


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
