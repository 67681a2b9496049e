"""``ModelConfig``: the whole shape of a language model as plain data, plus named presets.

The config holds only ints, floats, bools, strings, lists and dicts so that YAML (and
jsonargparse / LightningCLI) can build it; mixers are named by strings and resolved through
``arch.registry.MIXERS``. Everything is validated in ``__post_init__``, with messages that
name the offending mixer, key or numbers.

Example::

    cfg = ModelConfig(d_model=256, n_layers=6, pattern=["gla", "gla", "attn"],
                      mixers={"attn": {"n_heads": 4}})
    cfg = ModelConfig.from_preset("mamba2", "125m", vocab_size=50277)
"""

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .layers import default_ff_dim
from .registry import MIXERS, get_mixer


@dataclass
class ModelConfig:
    """Shape of a ``LanguageModel``.

    Attributes:
        vocab_size: tokens in the vocabulary (256: byte level).
        d_model: residual stream width.
        n_layers: number of blocks.
        pattern: mixer names cycled over the layers: layer i uses ``pattern[i % len(pattern)]``
            (``["gla", "gla", "attn"]`` with 6 layers gives gla, gla, attn, gla, gla, attn).
        mixers: per-mixer-name options, e.g. ``{"attn": {"n_heads": 4}, "mamba2": {"d_state": 64}}``;
            the accepted keys are the fields of ``MIXERS[name].Options``.
        mlp: whether blocks have a SwiGLU MLP. None: each mixer's default (``Mixer.has_mlp``,
            as in its paper: mamba and mamba2 blocks have none, the others have one); a bool:
            every block; a dict ``{mixer name: bool}``: per mixer, the rest keep their default
            (``{mamba2: true}`` gives a hybrid's Mamba-2 blocks an MLP too).
        d_ff: MLP hidden width; None: ``8/3 * d_model`` rounded up to ``ff_multiple_of``.
        ff_multiple_of: rounding of the default ``d_ff``.
        norm_eps: epsilon of every RMSNorm.
        tie_embeddings: share the token embedding with the LM head.
        init_std: std of the normal init of linears and the embedding (output projections of
            mixers and MLPs get ``init_std / sqrt(2 * n_layers)``).
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    pattern: list[str] = field(default_factory=lambda: ["attn"])
    mixers: dict[str, dict] = field(default_factory=dict)
    mlp: bool | dict[str, bool] | None = None
    d_ff: int | None = None
    ff_multiple_of: int = 64
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "ff_multiple_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"ModelConfig.d_ff must be >= 1 or None, got {self.d_ff}")
        if isinstance(self.pattern, str):
            raise ValueError(f"ModelConfig.pattern must be a list of mixer names, got the string {self.pattern!r}")
        self.pattern = list(self.pattern)
        if not self.pattern:
            raise ValueError(f"ModelConfig.pattern is empty; give mixer names from {sorted(MIXERS)}")
        for name in self.pattern:
            get_mixer(name)  # unknown names raise, listing the known ones
        for name, opts in self.mixers.items():
            cls = get_mixer(name)
            if not isinstance(opts, dict):
                raise ValueError(f"ModelConfig.mixers[{name!r}] must be a dict of options, got {opts!r}")
            cls.resolve_options(self.d_model, opts)  # bad keys and indivisible widths raise
        for name in set(self.pattern) - set(self.mixers):
            get_mixer(name).resolve_options(self.d_model, {})  # defaults must fit d_model too
        if isinstance(self.mlp, dict):
            for name, value in self.mlp.items():
                get_mixer(name)
                if not isinstance(value, bool):
                    raise ValueError(f"ModelConfig.mlp[{name!r}] must be true or false, got {value!r}")
        elif self.mlp is not None and not isinstance(self.mlp, bool):
            raise ValueError(f"ModelConfig.mlp must be None, a bool or a dict {{mixer: bool}}, got {self.mlp!r}")

    # -- derived shape ------------------------------------------------------------------------

    @property
    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer: ``pattern`` cycled to ``n_layers``."""
        return [self.pattern[i % len(self.pattern)] for i in range(self.n_layers)]

    @property
    def ff_dim(self) -> int:
        """The SwiGLU hidden width actually used."""
        return self.d_ff if self.d_ff is not None else default_ff_dim(self.d_model, self.ff_multiple_of)

    def mixer_options(self, name: str) -> Any:
        """The resolved ``MIXERS[name].Options`` for this width (defaults filled in)."""
        return get_mixer(name).resolve_options(self.d_model, self.mixers.get(name, {}))

    def block_has_mlp(self, name: str) -> bool:
        """Whether a block with mixer ``name`` gets an MLP (``mlp`` if set for it, else the mixer's default)."""
        if isinstance(self.mlp, dict):
            return self.mlp.get(name, get_mixer(name).has_mlp)
        return get_mixer(name).has_mlp if self.mlp is None else self.mlp

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, arch: str, size: str, **overrides: Any) -> "ModelConfig":
        """A named shape from ``PRESETS[arch][size]``, with field overrides.

        ``mixers`` overrides merge into the preset's per-mixer options (one level deep), so
        ``from_preset("mamba2", "tiny", mixers={"mamba2": {"d_state": 8}})`` keeps the rest.
        """
        if arch not in PRESETS:
            raise ValueError(f"unknown preset arch {arch!r}; known: {sorted(PRESETS)}")
        if size not in PRESETS[arch]:
            raise ValueError(f"unknown size {size!r} for preset {arch!r}; known: {list(PRESETS[arch])}")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in fields:
                raise ValueError(f"ModelConfig has no field {key!r}; fields: {sorted(fields)}")
        kwargs = copy.deepcopy(PRESETS[arch][size])
        for key, value in overrides.items():
            if key == "mixers":
                merged = kwargs.setdefault("mixers", {})
                for name, opts in value.items():
                    merged[name] = {**merged.get(name, {}), **opts}
            else:
                kwargs[key] = value
        return cls(**kwargs)


# Shapes the field uses: (d_model, n_layers, attention heads). 125m..1.3b are GPT-3's (Brown
# et al. 2020, Table 2.1), the Transformer++ baselines of the Mamba and GLA papers. Mamba-2
# blocks have no MLP, so a Mamba-2 model has twice the layers at the same width, matching the
# parameter count (Mamba-2's own 130m/370m/780m/1.3b models).
_SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 1),
    "small": (256, 4, 4),
    "125m": (768, 12, 12),
    "350m": (1024, 24, 16),
    "760m": (1536, 24, 16),
    "1.3b": (2048, 24, 32),
}
_MAMBA2_D_STATE = {"tiny": 16, "small": 64}  # 128 for the named sizes


def _presets() -> dict[str, dict[str, dict[str, Any]]]:
    presets: dict[str, dict[str, dict[str, Any]]] = {"transformer": {}, "mamba2": {}, "gla": {}}
    for size, (d, L, heads) in _SHAPES.items():
        presets["transformer"][size] = {
            "d_model": d, "n_layers": L, "pattern": ["attn"], "mixers": {"attn": {"n_heads": heads}},
        }
        presets["mamba2"][size] = {
            "d_model": d, "n_layers": 2 * L, "pattern": ["mamba2"],
            "mixers": {"mamba2": {"d_state": _MAMBA2_D_STATE.get(size, 128), "headdim": 64, "expand": 2}},
        }
        presets["gla"][size] = {
            "d_model": d, "n_layers": L, "pattern": ["gla"], "mixers": {"gla": {"n_heads": 4}},
        }
    return presets


#: ``PRESETS[arch][size]`` -> ``ModelConfig`` field values; archs ``transformer``, ``mamba2``,
#: ``gla``; sizes ``tiny``, ``small``, ``125m``, ``350m``, ``760m``, ``1.3b``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = _presets()
