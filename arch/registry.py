"""Short names -> mixer classes, so configs name a mixer by a string and stay plain data."""

from __future__ import annotations

from typing import Any

from .attention import Attention
from .deltanet_gdn import DeltaNet, GatedDeltaNet
from .deltaproduct import GatedDeltaProduct
from .gated_attn import GatedAttention
from .gla import GLA
from .hgrn2 import HGRN2
from .kda import KimiDeltaAttention
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba3 import Mamba3
from .mixer import Mixer
from .mlstm import MLSTM
from .retnet import RetNet
from .rglru import RGLRU
from .rwkv7 import RWKV7
from .swa import SlidingWindowAttention

MIXERS: dict[str, type[Mixer]] = {
    cls.name: cls
    for cls in (
        Attention, Mamba2, GLA, RetNet, DeltaNet, GatedDeltaNet, HGRN2, Mamba, RGLRU, SlidingWindowAttention,
        # the 2025-2026 generation
        GatedAttention, KimiDeltaAttention, MLSTM, GatedDeltaProduct, Mamba3, RWKV7,
    )
}


def get_mixer(name: str) -> type[Mixer]:
    """The mixer class registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {sorted(MIXERS)}") from None


def width_options(d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, dict[str, Any]]:
    """``{mixer name: options}`` that keep every registered mixer's heads, head dims and state
    size sensible at width ``d_model`` on a size ladder, in ``MIXERS`` order: each mixer's own
    rule (``Mixer.width_options``, which says what ``head_dim`` and ``d_state`` mean for it),
    leaving out the mixers whose defaults already follow the width (an empty rule)."""
    rules = {name: cls.width_options(d_model, head_dim=head_dim, d_state=d_state) for name, cls in MIXERS.items()}
    return {name: opts for name, opts in rules.items() if opts}
