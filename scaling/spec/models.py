"""The model of every arch at every size of a spec: the ladder's rungs, the shape of an arch at
a size, parameter matching, the vocabulary.

A size is a Transformer++ shape (``d_model``, ``n_layers``, attention heads; ``fields``:
ModelConfig fields for every arch at that size, such as the ladder's ``ff_multiple_of``,
default 16). A ladder (one knob: ``width`` or ``depth``) generates the sizes; each mixer's
heads, head dims and state size follow the width by the mixer's own rule
(``Mixer.width_options``; ``postformer.arch.width_options`` collects them), which the
ladder's ``head_dim`` and ``d_state`` parametrise and its ``mixers`` override.

An arch's ``n_layers`` is the size's times its ``layer_multiplier``, by default 2 when no
block of its pattern has an MLP (a Mamba-2 block holds about the parameters of half a
Transformer++ block) and 1 otherwise; a preset arch at a preset size keeps the preset's
matched depth. Options merge in this order, later wins: the preset's, the size's
``mixers``, the arch's own fields, the size's ``overrides[label]``. ``match_params: true``
sets the arch's ``d_ff`` at every size so that its N is within 5% of the baseline's.

The functions here take the spec duck-typed (a ``Study`` or a ``Probe``: ``source``,
``archs``, and for a study ``baseline``, ``sizes``, ``seq_len``, ``data_value``, ``model``),
so the spec classes can call them while they are being built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from postformer.arch import PRESETS, ModelConfig, width_options
from postformer.arch.config import depth_multiplier
from postformer.arch.flops import flops_per_token_by_convention, param_counts
from postformer.train.tokenizer import get_tokenizer

from .checks import (
    ARCH_EXTRA_KEYS,
    StudyError,
    check_keys,
    fail,
    integer,
    mapping,
    nonempty_list,
    positive,
)

LADDER_KEYS = ("knob", "d_model", "n_layers", "aspect_ratio", "head_dim", "d_state", "mixers",
               "ff_multiple_of")
#: the FLOP counts a study records and may budget with (``arch.flops_per_token_by_convention``)
FLOP_COUNTS = ("causal", "chinchilla")
MATCH_TOL = 0.05  # match_params: N within 5% of the baseline's


@dataclass(frozen=True)
class Shape:
    """Arch ``label`` at one size of a study: its model and what it costs. ``size`` is the size
    as the spec gives it (a preset size name or a size mapping); ``flops_per_token`` at the
    study's sequence length (``arch.flops``) under the study's count (``budgets.count``),
    ``flops_by_count`` under each: ``causal`` (what kernels that skip masked work compute, for
    every mixer alike) and ``chinchilla`` (the full T x T scores and C x C chunk blocks)."""

    size: Any
    name: str
    config: ModelConfig
    N: int
    N_non_emb: int
    flops_per_token: float
    flops_by_count: dict[str, float] = field(default_factory=dict)


# ---- the size ladder ----------------------------------------------------------------


def ladder_sizes(src: str, ladder: dict) -> list[dict[str, Any]]:
    """The size mappings of a ladder (see the module docstring), smallest first."""
    check_keys(src, "ladder", ladder, LADDER_KEYS)
    knob = ladder.get("knob", "width")
    head_dim = integer(src, "ladder.head_dim", ladder.get("head_dim", 16), 16)
    mixers = mapping(src, "ladder.mixers", ladder.get("mixers"))
    if knob == "width":
        widths = [integer(src, "ladder.d_model", d, 8)
                  for d in nonempty_list(src, "ladder.d_model", ladder.get("d_model"))]
        depth = integer(src, "ladder.n_layers", ladder.get("n_layers", 4), 1)
        shapes = [(d, depth) for d in widths]
        name = lambda d, L: f"w{d}"
    elif knob == "depth":
        depths = [integer(src, "ladder.n_layers", L, 1)
                  for L in nonempty_list(src, "ladder.n_layers", ladder.get("n_layers"))]
        if ("d_model" in ladder) == ("aspect_ratio" in ladder):
            raise fail(src, "ladder", "with knob depth give d_model (a fixed width) or "
                                      "aspect_ratio (d_model = aspect_ratio * n_layers), not both")
        if "d_model" in ladder:
            shapes = [(integer(src, "ladder.d_model", ladder["d_model"], 8), L) for L in depths]
        else:
            ar = positive(src, "ladder.aspect_ratio", ladder["aspect_ratio"])
            shapes = [(max(head_dim, int(round(ar * L / head_dim)) * head_dim), L) for L in depths]
        name = lambda d, L: f"L{L}"
    else:
        raise fail(src, "ladder.knob", f"must be width or depth, got {knob!r}")
    if len(set(shapes)) != len(shapes):
        raise fail(src, "ladder", f"rungs repeat: {shapes}")
    d_state = ladder.get("d_state")
    # the MLP width rounds to a multiple of this: 64 (the ModelConfig default) would move a
    # 32-wide model's d_ff from 85 to 128, a jump in N the ladder's spacing does not intend
    ff_mult = integer(src, "ladder.ff_multiple_of", ladder.get("ff_multiple_of", 16), 1)
    out = []
    for d, L in sorted(shapes):
        opts = width_options(d, head_dim=head_dim, d_state=int(d_state) if d_state else None)
        for m, o in mixers.items():
            opts[m] = {**opts.get(m, {}), **(o or {})}
        out.append({"name": name(d, L), "d_model": d, "n_layers": L,
                    "n_heads": opts["attn"]["n_heads"], "mixers": opts,
                    "fields": {"ff_multiple_of": ff_mult}})
    return out


# ---- model shapes -----------------------------------------------------------------------


def size_name(size: Any) -> str:
    """A size's name: a preset size name as it is, a size mapping's ``name``."""
    return size if isinstance(size, str) else str(size["name"])


def _merge_mixers(into: dict, mixers: dict | None) -> None:
    for name, opts in (mixers or {}).items():
        into[name] = {**into.get(name, {}), **(opts or {})}


def shape_config(spec: Any, label: str, size: Any, vocab: int | None = None) -> dict[str, Any]:
    """ModelConfig fields of arch ``label`` at ``size`` before parameter matching; ``vocab``:
    the models' vocabulary (default: the study's tokenizer's, :func:`study_vocab`). ``spec``
    needs only ``source`` and ``archs`` when ``vocab`` is given (a probe's use)."""
    src, arch = spec.source, spec.archs[label]
    where = f"archs.{label} at size {size_name(size)}"
    preset = arch if isinstance(arch, str) else arch.get("preset")
    own = {} if isinstance(arch, str) else {k: v for k, v in arch.items() if k not in ARCH_EXTRA_KEYS}

    if isinstance(size, str):
        shape = PRESETS["transformer"][size]
        d_model, n_layers = shape["d_model"], shape["n_layers"]
        n_heads = shape["mixers"]["attn"]["n_heads"]
        size_mixers, overrides, size_fields = {}, {}, {}
    else:
        d_model, n_layers, n_heads = size["d_model"], size["n_layers"], size.get("n_heads")
        size_mixers, overrides = size.get("mixers") or {}, (size.get("overrides") or {}).get(label) or {}
        size_fields = size.get("fields") or {}

    fields: dict[str, Any] = {}
    if preset is not None:
        base = PRESETS[preset][size] if isinstance(size, str) else next(iter(PRESETS[preset].values()))
        # at a custom size only the preset's design carries over (pattern, MLP rule), not its widths
        fields = copy.deepcopy(base) if isinstance(size, str) else {
            k: copy.deepcopy(base[k]) for k in ("pattern", "mlp", "mlp_kind") if k in base
        }
    fields.update(size_fields)
    fields.update({k: v for k, v in own.items() if k != "mixers"})
    pattern = fields.get("pattern", ["attn"])
    mixers = fields.setdefault("mixers", {})
    if n_heads is not None and "attn" in pattern:
        mixers.setdefault("attn", {}).setdefault("n_heads", n_heads)
    _merge_mixers(mixers, {k: v for k, v in size_mixers.items() if k in pattern})
    _merge_mixers(mixers, own.get("mixers"))
    fields["d_model"] = d_model
    if "vocab_size" not in fields:
        fields["vocab_size"] = vocab if vocab is not None else study_vocab(spec)

    try:
        probe = ModelConfig(**{**fields, "n_layers": 1})
        if isinstance(arch, dict) and "layer_multiplier" in arch:
            mult = arch["layer_multiplier"]
        else:
            mult = depth_multiplier(probe.pattern, probe.mlp)
        if isinstance(size, str) and preset is not None and not (isinstance(arch, dict) and "layer_multiplier" in arch):
            fields["n_layers"] = PRESETS[preset][size]["n_layers"]  # the preset's matched depth
        else:
            fields["n_layers"] = n_layers * mult
        _merge_mixers(mixers, overrides.get("mixers"))
        fields.update({k: v for k, v in overrides.items() if k != "mixers"})
        ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise fail(src, where, str(err)) from None
    return fields


def study_vocab(study: Any) -> int:
    """The vocabulary of the study's models: ``data.tokenizer``'s size, or ``model.vocab_size``
    where the tokenizer file is not on this machine (planning a cluster study on a laptop);
    both given must agree."""
    spec, given = study.data_value("tokenizer"), study.model.get("vocab_size")
    try:
        vocab = get_tokenizer(spec).vocab_size
    except FileNotFoundError as err:
        if given is not None:
            return int(given)
        raise StudyError(f"{study.source}: data.tokenizer: {err}; train it first (`postformer "
                         "tokenizer train ... --out FILE`), or set model.vocab_size to plan "
                         "without it") from None
    if given is not None and int(given) != vocab:
        raise StudyError(f"{study.source}: model.vocab_size: {given} differs from data.tokenizer "
                         f"{spec!r}'s {vocab} tokens; the models follow the tokenizer")
    return vocab


def model_config(study: Any, label: str, size: Any) -> ModelConfig:
    """The ``ModelConfig`` of arch ``label`` at ``size`` (a preset size name or a size
    mapping); with ``match_params`` its ``d_ff`` makes N match the baseline's within 5%."""
    fields = shape_config(study, label, size)
    cfg = ModelConfig(**fields)
    where = f"archs.{label} at size {size_name(size)}"
    arch = study.archs[label]
    if isinstance(arch, dict) and arch.get("match_params") and label != study.baseline:
        target = param_counts(ModelConfig(**shape_config(study, study.baseline, size)))[0]
        if not any(cfg.block_has_mlp(m) for m in cfg.pattern):
            raise fail(study.source, where, "match_params sets d_ff, but no block of the pattern "
                                            "has an MLP")
        # N is linear in d_ff: solve, then try the multiples of 8 around the solution
        n8, n16 = (param_counts(ModelConfig(**{**fields, "d_ff": f}))[0] for f in (8, 16))
        guess = 8 + (target - n8) * 8 / max(n16 - n8, 1)
        best = None
        for d_ff in {max(8, 8 * int(guess // 8) + k) for k in (-8, 0, 8, 16)}:
            N = param_counts(ModelConfig(**{**fields, "d_ff": d_ff}))[0]
            if best is None or abs(N - target) < abs(best[1] - target):
                best = (d_ff, N)
        if abs(best[1] / target - 1) > MATCH_TOL:
            raise fail(study.source, where, f"match_params: no d_ff brings N within "
                                            f"{MATCH_TOL:.0%} of the baseline's {target} (best "
                                            f"{best[1]} at d_ff={best[0]})")
        cfg = ModelConfig(**{**fields, "d_ff": best[0]})
    missing = set(cfg.pattern) - set(cfg.layer_mixers)
    if missing:
        raise fail(study.source, where, f"{cfg.n_layers} layers never reach mixer(s) "
                                        f"{sorted(missing)} of the pattern {cfg.pattern}; use "
                                        "more layers or a layer_multiplier")
    return cfg


def shapes_of(study: Any, label: str) -> tuple[Shape, ...]:
    """Arch ``label`` at every size of the study, in the study's size order."""
    out = []
    for size in study.sizes:
        cfg = model_config(study, label, size)
        N, N_ne = param_counts(cfg)
        by_convention = flops_per_token_by_convention(cfg, study.seq_len)
        counts = {name: by_convention[name] for name in FLOP_COUNTS}
        out.append(Shape(size, size_name(size), cfg, N, N_ne, counts[study.flops_count], counts))
    return tuple(out)


def probe_config(probe: Any, label: str, d_model: int, vocab: int) -> ModelConfig:
    """The model of a probe's arch ``label`` at width ``d_model`` for a task of ``vocab``
    tokens: ``n_layers`` blocks (twice as many without MLP unless the arch's
    ``layer_multiplier`` says otherwise), heads and states following the width as a study's
    ladder does (``probe``: ``source``, ``archs``, ``n_layers``, ``head_dim``, ``d_state``)."""
    size = {"name": f"d{d_model}", "d_model": d_model, "n_layers": probe.n_layers,
            "mixers": width_options(d_model, head_dim=probe.head_dim, d_state=probe.d_state)}
    fields = shape_config(probe, label, size, vocab=vocab)
    try:
        cfg = ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise fail(probe.source, f"archs.{label} at d_model {d_model}", str(err)) from None
    missing = set(cfg.pattern) - set(cfg.layer_mixers)
    if missing:
        raise fail(probe.source, f"archs.{label}", f"{cfg.n_layers} layers never reach mixer(s) "
                                                   f"{sorted(missing)} of the pattern {cfg.pattern}")
    return cfg
