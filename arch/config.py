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
import math
from dataclasses import dataclass, field
from typing import Any

from .layers import MLP_KINDS, default_ff_dim
from .registry import MIXERS, get_mixer

#: resolved mixer options by (mixer, d_model, options): a config's are resolved once, and configs
#: that differ only elsewhere (depth, vocabulary: a study's ladder) share them
_RESOLVED: dict[tuple[str, int, str], Any] = {}


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
        mlp_kind: which MLP the blocks that have one get: ``"swiglu"`` (``layers.SwiGLU``) or
            ``"rwkv7"`` (RWKV-7's channel mix ``layers.RWKV7ChannelMix``: a token shift, then
            ``relu(x W_k)^2 W_v``; it carries the previous token while decoding).
        d_ff: MLP hidden width; None: ``8/3 * d_model`` rounded up to ``ff_multiple_of`` for
            SwiGLU, ``4 * d_model`` for the RWKV-7 channel mix.
        ff_multiple_of: rounding of the default ``d_ff``.
        norm_eps: epsilon of every RMSNorm.
        tie_embeddings: share the token embedding with the LM head.
        init_std: std of the normal init of linears and the embedding (output projections of
            mixers and MLPs get ``init_std / sqrt(2 * n_layers)``). None (the default): the
            width rule ``sqrt(2 / (5 d_model))`` (``init_scale``; Nguyen & Salazar 2019's
            "small init", GPT-NeoX's): every linear then maps a unit-variance input to an output
            of variance 2/5 at every width, and the tied head's logits have std ``sqrt(2/5)``;
            it equals the classic 0.02 at ``d_model = 1000``. A fixed 0.02 at ``d_model = 16``
            gives outputs of variance 0.006: the small rungs of a ladder start with almost no
            signal and their runs split by seed from the first evaluation.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    pattern: list[str] = field(default_factory=lambda: ["attn"])
    mixers: dict[str, dict] = field(default_factory=dict)
    mlp: bool | dict[str, bool] | None = None
    mlp_kind: str = "swiglu"
    d_ff: int | None = None
    ff_multiple_of: int = 64
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float | None = None

    @property
    def init_scale(self) -> float:
        """The std the init uses: ``init_std``, or ``sqrt(2 / (5 d_model))`` when it is None."""
        return self.init_std if self.init_std is not None else math.sqrt(2.0 / (5.0 * self.d_model))

    def __post_init__(self) -> None:
        if self.init_std is not None and not self.init_std > 0:
            raise ValueError(f"ModelConfig.init_std must be > 0 or None (the width rule), got {self.init_std}")
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
            get_mixer(name)
            if not isinstance(opts, dict):
                raise ValueError(f"ModelConfig.mixers[{name!r}] must be a dict of options, got {opts!r}")
        # every mixer's options resolved here (bad keys and indivisible widths raise; the defaults
        # of a mixer without options must fit d_model too), once: mixer_options reads them back
        for name in dict.fromkeys([*self.mixers, *self.pattern]):
            self.mixer_options(name)
        if isinstance(self.mlp, dict):
            for name, value in self.mlp.items():
                get_mixer(name)
                if not isinstance(value, bool):
                    raise ValueError(f"ModelConfig.mlp[{name!r}] must be true or false, got {value!r}")
        elif self.mlp is not None and not isinstance(self.mlp, bool):
            raise ValueError(f"ModelConfig.mlp must be None, a bool or a dict {{mixer: bool}}, got {self.mlp!r}")
        if self.mlp_kind not in MLP_KINDS:
            raise ValueError(f"ModelConfig.mlp_kind must be one of {list(MLP_KINDS)}, got {self.mlp_kind!r}")

    # -- derived shape ------------------------------------------------------------------------

    @property
    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer: ``pattern`` cycled to ``n_layers``."""
        return [self.pattern[i % len(self.pattern)] for i in range(self.n_layers)]

    @property
    def ff_dim(self) -> int:
        """The MLP hidden width actually used (its default depends on ``mlp_kind``)."""
        return self.d_ff if self.d_ff is not None else default_ff_dim(self.d_model, self.ff_multiple_of,
                                                                      self.mlp_kind)

    def mixer_options(self, name: str) -> Any:
        """The resolved ``MIXERS[name].Options`` for this width (defaults filled in), resolved
        once per width and options (``__post_init__`` does it for every mixer of the config)."""
        opts = self.mixers.get(name, {})
        key = (name, self.d_model, repr(sorted(opts.items())))
        if key not in _RESOLVED:
            _RESOLVED[key] = get_mixer(name).resolve_options(self.d_model, opts)
        return _RESOLVED[key]

    def block_has_mlp(self, name: str) -> bool:
        """Whether a block with mixer ``name`` gets an MLP (``mlp`` if set for it, else the mixer's default)."""
        return block_has_mlp(name, self.mlp)

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


def block_has_mlp(name: str, mlp: bool | dict[str, bool] | None = None) -> bool:
    """Whether a block with mixer ``name`` gets an MLP under the rule ``mlp`` (see ``ModelConfig.mlp``)."""
    if isinstance(mlp, dict):
        return mlp.get(name, get_mixer(name).has_mlp)
    return get_mixer(name).has_mlp if mlp is None else mlp


def depth_multiplier(pattern: list[str], mlp: bool | dict[str, bool] | None = None) -> int:
    """The depth rule for archs without MLPs: 2 when no block of ``pattern`` has an MLP under the
    rule ``mlp``, else 1. Such a block (Mamba's, Mamba-2's) holds about half the parameters of an
    attention block with its MLP, so the field matches a Transformer of L layers with 2L of them;
    presets and study ladders both take their depth from here."""
    return 1 if any(block_has_mlp(m, mlp) for m in pattern) else 2


# Shapes the field uses: (d_model, n_layers, attention heads). 125m..1.3b are GPT-3's (Brown
# et al. 2020, Table 2.1), the Transformer++ baselines of the Mamba and GLA papers.
_SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 1),
    "small": (256, 4, 4),
    "125m": (768, 12, 12),
    "350m": (1024, 24, 16),
    "760m": (1536, 24, 16),
    "1.3b": (2048, 24, 32),
}
SIZES = tuple(_SHAPES)

#: Architectures: the mixer pattern, the blocks' MLP rule when it differs from the mixers'
#: defaults (``mlp``), the MLP's kind when it is not SwiGLU (``mlp_kind``), and a description. Mixer options per size come from ``_mixer_options``.
ARCHS: dict[str, dict[str, Any]] = {
    "transformer": {"pattern": ["attn"], "about": "Transformer++ (attention with RoPE + SwiGLU MLP)"},
    "swa": {"pattern": ["swa"], "about": "sliding-window attention + SwiGLU MLP"},
    "mamba": {"pattern": ["mamba"], "about": "Mamba-1 (Gu & Dao 2023), no MLP"},
    "mamba2": {"pattern": ["mamba2"], "about": "Mamba-2 (Dao & Gu 2024), no MLP"},
    "gla": {"pattern": ["gla"], "about": "Gated Linear Attention (Yang et al. 2023)"},
    "retnet": {"pattern": ["retnet"], "about": "RetNet multi-scale retention (Sun et al. 2023)"},
    "deltanet": {"pattern": ["deltanet"], "about": "DeltaNet (Yang et al. 2024)"},
    "gdn": {"pattern": ["gdn"], "about": "Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024)"},
    "hgrn2": {"pattern": ["hgrn2"], "about": "HGRN2 (Qin et al. 2024)"},
    "hawk": {"pattern": ["rglru"], "about": "Hawk: RG-LRU recurrent blocks + MLP (De et al. 2024)"},
    "griffin": {"pattern": ["rglru", "rglru", "swa"],
                "about": "Griffin: two RG-LRU blocks per local-attention block (De et al. 2024)"},
    "gdn-hybrid": {"pattern": ["gdn", "gdn", "gdn", "attn"],
                   "about": "Gated DeltaNet with one attention block in four (as in Qwen3-Next)"},
    "mamba2-hybrid": {"pattern": ["mamba2", "attn"], "mlp": True,
                      "about": "Mamba-2 and attention alternating, an MLP after every mixer (Samba/Jamba style)"},
    "qwen3-next": {"pattern": ["gdn", "gdn", "gdn", "gated_attn"],
                   "about": "Qwen3-Next style: three Gated DeltaNet blocks per gated-attention block (Qwen 2025)"},
    "kimi-linear": {"pattern": ["kda", "kda", "kda", "attn"],
                    "about": "Kimi Linear style: three Kimi Delta Attention blocks per attention block (Kimi Team 2025)"},
    "xlstm": {"pattern": ["mlstm"], "about": "xLSTM 7B style: mLSTM blocks + SwiGLU MLP (Beck et al. 2025)"},
    "mamba3": {"pattern": ["mamba3"], "about": "Mamba-3 SISO blocks + SwiGLU MLP (Lahoti et al. 2026)"},
    "rwkv7": {"pattern": ["rwkv7"], "mlp_kind": "rwkv7",
              "about": "RWKV-7 Goose: time mix on the generalized delta rule + its channel mix (Peng et al. 2025)"},
    "deltaproduct": {"pattern": ["deltaproduct"],
                     "about": "Gated DeltaProduct, 2 Householder steps per token (Siems et al. 2025)"},
}

# Matched depth and MLP width: (n_layers, d_ff) per arch and size, chosen so that the parameter
# count without embeddings is within 10% of the Transformer++ preset of the same size (checked
# by tests/arch/test_presets.py; recomputed by ``python scripts/match_presets.py``). By
# default an arch keeps its paper's shape: the Transformer++ depth (twice it when no block has an
# MLP, like Mamba's) and the default d_ff; where that misses by more than 10%, archs without an
# MLP are matched by depth, the others by the MLP width. None: the default.
_MATCHED: dict[str, dict[str, tuple[int | None, int | None]]] = {
    "mamba": {"tiny": (3, None), "small": (None, None), "125m": (None, None), "350m": (None, None), "760m": (None, None), "1.3b": (None, None)},
    "retnet": {"tiny": (None, 112), "small": (None, 368), "125m": (None, 1024), "350m": (None, 1408), "760m": (None, 2048), "1.3b": (None, 2752)},
    "deltanet": {"tiny": (None, 160), "small": (None, 608), "125m": (None, 1792), "350m": (None, 2432), "760m": (None, 3584), "1.3b": (None, 4800)},
    "gdn": {"tiny": (None, None), "small": (None, 528), "125m": (None, 1536), "350m": (None, 2048), "760m": (None, 3072), "1.3b": (None, 4160)},
    "hawk": {"tiny": (None, 80), "small": (None, 528), "125m": (None, 1792), "350m": (None, None), "760m": (None, None), "1.3b": (None, None)},
    "griffin": {"tiny": (None, 32), "small": (None, 576), "125m": (None, 1920), "350m": (None, None), "760m": (None, None), "1.3b": (None, None)},
    "gdn-hybrid": {"tiny": (None, 48), "small": (None, 576), "125m": (None, 1664), "350m": (None, 2240), "760m": (None, 3328), "1.3b": (None, 4480)},
    "mamba2-hybrid": {"tiny": (None, 160), "small": (None, 592), "125m": (None, 1728), "350m": (None, 2368), "760m": (None, 3520), "1.3b": (None, 4736)},
    "qwen3-next": {"tiny": (None, 48), "small": (None, 544), "125m": (None, 1600), "350m": (None, 2176), "760m": (None, 3200), "1.3b": (None, 4288)},
    "kimi-linear": {"tiny": (None, 32), "small": (None, 576), "125m": (None, None), "350m": (None, None), "760m": (None, None), "1.3b": (None, None)},
    "mamba3": {"tiny": (None, 128), "small": (None, 480), "125m": (None, 1408), "350m": (None, 1920), "760m": (None, 2944), "1.3b": (None, 3968)},
    "rwkv7": {"tiny": (None, 192), "small": (None, 928), "125m": (None, 2816), "350m": (None, None), "760m": (None, None), "1.3b": (None, None)},
    "deltaproduct": {"tiny": (None, 160), "small": (None, 336), "125m": (None, 960), "350m": (None, 1280), "760m": (None, 1920), "1.3b": (None, 2560)},
}


def _mixer_options(arch: str, size: str) -> dict[str, dict[str, Any]]:
    """The per-mixer options of ``arch`` at ``size`` (only those that differ from the defaults)."""
    heads = _SHAPES[size][2]
    opts: dict[str, dict[str, Any]] = {
        "attn": {"n_heads": heads},
        "swa": {"n_heads": heads, "window": {"tiny": 32, "small": 64}.get(size, 1024)},
        "mamba2": {"d_state": {"tiny": 16, "small": 64}.get(size, 128), "head_dim": 64, "expand": 2},
        "gla": {"n_heads": 4},
        # Gated DeltaNet: key dim 0.75 d in power-of-two heads (the paper's 1.3b: 6 heads of 256)
        "gdn": {"tiny": {"n_heads": 1, "head_dim": 32}, "small": {"n_heads": 3, "head_dim": 64},
                "125m": {"n_heads": 9, "head_dim": 64}, "350m": {"n_heads": 6, "head_dim": 128},
                "760m": {"n_heads": 9, "head_dim": 128}, "1.3b": {"n_heads": 6, "head_dim": 256}}[size],
        "gated_attn": {"n_heads": heads},
        "mamba3": {"d_state": {"tiny": 16, "small": 64}.get(size, 128), "head_dim": 64},
        # Kimi Delta Attention: heads of 128 channels (the defaults); at tiny a rank-16 gate, so
        # that its gates do not outweigh the model
        "kda": {"gate_low_rank_dim": 16} if size == "tiny" else {},
    }
    opts["deltaproduct"] = opts["gdn"]  # Gated DeltaNet's heads, n_h of them written per token
    return {name: opts[name] for name in ARCHS[arch]["pattern"] if name in opts}


def _presets() -> dict[str, dict[str, dict[str, Any]]]:
    presets: dict[str, dict[str, dict[str, Any]]] = {}
    for arch, spec in ARCHS.items():
        presets[arch] = {}
        for size, (d, L, _) in _SHAPES.items():
            pattern = list(spec["pattern"])
            n_layers, d_ff = _MATCHED.get(arch, {}).get(size, (None, None))
            mult = depth_multiplier(pattern, spec.get("mlp"))
            fields: dict[str, Any] = {
                "d_model": d,
                "n_layers": n_layers or max(mult * L, len(pattern)),
                "pattern": pattern,
                "mixers": _mixer_options(arch, size),
            }
            for key in ("mlp", "mlp_kind"):
                if key in spec:
                    fields[key] = spec[key]
            if d_ff is not None:
                fields["d_ff"] = d_ff
            presets[arch][size] = fields
    return presets


#: ``PRESETS[arch][size]`` -> ``ModelConfig`` field values; archs are the keys of ``ARCHS``,
#: sizes ``tiny``, ``small``, ``125m``, ``350m``, ``760m``, ``1.3b``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = _presets()
