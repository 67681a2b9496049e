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
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

#: option names retired for the one vocabulary every mixer shares (``conv_size`` for a short
#: conv's width, ``head_dim`` for channels per head), so an old config's error says what to write
RENAMED = {"d_conv": "conv_size", "headdim": "head_dim"}


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
        self.options = type(self).resolve_options(d_model, options)
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
    def resolve_options(cls, d_model: int, options: dict[str, Any] | Any = None) -> Any:
        """Check option keys, build ``cls.Options`` and fill width-dependent defaults.

        ``options``: None (the defaults), a dict of options, or a ``cls.Options``. Options
        resolved here for this ``d_model`` come back as they are, so a config resolves each
        mixer's options once (``ModelConfig`` at construction) and the mixer takes them as given.
        Raises ``ValueError`` naming the mixer, the bad key and the accepted keys, or the
        numbers that do not divide.
        """
        if isinstance(options, cls.Options):
            if getattr(options, "_resolved_for", None) == d_model:
                return options
            options = dataclasses.asdict(options)
        options = dict(options or {})
        keys = cls.option_keys()
        for key in options:
            if key not in keys:
                renamed = f" ({key!r} is now {RENAMED[key]!r})" if RENAMED.get(key) in keys else ""
                raise ValueError(
                    f"mixer {cls.name!r} has no option {key!r}{renamed}; accepted options: {sorted(keys)}"
                )
        resolved = cls._resolve(d_model, cls.Options(**options))
        resolved._resolved_for = d_model  # not a field: asdict and YAML never see it
        return resolved

    @classmethod
    def _resolve(cls, d_model: int, opts: Any) -> Any:
        """Fill derived defaults and validate; return the completed options."""
        return opts

    @classmethod
    def width_options(cls, d_model: int, *, head_dim: int = 16, d_state: int | None = None) -> dict[str, Any]:
        """This mixer's width rule: the options that keep its heads, head dims and state size
        sensible at width ``d_model`` on a size ladder. A ladder trains each mixer at many
        widths (``scaling``); the rule says how the head count, the channels per head and the
        state follow the width there, so that a mixer's shape is comparable from rung to rung
        instead of resting on defaults chosen for one width.

        Args:
            d_model: the model width at this rung of the ladder.
            head_dim: the ladder's target channels per head (an int >= 1; studies use >= 16);
                each mixer says what it means for its own heads.
            d_state: the ladder's state size for the mixers that have one per head (Mamba-2,
                Mamba-3); None keeps the mixer's default.

        Returns:
            A plain dict of this mixer's ``Options`` fields, given to ``resolve_options`` as
            they are (a ladder's own ``mixers`` options are merged over them); ``{}`` when the
            mixer's own defaults already follow the width. Subclasses state their rule here;
            ``arch.registry.width_options`` collects them for every registered mixer.
        """
        return {}

    def new_cache(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_seq_len: int | None = None,
    ) -> Any:
        """The decoding state before the first token, for ``batch_size`` sequences: conv states in
        ``dtype``, recurrent states in :func:`state_dtype` of it. ``max_seq_len`` lets attention
        preallocate its KV buffers; recurrent mixers ignore it."""
        return self._new_cache(batch_size, device, dtype, max_seq_len)

    def _new_cache(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype,
                   max_seq_len: int | None) -> Any:
        """Subclasses build their cache here (:meth:`new_cache` is the public signature)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        raise NotImplementedError


def heads_of_at_least(channels: int, per_head: int, *, even: bool = False, divides: int | None = None) -> int:
    """The most heads of at least ``per_head`` channels each that divide ``channels`` evenly (and
    divide ``divides`` too, when given), with an even number of channels per head when ``even``;
    1 when no count qualifies (``channels < per_head``, or no divisor fits)."""
    for heads in range(max(1, channels // per_head), 0, -1):
        if channels % heads or (divides is not None and divides % heads):
            continue
        if even and (channels // heads) % 2:
            continue
        return heads
    return 1


@dataclasses.dataclass
class StepSizeOptions:
    """Options of the Mamba step-size init, shared by Mamba, Mamba-2 and Gated DeltaNet
    (``layers.init_dt_bias``); a mixer's ``Options`` inherits them."""

    #: dt is initialised log-uniformly in [dt_min, dt_max], floored at dt_init_floor
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    def check_step_size(self, mixer: str) -> None:
        """ValueError naming ``mixer`` unless ``0 < dt_min <= dt_max`` and ``dt_init_floor > 0``."""
        if not 0 < self.dt_min <= self.dt_max or self.dt_init_floor <= 0:
            raise ValueError(
                f"mixer {mixer!r}: need 0 < dt_min <= dt_max and dt_init_floor > 0, got dt_min "
                f"{self.dt_min}, dt_max {self.dt_max}, dt_init_floor {self.dt_init_floor}"
            )


@dataclasses.dataclass
class DecayRateOptions(StepSizeOptions):
    """The step size plus the per-head decay rate ``A = exp(A_log)`` of Mamba-2 and Gated
    DeltaNet (the decay per step is ``exp(-A dt)``), initialised uniformly in
    ``[A_init_min, A_init_max]``."""

    A_init_min: float = 1.0
    A_init_max: float = 16.0

    def check_decay_rate(self, mixer: str) -> None:
        """ValueError naming ``mixer`` unless ``0 <= A_init_min < A_init_max`` and the step size
        is valid."""
        self.check_step_size(mixer)
        if not 0 <= self.A_init_min < self.A_init_max:
            raise ValueError(
                f"mixer {mixer!r}: need 0 <= A_init_min < A_init_max, got A_init_min {self.A_init_min}, "
                f"A_init_max {self.A_init_max}"
            )


@dataclasses.dataclass
class HeadOptions:
    """Heads and key/value widths of the linear-attention mixers (GLA, RetNet)."""

    #: heads; None: the mixer's default count (see its Options)
    n_heads: int | None = None
    #: key dim (q, k) = expand_k * d_model
    expand_k: float = 1.0
    #: value dim (v, output gate) = expand_v * d_model
    expand_v: float = 1.0

    def resolve_heads(self, mixer: str, d_model: int, candidates: Callable[[int], list[int]],
                      per_head_even: bool = False) -> tuple[int, int, int]:
        """``(key_dim, value_dim, n_heads)`` for ``d_model``; ``candidates(key_dim)`` lists the
        default head counts in order of preference (see :func:`default_heads`)."""
        key_dim, value_dim = expanded_dims(mixer, d_model, self.expand_k, self.expand_v)
        dims = {"expand_k": (key_dim, self.expand_k), "expand_v": (value_dim, self.expand_v)}
        return key_dim, value_dim, default_heads(mixer, d_model, self.n_heads, dims, candidates(key_dim),
                                                 per_head_even)


def default_heads(mixer: str, d_model: int, n_heads: int | None, dims: dict[str, tuple[int, float]],
                  candidates: list[int], per_head_even: bool = False) -> int:
    """The head count: ``n_heads`` if given, else the first of ``candidates`` that divides every
    width in ``dims`` (and leaves an even key width per head with ``per_head_even``, for RoPE);
    then checked like :func:`check_heads_divide`."""
    if n_heads is None:
        key_dim = dims["expand_k"][0]
        fits = [h for h in candidates if h >= 1 and all(dim % h == 0 for dim, _ in dims.values())
                and not (per_head_even and (key_dim // h) % 2)]
        if not fits:
            raise ValueError(f"mixer {mixer!r}: no head count divides the key dim {key_dim} into even "
                             f"parts (d_model {d_model} * expand_k {dims['expand_k'][1]})")
        n_heads = fits[0]
    check_heads_divide(mixer, d_model, n_heads, dims)
    return n_heads


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


def zero_state(batch_size: int, *dims: int, device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    """A recurrent state of zeros ``[batch_size, *dims]`` in :func:`state_dtype` of ``dtype``."""
    return torch.zeros(batch_size, *dims, device=device, dtype=state_dtype(dtype))


def carry_state(cache: Any, key: str | int, op: Callable[..., tuple[torch.Tensor, Any]], *args: Any,
                **kwargs: Any) -> torch.Tensor:
    """The cache hand-off of every stateful op call in a mixer, written once.

    Runs ``op(*args, initial_state=cache[key], output_final_state=True, **kwargs)`` and stores the
    new state back into ``cache[key]`` (``key`` an attribute name, or an index into a list of
    states); with ``cache=None`` the op starts from zeros and keeps no state. Returns the op's
    output (its first result).
    """
    if cache is None:
        return op(*args, initial_state=None, output_final_state=False, **kwargs)[0]
    out, state = op(*args, initial_state=_get(cache, key), output_final_state=True, **kwargs)
    if isinstance(key, int):
        cache[key] = state
    else:
        setattr(cache, key, state)
    return out


def _get(cache: Any, key: str | int) -> Any:
    return cache[key] if isinstance(key, int) else getattr(cache, key)
