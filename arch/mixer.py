"""The mixer contract: what every sequence mixer (attention, Mamba-2, GLA, ...) provides.

A mixer maps ``[B, T, d_model] -> [B, T, d_model]``. Its options are a dataclass nested in
the class (``Mixer.Options``), so a config can name a mixer by a string and give its options
as a plain dict; ``resolve_options`` checks the keys, fills derived defaults (heads from the
width, ...) and raises ``ValueError`` on anything inconsistent, at config time rather than
deep inside a forward pass.

Decoding: ``new_cache(batch_size, ...)`` returns the mixer's recurrent state (a KV cache,
a conv + SSM state, a matrix state); ``forward(x, cache)`` consumes ``x`` as the
continuation of whatever the cache has seen and updates the cache in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


class Mixer(nn.Module):
    """Base class of the sequence mixers in the registry (``arch.registry.MIXERS``)."""

    #: short name used in configs (``pattern: [gla, attn]``)
    name: ClassVar[str] = ""
    #: whether a block with this mixer gets a SwiGLU MLP unless the config says otherwise
    has_mlp: ClassVar[bool] = True

    @dataclasses.dataclass
    class Options:
        """Override in subclasses; every field needs a default."""

    def __init__(
        self,
        d_model: int,
        options: Any = None,
        norm_eps: float = 1e-5,
        *,
        layer_idx: int = 0,
        n_layers: int = 1,
    ) -> None:
        """Resolves ``options`` (None: the defaults) for ``d_model`` into ``self.options``.

        ``layer_idx`` (0-based) and ``n_layers`` tell a mixer where it sits in the stack, for
        the few designs whose init or gates depend on depth (HGRN2's forget-gate lower bound);
        subclasses pass them through as ``**where``.
        """
        super().__init__()
        if not 0 <= layer_idx < n_layers:
            raise ValueError(f"{type(self).__name__}: layer_idx {layer_idx} is not in [0, n_layers={n_layers})")
        self.d_model = d_model
        self.options = type(self)._resolve(d_model, options if options is not None else type(self).Options())
        self.norm_eps = norm_eps
        self.layer_idx = layer_idx
        self.n_layers = n_layers

    @classmethod
    def option_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default options as a plain dict (before width-dependent resolution)."""
        return dataclasses.asdict(cls.Options())

    @classmethod
    def resolve_options(cls, d_model: int, options: dict[str, Any] | None = None) -> Any:
        """Check option keys, build ``cls.Options`` and fill width-dependent defaults.

        Raises ``ValueError`` naming the mixer, the bad key and the accepted keys, or the
        numbers that do not divide.
        """
        options = dict(options or {})
        keys = cls.option_keys()
        for key in options:
            if key not in keys:
                raise ValueError(
                    f"mixer {cls.name!r} has no option {key!r}; accepted options: {sorted(keys)}"
                )
        return cls._resolve(d_model, cls.Options(**options))

    @classmethod
    def _resolve(cls, d_model: int, opts: Any) -> Any:
        """Fill derived defaults and validate; return the completed options."""
        return opts

    def new_cache(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_seq_len: int | None = None,
    ) -> Any:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        raise NotImplementedError


def expanded_dims(mixer: str, d_model: int, expand_k: float, expand_v: float) -> tuple[int, int]:
    """The key and value widths ``d_model * expand_k``, ``d_model * expand_v`` of a linear-attention
    mixer (GLA, RetNet); ValueError naming ``mixer`` unless both are positive whole numbers."""
    key_dim, value_dim = d_model * expand_k, d_model * expand_v
    if key_dim != int(key_dim) or value_dim != int(value_dim) or key_dim < 1 or value_dim < 1:
        raise ValueError(
            f"mixer {mixer!r}: d_model {d_model} * expand_k {expand_k} and * expand_v "
            f"{expand_v} must be positive whole numbers"
        )
    return int(key_dim), int(value_dim)


def check_heads_divide(
    mixer: str, d_model: int, n_heads: int, dims: dict[str, tuple[int, float]]
) -> None:
    """``n_heads >= 1`` divides every width in ``dims`` (``{"expand_k": (key_dim, expand_k), ...}``);
    the ValueError names the mixer, the width, how it was derived and the head count."""
    if n_heads < 1:
        raise ValueError(f"mixer {mixer!r}: n_heads must be >= 1, got {n_heads}")
    for option, (dim, expand) in dims.items():
        if dim % n_heads != 0:
            what = "key dim" if option == "expand_k" else "value dim"
            raise ValueError(
                f"mixer {mixer!r}: {what} {dim} (d_model {d_model} * {option} {expand}) is not "
                f"divisible by n_heads {n_heads}"
            )


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states are float32 (float64 for float64 models, e.g. in exactness tests)."""
    return torch.promote_types(dtype, torch.float32)
