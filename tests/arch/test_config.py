"""ModelConfig: validation messages, derived shape, the mixers' default widths, presets, and that it
stays plain data."""

from __future__ import annotations

import dataclasses

import pytest

from postformer.arch import MIXERS, PRESETS, ModelConfig
from postformer.arch.deltanet_gdn import DeltaNet, GatedDeltaNet
from postformer.arch.hgrn2 import HGRN2
from postformer.arch.retnet import RetNet


def test_unknown_mixer_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown mixer 'mamba9'.*'attn'.*'gla'.*'mamba2'"):
        ModelConfig(pattern=["attn", "mamba9"])
    with pytest.raises(ValueError, match=r"unknown mixer 'rwkv9'"):
        ModelConfig(mixers={"rwkv9": {}})


def test_bad_option_key_names_mixer_key_and_accepted():
    with pytest.raises(ValueError, match=r"mixer 'attn' has no option 'n_head'.*'n_heads'.*'n_kv_heads'"):
        ModelConfig(mixers={"attn": {"n_head": 4}})
    with pytest.raises(ValueError, match=r"mixer 'mamba2' has no option 'dstate'.*'d_state'"):
        ModelConfig(pattern=["mamba2"], mixers={"mamba2": {"dstate": 4}})


@pytest.mark.parametrize("mixer, old, new", [("mamba2", "d_conv", "conv_size"), ("mamba", "d_conv", "conv_size"),
                                             ("rglru", "d_conv", "conv_size"), ("mamba2", "headdim", "head_dim")])
def test_retired_option_names_say_the_new_one(mixer, old, new):
    """One option vocabulary across mixers: a config with an old name says what to write."""
    with pytest.raises(ValueError, match=rf"mixer '{mixer}' has no option '{old}' \('{old}' is now '{new}'\)"):
        ModelConfig(d_model=64, pattern=[mixer], mixers={mixer: {old: 4}})


def test_indivisible_heads_name_both_numbers():
    with pytest.raises(ValueError, match=r"d_model 96 is not divisible by n_heads 5"):
        ModelConfig(d_model=96, mixers={"attn": {"n_heads": 5}})
    with pytest.raises(ValueError, match=r"n_heads 4 is not divisible by n_kv_heads 3"):
        ModelConfig(d_model=64, mixers={"attn": {"n_heads": 4, "n_kv_heads": 3}})
    with pytest.raises(ValueError, match=r"gla.*key dim 32 .* n_heads 3"):
        ModelConfig(d_model=64, pattern=["gla"], mixers={"gla": {"n_heads": 3}})


def test_mamba2_error_mentions_headdim():
    with pytest.raises(ValueError, match=r"d_inner 192 \(expand 2 \* d_model 96\) is not divisible by head_dim 80"):
        ModelConfig(d_model=96, pattern=["mamba2"], mixers={"mamba2": {"head_dim": 80}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_layers": 0}, "n_layers must be >= 1"),
        ({"pattern": []}, "pattern is empty"),
        ({"pattern": "attn"}, "list of mixer names"),
        ({"d_ff": 0}, "d_ff"),
        ({"mixers": {"attn": 4}}, r"mixers\['attn'\] must be a dict"),
        ({"mlp": {"nope": True}}, "unknown mixer 'nope'"),
        ({"mlp": {"attn": 1}}, r"mlp\['attn'\] must be true or false"),
        ({"mlp": "yes"}, "mlp must be None, a bool or a dict"),
    ],
)
def test_other_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_derived_shape():
    cfg = ModelConfig(d_model=256, n_layers=5, pattern=["gla", "gla", "attn"])
    assert cfg.layer_mixers == ["gla", "gla", "attn", "gla", "gla"]
    assert cfg.ff_dim == 704  # 8/3 * 256 = 682.7, rounded up to a multiple of 64
    assert ModelConfig(d_model=768).ff_dim == 2048
    assert ModelConfig(d_ff=100).ff_dim == 100
    assert cfg.block_has_mlp("gla") and cfg.block_has_mlp("attn") and not cfg.block_has_mlp("mamba2")
    assert not ModelConfig(mlp=False).block_has_mlp("attn")
    assert ModelConfig(mlp=True).block_has_mlp("mamba2")
    per_mixer = ModelConfig(pattern=["mamba2", "attn"], mlp={"mamba2": True, "attn": False})
    assert per_mixer.block_has_mlp("mamba2") and not per_mixer.block_has_mlp("attn")
    assert ModelConfig(mlp={"attn": False}).block_has_mlp("gla")  # unnamed mixers keep their default
    # defaults adapt to small widths
    assert ModelConfig(d_model=64).mixer_options("attn").n_heads == 1
    assert ModelConfig(d_model=256).mixer_options("attn").n_heads == 4
    assert ModelConfig(d_model=64, pattern=["mamba2"]).mixer_options("mamba2").head_dim == 64
    assert ModelConfig(d_model=16, pattern=["mamba2"]).mixer_options("mamba2").head_dim == 32
    assert ModelConfig(d_model=36, pattern=["gla"]).mixer_options("gla").n_heads == 3


def test_mixers_expose_defaults():
    for name, cls in MIXERS.items():
        assert cls.name == name
        assert isinstance(cls.has_mlp, bool)
        assert set(cls.defaults()) == set(cls.option_keys())
    assert MIXERS["mamba2"].defaults()["d_state"] == 128


def test_default_widths_follow_the_papers():
    o = DeltaNet.resolve_options(2048)
    assert (o.n_heads, o.head_dim, o.expand_v) == (16, 128, 1.0)
    o = GatedDeltaNet.resolve_options(2048)
    assert (o.n_heads, o.head_dim, o.expand_v) == (6, 256, 2.0)
    assert RetNet.resolve_options(2048).n_heads == 8
    assert RetNet.resolve_options(768).n_heads == 3
    assert (DeltaNet.resolve_options(192).n_heads, DeltaNet.resolve_options(192).head_dim) == (2, 96)
    o = GatedDeltaNet.resolve_options(64)
    assert (o.n_heads, o.head_dim) == (1, 48)
    assert HGRN2.resolve_options(2048).expand_ratio == 128
    assert HGRN2.resolve_options(64).expand_ratio == 64  # clamped: one head
    assert HGRN2.resolve_options(192).expand_ratio == 96  # 128 does not divide 192


def test_presets():
    assert {"transformer", "mamba", "mamba2", "gla", "retnet", "deltanet", "gdn", "hgrn2", "hawk", "griffin",
            "swa", "gdn-hybrid", "mamba2-hybrid"} <= set(PRESETS)
    used = {name for arch in PRESETS.values() for fields in arch.values() for name in fields["pattern"]}
    assert used == set(MIXERS)  # every mixer has a preset
    for arch in PRESETS:
        assert list(PRESETS[arch]) == ["tiny", "small", "125m", "350m", "760m", "1.3b"]
    t = ModelConfig.from_preset("transformer", "350m", vocab_size=50257)
    assert (t.d_model, t.n_layers, t.mixer_options("attn").n_heads, t.vocab_size) == (1024, 24, 16, 50257)
    m = ModelConfig.from_preset("mamba2", "1.3b")
    assert (m.d_model, m.n_layers, m.pattern) == (2048, 48, ["mamba2"])
    assert dataclasses.asdict(m.mixer_options("mamba2")) | {} == {
        **MIXERS["mamba2"].defaults(), "d_state": 128, "head_dim": 64, "expand": 2
    }
    tiny = ModelConfig.from_preset("mamba2", "tiny", mixers={"mamba2": {"d_state": 8}})
    assert (tiny.d_model, tiny.n_layers) == (64, 4)
    assert tiny.mixers["mamba2"] == {"d_state": 8, "head_dim": 64, "expand": 2}  # merged
    assert ModelConfig.from_preset("gla", "small").mixer_options("gla").n_heads == 4
    assert ModelConfig.from_preset("transformer", "tiny").n_layers == 2
    assert PRESETS["mamba2"]["tiny"]["mixers"]["mamba2"]["d_state"] == 16  # not mutated
    with pytest.raises(ValueError, match="unknown preset arch 'rwkv'"):
        ModelConfig.from_preset("rwkv", "tiny")
    with pytest.raises(ValueError, match="unknown size '7b'"):
        ModelConfig.from_preset("gla", "7b")
    with pytest.raises(ValueError, match="no field 'width'"):
        ModelConfig.from_preset("gla", "tiny", width=3)


def test_config_is_plain_data_for_the_cli():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--model", type=ModelConfig)
    ns = parser.parse_string(
        "model:\n  d_model: 64\n  n_layers: 3\n  pattern: [gla, attn]\n"
        "  mixers: {attn: {n_heads: 2}}\n  d_ff: null\n  mlp: {gla: false}\n"
    )
    cfg = parser.instantiate(ns).model
    assert cfg == ModelConfig(d_model=64, n_layers=3, pattern=["gla", "attn"], mixers={"attn": {"n_heads": 2}},
                              mlp={"gla": False})
    assert ModelConfig(**dataclasses.asdict(cfg)) == cfg
